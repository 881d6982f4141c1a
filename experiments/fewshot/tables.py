"""The paper's few-shot tables from this project's runs, next to the paper's numbers.

``python -m experiments.fewshot.tables --scale {smoke,cpu,paper} --out DIR`` writes, for every
table, ``DIR/<table>.json`` and ``DIR/<table>.md`` (accuracy with a 95% CI beside the paper's
value); the runs themselves live in ``DIR/runs/`` and are reused (or resumed) by a later call.

Tables (Abbas et al. 2022):
    table1   mini-ImageNet 5-way 1-shot, MAML and Sharp-MAML low/up/both (Table 1)
    table2   mini-ImageNet 5-way 5-shot (Table 2)
    table3   mini-ImageNet 5-way 1-shot with ANIL/ESAM variants and training time relative
             to MAML (Table 3)
    table4   Omniglot 20-way 1-shot (Table 4, Appendix E)
    table5   Omniglot 20-way 5-shot (Table 5, Appendix E)
    family   Omniglot 5-way 1-shot, every algorithm of the project (testbed.algorithms.NAMES) under
             one budget (same iterations, meta-batch, model and episodes), with training time
             per iteration and relative to MAML; no paper column (the paper has no such table)
    radius   accuracy against the radius alpha in {0.05, 0.005, 0.0005, 0.00005} for the three
             Sharp-MAML variants (Figures 2-3; alpha_low = alpha_up for "both"); on
             mini-ImageNet 5-way 1-shot when it is given, else on Omniglot 5-way 1-shot (said so)

``--iterations``, ``--meta-batch``, ``--eval-episodes`` and ``--task-batching`` override the scale's budget for every row (the run
directory's name changes with them, so runs of different budgets never mix).

mini-ImageNet is not shipped: tables 1-3 run when ``--miniimagenet PATH`` is given and are
otherwise written as "skipped".  Scales:
    smoke    every table on a generated toy folder, Conv-4 with 4 filters, 2 iterations of one
             inner step, 3 test episodes, radius 0.05 only: seconds; checks the pipeline, not
             the paper.
    cpu      Conv-4 with 32 filters, 5 queries per class in training, 1,000 iterations,
             200 test episodes, one seed: hours per table on 2 cores (a day for all).
    paper    the paper's settings (below), 3 seeds, 600 test episodes: GPU days.

Paper settings used at ``paper`` scale (Sec. 5.1, App. E; where the paper is silent, MAML's):
Omniglot 20-way: inner step 0.1, 1 inner step in training and testing, meta-batch 16
(App. E); mini-ImageNet: inner step 0.01, 5 steps, meta-batch 4, 10 steps at test (MAML);
64 filters, 15 queries per class, Adam 0.001, 3 seeds (Sec. 5.1); iterations 40,000
(Omniglot) and 60,000 (mini-ImageNet) as in MAML.  Radii: the paper reports the best of its
grid per variant; the tables here use 0.05 (the grid's largest) and the radius study covers
the grid.  With several seeds the interval pools the per-episode accuracies of all seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import shlex
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments.cliutil import Parser, positive_int, thread_count
from experiments.fewshot.checkpoint import CHECKPOINT_NAME
from experiments.fewshot.common import environment, keep_freed_memory
from experiments.fewshot.config import TRAINING_FIELDS, TrainConfig
from experiments.fewshot.evaluate import confidence_interval
from experiments.fewshot.toy import write_toy_folder
from testbed.algorithms import NAMES
from experiments.fewshot.train import RESULTS_NAME, TrainingInterrupted, run

RADII = (0.05, 0.005, 0.0005, 0.00005)
"""The paper's radius grid (Sec. 5.1)."""

