"""Lemma 1 claims (Abbas et al. 2022, Sec. 2.2 and App. B): verdicts, root finder, eq. (27)."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import scipy.optimize
import torch

import experiments.claims.lemma1 as L1
from experiments.claims.registry import VERDICTS, Context, run_claims, select
from synthetic import DoubleWellFamily
from tolerances import CLOSED_FORM, DISTINCT

TOL = CLOSED_FORM[torch.float64]
LEMMA1_IDS = [c.id for c in select(["lemma1"])]
CLAIM = {c.id: c for c in select(["lemma1"])}


@pytest.fixture(scope="module")
def ctx():
    """One quick context for the module: landscapes are computed once and shared."""
    return Context(quick=True, seed=0)


def _untilted(beta_low: float) -> L1.Example:
    zero = torch.zeros(1, 1, dtype=torch.float64)
    return L1.Example(f"dw1d_untilted_b{beta_low}", DoubleWellFamily(zero, zero[:, :1], zero[:, :1]),
                      beta_low, (-2.0, 2.0), None, "1/4 (theta^2 - 1)^2, no tilt")


def test_every_example_has_a_claim_of_each_kind():
    kinds = {"a", "b", "strict"}
    for name in L1.EXAMPLE_NAMES:
        assert {f"lemma1.{k}.{name}" for k in kinds} <= set(LEMMA1_IDS)
    assert "lemma1.eq27" in LEMMA1_IDS


@pytest.mark.parametrize("claim_id", LEMMA1_IDS)
def test_each_lemma1_claim_returns_a_valid_json_able_verdict(ctx, claim_id):
    (result,) = run_claims([CLAIM[claim_id]], ctx)
    assert result.verdict in VERDICTS and result.id == claim_id
    json.dumps(asdict(result), allow_nan=False)
    assert result.summary and result.tolerance


@pytest.mark.parametrize("name", L1.EXAMPLE_NAMES)
def test_lemma1_a_b_and_strict_hold_on_the_examples(ctx, name):
    a = CLAIM[f"lemma1.a.{name}"].check(ctx)
    b = CLAIM[f"lemma1.b.{name}"].check(ctx)
    strict = CLAIM[f"lemma1.strict.{name}"].check(ctx)
    assert (a.verdict, b.verdict, strict.verdict) == ("holds", "holds", "holds")
    assert a.measured["max_grad_G_at_L_stationary"] <= L1.GRAD_TOL
    assert a.measured["n_stationary_G"] > a.measured["n_stationary_L"] >= 1
    assert all(r["min_eig_hess_G"] > 0 and r["sphere_min_increase"] > 0
               for r in b.measured["L_minima_in_G"])


@pytest.mark.parametrize("name", L1.EXAMPLE_NAMES)
def test_planted_equal_statement_fails_with_a_counterexample_that_rechecks(ctx, name):
    result = CLAIM[f"lemma1.strict.{name}"].check(ctx, statement="equal")
    assert result.verdict == "fails"
    cx = result.counterexample
    ex = L1.EXAMPLES[name]
    point = torch.tensor([cx["point"]], dtype=torch.float64)
    assert point.shape == (1, ex.dim) and cx["beta_low"] == ex.beta_low
    assert L1.maml_grad(ex, point).norm().item() < L1.ROOT_TOL            # stationary for G ...
    assert L1.loss_grad(ex, point).norm().item() > 1e-3                   # ... but not for L
    # the same point, re-derived by autograd from the per-sample loss
    th = point[0].clone().requires_grad_(True)
    batch = {k: v[0] for k, v in ex.family.batch("support").items()}
    loss = lambda t: ex.family.loss({"theta": t}, batch).mean()  # noqa: E731
    inner = torch.autograd.grad(loss(th), th, create_graph=True)[0]
    (g,) = torch.autograd.grad(loss(th - ex.beta_low * inner), th)
    assert g.norm().item() < 1e-9


@pytest.mark.parametrize("kind", ["a", "b"])
def test_lemma1_a_and_b_reject_the_planted_equal_statement(ctx, kind):
    assert CLAIM[f"lemma1.{kind}.dw2d"].check(ctx, statement="equal").verdict == "fails"


def test_root_finder_finds_the_untilted_double_well_and_the_known_extra_points():
    """L = 1/4 (theta^2-1)^2, beta = 1/4, box [-2, 2]: L has -1, 0, 1.  G' = (1 - beta L''(theta))
    L'(theta') vanishes where L'' = 1/beta (theta = +-sqrt((1 + 1/beta)/3) = +-sqrt(5/3)) and where
    theta' = theta - beta (theta^3 - theta) hits -1, 0, 1 again: theta^3 - 5 theta + 4c = 0, whose
    roots in the box are 0, +-1 and +-(sqrt(17) - 1)/2."""
    beta = 0.25
    ls = L1.landscape(_untilted(beta), L1.grid_size(1, quick=True))
    L_pts = np.array([p.point[0] for p in ls.L])
    assert np.allclose(L_pts, [-1.0, 0.0, 1.0], atol=1e-12, rtol=0)
    assert [p.kind for p in ls.L] == ["min", "max", "min"]
    knee = math.sqrt((1 + 1 / beta) / 3)
    pre = (math.sqrt(17) - 1) / 2
    expected = sorted([-pre, -knee, -1.0, 0.0, 1.0, knee, pre])
    assert np.allclose([p.point[0] for p in ls.G], expected, atol=1e-10, rtol=0)
    kinds = {round(p.point[0], 6): p.kind for p in ls.G}
    assert kinds[round(knee, 6)] == kinds[round(-knee, 6)] == "max"     # G'' = -6 beta theta L'(theta')
    assert kinds[round(pre, 6)] == kinds[round(-pre, 6)] == "min"


def test_strict_claim_fails_when_beta_is_too_small_for_extra_points_in_the_box():
    """Negative control: beta = 0.05 puts sqrt((1 + 1/beta)/3) = 2.65 and every extra preimage
    outside [-2, 2], so G and L have the same three stationary points there."""
    ctx = Context(quick=True)
    ex = _untilted(0.05)
    assert math.sqrt((1 + 1 / 0.05) / 3) > ex.box[1]
    result = L1.check_strict(ctx, ex)
    assert result.verdict == "fails" and result.measured["n_extra_G"] == 0
    assert result.measured["n_stationary_G"] == result.measured["n_stationary_L"] == 3
    assert L1.check_strict(ctx, ex, statement="equal").verdict == "holds"


def test_one_dimensional_root_finder_catches_tangential_roots():
    """g = (theta - 0.3)^2 (theta + 0.5): no sign change at 0.3 (a double root)."""
    g = lambda t: (t - 0.3) ** 2 * (t + 0.5)  # noqa: E731
    h = lambda t: (2 * (t - 0.3) * (t + 0.5) + (t - 0.3) ** 2)[:, :, None]  # noqa: E731
    pts = L1.stationary_points(g, h, (-1.0, 1.0), 1, 1001)
    assert np.allclose([p.point[0] for p in pts], [-0.5, 0.3], atol=1e-5, rtol=0)
    assert [p.kind for p in pts] == ["min", "degenerate"]


def test_newton_search_finds_every_stationary_point_an_independent_solver_finds():
    """2-D coupled double well: scipy's hybrid solver from 400 random starts as the oracle."""
    ex = L1.EXAMPLES["dw2d"]
    rng = np.random.default_rng(0)
    oracle = []
    for s in rng.uniform(-2, 2, (400, 2)):
        r = scipy.optimize.root(lambda t: L1.loss_grad(ex, t)[0].numpy(), s, tol=1e-14)
        if r.success and np.abs(r.x).max() <= 2 and all(np.linalg.norm(r.x - q) > 1e-6 for q in oracle):
            oracle.append(r.x)
    found = L1.stationary_points(lambda t: L1.loss_grad(ex, t), lambda t: L1.loss_hess(ex, t),
                                 ex.box, 2, L1.grid_size(2, quick=True))
    assert len(found) == len(oracle) == 9
    for q in oracle:
        assert min(np.linalg.norm(np.subtract(p.point, q)) for p in found) < 1e-8


