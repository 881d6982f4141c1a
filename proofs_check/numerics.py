"""Numerical helpers for the bound-versus-radius study.

``max_quadratic_on_ball`` computes the exact maximum of a quadratic over a Euclidean ball: the
inner maximisation of SAM (Abbas et al. 2022, eq. 6, and the max over ||eps|| <= alpha in
eq. 18) for a quadratic model of the loss.  ``coverage`` and ``coverage_verdict`` estimate how
often a high-probability bound (Thm 2/3: "with probability 1 - delta") actually holds, with an
exact Clopper-Pearson interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.optimize
import scipy.stats

SYMMETRY_TOLERANCE = 1e-10  # relative asymmetry of A accepted as round-off
HARD_CASE_TOLERANCE = 1e-12  # |component of b on the top eigenspace| / ||b|| treated as zero
SHRINK_STEPS = 80  # halvings (by 16) of lam - lam_top while looking for ||e(lam)|| >= radius


@dataclass(frozen=True)
class BallMaximum:
    """Maximiser and value of q(e) = 0.5 e^T A e + b^T e + c over ||e||_2 <= radius.

    ``multiplier`` is the Lagrange multiplier lam >= 0 of the ball constraint, with
    (lam I - A) e = b and lam I - A positive semidefinite at the maximiser.  ``hard_case``
    marks the degenerate case where b has no component on the top eigenvector of A and the
    maximiser is completed along that eigenvector.
    """

    maximiser: np.ndarray
    value: float
    multiplier: float
    on_boundary: bool
    hard_case: bool


def _quadratic(a: np.ndarray, b: np.ndarray, c: float, e: np.ndarray) -> float:
    return float(0.5 * e @ a @ e + b @ e + c)


def _validate(a, b, c, radius):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {a.shape}")
    if b.shape != (a.shape[0],):
        raise ValueError(f"b must have shape ({a.shape[0]},), got {b.shape}")
    scale = max(float(np.abs(a).max(initial=0.0)), 1.0)
    if float(np.abs(a - a.T).max(initial=0.0)) > SYMMETRY_TOLERANCE * scale:
        raise ValueError(f"A must be symmetric, max |A - A^T| = {np.abs(a - a.T).max()}")
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be finite and >= 0, got {radius}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.isfinite(c)):
        raise ValueError("A, b and c must be finite")
    return (a + a.T) / 2.0, b, float(c), float(radius)


def max_quadratic_on_ball(a, b, c, radius) -> BallMaximum:
    """Exact maximum of ``0.5 e^T A e + b^T e + c`` over ``||e||_2 <= radius`` (A symmetric).

    Trust-region subproblem for min -q: with A = V diag(w) V^T and beta = V^T b, a maximiser
    is e(lam) = V diag(1/(lam - w)) beta for the lam >= max(0, w_max) solving the secular
    equation ||e(lam)|| = radius (root of 1/||e(lam)|| - 1/radius, found by brentq), or the
    interior point e = -A^{-1} b when A is negative definite and that point is inside.  In the
    hard case (beta has no component on the top eigenspace and ||e(w_max)|| < radius) the
    maximiser is e(w_max) plus the top eigenvector scaled to reach the boundary.
    """
    a, b, c, radius = _validate(a, b, c, radius)
    dim = a.shape[0]
    if radius == 0 or dim == 0:
        return BallMaximum(np.zeros(dim), c, 0.0, False, False)
    w, v = np.linalg.eigh(a)
    beta = v.T @ b
    top = w[-1]
    candidates: list[BallMaximum] = []

    if top < 0:
        interior = -np.linalg.solve(a, b)
        if np.linalg.norm(interior) <= radius:
            candidates.append(BallMaximum(interior, _quadratic(a, b, c, interior), 0.0, False, False))

    floor = max(top, 0.0)
    b_norm = float(np.linalg.norm(b))
    top_space = np.isclose(w, top, rtol=0.0, atol=1e-12 * max(1.0, float(np.abs(w).max())))

    def step_length(lam: float) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.linalg.norm(beta / (lam - w)))

    # boundary solution: root of the secular equation 1/||e(lam)|| = 1/radius on (floor, oo)
    if b_norm > 0:
        gap = 1e-15 * max(1.0, abs(floor))
        for _ in range(SHRINK_STEPS):
            if not step_length(floor + gap) < radius:
                break
            gap /= 16.0
        low, high = floor + gap, floor + b_norm / radius + 1.0
        if step_length(low) >= radius and low > floor:
            lam = scipy.optimize.brentq(lambda x: 1.0 / step_length(x) - 1.0 / radius, low, high,
                                        xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
            e = v @ (beta / (lam - w))
            e *= radius / np.linalg.norm(e)
            candidates.append(BallMaximum(e, _quadratic(a, b, c, e), float(lam), True, False))

    # hard case: lam = floor, free component along the top eigenvector fills the ball
    partial = np.zeros(dim)
    rest = ~top_space
    partial[rest] = beta[rest] / (floor - w[rest])
    base = v @ partial
    slack = radius**2 - float(base @ base)
    if slack >= 0:
        direction = v[:, -1]
        hard = float(np.linalg.norm(beta[top_space])) <= HARD_CASE_TOLERANCE * max(b_norm, 1e-300)
        for sign in (1.0, -1.0):
            e = base + sign * np.sqrt(slack) * direction
            candidates.append(BallMaximum(e, _quadratic(a, b, c, e), float(floor), True, hard))
    if not candidates:
        raise RuntimeError(f"trust-region solve failed: eigenvalues {w}, radius {radius}")
    return max(candidates, key=lambda result: result.value)


class Coverage(NamedTuple):
    """Fraction of draws where a bound held, with a two-sided Clopper-Pearson interval."""

    estimate: float
    lower: float
    upper: float


def _as_bools(bound_holds) -> np.ndarray:
    holds = np.asarray(bound_holds)
    if holds.ndim != 1 or holds.size == 0:
        raise ValueError(f"bound_holds must be a non-empty 1-D array, got shape {holds.shape}")
    if holds.dtype != bool:
        raise ValueError(f"bound_holds must be booleans, got dtype {holds.dtype}")
    return holds


def coverage(bound_holds, confidence: float = 0.95) -> Coverage:
    """Estimate P(bound holds) from booleans; exact (Clopper-Pearson) interval at ``confidence``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    holds = _as_bools(bound_holds)
    n, x = holds.size, int(holds.sum())
    tail = (1.0 - confidence) / 2.0
    lower = 0.0 if x == 0 else float(scipy.stats.beta.ppf(tail, x, n - x + 1))
    upper = 1.0 if x == n else float(scipy.stats.beta.ppf(1.0 - tail, x + 1, n - x))
    return Coverage(x / n, lower, upper)


@dataclass(frozen=True)
class CoverageVerdict:
    """Observed coverage of a "with probability >= 1 - delta" bound, against its target.

    verdict: ``"below target"`` when the whole interval lies below 1 - delta (the bound fails
    more often than it claims), ``"consistent"`` otherwise; ``meets_target_significantly`` is
    True when the interval lies at or above the target.
    """

    coverage: Coverage
    target: float
    draws: int
    verdict: str
    meets_target_significantly: bool


def coverage_verdict(bound_holds, delta: float, confidence: float = 0.95) -> CoverageVerdict:
    """Compare the observed coverage of a bound with its promised 1 - delta."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    result = coverage(bound_holds, confidence)
    target = 1.0 - delta
    verdict = "below target" if result.upper < target else "consistent"
    return CoverageVerdict(result, target, int(np.asarray(bound_holds).size), verdict, result.lower >= target)
