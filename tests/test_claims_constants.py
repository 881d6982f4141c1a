"""lemma3.bias (eq. 31) and lemma4.variance (eq. 34): what they measure, and that they can fail."""

import math

import pytest
import torch

from experiments.claims import constants as C
from experiments.claims.registry import Context
from synthetic import QuadraticFamily, TanhRegressionFamily
from synthetic.closed_form import batched_sharp_meta_gradient

EXACT = 1e-12
"""Two float64 evaluations of the same few products, in different orders."""
MC_RTOL = 0.05
"""Monte Carlo mean of 100000 draws against its exact value: well over 5 standard errors."""


@pytest.fixture(scope="module")
def ctx():
    return Context(quick=True, seed=0)


@pytest.fixture(scope="module")
def bias(ctx):
    return C.check_bias(ctx)


@pytest.fixture(scope="module")
def variance(ctx):
    return C.check_variance(ctx)


FAMILIES = [QuadraticFamily.random(4, 4, eig_low=0.1, eig_high=1.0, seed=3),
            TanhRegressionFamily.random(4, 3, seed=3)]


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("a_low, a_up", [(0.0, 0.0), (0.2, 0.0), (0.0, 0.1), (0.1, 0.3)])
def test_lemma3_model_without_noise_is_the_sharp_meta_gradient(fam, a_low, a_up):
    """h_bar of the biased-MAML model (App. C.2-C.3) at sigma_b = 0 is the closed-form Sharp-MAML."""
    thetas = torch.randn(7, fam.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got, _, _ = C.lemma3_bias_sq(fam, thetas, 0.2, a_low, a_up, 0.0, 8, torch.Generator().manual_seed(0))
    exact = batched_sharp_meta_gradient(fam, thetas, beta_low=0.2)
    sharp = batched_sharp_meta_gradient(fam, thetas, beta_low=0.2, alpha_low=a_low, alpha_up=a_up)
    assert torch.allclose(got, ((exact - sharp) ** 2).sum(-1), rtol=EXACT, atol=EXACT)


@pytest.mark.parametrize("fam", FAMILIES)
def test_lemma3_biases_are_the_measured_per_point_biases_of_lemma5(fam):
    thetas = torch.randn(5, fam.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, gg, gh = C.lemma3_bias_sq(fam, thetas, 0.2, 0.1, 0.05, 0.0, 1, torch.Generator())
    for k, theta in enumerate(thetas):
        dg, dH = C.sharp_biases(fam, theta, 0.2, 0.1, 0.05)
        assert math.isclose(gg[k].item(), dg.max().item(), rel_tol=EXACT)
        assert math.isclose(gh[k].item(), dH.max().item(), rel_tol=EXACT, abs_tol=EXACT)


def test_lemma3_noise_term_matches_its_exact_value_on_a_quadratic():
    """MAML (no radii) on a quadratic: h_bar - grad F = -beta/M sum_m (I - beta A_m) A'_m z_m, so
    E||grad F - h_bar||^2 = beta^2 sigma_b^2 / (d M^2) sum_m ||(I - beta A_m) A'_m||_F^2."""
    fam = FAMILIES[0]
    theta = torch.full((1, fam.dim), 0.3, dtype=torch.float64)
    beta, sb, M, d = 0.2, 0.5, fam.num_tasks, fam.dim
    got, _, _ = C.lemma3_bias_sq(fam, theta, beta, 0.0, 0.0, sb, 100000, torch.Generator().manual_seed(4))
    B = torch.eye(d, dtype=torch.float64) - beta * fam.A
    P = torch.einsum("mij,mjk->mik", B, fam.A_val)
    want = beta ** 2 * sb ** 2 / d * (torch.linalg.matrix_norm(P) ** 2).sum().item() / M ** 2
    assert abs(got.item() / want - 1) < MC_RTOL


def test_bias_check_holds_with_the_stated_bound_and_reports_both_versions(bias):
    assert bias.verdict == "holds"
    rows = bias.measured["rows"]
    assert {k.split("sigma_b=")[1].split(",")[0] for k in rows} == {"0", "0.5"}
    assert min(min(v["min_ratio_bound_over_measured"]) for v in rows.values()) >= 1
    assert bias.measured["with_lemma5_bounds"]["smallest_ratio"] >= 1


def test_bias_check_plugs_the_measured_gammas_into_eq31(ctx):
    """The gammas the right side sees are per-point tensors no larger than Lemma 5's bounds."""
    seen = []

    def spy(c, beta, gg, gh, sb):
        seen.append((gg, gh, sb))
        return C.eq31_rhs(c, beta, gg, gh, sb)
    C.check_bias(ctx, rhs=spy)
    measured = [s for s in seen if torch.is_tensor(s[0])]
    assert measured and all(s[0].numel() == C._count(ctx) // 2 for s in measured)
    assert any(s[0].max() > 0 and s[0].min() < s[0].max() for s in measured)   # per point, not one number


def test_bias_check_rejects_a_bound_scaled_below_the_measurement(ctx, bias):
    ratio = min(min(v["min_ratio_bound_over_measured"]) for v in bias.measured["rows"].values())
    planted = C.check_bias(ctx, rhs=lambda *a: C.eq31_rhs(*a) * 0.5 / ratio)
    assert planted.verdict == "fails"
    assert planted.counterexample["measured"] > planted.counterexample["bound"]


def test_bias_check_rejects_eq31_without_its_sigma_b_terms(ctx):
    """The noisy rows exercise sigma_b: dropping it from (31) must be caught there."""
    planted = C.check_bias(ctx, rhs=lambda c, beta, gg, gh, sb: C.eq31_rhs(c, beta, gg, gh, 0.0))
    assert planted.verdict == "fails"
    assert planted.counterexample["sigma_b"] > 0


def test_variance_check_keeps_the_l1_finding_and_adds_sigma_b_rows(variance):
    assert variance.verdict == "fails"
    ce = variance.counterexample
    assert ce["sigma_b"] == 0.0 and ce["l1"] < 0.5 and ce["measured"] > ce["bound"]
    noisy = variance.measured["sigma_b_rows"]
    assert {v for k in noisy for v in C.VARIANCE_SIGMA_B if f"sigma_b={v:g}" in k} == set(C.VARIANCE_SIGMA_B)
    assert any("sigma=0," in k for k in noisy) and any("sigma=1," in k for k in noisy)
    # the stated bound grows with sigma_b faster than the measurement: large sigma_b hides the finding
    one = "quadratic, 1 task, eigenvalues in [0.01, 0.1], alpha=(0, 0), sigma=1"
    assert noisy[f"{one}, sigma_b=0.5"]["measured"] > noisy[f"{one}, sigma_b=0.5"]["bound"]
    assert noisy[f"{one}, sigma_b=2"]["measured"] < noisy[f"{one}, sigma_b=2"]["bound"]


def _corrected(c, beta, gamma_h, sigma, sigma_b):
    """(34) with 4 sigma^2 for the query-gradient term (what Assumption 2 gives)."""
    return (4 * sigma ** 2 + 16 * (gamma_h ** 2 + c.l1 ** 2) * beta ** 2 * sigma ** 2
            + 16 * beta ** 2 * sigma_b ** 2 * (sigma ** 2 + c.l0 ** 2))


def test_variance_corrected_bound_holds_with_sigma_b_and_fails_without_its_sigma_b_term(ctx):
    assert C.check_variance(ctx, bound=_corrected).verdict == "holds"
    planted = C.check_variance(ctx, bound=lambda c, beta, gh, s, sb: _corrected(c, beta, gh, s, 0.0))
    assert planted.verdict == "fails"
    assert planted.counterexample["sigma_b"] > 0


def test_lemma4_variance_matches_its_exact_value_on_a_quadratic():
    """MAML on a quadratic with scalar Hessian noise s sigma_b I:
    E||h - h_bar||^2 = 1/M^2 sum_m [sigma^2/d ||I - beta A_m||_F^2
                                    + beta^2 sigma_b^2 (||v_m||^2 + beta^2 sigma_b^2/d ||A'_m||_F^2 + sigma^2)]."""
    fam = QuadraticFamily.random(2, 3, eig_low=0.1, eig_high=1.0, seed=7)
    theta = torch.full((3,), 0.4, dtype=torch.float64)
    beta, s, sb, M, d = 0.3, 1.0, 0.7, 2, 3
    got, gh = C.lemma4_variance(fam, theta, beta, 0.0, s, sb, 100000, torch.Generator().manual_seed(5))
    assert gh == 0.0
    I = torch.eye(d, dtype=torch.float64)
    v = fam.gradient(theta - beta * fam.gradient(theta, "support"), "query")
    terms = (s ** 2 / d * torch.linalg.matrix_norm(I - beta * fam.A) ** 2
             + beta ** 2 * sb ** 2 * ((v ** 2).sum(-1) + beta ** 2 * sb ** 2 / d
                                      * torch.linalg.matrix_norm(fam.A_val) ** 2 + s ** 2))
    want = terms.sum().item() / M ** 2
    assert abs(got / want - 1) < MC_RTOL


def test_checks_are_reproducible_from_the_seed(ctx, bias, variance):
    again = Context(quick=True, seed=0)
    assert C.check_bias(again).measured == bias.measured
    assert C.check_variance(again).measured == variance.measured
    assert C.check_variance(Context(quick=True, seed=1)).measured != variance.measured


# ---- eq. (10) with non-zero radii ----------------------------------------------------------


def test_eq10_holds_against_the_closed_form_and_is_far_from_maml(ctx):
    r = C.check_eq10(ctx)
    assert r.verdict == "holds", r.summary
    assert r.measured["max_relative_difference"] <= C.FORMULA_TOL
    assert r.measured["min_relative_difference_to_eq30"] > 1e3 * C.FORMULA_TOL


def test_eq10_fails_with_the_hessian_taken_at_theta(ctx):
    """A planted eq. (10) with the Hessian at theta, not at the perturbed point, is caught."""
    from synthetic.closed_form import sharp_meta_gradient

    def hessian_at_theta(fam, theta, *, beta_low, steps=1, alpha_low=0.0, alpha_up=0.0):
        if steps != 1 or alpha_low == 0.0:
            return sharp_meta_gradient(fam, theta, beta_low=beta_low, steps=steps,
                                       alpha_low=alpha_low, alpha_up=alpha_up)
        g = fam.gradient(theta, "support")
        eps = alpha_low * g / g.norm(dim=-1, keepdim=True)
        grad_q = fam.gradient(theta - beta_low * fam.gradient(theta + eps, "support"), "query")
        return (grad_q - beta_low * fam.hvp(theta, grad_q, "support")).mean(-2)

    r = C.check_eq10(ctx, formula=hessian_at_theta)
    assert r.verdict == "fails" and r.counterexample["steps"] == 1


def test_eq10_is_inconclusive_when_the_radii_do_not_matter(ctx, monkeypatch):
    # with zero radii eq. (10) is eq. (30): the control agrees and cannot separate them
    monkeypatch.setattr(C, "SHARP_RADII", {"maml": (0.0, 0.0)})
    r = C.check_eq10(ctx)
    assert r.verdict == "inconclusive" and "do not move" in r.condition
