"""``report.json`` and ``report.md`` for a registry run.

The JSON follows ``report_schema.json`` (JSON Schema, draft 2020-12) beside
this file.  Non-finite floats are written as the strings ``"nan"``, ``"inf"``,
``"-inf"`` (JSON has no such numbers).  Both files are rewritten atomically
after every claim, so an interrupted run keeps what it finished
(``"complete": false``).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.claims.registry import VERDICTS, Claim, ClaimResult
from proofs_check.report import atomic_write

SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
SCHEMA_VERSION = 2


def jsonable(x: Any) -> Any:
    """Plain JSON types; numpy/torch scalars and arrays unwrapped, non-finite floats as strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if x is None or isinstance(x, str):
        return x
    return str(x)


@dataclass(frozen=True)
class RunInfo:
    command: str
    seed: int
    quick: bool
    package_version: str
    git_commit: str
    started: str


def build_report(info: RunInfo, claims: list[Claim], results: list[ClaimResult],
                 runtime: float, complete: bool) -> dict:
    import torch

    by_id = {c.id: c for c in claims}
    entries = {}
    for r in results:
        c = by_id[r.id]
        entries[r.id] = {
            "reference": c.reference, "statement": c.statement, "verdict": r.verdict,
            "summary": r.summary, "tolerance": r.tolerance, "measured": jsonable(r.measured),
            "condition": r.condition, "counterexample": jsonable(r.counterexample),
            "plots": list(r.plots), "seconds": round(r.seconds, 3)}
    counts = {v: sum(1 for r in results if r.verdict == v) for v in VERDICTS}
    return {
        "schema_version": SCHEMA_VERSION, "command": info.command, "seed": info.seed,
        "quick": info.quick, "package_version": info.package_version,
        "git_commit": info.git_commit, "started": info.started,
        "python": platform.python_version(), "torch": torch.__version__,
        "runtime_seconds": round(runtime, 3), "complete": complete,
        "selected": [c.id for c in claims], "counts": counts, "claims": entries}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    lines = [
        "# Sharp-MAML claim report", "",
        f"- command: `{report['command']}`",
        f"- package {report['package_version']}, commit `{report['git_commit']}`, "
        f"python {report['python']}, torch {report['torch']}",
        f"- seed {report['seed']}, {'quick' if report['quick'] else 'full'} budget, "
        f"runtime {report['runtime_seconds']:.1f} s, started {report['started']}"
        + ("" if report["complete"] else " (**interrupted: partial report**)"),
        "- verdicts: " + ", ".join(f"{k}: {v}" for k, v in report["counts"].items()), "",
        "| claim | paper | verdict | what was measured |", "|---|---|---|---|"]
    for cid, e in report["claims"].items():
        verdict = f"{e['verdict']}: {e['condition']}" if e["condition"] else e["verdict"]
        lines.append(f"| `{cid}` | {_cell(e['reference'])} | **{_cell(verdict)}** | {_cell(e['summary'])} |")
    lines += ["", "## Claims in detail", ""]
    for cid, e in report["claims"].items():
        lines += [f"### `{cid}`: {e['verdict']}", "", f"*{e['reference']}.* {e['statement']}", "",
                  f"- tolerance: {e['tolerance']}", f"- measured: {e['summary']}"]
        if e["condition"]:
            lines.append(f"- {e['verdict']}: {e['condition']}")
        if e["counterexample"]:
            lines.append("- counterexample: `" + json.dumps(e["counterexample"])[:1500] + "`")
        lines.append(f"- time: {e['seconds']:.2f} s")
        lines += [""] + [f"![{p}]({p})" for p in e["plots"]] + [""]
    return "\n".join(lines) + "\n"


def write(out_dir: Path, report: dict) -> None:
    """Write ``report.json`` and ``report.md`` atomically into ``out_dir``."""
    atomic_write(out_dir / "report.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    atomic_write(out_dir / "report.md", markdown(report))
