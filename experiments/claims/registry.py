"""The claim registry: one entry per numerical claim of the paper, each with a verdict.

A claim is a :class:`Claim` (id, paper reference, statement in plain words,
tolerance, and a check).  A check is a function ``check(ctx) -> ClaimResult``
that measures and compares under an explicit tolerance; it never asserts and
never assumes the paper is right.  Adding a claim is adding one
:func:`register` call (usually as a decorator).

Verdicts:

* ``holds``: every measured value is within the stated tolerance of the claim;
* ``fails``: a counterexample was found (family, seed, point, numbers);
* ``holds only under``: holds under a stated condition and fails without it;
* ``inconclusive``: the measurement cannot tell the claim from its negation at this
  budget (a confidence interval straddling the threshold, or a test that a planted
  false version of the claim passes as well); ``condition`` says what it could not
  separate.  Never a polite "holds".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

VERDICTS = ("holds", "fails", "holds only under", "inconclusive")


@dataclass(frozen=True)
class ClaimResult:
    """What a check measured and what it concludes.

    id: the claim id (set by :func:`run_claims`).
    verdict: one of :data:`VERDICTS`.
    measured: named measured numbers (JSON-serialisable).
    tolerance: the tolerance the comparison used, in words with its numbers.
    summary: one sentence with the key numbers.
    condition: for ``holds only under``, the condition; for ``inconclusive``, what the
        measurement could not separate.
    counterexample: for ``fails``, where (family, seed, point) and the numbers.
    plots: file names of the plots written into the output folder.
    """

    verdict: str
    measured: dict[str, Any]
    tolerance: str
    summary: str
    condition: str | None = None
    counterexample: dict[str, Any] | None = None
    plots: tuple[str, ...] = ()
    id: str = ""
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if self.verdict == "fails" and not self.counterexample:
            raise ValueError("a 'fails' verdict needs its counterexample")
        if self.verdict == "holds only under" and not self.condition:
            raise ValueError("a 'holds only under' verdict needs its condition")
        if self.verdict == "inconclusive" and not self.condition:
            raise ValueError("an 'inconclusive' verdict needs to say what it could not separate "
                             "(condition)")


@dataclass
class Context:
    """What every check receives.

    quick: small sizes (the ``--quick`` budget).
    seed: base seed; checks derive all their randomness from it.
    out_dir: where plots go (None: no plots).
    memo: expensive computations shared by several claims, keyed by name.
    """

    quick: bool = True
    seed: int = 0
    out_dir: Path | None = None
    memo: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """Compute ``key`` once per run and share it between claims."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def rng(self, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *salt])

    def plot_path(self, name: str) -> Path | None:
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir / name


@dataclass(frozen=True)
class Claim:
    id: str
    reference: str
    statement: str
    check: Callable[[Context], ClaimResult]


REGISTRY: dict[str, Claim] = {}
PREFETCHERS: list[Callable[[Context, list[str]], None]] = []
"""Called with the selected claim ids before a run; may start work in the background
(registering a cleanup in ``ctx.cleanups``)."""


def register_prefetch(fn: Callable[[Context, list[str]], None]) -> None:
    PREFETCHERS.append(fn)


def register(id: str, reference: str, statement: str):
    """Decorator: add ``check`` to the registry under ``id``."""
    def deco(check: Callable[[Context], ClaimResult]) -> Callable[[Context], ClaimResult]:
        if id in REGISTRY:
            raise ValueError(f"claim id {id!r} registered twice")
        REGISTRY[id] = Claim(id, reference, statement, check)
        return check
    return deco


PAPER_ORDER = ("lemma1", "eq10", "eq30", "lemma2", "lemma3", "lemma4", "lemma5", "thm1", "multistep",
               "proof", "thm2", "thm3", "lemma6", "d1", "d2")
"""Reports list claims in the paper's order (by id prefix), then in registration order."""


def _order(claim: Claim) -> int:
    head = claim.id.split(".")[0]
    return PAPER_ORDER.index(head) if head in PAPER_ORDER else len(PAPER_ORDER)


def select(only: Iterable[str] | None = None) -> list[Claim]:
    """Claims whose id equals or starts with one of ``only`` (``lemma1`` selects ``lemma1.*``)."""
    claims = sorted(REGISTRY.values(), key=_order)
    if not only:
        return claims
    only = list(only)
    chosen = [c for c in claims if any(c.id == o or c.id.startswith(o + ".") for o in only)]
    unknown = [o for o in only if not any(c.id == o or c.id.startswith(o + ".") for c in claims)]
    if unknown:
        raise ValueError(f"unknown claim id(s) {', '.join(map(repr, unknown))}; "
                         f"known prefixes: {', '.join(sorted({c.id.split('.')[0] for c in claims}))}")
    return chosen


def start(claims: list[Claim], ctx: Context) -> None:
    """Give every prefetcher the selected ids (background work they may start)."""
    ids = [c.id for c in claims]
    for fn in PREFETCHERS:
        fn(ctx, ids)


def finish(ctx: Context) -> None:
    while ctx.cleanups:
        ctx.cleanups.pop()()


def run_claims(claims: list[Claim], ctx: Context) -> list[ClaimResult]:
    """Check ``claims`` in order (no report; see :func:`experiments.claims.verify`)."""
    start(claims, ctx)
    out = []
    try:
        for c in claims:
            t = time.perf_counter()
            result = c.check(ctx)
            out.append(replace(result, id=c.id, seconds=time.perf_counter() - t))
    finally:
        finish(ctx)
    return out


# ---------------------------------------------------------------------------
# small statistics shared by the checks


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares slope of log y against log x, with a confidence interval."""

    slope: float
    low: float
    high: float
    intercept: float
    n: int


def fit_loglog_slope(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> SlopeFit:
    """Slope of ``log y = a + b log x`` over replicated measurements.

    ``y`` has shape ``[seeds, len(x)]`` (or ``[len(x)]``); the slope is fitted
    per seed and the interval is a Student-t interval over seeds (with one
    seed, the OLS standard error of the pooled fit).
    """
    from scipy import stats

    x = np.asarray(x, dtype=float)
    y = np.atleast_2d(np.asarray(y, dtype=float))
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("log-log fit needs positive x and y")
    lx, ly = np.log(x), np.log(y)
    slopes, intercepts = [], []
    for row in ly:
        b, a = np.polyfit(lx, row, 1)
        slopes.append(b)
        intercepts.append(a)
    slopes = np.asarray(slopes)
    if len(slopes) > 1:
        sem = slopes.std(ddof=1) / math.sqrt(len(slopes))
        half = stats.t.ppf(0.5 + confidence / 2, len(slopes) - 1) * sem
    else:
        res = stats.linregress(lx, ly[0])
        half = stats.t.ppf(0.5 + confidence / 2, len(lx) - 2) * res.stderr
    b = float(slopes.mean())
    return SlopeFit(b, b - half, b + half, float(np.mean(intercepts)), len(slopes))
