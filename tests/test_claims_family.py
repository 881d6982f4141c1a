"""The MAML-family claims (experiments/claims/family.py): every check runs quick with a valid verdict,
planted false statements are rejected, and the helpers the checks rely on match independent oracles."""

import numpy as np
import pytest
import torch

from experiments.claims import REGISTRY, Context, run_claims, select
from experiments.claims import family as F
from experiments.claims.registry import VERDICTS
from synthetic import QuadraticFamily, TanhRegressionFamily
from testbed import SharpMAMLConfig, meta_gradient

PREFIXES = ["fallah", "mishchenko", "jyl", "anil", "hypergrad"]
MEMO: dict = {}
DT = torch.float64


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run of the whole group with plots (its shared runs are reused below)."""
    out = tmp_path_factory.mktemp("family")
    ctx = Context(quick=True, out_dir=out, memo=MEMO)
    return out, {r.id: r for r in run_claims(select(PREFIXES), ctx)}


@pytest.fixture(scope="module")
def ctx(quick):
    return Context(quick=True, memo=MEMO)


def test_every_family_claim_runs_quick_with_a_valid_verdict_and_its_plots(quick):
    out, results = quick
    ids = {c for c in REGISTRY if c.split(".")[0] in PREFIXES}
    assert set(results) == ids and len(ids) == 11
    for cid, r in results.items():
        assert r.verdict in VERDICTS, cid
        assert r.summary and r.tolerance and r.measured, cid
        if r.verdict == "fails":
            assert r.counterexample, cid
        for plot in r.plots:
            assert (out / plot).is_file(), f"{cid} names a missing plot {plot}"


def test_the_group_fits_the_quick_budget(quick):
    _, results = quick
    assert sum(r.seconds for r in results.values()) < 60   # ~10 s on 2 idle cores; room for contention


# -- planted false statements: the checks must reject them ---------------------------


def test_planted_fomaml_floor_shrinking_like_one_over_t_fails(ctx):
    assert F.check_fomaml_floor(ctx).verdict == "holds"
    planted = F.check_fomaml_floor(ctx, claimed_slope=-1.0)
    assert planted.verdict == "fails"
    assert abs(planted.counterexample["slope"]) < F.FLOOR_SLOPE_TOL


def test_planted_itd_error_independent_of_n_fails(ctx):
    assert F.check_itd_aid(ctx).verdict == "holds"
    planted = F.check_itd_aid(ctx, claimed_rate=1.0)
    assert planted.verdict == "fails"
    assert planted.counterexample["rates"]["itd"] < 1 - F.HG_RATE_TOL


def test_planted_es_error_not_shrinking_with_directions_fails(ctx):
    assert F.check_es(ctx).verdict == "holds"
    assert F.check_es(ctx, claimed_slope=0.0).verdict == "fails"


def test_planted_rates_and_exponents_fail(ctx):
    assert F.check_maml_rate(ctx, claimed=-2.0).verdict == "fails"          # "O(1/eps) iterations"
    assert F.check_batchsize(ctx).verdict == "holds"
    assert F.check_batchsize(ctx, claimed=-2.0).verdict == "fails"
    assert F.check_stepsize(ctx, claimed_exponent=-2.0).verdict == "fails"
    assert F.check_fomaml_neighbourhood(ctx, claimed_rate=0.0).verdict == "fails"   # "exact convergence"


def test_planted_hf_accuracy_at_a_large_delta_fails(ctx):
    assert F.check_hf_accuracy(ctx).verdict == "holds"
    assert F.check_hf_accuracy(ctx, delta=1.0).verdict == "fails"


def test_imaml_check_rejects_a_smooth_convex_task(ctx):
    assert F.check_imaml_nonsmooth(ctx).verdict == "holds"
    planted = F.check_imaml_nonsmooth(ctx, examples=(F.QUADRATIC_1D,))
    assert planted.verdict == "fails"
    assert planted.counterexample["slope_gap"] < F.IMAML_KINK_TOL


def test_anil_checks_reject_the_opposite_trend(ctx):
    assert F.check_anil_nonconvex(ctx, claimed_rate="improves", claimed_cost="falls").verdict == "fails"
    assert F.check_anil_strongly_convex(ctx, claimed_rate="worsens", claimed_cost="falls").verdict != "holds"


# -- the closed forms the checks use, against independent oracles ---------------------


def test_hf_meta_gradient_matches_the_cores_finite_difference_mode():
    fam = TanhRegressionFamily.random(4, 3, seed=1)
    theta = torch.tensor([[0.3, -0.2, 0.5], [0.0, 0.4, -0.1]], dtype=DT)
    ours = F.hf_meta_gradient(fam, theta, beta_low=0.2, delta=torch.tensor([0.1, 0.01], dtype=DT))
    for i, dl in enumerate((0.1, 0.01)):
        core = meta_gradient(fam.loss, fam.params(theta[i]), fam.tasks(),
                             SharpMAMLConfig(beta_low=0.2, hvp="finite-difference", fd_delta=dl))
        assert torch.allclose(ours[i], core.grad["theta"], atol=1e-12, rtol=0)


def test_fo_maml_fixed_point_is_where_the_first_order_direction_vanishes():
    fam = QuadraticFamily.random(6, 4, seed=3)
    star = F._fo_fixed_point(fam, 0.3)
    from synthetic.closed_form import batched_sharp_meta_gradient
    d = batched_sharp_meta_gradient(fam, star[None], beta_low=0.3, first_order=True)
    assert d.abs().max() < 1e-12
    same = F._spread_family(fam, 0.0)
    assert torch.allclose(same.c, same.c_val) and torch.allclose(same.c, same.c[:1].expand_as(same.c))


def test_moreau_solution_is_stationary_for_the_sum_of_envelopes():
    fam = QuadraticFamily.random(5, 3, seed=4)
    lam = 0.5
    x = F._moreau_solution(fam, lam)
    eye = torch.eye(3, dtype=DT)
    rhs = x + lam * torch.einsum("mij,mj->mi", fam.A, fam.c)
    prox = torch.linalg.solve(eye + lam * fam.A, rhs.unsqueeze(-1)).squeeze(-1)
    grad_envelope = (x - prox) / lam                      # grad M_lam L_m(x) = (x - prox)/lam
    assert grad_envelope.sum(0).abs().max() < 1e-12
    for kind in ("prox", "gd"):                                       # the inner maps are the loops they name
        P, q = F._inner_map(fam, lam, 3, kind)
        z = x.expand(5, 3)
        for _ in range(3):
            z = (x - lam * fam.gradient(z, "support")) if kind == "prox" else z - lam * fam.gradient(z, "support")
        assert torch.allclose(torch.einsum("mij,j->mi", P, x) + q, z, atol=1e-12, rtol=0)


def test_imaml_objective_of_the_piecewise_quadratic_has_its_kink_at_one_plus_one_over_lambda():
    a = F._analyse_example(F.PIECEWISE, 401)
    assert a["kink"]["x"] == pytest.approx(1 + 1 / F.PIECEWISE.lam, abs=1e-4)
    left, right = a["kink"]["slopes_left_right"]["1e-05"]
    lam = F.PIECEWISE.lam
    assert left == pytest.approx(lam / (1 + lam), abs=1e-3) and right == pytest.approx(lam / (2 + lam), abs=1e-3)


def test_trend_and_cost_classifiers():
    assert F._trend(np.array([4.0, 2.0, 1.9, 1.9])) == "improves-then-saturates"
    assert F._trend(np.array([1.0, 2.0, 4.0, 8.0])) == "worsens"
    assert F._trend(np.array([1.0, 1.05, 0.97])) == "flat"
    assert F._cost_shape(np.array([4.0, 2.0, 3.0])) == "falls-then-rises"
    assert F._cost_shape(np.array([1.0, 2.0, 3.0])) == "rises"
