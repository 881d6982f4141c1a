"""thm1.alpha_low: the Theorem-1 rate with a constant (large) lower radius alpha_low."""

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from experiments.claims import rates as R
from experiments.claims.registry import REGISTRY, VERDICTS, Context
from experiments.claims.sweeps import (SweepResult, SweepSpec, run_alpha_low_sweep, run_sweep,
                                       run_sweep_reference, run_table)

SWEEP_RTOL = 1e-10
"""Batched closed form against the autograd reference, float64: only summation order differs."""
SLOPE_ATOL = 1e-12
"""Two float64 computations of the same least-squares slope."""


@pytest.fixture(scope="module")
def quick_ctx():
    """One quick-budget run of the sweeps, shared by the tests that read real measurements."""
    ctx = Context(quick=True)
    R.check_alpha_low(ctx)
    return ctx


def _planted_ctx(slope, spread, odd=None):
    """Sweeps whose curves decay like T^slope (per-seed slopes spread by +-spread).

    ``odd = (family, sigma, alpha_low, slope, spread)`` plants a different decay there.
    """
    size = R.ALPHA_LOW_FULL
    T = np.asarray(size["horizons"], dtype=float)
    seeds = size["seeds"]

    def result(family, sigma, a, b, s):
        spec = SweepSpec(family=family, sigma=sigma, variants=R.ALPHA_LOW_VARIANTS, alpha_low=a,
                         **size)
        curve = T[:, None] ** (b + s * np.linspace(-1, 1, seeds))[None, :]
        avg = np.broadcast_to(curve, (1, len(R.ALPHA_LOW_VARIANTS), len(T), seeds)).copy()
        return SweepResult(spec, avg, avg.copy(), 0.0, 0)

    sweeps = {}
    for f, sig in R.COMBOS:
        sweeps[(f, sig)] = {}
        for a in R.ALPHA_LOWS:
            planted = odd is not None and odd[:3] == (f, sig, a)
            b, s = (odd[3], odd[4]) if planted else (slope, spread)
            sweeps[(f, sig)][a] = result(f, sig, a, b, s)
    return Context(quick=False, memo={"alpha_low_sweeps": sweeps})


def test_claim_is_registered_with_its_reference():
    claim = REGISTRY["thm1.alpha_low"]
    assert "alpha_low = O(1)" in claim.reference and "Theorem 1" in claim.reference


def test_claim_runs_at_quick_budget_and_its_verdict_follows_its_intervals(quick_ctx):
    r = R.check_alpha_low(quick_ctx)
    assert r.verdict in VERDICTS
    fits = r.measured["fits"]
    judged = [a for a in R.ALPHA_LOWS if a > 0]
    assert max(judged) >= 10
    assert len(fits) == len(R.COMBOS) * len(R.ALPHA_LOW_VARIANTS) * len(judged)
    assert {f["alpha_low"] for f in fits.values()} == set(judged)
    line = R.CLAIMED_EXPONENT + R.SLOPE_TOL
    above = [k for k, f in fits.items() if f["ci_low"] > line]
    straddle = [k for k, f in fits.items() if f["ci_low"] <= line < f["ci_high"]]
    expected = "fails" if above else "inconclusive" if straddle else "holds"
    assert r.verdict == expected
    assert r.measured["unresolved"] == sorted(straddle)
    assert r.measured["horizons"] == list(R.ALPHA_LOW_QUICK["horizons"])


def test_level_ratios_are_taken_against_alpha_low_zero(quick_ctx):
    r = R.check_alpha_low(quick_ctx)
    assert "{" not in r.summary and "level x" in r.summary and "alpha_low=10:" in r.summary
    for lv in r.measured["levels"].values():
        assert lv["ratio_first_T"]["0"] == 1.0 and lv["ratio_last_T"]["0"] == 1.0
    sweeps = quick_ctx.memo["alpha_low_sweeps"]
    by_alpha = sweeps[("quadratic", 0.0)]
    lv = r.measured["levels"]["quadratic, exact oracle, sharp-low"]
    m10, m0 = (by_alpha[a].curve("theorem", "sharp-low").mean(0) for a in (10.0, 0.0))
    assert lv["ratio_first_T"]["10"] == pytest.approx(m10[0] / m0[0], rel=1e-12)
    assert lv["excess"]["10"] == pytest.approx((m10 - m0).tolist(), rel=1e-12)


def test_planted_slower_exponent_does_not_hold_on_real_measurements(quick_ctx):
    r = R.check_alpha_low(quick_ctx, claimed=-1.0)
    assert r.verdict == "fails"
    cx = r.counterexample
    assert {"family", "alpha_low", "seed", "ci_low", "ci_high", "variant"} <= set(cx)
    assert cx["ci_low"] > -1.0 + R.SLOPE_TOL