# The paper's numbers, as printed (accuracy in %; Table 3 also the time relative to MAML).
PAPER: dict[str, dict[str, Any]] = {
    "table1": {"reference": "Abbas et al. 2022, Table 1 (Mini-Imagenet 5-way 1-shot)",
               "ours": {"maml": 47.13, "sharp-low": 49.72, "sharp-up": 49.56, "sharp-both": 50.28},
               "others": {"Matching Nets": 43.56, "iMAML": 49.30, "CAVIA": 47.24, "Reptile": 49.97,
                          "FOMAML": 48.07, "LLAMA": 49.40, "BMAML": 49.17}},
    "table2": {"reference": "Abbas et al. 2022, Table 2 (Mini-Imagenet 5-way 5-shot)",
               "ours": {"maml": 62.20, "sharp-low": 63.18, "sharp-up": 63.06, "sharp-both": 65.04},
               "others": {"Matching Nets": 55.31, "CAVIA": 59.05, "Reptile": 65.99, "FOMAML": 63.15,
                          "BMAML": 64.23}},
    "table3": {"reference": "Abbas et al. 2022, Table 3 (Mini-Imagenet 5-way 1-shot; time relative to MAML)",
               "ours": {"maml": 47.13, "sharp-low": 49.72, "sharp-up": 49.56, "sharp-both": 50.28,
                        "sharp-anil": 49.19, "esharp": 48.90, "esharp-anil": 49.03},
               "time": {"maml": 1.0, "sharp-low": 2.60, "sharp-up": 3.60, "sharp-both": 4.60,
                        "sharp-anil": 1.40, "esharp": 2.20, "esharp-anil": 1.20},
               "others": {}},
    "table4": {"reference": "Abbas et al. 2022, Table 4 (Omniglot 20-way 1-shot)",
               "ours": {"maml": 91.77, "sharp-low": 92.89, "sharp-up": 92.96, "sharp-both": 93.47},
               "others": {"Matching Nets": 93.8, "Reptile": 89.43, "FOMAML": 89.40}},
    # Table 5's row labels are lost in the paper's text layer; its values are in Table 4's row order.
    "table5": {"reference": "Abbas et al. 2022, Table 5 (Omniglot 20-way 5-shot; rows in Table 4's order)",
               "ours": {"maml": 96.16, "sharp-low": 96.59, "sharp-up": 96.62, "sharp-both": 96.64},
               "others": {"Matching Nets": 98.50, "Reptile": 97.12, "FOMAML": 97.90}},
    "family": {"reference": "no paper table: every algorithm of this project under one budget",
               "ours": {}, "others": {}},
    "radius": {"reference": "Abbas et al. 2022, Figures 2-3 (values only as bar charts: not transcribed)",
               "ours": {}, "others": {}},
}

_OMNIGLOT_20 = {"ways": 20, "beta_low": 0.1, "inner_steps": 1, "meta_batch": 16, "eval_inner_steps": 1,
                "iterations": 40000}
_OMNIGLOT_5 = {"ways": 5, "beta_low": 0.4, "inner_steps": 1, "meta_batch": 32, "eval_inner_steps": 10,
               "iterations": 40000}
_MINI = {"ways": 5, "beta_low": 0.01, "inner_steps": 5, "meta_batch": 4, "eval_inner_steps": 10,
         "iterations": 60000}
_SHARP = ("maml", "sharp-low", "sharp-up", "sharp-both")


@dataclass(frozen=True)
class Scale:
    """How big the runs are; ``None`` keeps the table's (paper) value."""

    name: str
    hidden: int
    seeds: int
    eval_episodes: int
    iterations: int | None = None
    queries: int | None = None
    meta_batch: int | None = None
    inner_steps: int | None = None
    radii: tuple[float, ...] = RADII
    toy: bool = False
    task_batching: str | None = None


SCALES = {
    "smoke": Scale("smoke", hidden=4, seeds=1, eval_episodes=3, iterations=2, queries=1, meta_batch=2,
                   inner_steps=1, radii=RADII[:1], toy=True),
    "cpu": Scale("cpu", hidden=32, seeds=1, eval_episodes=200, iterations=1000, queries=5),
    "paper": Scale("paper", hidden=64, seeds=3, eval_episodes=600),
}


