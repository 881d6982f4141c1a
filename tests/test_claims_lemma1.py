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


def _untilted(beta_low: float, query_tilt: float = 0.0) -> L1.Example:
    zero = torch.zeros(1, 1, dtype=torch.float64)
    fam = DoubleWellFamily(zero, zero[:, :1], torch.full((1, 1), query_tilt, dtype=torch.float64))
    return L1.Example(f"dw1d_untilted_b{beta_low}_q{query_tilt}", fam, beta_low, (-2.0, 2.0), None,
                      f"1/4 (theta^2 - 1)^2, no tilt (query tilt {query_tilt})")


def test_every_example_has_a_claim_of_each_kind():
    kinds = {"a", "b", "strict"}
    for name in L1.EXAMPLE_NAMES:
        assert {f"lemma1.{k}.{name}" for k in kinds} <= set(LEMMA1_IDS)
    assert {"lemma1.eq27", "lemma1.sum"} <= set(LEMMA1_IDS)


@pytest.mark.parametrize("claim_id", LEMMA1_IDS)
def test_each_lemma1_claim_returns_a_valid_json_able_verdict(ctx, claim_id):
    (result,) = run_claims([CLAIM[claim_id]], ctx)
    assert result.verdict in VERDICTS and result.id == claim_id
    json.dumps(asdict(result), allow_nan=False)
    assert result.summary and result.tolerance


@pytest.mark.parametrize("name", L1.EXAMPLE_NAMES)
def test_lemma1_a_and_b_hold_at_both_steps_and_strict_only_at_the_large_step(ctx, name):
    a = CLAIM[f"lemma1.a.{name}"].check(ctx)
    b = CLAIM[f"lemma1.b.{name}"].check(ctx)
    strict = CLAIM[f"lemma1.strict.{name}"].check(ctx)
    assert (a.verdict, b.verdict, strict.verdict) == ("holds", "holds", "holds only under")
    for regime in ("example", "small"):
        ra, rb = a.measured["regimes"][regime], b.measured["regimes"][regime]
        assert ra["max_grad_G_at_L_stationary"] <= L1.GRAD_TOL and ra["all_L_points_in_G_set"]
        assert ra["control_rejected"] and ra["control_query_grad_min"] > 1e3 * L1.GRAD_TOL
        assert all(r["min_eig_hess_G"] > 0 and r["sphere_min_increase"] > 0
                   for r in rb["L_minima_in_G"])
    big, small = strict.measured["regimes"]["example"], strict.measured["regimes"]["small"]
    assert big["n_extra_G"] > 0 and big["curvature"]["beta_lambda_max"] >= 1
    assert small["n_extra_G"] == 0 and small["n_stationary_G"] == small["n_stationary_L"] >= 1
    assert small["curvature"]["beta_l1"] == pytest.approx(L1.SMALL_BETA_FACTOR, rel=1e-12)
    assert "lambda_max(H) >= 1" in strict.condition
    assert strict.counterexample["regime"] == "small"


def test_small_step_is_certified_below_one_over_the_largest_hessian_eigenvalue():
    """beta_small = 0.5 / l1 must keep beta lambda_max(H) <= 0.5 on the box, measured on a grid
    finer than the check's own (the family's l1 is an upper bound, not an estimate)."""
    for ex in L1.EXAMPLES.values():
        small = L1.small_beta(ex)
        axes = [np.linspace(*ex.box, 801 if ex.dim == 1 else 301)] * ex.dim
        P = torch.as_tensor(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, ex.dim))
        lam = torch.linalg.eigvalsh(L1.loss_hess(ex, P)).abs().max().item()
        assert small.beta_low * lam <= L1.SMALL_BETA_FACTOR + 1e-12
        assert small.family is ex.family and small.box == ex.box


def test_lemma1_a_does_not_use_eq26(monkeypatch):
    """The verdict of lemma1.a must not rest on eq. (26): with maml_grad broken the check (on a
    fresh context, so the landscapes are recomputed) still holds with the same numbers."""
    def broken(*args, **kwargs):
        raise AssertionError("eq. (26) was used")
    monkeypatch.setattr(L1, "maml_grad", broken)
    result = L1.check_a(Context(quick=True), "dw1d")
    assert result.verdict == "holds" and result.measured["n_extra_G"] == 4


def test_lemma1_a_rejects_the_query_outer_loss_with_a_counterexample_that_rechecks(ctx):
    """Control: with the outer loss on D'_m != D_m (eq. 2) a stationary point of L(.; D_m) is not
    stationary for theta -> L(theta'(theta); D'_m); re-derived here with torch.autograd directly."""
    for name in L1.EXAMPLE_NAMES:
        result = CLAIM[f"lemma1.a.{name}"].check(ctx, outer="query")
        assert result.verdict == "fails"
        ex = L1.EXAMPLES[name]
        cx = result.counterexample
        th = torch.tensor(cx["point"], dtype=torch.float64, requires_grad=True)
        assert L1.loss_grad(ex, th.detach()[None]).norm().item() < L1.ROOT_TOL
        sup = {k: v[0] for k, v in ex.family.batch("support").items()}
        qry = {k: v[0] for k, v in ex.family.batch("query").items()}
        inner = torch.autograd.grad(ex.family.loss({"theta": th}, sup).mean(), th, create_graph=True)[0]
        (g,) = torch.autograd.grad(ex.family.loss({"theta": th - cx["beta_low"] * inner}, qry).mean(), th)
        assert g.norm().item() == pytest.approx(cx["numbers"]["grad_G_query_norm"], rel=1e-9)
        assert g.norm().item() > L1.GRAD_TOL