@pytest.mark.parametrize("odd, verdict", [
    (None, "holds"),
    (("tanh", R.SIGMA, 3.0, -0.4, 0.2), "inconclusive"),
    (("quadratic", 0.0, 10.0, -0.2, 0.02), "fails"),
])
def test_verdict_follows_where_the_planted_interval_lies(odd, verdict):
    r = R.check_alpha_low(_planted_ctx(-0.5, 0.01, odd))
    assert r.verdict == verdict
    if verdict == "inconclusive":
        assert "alpha_low=3" in r.condition and "tanh, sigma=0.5" in r.condition
    if verdict == "fails":
        cx = r.counterexample
        assert (cx["family"], cx["sigma"], cx["alpha_low"]) == ("quadratic", 0.0, 10.0)
        assert cx["ci_low"] > R.CLAIMED_EXPONENT + R.SLOPE_TOL


def test_planted_exponent_flips_clean_planted_data_to_fails():
    assert R.check_alpha_low(_planted_ctx(-0.5, 0.01), claimed=-1.0).verdict == "fails"


def test_alpha_low_grid_runs_each_radius_as_its_own_sweep_would():
    spec = SweepSpec(horizons=(20, 40, 80), seeds=2, variants=R.ALPHA_LOW_VARIANTS,
                     alpha_lows=(0.0, 3.0))
    grid = run_alpha_low_sweep(spec)
    for a, r in grid.items():
        alone = run_sweep(replace(spec, alpha_low=a, alpha_lows=()))
        assert r.spec == alone.spec
        np.testing.assert_allclose(r.avg_sq_grad, alone.avg_sq_grad, rtol=SWEEP_RTOL)
    assert not np.allclose(grid[0.0].avg_sq_grad, grid[3.0].avg_sq_grad)


def test_slope_fit_agrees_with_an_independent_computation():
    """Reference runs (autograd core, one iteration at a time) and a by-hand OLS + t interval."""
    spec = SweepSpec(horizons=(20, 40, 80), seeds=3, variants=("sharp-low",),
                     alpha_lows=(0.0, 10.0))
    grid = run_alpha_low_sweep(spec)
    table = run_table(spec)
    runs = np.flatnonzero(table["alpha_low"] == 10.0)       # horizon-major, then seed
    ref = np.array([run_sweep_reference(spec, int(i)) for i in runs]).reshape(3, 3).T
    batched = grid[10.0].curve("theorem", "sharp-low")
    np.testing.assert_allclose(batched, ref, rtol=SWEEP_RTOL)

    lx, ly = np.log(np.asarray(spec.horizons, float)), np.log(ref)
    dx = lx - lx.mean()
    slopes = (dx * (ly - ly.mean(1, keepdims=True))).sum(1) / (dx ** 2).sum()
    half = stats.t.ppf(0.975, len(slopes) - 1) * slopes.std(ddof=1) / math.sqrt(len(slopes))
    fit = R._fit(grid[10.0], "theorem", "sharp-low")
    assert fit["slope"] == pytest.approx(slopes.mean(), abs=SLOPE_ATOL)
    assert fit["ci_low"] == pytest.approx(slopes.mean() - half, abs=SLOPE_ATOL)
    assert fit["ci_high"] == pytest.approx(slopes.mean() + half, abs=SLOPE_ATOL)


def test_default_spec_table_is_unchanged_by_the_grid_field():
    spec = SweepSpec(horizons=(10, 20), seeds=2)
    table = run_table(spec)
    assert len(table["T"]) == len(spec.variants) * 2 * 2
    assert set(np.unique(table["alpha_low"])) == {0.0, spec.alpha_low}
    gridded = run_table(replace(spec, alpha_lows=(spec.alpha_low,)))
    for k in table:
        np.testing.assert_array_equal(table[k], gridded[k])


def test_grid_specs_are_validated_and_kept_out_of_run_sweep():
    with pytest.raises(ValueError, match="run_alpha_low_sweep"):
        run_sweep(SweepSpec(horizons=(10,), seeds=1, alpha_lows=(0.0, 1.0)))
    with pytest.raises(ValueError, match="repeat"):
        SweepSpec(alpha_lows=(1.0, 1.0))
    with pytest.raises(ValueError, match="-1"):
        SweepSpec(alpha_lows=(-1.0,))
    with pytest.raises(ValueError, match="non-empty"):
        run_alpha_low_sweep(SweepSpec())
