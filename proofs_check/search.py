"""Numerical counterexample search over the stated domain of a step.

Every point is produced from a vector ``u`` in the unit cube, one coordinate per variable, in
declaration order: coordinate ``i`` is mapped into variable ``i``'s interval (evaluated at the
earlier coordinates) on a linear, log or signed-log scale, with exact endpoints at ``u = 0, 1``
for closed ends, rounding for integers and a small nudge inside open ends.  Unit coordinates come
from a mixture that reaches both ends hard (``10**-14`` from either side).

Three searchers share one tracker:

1. a seeded vectorised sweep (numpy ``default_rng``) in float64;
2. ``hypothesis.find`` over the unit cube (``derandomize=True``, no example database), which
   also shrinks the first violation it sees towards ``u = 0``;
3. Nelder-Mead (scipy) maximising the violation score from the worst points seen so far,
   in logit coordinates.

Float64 only ranks points.  A point is reported as a counterexample only after it has been
recomputed from its ``u`` in mpmath (``Budget.mp_dps`` digits, bounds included) and violates
the relation there and again at twice the precision with the same gap (relative change below
``STABLE_GAP``), so cancellation artefacts are never reported.  Non-strict relations and
identities need a relative violation above ``CONFIRM_TOLERANCE``; strict ones fail at equality.
Points where float64 overflows are re-evaluated in mpmath (up to
``Budget.mp_fallback_points`` of them, memoised), so ``exp(4 n / k)`` with ``n = 10**6`` is
searched too; the rest are counted as skipped.  Points where both sides underflow to 0 are not
confirmed for non-strict relations.  A counterexample is then simplified greedily (snap to
0, +-1, +-2, 0.5, ..., to a closed bound, or round to few significant digits) while it stays a
confirmed violation inside the domain, and is finally written with 40 (else ``mp_dps``) digits.
"""

from __future__ import annotations

import heapq
import json
import zlib
from dataclasses import dataclass

import mpmath
import numpy as np
import scipy.optimize
import scipy.special
import sympy as sp
from hypothesis import HealthCheck, Phase, Verbosity, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from .special import MPMATH_FUNCTIONS, NUMPY_FUNCTIONS
from .spec import Budget, Evaluation, Step, Var

CANDIDATE_TOLERANCE = 1e-9  # float64 scores above -this are re-checked in mpmath
CONFIRM_TOLERANCE = 1e-30  # relative margin at Budget.mp_dps digits that counts as violation
STABLE_GAP = 1e-6  # a confirmed gap may move at most this much (relative) when dps doubles
ARRAY_TOLERANCE = 1e-9  # ArrayForm steps stay in float64 (norms, SVD): round-off is ~1e-15
NEAR_END_DECADES = 14.0  # the unit mixture reaches 10**-14 from either end
_MIXTURE = (0.55, 0.2, 0.2, 0.05)  # uniform, near 0, near 1, exact {0, 1/2, 1}
MAX_VIOLATIONS = 8  # stop confirming sweep/optimizer candidates once this many are confirmed
CONFIRMS_PER_BATCH = 4  # mpmath confirmations per scored batch (the most violating first)


# ---------------------------------------------------------------------------------------------
# scoring


def _oriented(relation: str, lhs, rhs):
    """(gap, scale): gap > 0 means the relation fails (gap >= 0 for strict relations)."""
    if relation in ("<=", "<"):
        return lhs - rhs, abs(lhs) + abs(rhs)
    if relation in (">=", ">"):
        return rhs - lhs, abs(lhs) + abs(rhs)
    return abs(lhs - rhs), abs(lhs) + abs(rhs)


def _is_violation(relation: str, score: float, tolerance: float) -> bool:
    """Strict relations fail at equality, so no slack is granted there (a float64 *candidate*
    still passes ``-tolerance``); non-strict relations and identities fail beyond ``tolerance``."""
    if relation in ("<", ">"):
        return score >= -tolerance
    return score > tolerance


