"""The proof-step engine: planted false statements are caught, textbook truths are not flagged."""

from __future__ import annotations

import json

import mpmath
import numpy as np
import pytest
import sympy as sp

from proofs_check import (FALSE, NO_COUNTEREXAMPLE, NOT_TRANSCRIBABLE, VERIFIED, Budget, Var, array_claim,
                          check_step, claim, evaluate_array_step, evaluate_step, untranscribable)
from proofs_check.arrays import array_form, sq
from proofs_check.domains import between, count, positive, real
from proofs_check.search import _place_np, _unit_samples
from proofs_check.special import Chi2Sf

SMALL = Budget("test", hypothesis_examples=30, sweep_points=800, optimizer_starts=1, optimizer_evals=80,
               mp_fallback_points=10, array_points=60, confirmations=24)
REEVALUATION_DIGITS = 50  # independent sympy evalf re-check of counterexamples
NOT_FLAGGED = (VERIFIED, NO_COUNTEREXAMPLE)


def _reevaluate(step, evaluation):
    """Both sides at the reported point via sympy evalf (not the engine's lambdified code)."""
    subs = {v.symbol: sp.Float(dict(evaluation.point)[v.name], REEVALUATION_DIGITS) for v in step.variables}
    sides = []
    for side in (step.lhs, step.rhs):
        entries = list(side) if isinstance(side, sp.MatrixBase) else [side]
        sides.append([sp.N(e, REEVALUATION_DIGITS, subs=subs) for e in entries])
    return sides


def _violated(relation, lhs, rhs) -> bool:
    tolerance = sp.Float(10) ** -30
    pairs = list(zip(lhs, rhs))
    if relation == "==":
        return any(abs(l - r) > tolerance * (abs(l) + abs(r)) for l, r in pairs)
    (l, r), = pairs
    return {"<=": l > r, "<": l >= r, ">=": l < r, ">": l <= r}[relation]


def _assert_real_counterexample(step, result):
    assert result.verdict == FALSE
    lhs, rhs = _reevaluate(step, result.counterexample)
    assert _violated(step.relation, lhs, rhs), (result.counterexample, lhs, rhs)
    _, _, inside, violated = evaluate_step(step, dict(result.counterexample.point))
    assert inside and violated


a, b, x = real("a"), real("b"), positive("x")


def test_planted_false_square_of_sum_inequality_is_caught():
    step = claim("proof.test.step1", "planted", (a.symbol + b.symbol) ** 2, "<=", a.symbol**2 + b.symbol**2, [a, b])
    _assert_real_counterexample(step, check_step(step, SMALL))


def test_planted_false_log_inequality_is_caught():
    step = claim("proof.test.step2", "planted", sp.log(1 + x.symbol), ">=", x.symbol, [x])
    _assert_real_counterexample(step, check_step(step, SMALL))


def test_planted_false_identity_is_caught():
    step = claim("proof.test.step3", "planted", (a.symbol + b.symbol) ** 2, "==", a.symbol**2 + b.symbol**2, [a, b])
    _assert_real_counterexample(step, check_step(step, SMALL))


def test_strict_inequality_fails_at_equality():
    step = claim("proof.test.step4", "planted", a.symbol**2, ">", 0, [a])
    result = check_step(step, SMALL)
    _assert_real_counterexample(step, result)
    assert dict(result.counterexample.point)["a"] in ("0", "0.0")


def test_violation_only_at_tiny_or_huge_values_is_caught():
    tiny = claim("proof.test.step5", "planted", 1 / x.symbol, "<=", 10**6, [x])
    huge = claim("proof.test.step6", "planted", x.symbol, "<=", 10**7, [x])
    for step in (tiny, huge):
        _assert_real_counterexample(step, check_step(step, SMALL))


def test_counterexample_respects_a_dependent_box():
    s = positive("s")
    t = between("t", 0, s.symbol)
    step = claim("proof.test.step7", "planted", t.symbol, "<=", s.symbol / 2, [s, t])
    result = check_step(step, SMALL)
    _assert_real_counterexample(step, result)
    point = {k: mpmath.mpf(v) for k, v in result.counterexample.point}
    assert 0 <= point["t"] <= point["s"]


def test_true_identity_is_verified():
    step = claim("proof.test.step8", "true", (a.symbol + b.symbol) ** 2, "==",
                 a.symbol**2 + 2 * a.symbol * b.symbol + b.symbol**2, [a, b])
    assert check_step(step, SMALL).verdict == VERIFIED


