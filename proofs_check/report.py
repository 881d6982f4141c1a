"""Run every transcribed step and write ``proofs.md`` and ``proofs.json``.

``python -m proofs_check --budget quick --out DIR [--workers 2]`` runs all steps and
writes both files.  With ``out_dir``, :func:`run_all` rewrites both files atomically after
every step, marked ``"complete": false`` until the last step is in, so an interrupted run
keeps the steps it finished; it prints ``[i/n] step id: verdict (seconds)`` on stderr as
steps finish.  A step still running at the budget's per-step limit (``--step-timeout``,
``Budget.step_seconds``) is stopped and reported ``timed out``; the run goes on with the others.

``proofs.json`` follows :data:`JSON_SCHEMA` (JSON Schema draft 2020-12; :func:`validate_report`
checks the subset used here without extra dependencies).  Layout::

    {"schema": "proofs_check.report/2",
     "source": "Abbas et al. 2022 (Sharp-MAML), Appendices B-D and eq. (18)",
     "complete": bool (false: an interrupted or still running run; "results" holds the
                 steps finished so far),
     "budget": {"name": ..., "description": ... (the search sizes and the per-step limit)},
     "counts": {"verified": int, "no counterexample found": int, "false": int,
                "not transcribable": int, "timed out": int},
     "results": [{"step_id", "location", "relation" (string or null), "verdict", "method",
                  "budget", "evaluations", "region": [str], "assumptions": [str], "detail",
                  "worst": EVALUATION or null, "counterexample": EVALUATION or null}]}

    EVALUATION = {"point": [[name, decimal string]], "lhs": str, "rhs": str, "gap": str,
                  "violation": number}

Values are decimal strings so that 60-digit mpmath numbers (and numbers beyond float range)
survive; ``gap`` is ``lhs - rhs``; ``violation`` is the scale-free oriented margin (> 0 fails).

A ``timed out`` result has ``method`` "stopped at the per-step time limit", ``detail`` naming
the limit, the seconds spent and the function the step was in at the limit, no ``worst`` and no
``counterexample``; ``proofs.md`` lists it with that detail and says above the table how many
steps timed out.  (Schema ``/1``, before the limit, had no ``timed out`` verdict.)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import mpmath

from . import steps_discussion, steps_lemma1, steps_lemma2_3, steps_lemma4_5, steps_thm3
from .engine import check_step
from .spec import (FULL, MAX_STEP_SECONDS, NOT_TRANSCRIBABLE, QUICK, TIMED_OUT, VERDICTS, Budget, Evaluation,
                   Step, StepResult)

SCHEMA_ID = "proofs_check.report/2"
SOURCE = "Abbas et al. 2022 (Sharp-MAML), Appendices B-D and eq. (18)"
BUDGETS = {"quick": QUICK, "full": FULL}
PART_ORDER = ("lemma1", "lemma2", "lemma3", "lemma4", "lemma5", "thm3", "d1", "d2", "thm2")
_MODULES = (steps_lemma1, steps_lemma2_3, steps_lemma4_5, steps_thm3, steps_discussion)

_EVALUATION_SCHEMA = {
    "type": "object",
    "required": ["point", "lhs", "rhs", "gap", "violation"],
    "additionalProperties": False,
    "properties": {
        "point": {"type": "array", "items": {"type": "array", "items": {"type": "string"},
                                             "minItems": 2, "maxItems": 2}},
        "lhs": {"type": "string"},
        "rhs": {"type": "string"},
        "gap": {"type": "string"},
        "violation": {"type": "number"},
    },
}
_RESULT_SCHEMA = {
    "type": "object",
    "required": ["step_id", "location", "relation", "verdict", "method", "budget", "evaluations",
                 "region", "assumptions", "detail", "worst", "counterexample"],
    "additionalProperties": False,
    "properties": {
        "step_id": {"type": "string", "pattern": r"^proof\.[a-z0-9]+\.(step|repair)\d+[a-z]?$"},
        "location": {"type": "string"},
        "relation": {"type": ["string", "null"], "enum": ["==", "<=", "<", ">=", ">", None]},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "method": {"type": "string"},
        "budget": {"type": "string"},
        "evaluations": {"type": "integer", "minimum": 0},
        "region": {"type": "array", "items": {"type": "string"}},
        "assumptions": {"type": "array", "items": {"type": "string"}},
        "detail": {"type": "string"},
        "worst": {"anyOf": [{"type": "null"}, _EVALUATION_SCHEMA]},
        "counterexample": {"anyOf": [{"type": "null"}, _EVALUATION_SCHEMA]},
    },
}
JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "proofs_check report",
    "type": "object",
    "required": ["schema", "source", "complete", "budget", "counts", "results"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "source": {"type": "string"},
        "complete": {"type": "boolean"},
        "budget": {"type": "object", "required": ["name", "description"], "additionalProperties": False,
                   "properties": {"name": {"type": "string"}, "description": {"type": "string"}}},
        "counts": {"type": "object", "required": list(VERDICTS), "additionalProperties": False,
                   "properties": {v: {"type": "integer", "minimum": 0} for v in VERDICTS}},
        "results": {"type": "array", "items": _RESULT_SCHEMA},
    },
}


def _order(step_id: str) -> tuple:
    _, part, name = step_id.split(".")
    kind, number, suffix = re.match(r"(step|repair)(\d+)([a-z]?)", name).groups()
    return PART_ORDER.index(part) if part in PART_ORDER else len(PART_ORDER), kind == "repair", int(number), suffix


def all_steps() -> tuple[Step, ...]:
    """Every transcribed step of Appendices B-D (and Thm 2 vs Thm 3), in paper order."""
    steps = [step for module in _MODULES for step in module.steps()]
    ids = [s.id for s in steps]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate step ids: {duplicates}")
    return tuple(sorted(steps, key=lambda s: _order(s.id)))


def _select(steps: tuple[Step, ...], only: Iterable[str] | None) -> tuple[Step, ...]:
    if only is None:
        return steps
    wanted = list(only)
    chosen = [s for s in steps if any(s.id == w or s.id.startswith(w.rstrip(".") + ".") for w in wanted)]
    unmatched = [w for w in wanted if not any(s.id == w or s.id.startswith(w.rstrip(".") + ".") for s in steps)]
    if unmatched:
        raise ValueError(f"no step matches {unmatched}")
    return tuple(chosen)


_FORKED_STEPS: tuple[Step, ...] = ()  # steps handed to forked workers (ArrayForm lambdas don't pickle)


def _ignore_sigint() -> None:
    """Forked workers leave Ctrl-C to the parent, which stops them (no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _check_forked(job: tuple[int, Budget]) -> tuple[int, StepResult, float]:
    index, budget = job
    start = time.perf_counter()
    result = check_step(_FORKED_STEPS[index], budget)
    return index, result, time.perf_counter() - start


def _progress(i: int, n: int, text: str, seconds: float | None) -> None:
    """``[i/n] id ...`` while a step runs (terminals only), then its verdict and time.

    The same lines as ``testbed verify``: on a terminal the running line is rewritten in
    place; elsewhere (a log file, a pipe) only the finished lines are printed."""
    if seconds is None:
        if sys.stderr.isatty():
            print(f"\r[{i}/{n}] {text} ...".ljust(78), end="", file=sys.stderr, flush=True)
        return
    print(f"\r[{i}/{n}] {text} ({seconds:.1f} s)".ljust(78), file=sys.stderr, flush=True)


def run_all(budget: Budget | str = QUICK, only: Iterable[str] | None = None, workers: int = 1, *,
            out_dir=None, progress: bool = True) -> list[StepResult]:
    """Check every step (or those whose id equals/starts with an entry of ``only``).

    ``workers > 1`` checks steps in forked processes; every check is seeded by its step id, so
    the results are identical to a serial run, in the same order.  ``progress`` prints
    ``[i/n] step id: verdict (seconds)`` on stderr as each step finishes.  With ``out_dir``,
    ``proofs.md`` and ``proofs.json`` are rewritten there (atomically) after every step,
    ``"complete": false`` until all steps are in: an interrupted run keeps what it finished.
    A step still running after ``budget.step_seconds`` is stopped in the process checking it
    (this one, or its forked worker) and reported ``timed out``; the other steps still run.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {sorted(BUDGETS)} or a Budget, got {budget!r}")
        budget = BUDGETS[budget]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    steps = _select(all_steps(), only)
    n = len(steps)
    done: dict[int, StepResult] = {}

    def finished() -> list[StepResult]:
        return [done[i] for i in sorted(done)]

    def record(index: int, result: StepResult, seconds: float) -> None:
        done[index] = result
        if progress:
            _progress(len(done), n, f"{result.step_id}: {result.verdict}", seconds)
        if out_dir is not None:
            write_table(finished(), out_dir, budget, complete=False)

    complete = False
    try:
        if workers == 1 or n < 2:
            for index, step in enumerate(steps):
                if progress:
                    _progress(len(done) + 1, n, step.id, None)
                start = time.perf_counter()
                record(index, check_step(step, budget), time.perf_counter() - start)
        else:
            global _FORKED_STEPS
            _FORKED_STEPS = steps
            try:
                with multiprocessing.get_context("fork").Pool(workers, _ignore_sigint) as pool:
                    for index, result, seconds in pool.imap_unordered(
                            _check_forked, [(i, budget) for i in range(n)], chunksize=1):
                        record(index, result, seconds)
            finally:
                _FORKED_STEPS = ()
        complete = True
    finally:
        if out_dir is not None:
            write_table(finished(), out_dir, budget, complete=complete)
    return finished()


def _evaluation_json(evaluation: Evaluation | None):
    if evaluation is None:
        return None
    return {"point": [[name, value] for name, value in evaluation.point], "lhs": evaluation.lhs,
            "rhs": evaluation.rhs, "gap": evaluation.gap, "violation": evaluation.violation}


def report_document(results: list[StepResult], budget: Budget | None = None, complete: bool = True) -> dict:
    """The JSON document (see module docstring) for ``results``; ``complete=False`` marks a
    partial report (a run still going, or interrupted)."""
    names = sorted({r.budget for r in results})
    budget_info = ({"name": budget.name, "description": budget.describe()} if budget is not None
                   else {"name": ",".join(names), "description": ",".join(
                       BUDGETS[n].describe() if n in BUDGETS else n for n in names)})
    counts = Counter(r.verdict for r in results)
    return {
        "schema": SCHEMA_ID,
        "source": SOURCE,
        "complete": bool(complete),
        "budget": budget_info,
        "counts": {v: counts.get(v, 0) for v in VERDICTS},
        "results": [
            {"step_id": r.step_id, "location": r.location, "relation": r.relation, "verdict": r.verdict,
             "method": r.method, "budget": r.budget, "evaluations": r.evaluations, "region": list(r.region),
             "assumptions": list(r.notes), "detail": r.detail, "worst": _evaluation_json(r.worst),
             "counterexample": _evaluation_json(r.counterexample)}
            for r in results
        ],
    }


def _short(value: str, digits: int = 6) -> str:
    """Decimal string shortened to ``digits`` significant digits (any exponent); others clipped."""
    if re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?", value):
        return mpmath.nstr(mpmath.mpf(value), digits)
    return value if len(value) <= 60 else value[:57] + "..."


def _describe(evaluation: Evaluation, label: str) -> str:
    point = ", ".join(f"{name}={_short(value)}" for name, value in evaluation.point if name != "z")
    if len(point) > 160:
        point = point[:157] + "..."
    return (f"{label}: {point}; lhs={_short(evaluation.lhs)}, rhs={_short(evaluation.rhs)}, "
            f"lhs-rhs={_short(evaluation.gap)}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _case_cell(result: StepResult) -> str:
    if result.counterexample is not None:
        return _describe(result.counterexample, "counterexample")
    if result.verdict in (NOT_TRANSCRIBABLE, TIMED_OUT):
        return result.detail
    if result.worst is not None:
        return _describe(result.worst, "worst") + f" (violation {result.worst.violation:.3g})"
    return result.method


def markdown_table(results: list[StepResult]) -> str:
    lines = ["| id | location | relation | verdict | worst case / counterexample | budget |",
             "|---|---|---|---|---|---|"]
    for r in results:
        budget = f"{r.budget}, {r.evaluations} evals" if r.evaluations else r.budget
        lines.append("| " + " | ".join(_cell(c) for c in (
            r.step_id, r.location, r.relation or "-", r.verdict, _case_cell(r), budget)) + " |")
    return "\n".join(lines) + "\n"


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()   # read once, at import: setting it to read it is not thread-safe


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (its folder created), then rename it
    over ``path``: a reader never sees half a file (also used by ``testbed verify``'s reports)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)   # mkstemp's 0600 would make a report private
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(results: list[StepResult], out_dir, budget: Budget | None = None,
                complete: bool = True) -> tuple[Path, Path]:
    """Write ``proofs.md`` and ``proofs.json`` into ``out_dir`` (each atomically); return both paths.

    ``complete=False`` marks them as a partial report (``"complete": false`` in the JSON, a
    line in the markdown)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = report_document(results, budget, complete)
    counts = ", ".join(f"{v}: {n}" for v, n in document["counts"].items())
    partial = "" if complete else (f"**Partial report** (interrupted or still running): "
                                   f"{len(results)} step(s) finished so far.\n\n")
    timed_out = document["counts"][TIMED_OUT]
    stopped = "" if not timed_out else (f"**{timed_out} step(s) timed out**: stopped at the per-step time "
                                        "limit, neither proved nor refuted (see their rows).\n\n")
    header = (f"# Proof steps of {SOURCE}\n\n{partial}Budget: {document['budget']['description']}\n\n"
              f"Verdicts: {counts}\n\n{stopped}")
    md_path, json_path = out / "proofs.md", out / "proofs.json"
    atomic_write(json_path, json.dumps(document, indent=1) + "\n")
    atomic_write(md_path, header + markdown_table(results))
    return md_path, json_path


def _type_ok(value, expected) -> bool:
    kinds = {"object": dict, "array": list, "string": str, "null": type(None), "boolean": bool}
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kinds[expected])