def _mp_score(relation: str, lhs_entries, rhs_entries):
    gaps, scales = zip(*(_oriented(relation, l, r) for l, r in zip(lhs_entries, rhs_entries)))
    gap = max(gaps)
    scale = max(abs(x) for x in lhs_entries) + max(abs(x) for x in rhs_entries)
    return gap, (mpmath.mpf(0) if scale == 0 else gap / scale)


# ---------------------------------------------------------------------------------------------
# compilation


def _lambdify(args, expr, backend: str):
    modules = [NUMPY_FUNCTIONS, "numpy"] if backend == "numpy" else [MPMATH_FUNCTIONS, "mpmath"]
    return sp.lambdify(args, expr, modules=modules)


def _entries(side) -> list:
    return list(side) if isinstance(side, sp.MatrixBase) else [side]


class _Compiled:
    """Float64 and mpmath versions of a step's bounds, sides and constraints."""

    def __init__(self, step: Step, dps: int):
        self.step = step
        self.vars = step.variables
        self.dps = dps
        symbols = step.symbols
        self.bounds_mp = [
            (_lambdify(symbols[:i], v.lo, "mpmath"), _lambdify(symbols[:i], v.hi, "mpmath"))
            for i, v in enumerate(self.vars)
        ]
        pairs = list(zip(_entries(step.lhs), _entries(step.rhs)))
        self.sides_mp = [(_lambdify(symbols, l, "mpmath"), _lambdify(symbols, r, "mpmath")) for l, r in pairs]
        self.constraints_mp = [
            (_lambdify(symbols, c.lhs - c.rhs, "mpmath"), c.rel_op) for c in step.constraints
        ]
        try:
            self.bounds_np = [
                (_lambdify(symbols[:i], v.lo, "numpy"), _lambdify(symbols[:i], v.hi, "numpy"))
                for i, v in enumerate(self.vars)
            ]
            self.sides_np = [(_lambdify(symbols, l, "numpy"), _lambdify(symbols, r, "numpy")) for l, r in pairs]
            self.constraints_np = [
                (_lambdify(symbols, c.lhs - c.rhs, "numpy"), c.rel_op) for c in step.constraints
            ]
            self.float_path = True
        except NotImplementedError:  # e.g. an unevaluated Integral: mpmath only
            self.float_path = False

    # ---- unit cube -> point (float64, vectorised) -------------------------------------------

    def points_np(self, units: np.ndarray):
        """Map (N, m) unit vectors to (N, m) points; returns (points, valid, overflow)."""
        count = units.shape[0]
        points = np.zeros_like(units)
        valid = np.ones(count, dtype=bool)
        overflow = np.zeros(count, dtype=bool)
        with np.errstate(all="ignore"):
            for i, var in enumerate(self.vars):
                columns = [points[:, j] for j in range(i)]
                lo = np.broadcast_to(np.asarray(self.bounds_np[i][0](*columns), dtype=float), (count,))
                hi = np.broadcast_to(np.asarray(self.bounds_np[i][1](*columns), dtype=float), (count,))
                overflow |= (~np.isfinite(lo) & (var.lo != -sp.oo)) | (~np.isfinite(hi) & (var.hi != sp.oo))
                overflow |= np.isnan(lo) | np.isnan(hi)
                points[:, i] = _place_np(units[:, i], lo, hi, var)
                valid &= _inside_np(points[:, i], lo, hi, var)
            for function, op in self.constraints_np:
                valid &= _holds(np.asarray(function(*points.T), dtype=float), op)
        return points, valid, overflow

    def scores_np(self, units: np.ndarray):
        """Scores for (N, m) unit vectors: nan where float64 cannot tell (overflow/undefined)."""
        points, valid, overflow = self.points_np(units)
        count = units.shape[0]
        gap = np.full(count, -np.inf)
        lhs_max = np.zeros(count)
        rhs_max = np.zeros(count)
        with np.errstate(all="ignore"):
            columns = list(points.T)
            for lhs_fn, rhs_fn in self.sides_np:
                lhs = np.broadcast_to(np.asarray(lhs_fn(*columns), dtype=float), (count,))
                rhs = np.broadcast_to(np.asarray(rhs_fn(*columns), dtype=float), (count,))
                entry_gap, _ = _oriented(self.step.relation, lhs, rhs)
                gap = np.maximum(gap, entry_gap)
                lhs_max = np.maximum(lhs_max, np.abs(lhs))
                rhs_max = np.maximum(rhs_max, np.abs(rhs))
            scale = lhs_max + rhs_max
            # both sides exactly 0: equality, which only a strict relation can violate; for the
            # others rank it just below the candidate threshold (it may be float underflow, and
            # confirming every underflowed point in mpmath would eat the budget)
            both_zero = 0.0 if self.step.relation in ("<", ">") else -2 * CANDIDATE_TOLERANCE
            scores = np.where(scale == 0, both_zero, gap / np.where(scale == 0, 1.0, scale))
        scores = np.where(valid, scores, -np.inf)
        unknown = (overflow | ~np.isfinite(scores)) & ~(~valid & ~overflow)
        scores = np.where(unknown, np.nan, scores)
        return scores

    # ---- mpmath ------------------------------------------------------------------------------

    def point_mp(self, unit) -> list | None:
        """Point for one unit vector, computed in mpmath; None when the box is empty there."""
        with mpmath.workdps(self.dps):
            values: list = []
            for i, var in enumerate(self.vars):
                lo, hi = self.bounds_at(i, values)
                if lo is None or hi is None:
                    return None
                value = _place_mp(mpmath.mpf(float(unit[i])), lo, hi, var)
                if value is None:
                    return None
                values.append(value)
            return values if self.in_domain(values) else None

    def bounds_at(self, index: int, values):
        """Interval of variable ``index`` given the earlier values (None, None if undefined)."""
        try:
            lo, hi = (_real(f(*values[:index])) for f in self.bounds_mp[index])
        except (ZeroDivisionError, ValueError, OverflowError, TypeError):
            return None, None
        return lo, hi

    def in_domain(self, values) -> bool:
        with mpmath.workdps(self.dps):
            for i, var in enumerate(self.vars):
                lo, hi = self.bounds_at(i, values)
                if lo is None or hi is None or not _inside_mp(values[i], lo, hi, var):
                    return False
            return all(_holds_mp(_real(function(*values)), op) for function, op in self.constraints_mp)

    def sides_at(self, values, dps: int | None = None):
        """Both sides (lists of entries) in mpmath, or None where undefined/complex."""
        with mpmath.workdps(dps or self.dps):
            lhs, rhs = [], []
            for lhs_fn, rhs_fn in self.sides_mp:
                try:
                    left, right = _real(lhs_fn(*values)), _real(rhs_fn(*values))
                except (ZeroDivisionError, ValueError, OverflowError, TypeError, mpmath.libmp.NoConvergence):
                    return None
                if left is None or right is None:
                    return None
                lhs.append(left)
                rhs.append(right)
            return lhs, rhs

    def score_mp(self, values) -> float:
        sides = self.sides_at(values)
        if sides is None:
            return -np.inf
        with mpmath.workdps(self.dps):
            _, score = _mp_score(self.step.relation, *sides)
        return float(score)

    def violates(self, values) -> bool:
        """Confirmed violation: fails at ``dps`` and at ``2 dps`` digits with the same gap.

        The second evaluation rules out cancellation artefacts (a gap of 1e-61 that is pure
        round-off moves when the precision doubles; a real gap does not).
        """
        measured = []
        for dps in (self.dps, 2 * self.dps):
            with mpmath.workdps(dps):
                sides = self.sides_at(values, dps)
                if sides is None:
                    return False
                gap, score = _mp_score(self.step.relation, *sides)
                strict = self.step.relation in ("<", ">")
                if not _is_violation(self.step.relation, float(score), 0.0 if strict else CONFIRM_TOLERANCE):
                    return False
                measured.append(gap)
        with mpmath.workdps(2 * self.dps):
            low, high = measured
            return abs(high - low) <= STABLE_GAP * abs(high)

    def evaluation(self, values) -> Evaluation:
        sides = self.sides_at(values)
        with mpmath.workdps(self.dps):
            lhs, rhs = sides
            gap, score = _mp_score(self.step.relation, lhs, rhs)
            signed = [l - r for l, r in zip(lhs, rhs)]
            return Evaluation(
                point=tuple((v.name, _text(x, self.dps)) for v, x in zip(self.vars, values)),
                lhs=_text_entries(lhs),
                rhs=_text_entries(rhs),
                gap=_text_entries(signed),
                violation=float(score),
            )