def _textbook():
    u = [real(f"u{i}") for i in range(3)]
    v = [real(f"v{i}") for i in range(3)]
    p = [positive(f"p{i}") for i in range(3)]
    us, vs, ps = ([w.symbol for w in group] for group in (u, v, p))
    k, t = count("k"), positive("t", search=(1e-8, 1e3))
    y = Var("y", -1, sp.oo, scale="linear", search=(-1.0, 1e3))
    n = count("n", search=(1.0, 50.0))
    return {
        "cauchy-schwarz 2-D": (sum(a_ * b_ for a_, b_ in zip(us[:2], vs[:2])) ** 2, "<=",
                               sum(a_**2 for a_ in us[:2]) * sum(b_**2 for b_ in vs[:2]), u[:2] + v[:2]),
        "cauchy-schwarz 3-D": (sum(a_ * b_ for a_, b_ in zip(us, vs)) ** 2, "<=",
                               sum(a_**2 for a_ in us) * sum(b_**2 for b_ in vs), u + v),
        "young": ((us[0] + us[1]) ** 2, "<=", 2 * us[0] ** 2 + 2 * us[1] ** 2, u[:2]),
        "am-gm 2": (sp.sqrt(ps[0] * ps[1]), "<=", (ps[0] + ps[1]) / 2, p[:2]),
        "am-gm 3": (sp.cbrt(ps[0] * ps[1] * ps[2]), "<=", sum(ps) / 3, p),
        "log": (sp.log(1 + ps[0]), "<=", ps[0], p[:1]),
        "bernoulli": ((1 + y.symbol) ** n.symbol, ">=", 1 + n.symbol * y.symbol, [y, n]),
        "laurent-massart": (Chi2Sf(k.symbol + 2 * sp.sqrt(k.symbol * t.symbol) + 2 * t.symbol, k.symbol), "<=",
                            sp.exp(-t.symbol), [k, t]),
    }


@pytest.mark.parametrize("name", sorted(_textbook()))
def test_textbook_inequalities_are_not_flagged(name):
    lhs, relation, rhs, variables = _textbook()[name]
    step = claim("proof.test.step9", name, lhs, relation, rhs, variables)
    assert check_step(step, SMALL).verdict in NOT_FLAGGED


def test_cancellation_in_float64_is_not_a_counterexample():
    big = Var("X", 0, sp.oo, scale="log", search=(1.0, 1e12))
    step = claim("proof.test.step10", "true", sp.sqrt(big.symbol**2 + 1) - big.symbol, ">", 0, [big])
    assert check_step(step, SMALL).verdict in NOT_FLAGGED


def test_laurent_massart_tail_bound_holds_by_monte_carlo():
    rng = np.random.default_rng(7)
    draws = 200_000
    for k in (1, 3, 10, 50):
        chi2 = rng.chisquare(k, size=draws)
        for t in (0.1, 1.0, 3.0):
            threshold = k + 2 * np.sqrt(k * t) + 2 * t
            tail = np.mean(chi2 >= threshold)
            assert tail <= np.exp(-t) + 4 * np.sqrt(np.exp(-t) / draws), (k, t, tail)


def _vectors(lat, d):
    return {"a": lat.vector(d), "b": lat.vector(d)}


def test_array_step_catches_a_planted_false_norm_inequality():
    form = array_form("two vectors", _vectors, lambda v: sq(v["a"] + v["b"]), lambda v: sq(v["a"]) + sq(v["b"]))
    step = array_claim("proof.test.step11", "planted", "<=", form)
    result = check_step(step, SMALL)
    assert result.verdict == FALSE
    point = dict(result.counterexample.point)
    lhs, rhs = evaluate_array_step(step, int(point["d"]), np.array(json.loads(point["z"])))
    assert lhs > rhs


def test_array_step_does_not_flag_the_triangle_inequality():
    form = array_form("two vectors", _vectors, lambda v: float(np.linalg.norm(v["a"] + v["b"])),
                      lambda v: float(np.linalg.norm(v["a"]) + np.linalg.norm(v["b"])))
    assert check_step(array_claim("proof.test.step12", "true", "<=", form), SMALL).verdict == NO_COUNTEREXAMPLE


def test_checks_are_deterministic():
    false_step = claim("proof.test.step13", "planted", sp.log(1 + x.symbol), ">=", x.symbol, [x])
    open_step = claim("proof.test.step14", "true", sp.log(1 + x.symbol) ** 2, "<=", x.symbol**2 + x.symbol, [x],
                      try_symbolic=False)
    for step in (false_step, open_step):
        assert check_step(step, SMALL) == check_step(step, SMALL)


def test_untranscribable_step_keeps_its_reason():
    result = check_step(untranscribable("proof.test.step15", "somewhere", "no relation"), SMALL)
    assert result.verdict == NOT_TRANSCRIBABLE and result.detail == "no relation"


@pytest.mark.parametrize("kwargs, message", [
    (dict(id="lemma1.step1"), "lemma1.step1"),
    (dict(relation="=<"), "=<"),
    (dict(rhs=sp.Symbol("zz", real=True)), "zz"),
])
def test_malformed_steps_are_rejected_with_the_value(kwargs, message):
    base = dict(id="proof.test.step16", location="x", lhs=a.symbol, relation="<=", rhs=b.symbol, variables=[a, b])
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        claim(base["id"], base["location"], base["lhs"], base["relation"], base["rhs"], base["variables"])


def test_unbounded_variable_needs_a_search_box():
    with pytest.raises(ValueError, match="search"):
        Var("q", 0, sp.oo)


def test_unit_draws_reach_both_ends_and_the_search_box_extremes():
    units = _unit_samples(np.random.default_rng(0), 20_000, 1)[:, 0]
    assert units.min() < 1e-12 and units.max() > 1 - 1e-12
    assert np.any(units == 0.0) and np.any(units == 1.0)
    radius = positive("r")
    values = _place_np(units, np.zeros_like(units), np.full_like(units, np.inf), radius)
    assert values[values > 0].min() < 1e-7 and values.max() > 1e7