def test_closed_form_hessian_of_G_matches_autograd_and_eq27_differs_in_2d():
    ex2 = L1.EXAMPLES["dw2d"]
    theta = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    assert L1.loss_grad(ex2, theta).norm() > 0.1                          # not stationary
    auto = L1.autograd_maml_hess(ex2, theta)
    assert (L1.maml_hess(ex2, theta, "true") - auto).abs().max() <= TOL
    gap = (L1.maml_hess(ex2, theta, "eq27") - auto).abs().max().item()
    assert gap > DISTINCT
    # eq. (27) minus the true Hessian is -beta (I - beta H)[H, H'] exactly
    H, Hp = L1.loss_hess(ex2, theta), L1.loss_hess(ex2, L1.adapted(ex2, theta))
    A = torch.eye(2, dtype=torch.float64) - ex2.beta_low * H
    assert torch.allclose(L1.maml_hess(ex2, theta, "eq27") - auto,
                          -ex2.beta_low * A @ (H @ Hp - Hp @ H), atol=TOL, rtol=0)
    ex1 = L1.EXAMPLES["tanh1d"]
    t1 = torch.tensor([[0.9]], dtype=torch.float64)
    assert (L1.maml_hess(ex1, t1, "eq27") - L1.autograd_maml_hess(ex1, t1)).abs().max() <= TOL


