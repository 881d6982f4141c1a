"""Data types of the proof checker: variables, steps, budgets and results.

A proof step of Abbas et al. (2022), Appendices B-D, is transcribed as a :class:`Step`:
``lhs <relation> rhs`` over a box of :class:`Var` (each with its own interval, which may depend
on earlier variables), plus the assumptions it may use, written out.  Steps about general
norms in R^d carry an :class:`ArrayForm` instead of sympy sides.  A step that cannot be written
as a checkable relation carries ``not_transcribable`` with the reason.

Everything here is frozen; checking a step (``engine.check_step``) returns a frozen
:class:`StepResult`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import sympy as sp

RELATIONS = ("==", "<=", "<", ">=", ">")
SCALES = ("linear", "log", "symlog")

VERIFIED = "verified"
NO_COUNTEREXAMPLE = "no counterexample found"
FALSE = "false"
NOT_TRANSCRIBABLE = "not transcribable"
TIMED_OUT = "timed out"
VERDICTS = (VERIFIED, NO_COUNTEREXAMPLE, FALSE, NOT_TRANSCRIBABLE, TIMED_OUT)

_STEP_ID = re.compile(r"^proof\.[a-z0-9]+\.(step|repair)\d+[a-z]?$")


def _as_expr(value) -> sp.Expr:
    return sp.sympify(value)


@dataclass(frozen=True)
class Var:
    """A real (or integer) variable with interval ``lo .. hi``.

    ``lo`` and ``hi`` are sympy expressions (``-oo``/``oo`` allowed) that may use variables
    declared before this one in the step.  ``scale`` tells the numerical search how to draw:
    ``log`` (log-uniform, needs ``lo >= 0``), ``linear`` or ``symlog`` (sign times log-uniform
    magnitude).  ``search`` is the numeric box used where a bound is infinite (or for the
    lower end of a log-scale variable whose ``lo`` is 0); the symbolic prover ignores it.
    """

    name: str
    lo: object = -sp.oo
    hi: object = sp.oo
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    scale: str = "linear"
    search: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lo", _as_expr(self.lo))
        object.__setattr__(self, "hi", _as_expr(self.hi))
        if not self.name.isidentifier():
            raise ValueError(f"Var name must be an identifier, got {self.name!r}")
        if self.scale not in SCALES:
            raise ValueError(f"Var {self.name}: scale must be one of {SCALES}, got {self.scale!r}")
        needs_box = self.lo == -sp.oo or self.hi == sp.oo or (self.scale == "log" and self.lo == 0)
        if needs_box and self.search is None:
            raise ValueError(f"Var {self.name}: an infinite or log-zero bound needs search=(lo, hi)")
        if self.search is not None:
            low, high = self.search
            if not low < high or (self.scale in ("log", "symlog") and low <= 0):
                raise ValueError(f"Var {self.name}: bad search box {self.search!r} for scale {self.scale}")
        if self.scale == "log" and self.lo.is_number and self.lo < 0:
            raise ValueError(f"Var {self.name}: log scale needs lo >= 0, got {self.lo}")

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, real=True)

    def describe(self) -> str:
        """Human-readable domain, e.g. ``0 < delta < 1`` or ``n >= 1, integer``."""
        left = "" if self.lo == -sp.oo else f"{sp.sstr(self.lo)} {'<' if self.lo_open else '<='} "
        right = "" if self.hi == sp.oo else f" {'<' if self.hi_open else '<='} {sp.sstr(self.hi)}"
        text = f"{left}{self.name}{right}" if (left or right) else f"{self.name} real"
        return text + (", integer" if self.integer else "")


@dataclass(frozen=True)
class ArrayForm:
    """A step about vectors/matrices in R^d, checked only numerically.

    ``build(z, d)`` maps a latent standard-normal vector ``z`` of length ``latent_size(d)`` to
    the named arrays (constructively: scales, directions, orthogonal bases); ``lhs`` and ``rhs``
    map those arrays to floats.  The search draws ``z`` at random for every ``d`` in ``dims``
    and then maximises the violation over ``z`` with Nelder-Mead.
    """

    family: str
    latent_size: Callable[[int], int]
    build: Callable[[np.ndarray, int], Mapping[str, np.ndarray]]
    lhs: Callable[[Mapping[str, np.ndarray]], float]
    rhs: Callable[[Mapping[str, np.ndarray]], float]
    dims: tuple[int, ...] = (1, 2, 3, 5, 10)


@dataclass(frozen=True)
class Step:
    """One transcribed proof step: ``lhs <relation> rhs`` for all points of the domain."""

    id: str
    location: str
    relation: str | None = None
    lhs: object = None
    rhs: object = None
    variables: tuple[Var, ...] = ()
    assumptions: tuple[str, ...] = ()
    constraints: tuple[sp.Basic, ...] = ()
    note: str = ""
    array_form: ArrayForm | None = None
    not_transcribable: str | None = None
    try_symbolic: bool = True

    def __post_init__(self) -> None:
        if not _STEP_ID.match(self.id):
            raise ValueError(f"step id must look like proof.<part>.stepK, got {self.id!r}")
        if self.not_transcribable is not None:
            return
        if self.relation not in RELATIONS:
            raise ValueError(f"{self.id}: relation must be one of {RELATIONS}, got {self.relation!r}")
        if self.array_form is not None:
            return
        if self.lhs is None or self.rhs is None:
            raise ValueError(f"{self.id}: lhs and rhs are required")
        for side in ("lhs", "rhs"):
            value = getattr(self, side)
            value = sp.ImmutableMatrix(value) if isinstance(value, sp.MatrixBase) else sp.sympify(value)
            object.__setattr__(self, side, value)
        self._validate_symbols()

    def _validate_symbols(self) -> None:
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.id}: duplicate variable names {names}")
        declared: set[sp.Symbol] = set()
        for var in self.variables:
            used = (var.lo.free_symbols | var.hi.free_symbols) - declared
            if used:
                raise ValueError(f"{self.id}: bounds of {var.name} use undeclared/later {used}")
            declared.add(var.symbol)
        matrix_lhs = isinstance(self.lhs, sp.MatrixBase)
        if matrix_lhs != isinstance(self.rhs, sp.MatrixBase):
            raise ValueError(f"{self.id}: lhs and rhs must both be scalars or both matrices")
        if matrix_lhs and self.relation != "==":
            raise ValueError(f"{self.id}: matrix steps must be identities, got {self.relation}")
        free = self.lhs.free_symbols | self.rhs.free_symbols
        for rel in self.constraints:
            free |= rel.free_symbols
        undeclared = {s for s in free - declared if not _is_bound_variable(self, s)}
        if undeclared:
            raise ValueError(f"{self.id}: undeclared symbols {sorted(map(str, undeclared))}")

    @property
    def symbols(self) -> tuple[sp.Symbol, ...]:
        return tuple(v.symbol for v in self.variables)


def _is_bound_variable(step: Step, symbol: sp.Symbol) -> bool:
    """True when ``symbol`` only occurs as an integration/summation dummy."""
    for side in (step.lhs, step.rhs):
        for node in sp.preorder_traversal(side):
            if isinstance(node, (sp.Integral, sp.Sum)) and symbol in node.variables:
                return True
    return False


MAX_STEP_SECONDS = 1e6
"""The largest per-step limit (11.6 days; the interval timer overflows far above it): beyond
it, ask for no limit."""


@dataclass(frozen=True)
class Budget:
    """How hard the numerical counterexample search works on one step.

    hypothesis_examples: draws for ``hypothesis.find`` (derandomised, no database).
    sweep_points: vectorised seeded draws from the same mixture of unit-cube distributions.
    optimizer_starts / optimizer_evals: Nelder-Mead restarts from the worst points and their
    function-evaluation cap.  mp_fallback_points: points re-evaluated in mpmath because float64
    overflowed.  array_points: random draws per dimension for ArrayForm steps.  confirmations:
    cap on mpmath confirmations of near-violations (tight inequalities have many).
    mp_dps: decimal digits for confirming a violation.  seed: numpy seed for the sweep.
    step_seconds: wall-clock limit on checking one step (``None``: no limit).  A step still
    running when it passes is stopped and reported ``timed out``: neither proved nor refuted,
    and the only verdict that depends on the machine's speed (see ``engine.check_step``).
    """

    name: str
    hypothesis_examples: int
    sweep_points: int
    optimizer_starts: int
    optimizer_evals: int
    mp_fallback_points: int
    array_points: int
    confirmations: int = 64
    mp_dps: int = 60
    seed: int = 20220717
    step_seconds: float | None = 300.0

    def __post_init__(self) -> None:
        limit = self.step_seconds
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not math.isfinite(limit) or not 0 < limit <= MAX_STEP_SECONDS):
            raise ValueError(f"Budget {self.name}: step_seconds must be a number of seconds in "
                             f"(0, {MAX_STEP_SECONDS:g}] or None (no limit), got {limit!r}")

    def describe(self) -> str:
        limit = "no step limit" if self.step_seconds is None else f"step limit {self.step_seconds:g} s"
        return (f"{self.name}: hypothesis {self.hypothesis_examples}, sweep {self.sweep_points}, "
                f"Nelder-Mead {self.optimizer_starts}x{self.optimizer_evals}, {limit}")


# Step limits: the slowest step takes 1.4 s under QUICK and 9.4 s under FULL (one process, the
# project's 2-core machine), so each limit is over 30x that: a slower machine never meets it, and
# a stuck step costs a minute of a CI run (five under FULL, the dataclass default) instead of
# hanging it.
QUICK = Budget("quick", hypothesis_examples=40, sweep_points=2000, optimizer_starts=2,
               optimizer_evals=120, mp_fallback_points=40, array_points=100, step_seconds=60.0)
FULL = Budget("full", hypothesis_examples=800, sweep_points=60_000, optimizer_starts=6,
              optimizer_evals=1200, mp_fallback_points=600, array_points=3000, confirmations=400)


@dataclass(frozen=True)
class Evaluation:
    """Both sides of a step at one point.

    ``point`` pairs each variable name with its value as a decimal string (for ArrayForm steps:
    the dimension, the latent vector and the arrays, as JSON text).  ``gap`` is ``lhs - rhs`` as
    a decimal string; ``violation`` is the oriented, scale-free margin
    ``(lhs - rhs) / (|lhs| + |rhs|)`` (sign flipped for ``>=``/``>``, absolute value for
    ``==``): positive means the relation fails (for strict relations, zero fails too).
    """

    point: tuple[tuple[str, str], ...]
    lhs: str
    rhs: str
    gap: str
    violation: float


@dataclass(frozen=True)
class StepResult:
    """Verdict on one step.  ``worst`` is the point closest to (or furthest into) violation."""

    step_id: str
    location: str
    relation: str | None
    verdict: str
    method: str
    budget: str
    evaluations: int
    region: tuple[str, ...]
    worst: Evaluation | None
    counterexample: Evaluation | None
    detail: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