def validate_report(document, schema: dict = JSON_SCHEMA, path: str = "$") -> list[str]:
    """Errors of ``document`` against ``schema`` (the keywords used in JSON_SCHEMA only)."""
    errors: list[str] = []
    if "anyOf" in schema:
        if all(validate_report(document, option, path) for option in schema["anyOf"]):
            errors.append(f"{path}: matches no alternative")
        return errors
    if "const" in schema and document != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(document, t) for t in types):
            return errors + [f"{path}: expected type {types}, got {type(document).__name__}"]
    if "enum" in schema and document not in schema["enum"]:
        errors.append(f"{path}: {document!r} not in {schema['enum']}")
    if "pattern" in schema and isinstance(document, str) and not re.match(schema["pattern"], document):
        errors.append(f"{path}: {document!r} does not match {schema['pattern']}")
    if "minimum" in schema and isinstance(document, (int, float)) and document < schema["minimum"]:
        errors.append(f"{path}: {document} < {schema['minimum']}")
    if isinstance(document, dict):
        for key in schema.get("required", []):
            if key not in document:
                errors.append(f"{path}: missing {key!r}")
        properties = schema.get("properties", {})
        for key, value in document.items():
            if key in properties:
                errors += validate_report(value, properties[key], f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}: unexpected key {key!r}")
    if isinstance(document, list):
        if "minItems" in schema and len(document) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(document) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for index, item in enumerate(document):
            errors += validate_report(item, schema.get("items", {}), f"{path}[{index}]")
    return errors