@dataclass(frozen=True)
class Row:
    """One line of a table: an algorithm with its settings."""

    label: str
    algorithm: str
    changes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    data: str  # "omniglot" or "miniimagenet"
    shots: int
    settings: dict
    rows: tuple[Row, ...]
    timing: bool = False


def _radius_rows(radii: tuple[float, ...] = RADII) -> tuple[Row, ...]:
    rows = [Row("maml", "maml")]
    for alpha in radii:
        rows.append(Row(f"sharp-low a={alpha:g}", "sharp-low", {"alpha_low": alpha}))
        rows.append(Row(f"sharp-up a={alpha:g}", "sharp-up", {"alpha_up": alpha}))
        rows.append(Row(f"sharp-both a={alpha:g}", "sharp-both", {"alpha_low": alpha, "alpha_up": alpha}))
    return tuple(rows)


TABLES = {
    "table1": Table("table1", "mini-ImageNet 5-way 1-shot", "miniimagenet", 1, _MINI,
                    tuple(Row(a, a) for a in _SHARP)),
    "table2": Table("table2", "mini-ImageNet 5-way 5-shot", "miniimagenet", 5, _MINI,
                    tuple(Row(a, a) for a in _SHARP)),
    "table3": Table("table3", "mini-ImageNet 5-way 1-shot: efficient variants and time", "miniimagenet", 1,
                    _MINI, tuple(Row(a, a) for a in (*_SHARP, "sharp-anil", "esharp", "esharp-anil")),
                    timing=True),
    "table4": Table("table4", "Omniglot 20-way 1-shot", "omniglot", 1, _OMNIGLOT_20,
                    tuple(Row(a, a) for a in _SHARP)),
    "table5": Table("table5", "Omniglot 20-way 5-shot", "omniglot", 5, _OMNIGLOT_20,
                    tuple(Row(a, a) for a in _SHARP)),
    "family": Table("family", "Omniglot 5-way 1-shot, every algorithm, one budget", "omniglot", 1, _OMNIGLOT_5,
                    tuple(Row(a, a) for a in NAMES), timing=True),
    "radius": Table("radius", "radius ablation, 5-way 1-shot", "miniimagenet", 1, _MINI, _radius_rows()),
}


