"""Every transcribable proof step of :mod:`proofs_check` as a registry entry ``proof.<...>``.

Verdicts map as: *verified* (sympy) and *no counterexample found* (within the
search budget, stated in the tolerance) -> holds; *false* -> fails, with the
counterexample (the point and both sides); *timed out* (the check was stopped at
the budget's per-step time limit, ``Budget.step_seconds``) -> inconclusive, never
holds: nothing was proved or refuted.  Steps that cannot be transcribed
have no verdict and stay out of the registry; ``testbed proofs`` lists them
with the reason.  Steps labelled ``repair`` are not the paper's: they are
corrected forms of false steps, checked the same way.

The steps are independent of the numerical claims and mostly sympy work, so
:func:`prefetch` checks the selected ones in a forked process while the
other claims run (each step is seeded by its id: the results are those of a
serial run).  The per-step limit holds in that process too: a stuck step comes
back ``timed out`` and the worker goes on with the next.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from proofs_check import FALSE, FULL, NO_COUNTEREXAMPLE, QUICK, TIMED_OUT, VERIFIED, all_steps, check_step

from experiments.claims.registry import ClaimResult, Context, register, register_prefetch

STEPS = {s.id: s for s in all_steps()}


def _budget(quick: bool):
    return QUICK if quick else FULL


def _check_all(step_ids: list[str], quick: bool) -> dict:
    budget = _budget(quick)
    return {sid: check_step(STEPS[sid], budget) for sid in step_ids}


def prefetch(ctx: Context, claim_ids: list[str]) -> None:
    """Start checking the selected proof steps in a forked worker process."""
    ids = [c for c in claim_ids if c in STEPS]
    if not ids or "fork" not in multiprocessing.get_all_start_methods():
        return
    executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    ctx.memo["proof_results"] = executor.submit(_check_all, ids, ctx.quick)
    ctx.cleanups.append(lambda: executor.shutdown(wait=False, cancel_futures=True))


def _result(ctx: Context, step_id: str):
    future = ctx.memo.get("proof_results")
    if future is not None:
        done = future.result()
        if step_id in done:
            return done[step_id]
    return ctx.shared(f"proof:{step_id}", lambda: check_step(STEPS[step_id], _budget(ctx.quick)))


def _evaluation(e) -> dict:
    return {"point": dict(e.point), "lhs": e.lhs, "rhs": e.rhs, "gap": e.gap,
            "violation": e.violation}


def check_proof_step(ctx: Context, step_id: str) -> ClaimResult:
    r = _result(ctx, step_id)
    measured = {"proofs_check_verdict": r.verdict, "method": r.method, "evaluations": r.evaluations,
                "region": list(r.region), "budget": r.budget}
    if r.worst is not None:
        measured["worst_case"] = _evaluation(r.worst)
    if r.verdict == VERIFIED:
        return ClaimResult("holds", measured, "a symbolic proof (sympy)",
                           f"verified symbolically ({r.method})")
    if r.verdict == NO_COUNTEREXAMPLE:
        return ClaimResult("holds", measured,
                           f"no counterexample in {r.evaluations} evaluations ({r.budget} budget) "
                           f"over {', '.join(r.region)}",
                           f"no counterexample found ({r.evaluations} evaluations, {r.method})")
    if r.verdict == FALSE:
        ce = _evaluation(r.counterexample)
        return ClaimResult("fails", measured,
                           "a violation must survive re-evaluation at 60 and 120 mpmath digits",
                           f"false: at {ce['point']} the left side is {ce['lhs']} and the right "
                           f"side {ce['rhs']}" + (f"; {r.detail}" if r.detail else ""),
                           counterexample={**ce, "location": r.location})
    if r.verdict == TIMED_OUT:
        return ClaimResult("inconclusive", measured, "a verdict within the per-step time limit",
                           f"timed out: {r.detail}",
                           condition="the check was stopped at the per-step time limit before sympy or the "
                                     "counterexample search reached a verdict: neither proved nor refuted")
    raise ValueError(f"{step_id} has no verdict ({r.verdict}): it is not transcribable")


for _step in STEPS.values():
    if _step.not_transcribable is None:
        register(_step.id, _step.location,
                 (_step.note or f"{_step.location}: {_step.relation}")
                 + (" (a corrected form, not the paper's)" if ".repair" in _step.id else "")
                 )(lambda ctx, sid=_step.id: check_proof_step(ctx, sid))
register_prefetch(prefetch)