def step_timeout_arg(text: str) -> float:
    """``--step-timeout``: seconds >= 0, finite (0: no limit); argparse's error names the value."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= MAX_STEP_SECONDS:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to {MAX_STEP_SECONDS:g} "
                                         f"(0: no limit), got {text!r}")
    return value


STEP_TIMEOUT_HELP = ("wall-clock limit on one step, in seconds; a step still running then is stopped and "
                     "reported 'timed out' (neither proved nor refuted), and the run goes on. 0: no limit. "
                     f"Default: the budget's ({', '.join(f'{n} {b.step_seconds:g} s' for n, b in BUDGETS.items())})")


def with_step_limit(budget: Budget, seconds: float | None) -> Budget:
    """``budget`` with ``--step-timeout seconds`` (``None``: the budget's own; 0: no limit)."""
    return budget if seconds is None else replace(budget, step_seconds=seconds or None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofs_check",
                                     description="Check every transcribed proof step and write the report.")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    parser.add_argument("--out", default="out/proofs")
    parser.add_argument("--only", nargs="*", default=None, help="step ids or id prefixes")
    parser.add_argument("--workers", type=int, default=2, help="forked worker processes (results do not depend on it)")
    parser.add_argument("--step-timeout", type=step_timeout_arg, default=None, metavar="SECONDS",
                        help=STEP_TIMEOUT_HELP)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    budget = with_step_limit(BUDGETS[args.budget], args.step_timeout)
    try:
        results = run_all(budget, args.only, args.workers, out_dir=args.out)
    except ValueError as error:  # an unknown --only id, --workers < 1: one line naming the value
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; the finished steps are kept in {Path(args.out) / 'proofs.json'} "
              "(\"complete\": false)", file=sys.stderr)
        return 130
    md_path, json_path = Path(args.out) / "proofs.md", Path(args.out) / "proofs.json"
    elapsed = time.perf_counter() - start
    counts = Counter(r.verdict for r in results)
    print(f"{len(results)} steps in {elapsed:.1f} s ({args.budget}, {args.workers} workers): {dict(counts)}; "
          f"wrote {md_path}, {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
