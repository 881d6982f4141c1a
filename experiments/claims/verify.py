"""Run the registry and write the report, keeping what finished if interrupted."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from experiments.claims import registry, report
from experiments.claims.registry import ClaimResult, Context, select
from experiments.cliutil import step_progress
from experiments.provenance import git_commit


def verify(out_dir: Path, *, quick: bool = True, only: Sequence[str] | None = None, seed: int = 0,
           command: str = "testbed verify", progress: bool = True,
           memo: dict | None = None) -> dict:
    """Run the selected claims; write ``report.json``, ``report.md`` and plots into ``out_dir``.

    The report is rewritten after every claim, so an interrupted run keeps the
    claims it finished (``complete: false``).  ``memo`` (optional) receives the
    shared computations, so a caller can re-run single checks without redoing
    the sweeps.  Returns the report dict.
    """
    from experiments.claims import load_all
    from testbed import __version__

    load_all()
    claims = select(only)
    out_dir = Path(out_dir)
    ctx = Context(quick=quick, seed=seed, out_dir=out_dir, memo={} if memo is None else memo)
    info = report.RunInfo(command=command, seed=seed, quick=quick, package_version=__version__,
                          git_commit=git_commit() or "unknown",
                          started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    results: list[ClaimResult] = []
    start = time.perf_counter()
    complete = False
    registry.start(claims, ctx)
    # proof steps are checked by the prefetch worker meanwhile: ask for them last, so the
    # worker's time overlaps the numerical claims; the report keeps the paper's order
    position = {c.id: i for i, c in enumerate(claims)}
    schedule = sorted(claims, key=lambda c: c.id.startswith("proof."))

    def in_order() -> list[ClaimResult]:
        return sorted(results, key=lambda r: position[r.id])

    try:
        for i, claim in enumerate(schedule):
            if progress:
                step_progress(i + 1, len(claims), f"{claim.id} ...", None)
            t = time.perf_counter()
            result = claim.check(ctx)
            results.append(replace(result, id=claim.id, seconds=time.perf_counter() - t))
            if progress:
                step_progress(i + 1, len(claims), f"{claim.id}: {result.verdict}", results[-1].seconds)
            report.write(out_dir, report.build_report(info, claims, in_order(),
                                                      time.perf_counter() - start, False))
        complete = True
    finally:
        registry.finish(ctx)
        final = report.build_report(info, claims, in_order(), time.perf_counter() - start, complete)
        report.write(out_dir, final)
    return final
