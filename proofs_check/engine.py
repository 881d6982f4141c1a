"""Checking one transcribed step: screening search, sympy certificate, then full search.

``check_step(step, budget)`` returns a frozen :class:`~proofs_check.spec.StepResult` whose
verdict is one of

* ``verified``: sympy produced a certificate (see :mod:`proofs_check.symbolic`) and a short
  screening search (256 seeded draws, confirmed in mpmath) found nothing against it;
* ``no counterexample found``: no certificate, and the search of :mod:`proofs_check.search`
  under ``budget`` (recorded, with the searched region) found no violation; the worst point
  is reported;
* ``false``: a violation confirmed in mpmath at two precisions, simplified, with both sides;
* ``not transcribable``: the step carries a reason instead of a relation (or is written with
  abstract functions/integrals that only sympy can decide, and sympy could not);
* ``timed out``: the check was still running at ``budget.step_seconds`` of wall-clock time
  and was stopped there: neither proved nor refuted.  ``detail`` names the limit, the seconds
  spent and the function it was in when the limit passed.

Order: polynomial identities are decided exactly by sympy first; everything else gets the
screening search first, so that a false step never waits for a hopeless certificate.
A check never asserts and never edits the step.  Results are deterministic: the draws are
seeded from ``Budget.seed`` and the step id, hypothesis is derandomised without a database,
and the symbolic attempts are bounded by expression size, not by the clock.  The one exception
is the step limit, a guard against a sympy call that never returns: it is far above any
step's normal time (see ``spec.QUICK``), and ``timed out`` depends on the machine's speed.

The limit is a SIGALRM timer (``setitimer``) armed around the step in the process that checks
it: serially that is the caller's process, in ``run_all(workers=2)`` and ``testbed verify``'s
prefetch a forked worker, which then goes on to its next step.  The handler raises an
exception derived from ``BaseException`` (so no ``except Exception`` in sympy, hypothesis or
scipy catches it) and fires again every second until the step is stopped (a GC callback
swallows what is raised in it; hypothesis re-raises it as its own error, which counts as
stopped too).  It interrupts Python code only (sympy is pure Python); a C call that never
returns is not stopped.  SIGALRM needs the main thread of a POSIX process: elsewhere
``check_step`` runs without the limit.  A timer the caller had armed is suspended during the
step and re-armed after it, its handler restored.  Stopping a step mid-way leaves no state
behind: after 63 of the quick catalogue's steps were stopped at 0.05 s, all 105 checked again in
the same process gave the results of a fresh process.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import replace
from functools import partial
from typing import Callable, Mapping, TypeVar

import mpmath
import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from .search import compile_step, search, search_array
from .spec import (FALSE, NO_COUNTEREXAMPLE, NOT_TRANSCRIBABLE, QUICK, TIMED_OUT, VERIFIED, ArrayForm, Budget, Step,
                   StepResult)
from .symbolic import polynomial_identity, prove

SCREEN = Budget("screen", hypothesis_examples=0, sweep_points=256, optimizer_starts=0,
                optimizer_evals=0, mp_fallback_points=16, array_points=0, confirmations=16)


def claim(id: str, location: str, lhs, relation: str, rhs, variables=(), assumptions=(),
          note: str = "", constraints=(), try_symbolic: bool = True) -> Step:
    """A step ``lhs <relation> rhs`` for every point of the box ``variables``."""
    return Step(id=id, location=location, relation=relation, lhs=lhs, rhs=rhs,
                variables=tuple(variables), assumptions=tuple(assumptions), note=note,
                constraints=tuple(constraints), try_symbolic=try_symbolic)


def array_claim(id: str, location: str, relation: str, form: ArrayForm, assumptions=(),
                note: str = "") -> Step:
    """A step about vectors/matrices in R^d, searched numerically (see ``ArrayForm``)."""
    return Step(id=id, location=location, relation=relation, array_form=form,
                assumptions=tuple(assumptions), note=note)


def untranscribable(id: str, location: str, reason: str, note: str = "") -> Step:
    """A step that is not a checkable relation, with the reason."""
    return Step(id=id, location=location, not_transcribable=reason, note=note)


def _result(step: Step, verdict: str, method: str, budget: str, outcome=None, detail: str = "") -> StepResult:
    return StepResult(
        step_id=step.id,
        location=step.location,
        relation=step.relation,
        verdict=verdict,
        method=method,
        budget=budget,
        evaluations=0 if outcome is None else outcome.evaluations,
        region=() if outcome is None else outcome.region,
        worst=None if outcome is None else outcome.worst,
        counterexample=None if outcome is None else outcome.counterexample,
        detail=detail or step.note,
        notes=step.assumptions,
    )


_SYMBOLIC_ONLY = (AppliedUndef, sp.Derivative, sp.Subs, sp.Integral, sp.Sum)


def _symbolic_only(step: Step) -> bool:
    """Abstract functions cannot be evaluated; quadrature/series are no reliable oracle at the
    extremes of a box (a Gaussian of width 1e-7 defeats mpmath.quad), so such steps are
    decided by sympy alone."""
    return any(side.atoms(*_SYMBOLIC_ONLY) for side in (step.lhs, step.rhs))


def _coverage_note(outcome) -> str:
    parts = []
    if outcome.undefined:
        parts.append(f"{outcome.undefined} draws undefined (complex/nan even in mpmath)")
    if outcome.skipped:
        parts.append(f"{outcome.skipped} draws overflowed float64 past the mpmath fallback cap")
    return f" ({'; '.join(parts)})" if parts else ""


class _StepTimeout(BaseException):
    """Raised by the SIGALRM handler in the step it stops (a BaseException, as KeyboardInterrupt
    is, so that library code catching ``Exception`` lets it through)."""


_REFIRE_SECONDS = 1.0   # past the limit the timer fires again, in case library code swallowed it
_T = TypeVar("_T")


def _frame_name(frame) -> str:
    code = frame.f_code
    return f"{frame.f_globals.get('__name__', '?')}.{getattr(code, 'co_qualname', code.co_name)}"


def _stopped_in(frame) -> str:
    """Where a step was stopped: its innermost proofs_check function, and the innermost
    function overall when that is elsewhere (in sympy, say)."""
    innermost = _frame_name(frame)
    while frame is not None and not frame.f_globals.get("__name__", "").startswith("proofs_check."):
        frame = frame.f_back
    own = _frame_name(frame) if frame is not None else None
    if own is None or own == innermost:
        return innermost
    return f"{own} (innermost: {innermost})"


def _in_chain(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` among ``error``, its causes, contexts and grouped exceptions."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        e = pending.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        pending += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    return None


def _from_timeout(error: BaseException) -> bool:
    """True when ``error`` is a :class:`_StepTimeout` or was raised while handling one: hypothesis
    turns an exception in the middle of a draw into its own (FlakyStrategyDefinition), keeping
    ours as the context."""
    return _in_chain(error, _StepTimeout) is not None


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _within(seconds: float | None, compute: Callable[[], _T]) -> tuple[_T | None, tuple[float, str] | None]:
    """``(compute(), None)``, or ``(None, (seconds spent, where))`` when ``compute`` was still
    running after ``seconds`` of wall-clock time and was stopped there (see the module
    docstring).  ``seconds=None`` (or no SIGALRM here): no limit."""
    if seconds is None or not _can_alarm():
        return compute(), None
    state = {"armed": True, "where": "?"}

    def on_alarm(signum, frame) -> None:
        if state["armed"]:
            if state["where"] == "?":
                state["where"] = _stopped_in(frame)
            raise _StepTimeout

    def disarm() -> None:
        while True:   # once "armed" is False the handler no longer raises: retry until then
            try:
                state["armed"] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                return
            except _StepTimeout:
                continue

    start = time.monotonic()
    # the caller's timer is suspended before our handler goes in, so that it cannot fire into
    # this step; everything after is inside the try whose finally puts both back
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, 0)
    previous_handler = signal.getsignal(signal.SIGALRM)
    try:
        signal.signal(signal.SIGALRM, on_alarm)
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds, _REFIRE_SECONDS)
            return compute(), None
        finally:
            disarm()
    except BaseException as error:
        interrupt = _in_chain(error, KeyboardInterrupt)
        if interrupt is not None and interrupt is not error:
            # the limit passed while a Ctrl-C unwound: the interrupt stops the run, as it would have
            raise interrupt from None
        if interrupt is not None or not _from_timeout(error):
            raise
        return None, (time.monotonic() - start, state["where"])
    finally:
        disarm()   # again: a SIGALRM at the inner finally's first instruction skips the first
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous_handler is None else previous_handler)
        if previous_delay > 0:   # the caller's timer, less the time this step took (fires now if due)
            remaining = max(previous_delay - (time.monotonic() - start), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


def check_step(step: Step, budget: Budget = QUICK) -> StepResult:
    """Verdict on ``step`` under ``budget`` (see the module docstring), or ``timed out`` once
    checking it has taken ``budget.step_seconds``."""
    result, overrun = _within(budget.step_seconds, partial(_check, step, budget))
    if overrun is None:
        return result
    seconds, where = overrun
    return _result(step, TIMED_OUT, "stopped at the per-step time limit", budget.name,
                   detail=f"no verdict: still running after {seconds:.1f} s, past the per-step limit of "
                          f"{budget.step_seconds:g} s ({budget.name} budget); at the limit it was in {where}")


def _check(step: Step, budget: Budget) -> StepResult:
    if step.not_transcribable is not None:
        return _result(step, NOT_TRANSCRIBABLE, "none", budget.name, detail=step.not_transcribable)
    if step.array_form is not None:
        outcome = search_array(step, budget)
        verdict = FALSE if outcome.counterexample is not None else NO_COUNTEREXAMPLE
        return _result(step, verdict, "search: random R^d draws + Nelder-Mead (float64)", budget.name, outcome)
    if _symbolic_only(step):
        certificate = prove(step)
        if certificate is not None:
            return _result(step, VERIFIED, certificate + " (symbolic-only step: no numerical cross-check)",
                           budget.name)
        return _result(step, NOT_TRANSCRIBABLE, "none", budget.name,
                       detail="written with abstract functions, integrals or series, which the numerical "
                              "search does not evaluate, and sympy found no certificate")
    decided = polynomial_identity(step)  # exact sparse polynomial arithmetic, either way
    if decided:
        return _result(step, VERIFIED, "sympy: polynomial arithmetic of lhs - rhs is 0", budget.name)
    compiled = compile_step(step, budget.mp_dps)
    screen = search(step, replace(SCREEN, mp_dps=budget.mp_dps), compiled)
    # a false step is usually caught by the screen, before any hopeless certificate attempt;
    # a certificate is only accepted when the screen (its cross-check) found nothing against it
    certificate = None if decided is False or screen.counterexample is not None else prove(step)
    if certificate is not None:
        return _result(step, VERIFIED, certificate, budget.name, screen)
    outcome = search(step, budget, compiled)
    method = "search: seeded sweep + hypothesis.find + Nelder-Mead, confirmed in mpmath" + _coverage_note(outcome)
    verdict = FALSE if outcome.counterexample is not None else NO_COUNTEREXAMPLE
    return _result(step, verdict, method, budget.name, outcome)


def evaluate_step(step: Step, point: Mapping[str, object], dps: int = 60):
    """Both sides of a scalar/matrix step at ``point`` (name -> number or decimal string).

    Returns ``(lhs_entries, rhs_entries, in_domain, violated)`` computed in mpmath with ``dps``
    digits, the same test the search uses to confirm a counterexample.
    """
    if step.array_form is not None or step.not_transcribable is not None:
        raise ValueError(f"{step.id}: evaluate_step needs a sympy step")
    compiled = compile_step(step, dps)
    with mpmath.workdps(dps):
        values = [mpmath.mpf(str(point[v.name])) for v in step.variables]
        sides = compiled.sides_at(values)
        if sides is None:
            raise ValueError(f"{step.id}: sides undefined at {dict(point)}")
        return sides[0], sides[1], compiled.in_domain(values), compiled.violates(values)


def evaluate_array_step(step: Step, d: int, z) -> tuple[float, float]:
    """Both sides of an ArrayForm step for latent vector ``z`` in dimension ``d``."""
    if step.array_form is None:
        raise ValueError(f"{step.id}: not an ArrayForm step")
    arrays = step.array_form.build(np.asarray(z, dtype=float), d)
    return float(step.array_form.lhs(arrays)), float(step.array_form.rhs(arrays))


__all__ = ["claim", "array_claim", "untranscribable", "check_step", "evaluate_step", "evaluate_array_step"]
