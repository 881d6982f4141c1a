"""thm1.rate / multistep.rate verdicts: holds, fails and inconclusive from where the slope interval lies."""

import numpy as np
import pytest

from experiments.claims import rates as R
from experiments.claims.registry import Context
from experiments.claims.sweeps import SCHEDULES, VARIANTS, SweepResult, SweepSpec

HORIZONS = (100, 215, 464, 1000, 2154, 4642, 10000)
SEEDS = 6


def _result(family, sigma, slope, spread, variants=tuple(VARIANTS), schedules=tuple(SCHEDULES),
            inner_steps=1, seed=0):
    """A sweep whose curves decay like T^slope, each seed's slope moved by up to +-spread."""
    spec = SweepSpec(family=family, sigma=sigma, horizons=HORIZONS, seeds=SEEDS, variants=variants,
                     schedules=schedules, inner_steps=inner_steps)
    T = np.asarray(HORIZONS, dtype=float)
    per_seed = slope + spread * np.linspace(-1, 1, SEEDS)
    curve = T[:, None] ** per_seed[None, :]                       # [horizons, seeds]
    avg = np.broadcast_to(curve, (len(schedules), len(variants), len(HORIZONS), SEEDS)).copy()
    return SweepResult(spec, avg, avg.copy(), 0.0, 0)


def _rate_ctx(slope, spread, odd=None):
    """``odd = (slope, spread)`` replaces the tanh, sigma=0.5 sweep."""
    memo = {"rate_sweeps": {(f, s): _result(f, s, slope, spread) for f, s in R.COMBOS}}
    if odd is not None:
        memo["rate_sweeps"][("tanh", R.SIGMA)] = _result("tanh", R.SIGMA, *odd)
    return Context(quick=True, memo=memo)


def _multistep_ctx(slope, spread):
    sweeps = {n: {s: _result("quadratic", s, slope, spread, variants=("maml", "sharp-both"),
                             schedules=("theorem",), inner_steps=n) for s in (0.0, R.SIGMA)}
              for n in R.MULTISTEP_N}
    return Context(quick=True, memo={"multistep_sweeps": sweeps})


def test_classify_fits_splits_at_the_threshold():
    line = R.CLAIMED_EXPONENT + R.SLOPE_TOL
    fits = {"below": {"ci_low": line - 0.2, "ci_high": line - 0.01},
            "edge": {"ci_low": line - 0.2, "ci_high": line},
            "straddle": {"ci_low": line - 0.05, "ci_high": line + 0.05},
            "above": {"ci_low": line + 0.01, "ci_high": line + 0.2}}
    bad, unresolved = R.classify_fits(fits, R.CLAIMED_EXPONENT)
    assert set(bad) == {"above"} and set(unresolved) == {"straddle"}


def test_rate_holds_only_when_every_interval_is_below_the_threshold():
    r = R.check_rate(_rate_ctx(-0.5, 0.01), "maml")
    assert r.verdict == "holds"
    assert all(f["ci_high"] <= -0.4 for f in r.measured["fits"].values())


def test_rate_with_a_straddling_interval_is_inconclusive_not_holds():
    r = R.check_rate(_rate_ctx(-0.5, 0.01, odd=(-0.4, 0.2)), "sharp-both")
    assert r.verdict == "inconclusive"
    assert "-0.4" in r.condition and "tanh, sigma=0.5" in r.condition
    assert r.measured["unresolved"] == ["tanh, sigma=0.5"]


def test_rate_fails_when_an_interval_lies_above_the_threshold():
    r = R.check_rate(_rate_ctx(-0.5, 0.01, odd=(-0.2, 0.02)), "sharp-low")
    assert r.verdict == "fails"
    assert r.counterexample["where"] == "tanh, sigma=0.5" and r.counterexample["ci_low"] > -0.4


def test_planted_exponent_flips_a_clean_rate_to_fails():
    ctx = _rate_ctx(-0.5, 0.01)
    assert R.check_rate(ctx, "maml", claimed=-1.0).verdict == "fails"


@pytest.mark.parametrize("slope, spread, verdict", [(-0.5, 0.01, "holds"), (-0.4, 0.2, "inconclusive"),
                                                    (-0.2, 0.02, "fails")])
def test_multistep_verdict_follows_the_interval(slope, spread, verdict):
    r = R.check_multistep(_multistep_ctx(slope, spread), 2)
    assert r.verdict == verdict
    if verdict == "inconclusive":
        assert "-0.4" in r.condition


def test_outside_with_only_straddling_intervals_is_inconclusive():
    r = R.check_outside(_rate_ctx(-0.5, 0.01, odd=(-0.4, 0.2)), "maml")
    assert r.verdict == "inconclusive" and "constant" in r.condition
    assert R.check_outside(_rate_ctx(-0.5, 0.01), "maml").verdict == "holds"
    assert R.check_outside(_rate_ctx(-0.5, 0.01, odd=(-0.2, 0.02)), "maml").verdict == "holds only under"
