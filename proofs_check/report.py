"""Run every transcribed step and write ``proofs.md`` and ``proofs.json``.

``python -m proofs_check --budget quick --out DIR [--workers 2]`` runs all steps and
writes both files.

``proofs.json`` follows :data:`JSON_SCHEMA` (JSON Schema draft 2020-12; :func:`validate_report`
checks the subset used here without extra dependencies).  Layout::

    {"schema": "proofs_check.report/1",
     "source": "Abbas et al. 2022 (Sharp-MAML), Appendices B-D and eq. (18)",
     "budget": {"name": ..., "description": ...},
     "counts": {"verified": int, "no counterexample found": int, "false": int,
                "not transcribable": int},
     "results": [{"step_id", "location", "relation" (string or null), "verdict", "method",
                  "budget", "evaluations", "region": [str], "assumptions": [str], "detail",
                  "worst": EVALUATION or null, "counterexample": EVALUATION or null}]}

    EVALUATION = {"point": [[name, decimal string]], "lhs": str, "rhs": str, "gap": str,
                  "violation": number}

Values are decimal strings so that 60-digit mpmath numbers (and numbers beyond float range)
survive; ``gap`` is ``lhs - rhs``; ``violation`` is the scale-free oriented margin (> 0 fails).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import mpmath

from . import steps_discussion, steps_lemma1, steps_lemma2_3, steps_lemma4_5, steps_thm3
from .engine import check_step
from .spec import FULL, QUICK, VERDICTS, Budget, Evaluation, Step, StepResult

SCHEMA_ID = "proofs_check.report/1"
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
    "required": ["schema", "source", "budget", "counts", "results"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "source": {"type": "string"},
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


def _check_forked(job: tuple[int, Budget]) -> StepResult:
    index, budget = job
    return check_step(_FORKED_STEPS[index], budget)


def run_all(budget: Budget | str = QUICK, only: Iterable[str] | None = None, workers: int = 1) -> list[StepResult]:
    """Check every step (or those whose id equals/starts with an entry of ``only``).

    ``workers > 1`` checks steps in forked processes; every check is seeded by its step id, so
    the results are identical to a serial run, in the same order.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {sorted(BUDGETS)} or a Budget, got {budget!r}")
        budget = BUDGETS[budget]
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    steps = _select(all_steps(), only)
    if workers == 1 or len(steps) < 2:
        return [check_step(step, budget) for step in steps]
    global _FORKED_STEPS
    _FORKED_STEPS = steps
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_check_forked, [(i, budget) for i in range(len(steps))], chunksize=1)
    finally:
        _FORKED_STEPS = ()


def _evaluation_json(evaluation: Evaluation | None):
    if evaluation is None:
        return None
    return {"point": [[name, value] for name, value in evaluation.point], "lhs": evaluation.lhs,
            "rhs": evaluation.rhs, "gap": evaluation.gap, "violation": evaluation.violation}


def report_document(results: list[StepResult], budget: Budget | None = None) -> dict:
    """The JSON document (see module docstring) for ``results``."""
    names = sorted({r.budget for r in results})
    budget_info = ({"name": budget.name, "description": budget.describe()} if budget is not None
                   else {"name": ",".join(names), "description": ",".join(
                       BUDGETS[n].describe() if n in BUDGETS else n for n in names)})
    counts = Counter(r.verdict for r in results)
    return {
        "schema": SCHEMA_ID,
        "source": SOURCE,
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
    if result.verdict == "not transcribable":
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


def write_table(results: list[StepResult], out_dir, budget: Budget | None = None) -> tuple[Path, Path]:
    """Write ``proofs.md`` and ``proofs.json`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = report_document(results, budget)
    counts = ", ".join(f"{v}: {n}" for v, n in document["counts"].items())
    header = (f"# Proof steps of {SOURCE}\n\nBudget: {document['budget']['description']}\n\n"
              f"Verdicts: {counts}\n\n")
    md_path, json_path = out / "proofs.md", out / "proofs.json"
    md_path.write_text(header + markdown_table(results))
    json_path.write_text(json.dumps(document, indent=1) + "\n")
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check every transcribed proof step and write the report.")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    parser.add_argument("--out", default="out/proofs")
    parser.add_argument("--only", nargs="*", default=None, help="step ids or id prefixes")
    parser.add_argument("--workers", type=int, default=2, help="forked worker processes (results do not depend on it)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = run_all(BUDGETS[args.budget], args.only, args.workers)
    md_path, json_path = write_table(results, args.out, BUDGETS[args.budget])
    elapsed = time.perf_counter() - start
    counts = Counter(r.verdict for r in results)
    print(f"{len(results)} steps in {elapsed:.1f} s ({args.budget}, {args.workers} workers): {dict(counts)}; "
          f"wrote {md_path}, {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