def _text(value, digits: int = 40) -> str:
    return mpmath.nstr(value, digits, strip_zeros=True)


def _text_entries(entries) -> str:
    if len(entries) == 1:
        return _text(entries[0], 20)
    return "[" + ", ".join(_text(e, 20) for e in entries) + "]"


def _real(value):
    """mpmath real number, or None for complex/nan results."""
    if isinstance(value, mpmath.mpc):
        if value.imag != 0:
            return None
        value = value.real
    value = mpmath.mpf(value)
    return None if mpmath.isnan(value) else value


def _holds(values: np.ndarray, op: str) -> np.ndarray:
    return {"<": values < 0, "<=": values <= 0, ">": values > 0, ">=": values >= 0,
            "==": values == 0, "!=": values != 0}[op]


def _holds_mp(value, op: str) -> bool:
    if value is None:
        return False
    return {"<": value < 0, "<=": value <= 0, ">": value > 0, ">=": value >= 0,
            "==": value == 0, "!=": value != 0}[op]


# ---------------------------------------------------------------------------------------------
# placing a unit coordinate inside an interval


def _ends_np(lo, hi, var: Var):
    """Effective finite search interval [a, b] for arrays of bounds."""
    low, high = var.search if var.search is not None else (0.0, 1.0)
    if var.scale == "log":
        a = np.where(np.isfinite(lo) & (lo > 0), lo, low)
        b = np.where(np.isfinite(hi), hi, a * (high / low))
    else:
        width = high - low
        a = np.where(np.isfinite(lo), lo, np.where(np.isfinite(hi), hi - width, low))
        b = np.where(np.isfinite(hi), hi, np.where(np.isfinite(lo), lo + width, high))
    return a, b