def _config(table: Table, row: Row, scale: Scale, source: str, seed: int, runs: Path,
            data_root: str | None, threads: int | None) -> TrainConfig:
    settings = dict(table.settings)
    if scale.iterations is not None:
        settings["iterations"] = scale.iterations
    if scale.meta_batch is not None:
        settings["meta_batch"] = scale.meta_batch
    if scale.inner_steps is not None:
        settings["inner_steps"] = settings["eval_inner_steps"] = scale.inner_steps
    if scale.task_batching is not None:
        settings["task_batching"] = scale.task_batching
    config = TrainConfig(
        algorithm=row.algorithm, source=source, data_root=data_root, shots=table.shots,
        queries=scale.queries or TrainConfig.queries, hidden=scale.hidden, seed=seed,
        eval_episodes=scale.eval_episodes, eval_queries=TrainConfig.queries if scale.queries else None,
        threads=threads, checkpoint_every=max(1, settings["iterations"] // 20), **settings, **row.changes)
    if scale.toy:
        config = replace(config, eval_queries=1)
    # the run directory is named by what changes its numbers (radii as the algorithm resolves
    # them): rows with equal settings, in any table, share one run
    resolved = config.build_algorithm().config
    key = {k: getattr(config, k) for k in (*TRAINING_FIELDS, "iterations", "eval_episodes",
                                          "eval_inner_steps", "eval_queries")}
    key.update(alpha_low=resolved.alpha_low, alpha_up=resolved.alpha_up)
    key = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return replace(config, out=str(runs / f"{row.algorithm}-{digest}"))


def _run_once(config: TrainConfig, progress) -> dict:
    """The run's results.json, training (or resuming) it first if needed."""
    out = Path(config.out)
    results = out / RESULTS_NAME
    if results.is_file():
        return json.loads(results.read_text())
    return run(config, resume=(out / CHECKPOINT_NAME).is_file(), progress=progress).to_dict()


def _source_for(table: Table, scale: Scale, toy: str | None, miniimagenet: str | None) -> tuple[str | None, str]:
    """(source spec or None when skipped, a note saying what data it is)."""
    if scale.toy:
        return toy, "generated toy folder (smoke scale: checks the pipeline, not the paper)"
    if table.data == "omniglot":
        return "omniglot", "Omniglot, Vinyals split"
    if miniimagenet:
        return f"miniimagenet:{miniimagenet}", "mini-ImageNet (Ravi & Larochelle split)"
    if table.key == "radius":
        return "omniglot", "Omniglot 5-way 1-shot, standing in for mini-ImageNet (not given)"
    return None, "skipped: mini-ImageNet not given (--miniimagenet PATH)"


@contextlib.contextmanager
def _ctrl_c_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread for the block.  Ctrl-C reaches every process of the
    terminal's group, pool workers too; a worker started with it blocked (threads and spawned
    processes inherit the mask, across exec) cannot die of it, with a traceback, while it
    imports or waits for a run.  :func:`_run_quietly` unblocks it for the run itself."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _run_quietly(config: TrainConfig) -> str | TrainingInterrupted:
    """One run in a pool worker: its path, or its TrainingInterrupted *returned*, since a
    KeyboardInterrupt raised in a worker kills it with a traceback instead of reaching the pool."""
    try:
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # train saves on Ctrl-C
            _run_once(config, None)
        finally:
            # process-wide (threads the run started have SIGINT unblocked), and a pending one
            # is dropped: the worker exits after this run (maxtasksperchild=1)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except TrainingInterrupted as stop:
        return stop
    except KeyboardInterrupt:       # a Ctrl-C outside train's own handling: before or after it
        return TrainingInterrupted(f"interrupted around the run {config.out}", 128 + signal.SIGINT)
    return config.out


def _run_parallel(configs: list[TrainConfig], jobs: int, progress) -> None:
    """Train the runs of ``configs`` that have no results yet, ``jobs`` at a time (fresh processes)."""
    import multiprocessing

    todo = [c for c in configs if not (Path(c.out) / RESULTS_NAME).is_file()]
    if not todo:
        return
    with contextlib.ExitStack() as stack:
        with _ctrl_c_blocked():   # the pool's threads, and so every worker they start, inherit it
            # entered here: a Ctrl-C held until the unblock still closes the pool
            pool = stack.enter_context(
                multiprocessing.get_context("spawn").Pool(min(jobs, len(todo)), maxtasksperchild=1))
        for done, out in enumerate(pool.imap_unordered(_run_quietly, todo), 1):
            if isinstance(out, TrainingInterrupted):
                raise out
            if progress is not None:
                print(f"[{done}/{len(todo)}] finished {out}", file=progress, flush=True)


def build_table(key: str, scale: Scale, out: Path, *, miniimagenet: str | None = None,
                data_root: str | None = None, threads: int | None = None, progress=None,
                jobs: int = 1, command: str | None = None) -> dict:
    """Run (or reuse) every row of table ``key`` and write ``out/<key>.json`` and ``.md``.

    ``jobs`` > 1 trains that many runs at once in separate processes (give each ``threads=1``
    on a small machine); the timing columns then measure runs that shared the machine.
    """
    table = TABLES[key]
    toy = None
    if scale.toy:
        ways = max(table.settings["ways"], 5)
        toy = "folder:" + str(write_toy_folder(out / "toy" / f"{ways}way", classes=ways, per_class=7, size=16))
    source, note = _source_for(table, scale, toy, miniimagenet)
    if key == "radius":
        table = replace(table, rows=_radius_rows(scale.radii))
        if source == "omniglot":
            table = replace(table, settings=_OMNIGLOT_5)
    paper = PAPER[key]
    rows = []
    if jobs > 1 and source:
        _run_parallel([_config(table, row, scale, source, seed, out / "runs" / f"seed{seed}", data_root, threads)
                       for row in table.rows for seed in range(scale.seeds)], jobs, progress)
    for row in table.rows if source else ():
        per_seed = [_run_once(_config(table, row, scale, source, seed, out / "runs" / f"seed{seed}",
                                      data_root, threads), progress) for seed in range(scale.seeds)]
        accuracies = [a for r in per_seed for a in r["test"]["accuracies"]]
        mean, _, ci95 = confidence_interval(accuracies)
        rows.append({
            "label": row.label, "algorithm": row.algorithm, "changes": row.changes,
            "accuracy": 100 * mean, "ci95": 100 * ci95 if not math.isnan(ci95) else None,
            "episodes": len(accuracies), "seeds": scale.seeds,
            "train_wall_s": sum(r["train_wall_s"] for r in per_seed),
            # per-process rate, so a resumed run's time is not counted twice
            "s_per_it": (sum(1 / r["it_per_s"] for r in per_seed) / len(per_seed)
                         if all(r.get("it_per_s") for r in per_seed) else None),   # null: no timing
            "paper": paper["ours"].get(row.label), "paper_time": paper.get("time", {}).get(row.label),
            "runs": [r["checkpoint"] for r in per_seed],
            "settings": {k: per_seed[0]["config"][k] for k in ("ways", "shots", "queries", "hidden",
                                                                 "inner_steps", "beta_low", "meta_batch",
                                                                 "meta_lr", "iterations", "eval_inner_steps")},
        })
    if table.timing and rows:
        base = next(r["s_per_it"] for r in rows if r["algorithm"] == "maml")
        for r in rows:
            r["time_vs_maml"] = (r["s_per_it"] / base if base and r["s_per_it"] is not None
                                 else None)
    report = {"table": key, "title": table.title, "reference": paper["reference"], "scale": scale.name,
              "data": note, "rows": rows, "paper_others": paper["others"], "environment": environment("cpu"),
              "ci": "95% CI = 1.96 * std(ddof=1) / sqrt(n) over the per-episode accuracies of all seeds",
              "command": command,
              "timing": (f"training seconds per iteration in each run's own process, "
                         f"{threads or 'default'} torch thread(s) per run, {jobs} run(s) at a time")}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{key}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{key}.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    """A markdown table of ``report`` with the paper's numbers beside ours."""
    timing = any("time_vs_maml" in r for r in report["rows"])
    lines = [f"## {report['title']} ({report['scale']} scale)", "",
             f"Paper: {report['reference']}. Data: {report['data']}. {report['ci']}.", ""]
    if not report["rows"]:
        return "\n".join(lines + ["No runs: " + report["data"], ""])
    head = "| algorithm | ours (%, 95% CI) | paper (%) |" + (" s/iteration | time vs MAML | paper time |" if timing else "")
    lines += [head, "|---|---|---|" + ("---|---|---|" if timing else "")]
    for r in report["rows"]:
        ci = "n/a" if r["ci95"] is None else f"{r['ci95']:.2f}"
        paper = "-" if r["paper"] is None else f"{r['paper']:.2f}"
        line = f"| {r['label']} | {r['accuracy']:.2f} +- {ci} | {paper} |"
        if timing:
            s_it = "-" if r["s_per_it"] is None else f"{r['s_per_it']:.3f}"
            vs = "-" if r["time_vs_maml"] is None else f"x{r['time_vs_maml']:.2f}"
            line += f" {s_it} | {vs} | " + ("-" if r["paper_time"] is None else f"x{r['paper_time']:.2f}") + " |"
        lines.append(line)
    for name, value in report["paper_others"].items():
        lines.append(f"| {name} (paper only) | - | {value:.2f} |" + (" - | - | - |" if timing else ""))
    s = report["rows"][0]["settings"]
    lines += ["", "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items())
              + f"; seeds={report['rows'][0]['seeds']}, episodes={report['rows'][0]['episodes']}.", ""]
    if timing and report.get("timing"):
        lines += [f"Time: {report['timing']}.", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m experiments.fewshot.tables",
               description=__doc__.split("\n\n")[0] + " Runs are reused from OUT/runs when present.",
               epilog="Tables: " + ", ".join(TABLES) + ". Scales: smoke (seconds, toy data), cpu "
                      "(hours per table on 2 cores), paper (the paper's settings: GPU days).")
    p.add_argument("--scale", choices=tuple(SCALES), required=True,
                   help="smoke: seconds on toy data; cpu: 32 filters, 1,000 iterations; paper: the paper's settings")
    p.add_argument("--tables", nargs="+", choices=tuple(TABLES), default=list(TABLES),
                   help="which tables (default: all)")
    p.add_argument("--out", default="results/fewshot/tables", help="output directory (default %(default)s)")
    p.add_argument("--miniimagenet", metavar="PATH", default=None,
                   help="mini-ImageNet root (see experiments.data.miniimagenet); tables 1-3 are skipped without it")
    p.add_argument("--data-root", metavar="DIR", default=None, help="directory holding omniglot/")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="torch threads per run (default: torch's choice)")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="meta-iterations of every run, overriding the scale's (and the table's)")
    p.add_argument("--meta-batch", type=positive_int, default=None,
                   help="tasks per meta-update of every run, overriding the scale's (and the table's)")
    p.add_argument("--eval-episodes", type=positive_int, default=None,
                   help="test episodes of every run, overriding the scale's")
    p.add_argument("--task-batching", choices=("loop", "vmap"), default=None,
                   help="tasks of a meta-batch one after another or vectorised (default: testbed "
                        "train's); on CPU vmap pays for small models (32 filters, 5 queries)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="runs trained at once in separate processes (default %(default)s); with 2 on "
                        "2 cores pass --threads 1")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