def test_lemma1_a_is_inconclusive_when_its_control_cannot_fail():
    """With D'_m = D_m the control is Lemma 1 a itself and passes: the check must not say holds."""
    result = L1.check_a(Context(quick=True), _untilted(0.25, query_tilt=0.0))
    assert result.verdict == "inconclusive" and "control" in result.condition
    assert not result.measured["control_rejected_in_every_regime"]
    tilted = L1.check_a(Context(quick=True), _untilted(0.25, query_tilt=0.05))
    assert tilted.verdict == "holds" and tilted.measured["control_rejected_in_every_regime"]


def test_strict_verdict_is_holds_when_both_regimes_have_extra_points(monkeypatch):
    """The verdict follows the small-step measurement: planting a 'small' step that is in fact
    the large one (so both regimes have extra points) turns 'holds only under' into 'holds'."""
    monkeypatch.setattr(L1, "small_beta", lambda ex: ex)
    result = L1.check_strict(Context(quick=True), "dw1d")
    assert result.verdict == "holds" and result.measured["n_extra_G_small_beta"] == 4


def test_lemma1_sum_holds_at_a_shared_minimiser_and_rejects_the_erm_sum_minimiser(ctx):
    result = CLAIM["lemma1.sum"].check(ctx)
    assert result.verdict == "holds" and result.measured["M"] >= 2
    assert result.measured["precondition_met"] and result.measured["control_rejected_in_every_regime"]
    for r in result.measured["regimes"].values():
        assert r["grad_F_norm"] <= L1.GRAD_TOL and r["min_eig_hess_F"] > 0 and r["sphere_min_increase"] > 0
        assert r["control_grad_F_norm"] > 1e3 * L1.GRAD_TOL and r["control_max_task_grad"] > 1e-2
    assert result.measured["regimes"]["example"]["beta_lambda_max_tasks"] >= 1 > \
        result.measured["regimes"]["small"]["beta_lambda_max_tasks"]
    wrong = CLAIM["lemma1.sum"].check(ctx, at="erm_sum")
    assert wrong.verdict == "fails"
    # the counterexample point minimises the ERM sum (5) but is stationary for no single task
    shared, control = L1.sum_examples(ctx)
    pt = torch.tensor(wrong.counterexample["point"], dtype=torch.float64)
    assert control.family.gradient(pt).sum(0).norm().item() < 1e-10
    assert control.family.gradient(pt).norm(dim=1).min().item() > 1e-3


def test_lemma1_sum_objective_matches_a_per_task_loop():
    """F = sum_m L(theta - beta grad L_m(theta); D_m) from the closed forms, task by task."""
    shared, _ = L1.sum_examples(Context(quick=True))
    F = L1._sum_maml(shared)
    th = torch.tensor([0.3, 0.8], dtype=torch.float64)
    fam = shared.family
    inner = th - shared.beta_low * fam.gradient(th)                      # [M, d]
    expected = fam.value(inner).sum()                                   # task m at its own theta'_m
    assert F(th).item() == pytest.approx(expected.item(), rel=1e-13)


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


def test_autograd_search_of_G_finds_every_root_an_independent_solver_finds():
    """G on the 2-D double well (49 roots in the box): scipy's hybrid solver on the closed-form
    eq. (26) gradient and Hessian (an independent implementation of the same G) from 400 random
    starts as the oracle; the check's own autograd search must contain every root it finds."""
    ex = L1.EXAMPLES["dw2d"]
    ls = L1.landscape(ex, L1.grid_size(2, quick=True))
    rng = np.random.default_rng(1)
    oracle = []
    for s0 in rng.uniform(-2, 2, (400, 2)):
        r = scipy.optimize.root(lambda t: L1.maml_grad(ex, t)[0].numpy(), s0, tol=1e-14,
                                jac=lambda t: L1.maml_hess(ex, t)[0].numpy())
        if (r.success and np.abs(r.x).max() <= 2
                and L1.autograd_maml_grad(ex, r.x).norm().item() < L1.ROOT_TOL
                and all(np.linalg.norm(r.x - q) > 1e-6 for q in oracle)):
            oracle.append(r.x)
    assert len(ls.G) == 49 and len(oracle) >= 30
    for q in oracle:
        assert min(np.linalg.norm(np.subtract(p.point, q)) for p in ls.G) < 1e-8


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
    (lambda c: L1.check_a(c, "dw1d", outer="validation"), "outer"),
    (lambda c: L1.check_sum(c, at="nowhere"), "at"),
    (lambda c: L1.stationary_points(None, None, (1.0, -1.0), 1, 11), "box"),
    (lambda c: L1.stationary_points(None, None, (-1.0, 1.0), 3, 11), "dim"),
])
def test_lemma1_checks_reject_bad_arguments_naming_them(ctx, call, match):
    with pytest.raises(ValueError, match=match):
        call(ctx)