def _place_np(u, lo, hi, var: Var):
    a, b = _ends_np(lo, hi, var)
    if var.scale == "log":
        value = np.exp(np.log(a) + u * (np.log(b) - np.log(a)))
    elif var.scale == "symlog":
        low, high = var.search
        magnitude = np.exp(np.log(low) + np.abs(2 * u - 1) * (np.log(high) - np.log(low)))
        value = np.where(u < 0.5, -magnitude, np.where(u > 0.5, magnitude, 0.0))
    else:
        value = a + u * (b - a)
    if var.lo != -sp.oo and not var.lo_open:
        value = np.where(u == 0, lo, value)
    if var.hi != sp.oo and not var.hi_open:
        value = np.where(u == 1, hi, value)
    if var.integer:
        value = np.floor(value + 0.5)
    value = np.clip(value, np.where(np.isfinite(lo), lo, -np.inf), np.where(np.isfinite(hi), hi, np.inf))
    if var.lo_open:
        value = np.where(value <= lo, lo + 1 if var.integer else np.nextafter(lo, np.inf), value)
    if var.hi_open:
        value = np.where(value >= hi, hi - 1 if var.integer else np.nextafter(hi, -np.inf), value)
    return value


def _inside_np(value, lo, hi, var: Var):
    above = value > lo if var.lo_open else value >= lo
    below = value < hi if var.hi_open else value <= hi
    inside = above & below & np.isfinite(value)
    if var.integer:
        inside &= value == np.floor(value)
    return inside