INTERRUPTED = "interrupted; finished runs are kept, rerun the same command to resume"
"""What ``main`` prints on Ctrl-C (runs checkpoint as they go and finished ones are reused)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if SCALES[args.scale].toy:
        # smoke scale runs every table on a generated toy folder: data options would be ignored
        for option, value in (("--data-root", args.data_root), ("--miniimagenet", args.miniimagenet)):
            if value is not None:
                parser.error(f"argument {option}: not used at --scale smoke (every table runs on a "
                             f"generated toy folder), got {value!r}; drop it or use --scale cpu/paper")
    scale = SCALES[args.scale]
    if args.iterations is not None:
        scale = replace(scale, iterations=args.iterations)
    if args.meta_batch is not None:
        scale = replace(scale, meta_batch=args.meta_batch)
    if args.eval_episodes is not None:
        scale = replace(scale, eval_episodes=args.eval_episodes)
    if args.task_batching is not None:
        scale = replace(scale, task_batching=args.task_batching)
    keep_freed_memory()
    try:
        for key in args.tables:
            report = build_table(key, scale, Path(args.out) / args.scale, miniimagenet=args.miniimagenet,
                                 data_root=args.data_root, threads=args.threads,
                                 progress=None if args.quiet else sys.stderr, jobs=args.jobs,
                                 command=" ".join(["python -m experiments.fewshot.tables",
                                                   *map(shlex.quote, argv if argv is not None else sys.argv[1:])]))
            print(f"{key}: {len(report['rows'])} rows -> {Path(args.out) / args.scale / key}.md")
    except ValueError as error:
        print(f"tables: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:   # a run's TrainingInterrupted carries 143 for SIGTERM
        print(f"tables: {INTERRUPTED}", file=sys.stderr)
        return getattr(error, "exit_status", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