def test_eq27_claim_holds_only_where_the_hessians_commute(ctx):
    result = CLAIM["lemma1.eq27"].check(ctx)
    assert result.verdict == "holds only under" and "commute" in result.condition
    m = result.measured
    assert m["max_rel_diff_2d_nonstationary"] > DISTINCT
    assert m["max_rel_diff_1d"] <= TOL and m["max_rel_diff_at_L_stationary_2d"] <= TOL
    assert m["max_true_formula_vs_autograd"] <= TOL
    cx = result.counterexample
    diff = np.subtract(cx["numbers"]["formula_hessian"], cx["numbers"]["autograd_hessian"])
    assert np.linalg.norm(diff) == pytest.approx(cx["numbers"]["diff_fro_norm"], rel=1e-12)


def test_eq27_check_accepts_the_true_formula_and_rejects_dropping_the_third_derivative(ctx):
    assert CLAIM["lemma1.eq27"].check(ctx, formula="true").verdict == "holds"
    wrong = CLAIM["lemma1.eq27"].check(ctx, formula="no_third")
    assert wrong.verdict == "fails"
    assert wrong.counterexample["numbers"]["commutator_rel_norm"] <= L1.COMMUTE_TOL


def test_checks_write_their_plots(tmp_path):
    ctx = Context(quick=True, out_dir=tmp_path)
    r1 = CLAIM["lemma1.a.dw1d"].check(ctx)
    r2 = CLAIM["lemma1.a.dw2d"].check(ctx)
    for r in (r1, r2):
        assert r.plots and all((tmp_path / p).stat().st_size > 0 for p in r.plots)


@pytest.mark.parametrize("call, match", [
    (lambda c: CLAIM["lemma1.a.dw1d"].check(c, statement="superset"), "statement"),
    (lambda c: CLAIM["lemma1.eq27"].check(c, formula="eq26"), "formula"),
    (lambda c: L1.check_a(c, "nope"), "example"),
    (lambda c: L1.stationary_points(None, None, (1.0, -1.0), 1, 11), "box"),
    (lambda c: L1.stationary_points(None, None, (-1.0, 1.0), 3, 11), "dim"),
])
def test_lemma1_checks_reject_bad_arguments_naming_them(ctx, call, match):
    with pytest.raises(ValueError, match=match):
        call(ctx)