def _place_mp(u, lo, hi, var: Var):
    low, high = (mpmath.mpf(x) for x in (var.search if var.search is not None else (0.0, 1.0)))
    finite_lo, finite_hi = mpmath.isfinite(lo), mpmath.isfinite(hi)
    if var.scale == "log":
        a = lo if finite_lo and lo > 0 else low
        b = hi if finite_hi else a * (high / low)
        if a > b:
            return None
        value = mpmath.exp(mpmath.log(a) + u * (mpmath.log(b) - mpmath.log(a)))
    elif var.scale == "symlog":
        magnitude = mpmath.exp(mpmath.log(low) + abs(2 * u - 1) * (mpmath.log(high) - mpmath.log(low)))
        value = -magnitude if u < 0.5 else (magnitude if u > 0.5 else mpmath.mpf(0))
    else:
        width = high - low
        a = lo if finite_lo else (hi - width if finite_hi else low)
        b = hi if finite_hi else (lo + width if finite_lo else high)
        value = a + u * (b - a)
    if finite_lo and not var.lo_open and u == 0:
        value = lo
    if finite_hi and not var.hi_open and u == 1:
        value = hi
    if var.integer:
        value = mpmath.floor(value + mpmath.mpf(1) / 2)
    return _clamp_mp(value, lo, hi, var)


def _clamp_mp(value, lo, hi, var: Var):
    """Move ``value`` into the interval (closed ends: onto the end; open: just inside)."""
    nudge = mpmath.mpf(10) ** (-(mpmath.mp.dps // 2))  # open ends: stay clearly inside at this precision
    if mpmath.isfinite(lo) and (value < lo or (var.lo_open and value <= lo)):
        value = (mpmath.floor(lo) + 1 if var.integer else lo + nudge * max(abs(lo), 1)) if var.lo_open else (
            mpmath.ceil(lo) if var.integer else lo)
    if mpmath.isfinite(hi) and (value > hi or (var.hi_open and value >= hi)):
        value = (mpmath.ceil(hi) - 1 if var.integer else hi - nudge * max(abs(hi), 1)) if var.hi_open else (
            mpmath.floor(hi) if var.integer else hi)
    return value


def _inside_mp(value, lo, hi, var: Var) -> bool:
    if not mpmath.isfinite(value):
        return False
    above = value > lo if var.lo_open else value >= lo
    below = value < hi if var.hi_open else value <= hi
    return above and below and (not var.integer or value == mpmath.floor(value))


# ---------------------------------------------------------------------------------------------
# the search


@dataclass(frozen=True)
class SearchOutcome:
    """What the numerical search found: worst point, confirmed counterexample, effort."""

    worst: Evaluation | None
    counterexample: Evaluation | None
    evaluations: int
    undefined: int
    skipped: int
    region: tuple[str, ...]


def _unit_samples(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    kind = rng.choice(4, size=(count, size), p=_MIXTURE)
    uniform = rng.random((count, size))
    near = 10.0 ** (-NEAR_END_DECADES * rng.random((count, size)))
    exact = rng.choice(np.array([0.0, 0.5, 1.0]), size=(count, size))
    return np.select([kind == 0, kind == 1, kind == 2], [uniform, near, 1.0 - near], exact)


def _unit_strategy():
    return st.one_of(
        st.floats(0.0, 1.0),
        st.floats(-NEAR_END_DECADES, 0.0).map(lambda e: 10.0**e),
        st.floats(-NEAR_END_DECADES, 0.0).map(lambda e: 1.0 - 10.0**e),
        st.sampled_from((0.0, 0.5, 1.0)),
    )


class _Tracker:
    """Shared state of one search: worst points, pool of starts, confirmed violations."""

    def __init__(self, compiled: _Compiled, budget: Budget):
        self.compiled = compiled
        self.budget = budget
        self.evaluations = 0
        self.undefined = 0
        self.skipped = 0
        self.mp_left = budget.mp_fallback_points
        self.pool: list[tuple[float, tuple[float, ...]]] = []  # min-heap of the worst points
        self.pool_size = max(2 * budget.optimizer_starts, 8)
        self.confirmed: dict[tuple[float, ...], list | None] = {}
        self.violations: list[tuple[float, list]] = []
        self.confirmations_left = budget.confirmations
        self.fallback_scores: dict[tuple[float, ...], float] = {}

    def _remember(self, score: float, unit) -> None:
        item = (score, tuple(float(x) for x in unit))
        if item in self.pool:
            return
        if len(self.pool) < self.pool_size:
            heapq.heappush(self.pool, item)
        elif score > self.pool[0][0]:
            heapq.heapreplace(self.pool, item)

    def score_units(self, units: np.ndarray) -> np.ndarray:
        self.evaluations += units.shape[0]
        if self.compiled.float_path:
            scores = self.compiled.scores_np(units)
        else:
            scores = np.full(units.shape[0], np.nan)
        for index in np.flatnonzero(np.isnan(scores)):
            scores[index] = self._fallback(units[index])
        for score, unit in zip(scores, units):
            if np.isfinite(score):
                self._remember(float(score), unit)
        if len(self.violations) < MAX_VIOLATIONS:
            candidates = np.flatnonzero(scores >= -CANDIDATE_TOLERANCE)
            best_first = candidates[np.argsort(-scores[candidates], kind="stable")]
            for index in best_first[:CONFIRMS_PER_BATCH]:
                self.confirm(units[index])
        return scores

    def _fallback(self, unit) -> float:
        """mpmath score of a point float64 could not score (memoised: replays must agree)."""
        key = tuple(float(x) for x in unit)
        if key not in self.fallback_scores:
            if self.mp_left <= 0:
                self.skipped += 1
                return -np.inf
            self.mp_left -= 1
            values = self.compiled.point_mp(unit)
            score = -np.inf if values is None else self.compiled.score_mp(values)
            if not np.isfinite(score):
                self.undefined += 1
            self.fallback_scores[key] = score
        return self.fallback_scores[key]

    def confirm(self, unit) -> bool:
        """Recompute the point of ``unit`` in mpmath; record it if it violates the relation."""
        key = tuple(float(x) for x in unit)
        if key not in self.confirmed:
            if self.confirmations_left <= 0:
                return False
            self.confirmations_left -= 1
            values = self.compiled.point_mp(unit)
            violated = values is not None and self.compiled.violates(values)
            if violated:
                self.violations.append((self.compiled.score_mp(values), values))
            self.confirmed[key] = values if violated else None
        return self.confirmed[key] is not None


def _seed(budget: Budget, step_id: str) -> int:
    return budget.seed + zlib.crc32(step_id.encode())


def _sweep(tracker: _Tracker, size: int, rng: np.random.Generator) -> None:
    chunk = 4096
    remaining = tracker.budget.sweep_points
    while remaining > 0:
        count = min(chunk, remaining)
        tracker.score_units(_unit_samples(rng, count, size))
        remaining -= count


def _hypothesis(tracker: _Tracker, size: int):
    def violates(unit) -> bool:
        scores = tracker.score_units(np.asarray([unit], dtype=float))
        return bool(scores[0] >= -CANDIDATE_TOLERANCE) and tracker.confirm(unit)

    config = settings(
        max_examples=tracker.budget.hypothesis_examples,
        derandomize=True,
        database=None,
        deadline=None,
        verbosity=Verbosity.quiet,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    strategy = st.lists(_unit_strategy(), min_size=size, max_size=size)
    try:
        return find(strategy, violates, settings=config)
    except NoSuchExample:
        return None


def _nelder_mead(tracker: _Tracker, size: int) -> None:
    starts = sorted(tracker.pool, reverse=True)[: tracker.budget.optimizer_starts]
    for _, unit in starts:
        z0 = scipy.special.logit(np.clip(np.asarray(unit), 1e-15, 1 - 1e-15))

        def objective(z):
            score = tracker.score_units(scipy.special.expit(np.asarray([z])))[0]
            return -score if np.isfinite(score) else 1.0

        simplex = np.vstack([z0, z0 + 0.5 * np.eye(size)])
        scipy.optimize.minimize(
            objective, z0, method="Nelder-Mead",
            options={"maxfev": tracker.budget.optimizer_evals, "initial_simplex": simplex,
                     "xatol": 1e-12, "fatol": 1e-15},
        )
        if tracker.violations:
            return


def _worst_in_pool(compiled: _Compiled, tracker: _Tracker) -> Evaluation | None:
    """Re-rank the float64 pool in mpmath (float64 can misorder near-ties) and return the worst."""
    best = None
    for _, unit in sorted(tracker.pool, reverse=True):
        values = compiled.point_mp(unit)
        if values is None or compiled.sides_at(values) is None:
            continue
        score = compiled.score_mp(values)
        if best is None or score > best[0]:
            best = (score, values)
    return None if best is None else compiled.evaluation(best[1])


def _region(step: Step) -> tuple[str, ...]:
    parts = []
    for var in step.variables:
        text = var.describe()
        if var.search is not None:
            text += f"; searched {var.scale} in {var.search[0]:g}..{var.search[1]:g} where unbounded"
        elif var.scale != "linear":
            text += f"; {var.scale} scale"
        parts.append(text)
    for rel in step.constraints:
        parts.append(f"constraint {sp.sstr(rel)}")
    return tuple(parts)


def compile_step(step: Step, dps: int) -> _Compiled:
    """Float64/mpmath functions of a step (reusable across searches of the same step)."""
    return _Compiled(step, dps)


def search(step: Step, budget: Budget, compiled: _Compiled | None = None) -> SearchOutcome:
    """Look for a point of the domain where ``step`` fails; see the module docstring."""
    if compiled is None or compiled.step is not step or compiled.dps != budget.mp_dps:
        compiled = _Compiled(step, budget.mp_dps)
    tracker = _Tracker(compiled, budget)
    size = len(step.variables)
    rng = np.random.default_rng(_seed(budget, step.id))
    if size == 0:
        tracker.score_units(np.zeros((1, 0)))
    else:
        _sweep(tracker, size, rng)
        shrunk = _hypothesis(tracker, size) if budget.hypothesis_examples > 0 else None
        if not tracker.violations and budget.optimizer_starts > 0:
            _nelder_mead(tracker, size)
        if shrunk is not None:
            values = compiled.point_mp(shrunk)
            tracker.violations.insert(0, (compiled.score_mp(values), values))
    counterexample = None
    worst = None
    if tracker.violations:
        counterexample = compiled.evaluation(_simplify(compiled, tracker.violations[0][1]))
        worst = compiled.evaluation(max(tracker.violations, key=lambda item: item[0])[1])
    if worst is None:
        worst = _worst_in_pool(compiled, tracker)
    return SearchOutcome(worst, counterexample, tracker.evaluations, tracker.undefined, tracker.skipped,
                         _region(step))


# ---------------------------------------------------------------------------------------------
# simplifying a counterexample


_SIMPLE = ("0", "1", "2", "0.5", "3", "4", "10", "0.1", "100", "0.01", "1000")


def _complexity(value) -> int:
    return len(mpmath.nstr(value, mpmath.mp.dps, strip_zeros=True))


def _still_fails(compiled: _Compiled, values) -> bool:
    return compiled.in_domain(values) and compiled.violates(values)


def _reclamp(compiled: _Compiled, values, start: int) -> list:
    """Clamp the variables after ``start`` into their (possibly moved) intervals."""
    values = list(values)
    with mpmath.workdps(compiled.dps):
        for j in range(start + 1, len(values)):
            lo, hi = compiled.bounds_at(j, values)
            if lo is None or hi is None:
                return values
            values[j] = _clamp_mp(values[j], lo, hi, compiled.vars[j])
    return values


def _candidates(value, lo, hi, var: Var):
    for text in _SIMPLE:
        yield mpmath.mpf(text)
        if text != "0":
            yield -mpmath.mpf(text)
    if lo is not None and mpmath.isfinite(lo) and not var.lo_open:
        yield lo
    if hi is not None and mpmath.isfinite(hi) and not var.hi_open:
        yield hi
    yield mpmath.nint(value)
    for digits in (1, 2, 3, 4, 6, 8):
        yield mpmath.mpf(mpmath.nstr(value, digits))


def _simplify(compiled: _Compiled, values) -> list:
    """Greedy: replace coordinates by shorter numbers while the violation survives."""
    values = list(values)
    with mpmath.workdps(compiled.dps):
        for _ in range(3):
            changed = False
            for i, var in enumerate(compiled.vars):
                lo, hi = compiled.bounds_at(i, values)
                for candidate in _candidates(values[i], lo, hi, var):
                    if candidate == values[i] or _complexity(candidate) >= _complexity(values[i]):
                        continue
                    trial = _reclamp(compiled, values[:i] + [candidate] + values[i + 1:], i)
                    if _still_fails(compiled, trial):
                        values, changed = trial, True
                        break
            if not changed:
                break
        for digits in (40, compiled.dps):
            rounded = [mpmath.mpf(_text(v, digits)) for v in values]
            if _still_fails(compiled, rounded):
                return rounded
    return values


# ---------------------------------------------------------------------------------------------
# ArrayForm steps


def _array_score(form, relation: str, z: np.ndarray, d: int):
    with np.errstate(all="ignore"):
        arrays = form.build(z, d)
        lhs, rhs = float(form.lhs(arrays)), float(form.rhs(arrays))
    gap, scale = _oriented(relation, lhs, rhs)
    if not np.isfinite(gap) or not np.isfinite(scale):
        return -np.inf, lhs, rhs
    return (0.0 if scale == 0 else gap / scale), lhs, rhs


def _array_evaluation(form, relation: str, z: np.ndarray, d: int) -> Evaluation:
    score, lhs, rhs = _array_score(form, relation, z, d)
    arrays = form.build(z, d)
    point = [("d", str(d)), ("z", json.dumps([float(x) for x in z]))]
    point += [(name, json.dumps(np.asarray(a, dtype=float).round(12).tolist())) for name, a in arrays.items()]
    return Evaluation(tuple(point), repr(lhs), repr(rhs), repr(lhs - rhs), float(score))


def search_array(step: Step, budget: Budget) -> SearchOutcome:
    """Random latent draws for every dimension, then Nelder-Mead from the worst ones."""
    form, relation = step.array_form, step.relation
    rng = np.random.default_rng(_seed(budget, step.id))
    evaluations = 0
    best: list[tuple[float, int, np.ndarray]] = []
    for d in form.dims:
        size = form.latent_size(d)
        draws = []
        for _ in range(budget.array_points):
            z = 2.0 * rng.standard_normal(size)
            score, _, _ = _array_score(form, relation, z, d)
            draws.append((score, z))
            evaluations += 1
        draws.sort(key=lambda item: item[0], reverse=True)
        for score, z in draws[: budget.optimizer_starts]:
            result = scipy.optimize.minimize(
                lambda x: -_array_score(form, relation, x, d)[0], z, method="Nelder-Mead",
                options={"maxfev": budget.optimizer_evals, "xatol": 1e-12, "fatol": 1e-15},
            )
            evaluations += int(result.nfev)
            draws.append((-float(result.fun), result.x))
        top = max(draws, key=lambda item: item[0])
        best.append((top[0], d, top[1]))
    score, d, z = max(best, key=lambda item: item[0])
    worst = _array_evaluation(form, relation, z, d)
    failing = _is_violation(relation, score, ARRAY_TOLERANCE)
    return SearchOutcome(worst, worst if failing else None, evaluations, 0, 0,
                         (f"d in {list(form.dims)}", form.family))
