"""Does a reduced precision leave test accuracy after training unchanged?

Trains the same MAML run (``testbed train``) once per ``--precision`` (float32, the reference;
bf16: ``torch.autocast`` with bfloat16; tf32: TensorFloat-32 tensor cores, CUDA only) and
compares their test accuracies, measured on the same episodes (train's eval seed).  A precision
leaves accuracy unchanged when ``|acc_P - acc_float32| <= ci95_P + ci95_float32``, the two 95%
intervals (1.96 * std(ddof=1) / sqrt(episodes)) touching; otherwise it differs.

Each run is its own ``testbed train`` process writing ``DIR/runs/<precision>/`` (side by side
unless ``--sequential``).  Ctrl-C or SIGTERM stops them, each saving its checkpoint (exit 130
or 143, as ``testbed train``); the same command then resumes them (``--resume``) and reuses the
runs that had finished.  Writes
``DIR/precision.md`` (also printed) and ``DIR/precision.json``.

The README's CPU comparison ("bfloat16 against float32", ``results/fewshot/precision_5w1s_cpu.md``:
Omniglot 5-way 1-shot, Conv-4 with 32 filters, 5 training and 15 test queries per class,
meta-batch 8, 400 iterations, 600 test episodes, one thread per run, vmap over tasks) is the
default; its runs went one after the other, which ``--sequential`` repeats for the timings
(accuracies do not depend on it)::

    python -m experiments.fewshot.precision_study --sequential --out runs/precision_5w1s_cpu

On a GPU (float32, tf32 and bf16; each meta-gradient replayed from a CUDA graph)::

    python -m experiments.fewshot.precision_study --device cuda --cuda-graph --out DIR
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from experiments.cliutil import (Parser, comma_separated, nonnegative_int, positive_int,
                                 thread_count)
from experiments.fewshot.checkpoint import CHECKPOINT_NAME
from experiments.fewshot.common import PRECISIONS
from experiments.fewshot.config import TrainConfig, device_problem
from experiments.fewshot.train import RESULTS_NAME

__all__ = ["DIFFERS", "UNCHANGED", "PrecisionStudyConfig", "RunFailed", "format_markdown", "main",
           "run", "verdict"]

REFERENCE = "float32"
"""The precision every other one is compared with."""
RUNS_DIR = "runs"
STDERR_NAME = "stderr.txt"
"""Each run's stderr, in its directory (the tail goes into the message of a failed run)."""
POLL_S = 0.1
"""How often the running processes are checked for their end."""
STDERR_TAIL_LINES = 8
"""Lines of a failed run's stderr quoted in the error message."""
UNCHANGED = "unchanged (within the intervals)"
DIFFERS = "differs"
INTERRUPTED = ("interrupted; the stopped runs saved their checkpoints and finished runs are kept: "
               "rerun the same command to resume")
_NOT_COMPARED = ("out", "data_root")
"""Config fields that may differ between a finished run and the study's (neither changes a number)."""
PROG = "python -m experiments.fewshot.precision_study"


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


@dataclass(frozen=True)
class PrecisionStudyConfig:
    """One study (validated on construction; ValueError names the bad value).

    out:           study directory: ``precision.md``, ``precision.json``, ``runs/<precision>/``.
    device:        torch device of every run, ``cpu`` or ``cuda[:k]``.
    precisions:    the precisions compared, float32 (the reference) among them; None: float32,
                   tf32, bf16 on CUDA, float32, bf16 elsewhere (tf32 is a CUDA mode).
    iterations, hidden, queries, eval_queries, meta_batch, eval_episodes, seed, source,
    task_batching: ``testbed train``'s options of the same names; the defaults are the README's
                   CPU comparison (``results/fewshot/precision_5w1s_cpu.md``).
    data_root:     ``testbed train --data-root`` (None: train's default).
    cuda_graph:    ``testbed train --cuda-graph`` (CUDA only).
    threads:       torch threads per run; None: 1 on CPU (runs side by side share the cores),
                   torch's choice on CUDA.
    sequential:    one run after another instead of all at once.
    """

    out: str
    device: str = "cpu"
    precisions: tuple[str, ...] | None = None
    iterations: int = 400
    hidden: int = 32
    queries: int = 5
    eval_queries: int = 15
    meta_batch: int = 8
    eval_episodes: int = 600
    seed: int = 0
    source: str = "omniglot"
    task_batching: str = "vmap"
    data_root: str | None = None
    cuda_graph: bool = False
    threads: int | None = None
    sequential: bool = False

    def __post_init__(self) -> None:
        problem = device_problem(self.device)
        if problem is not None:
            raise ValueError(problem)
        cuda = _is_cuda(self.device)
        precisions = self.precisions
        if precisions is None:
            precisions = ("float32", "tf32", "bf16") if cuda else ("float32", "bf16")
        precisions = tuple(precisions)
        for p in precisions:
            if p not in PRECISIONS:
                raise ValueError(f"precisions: each must be one of {', '.join(PRECISIONS)}, got {p!r}")
        repeated = sorted({p for p in precisions if precisions.count(p) > 1})
        if repeated:
            raise ValueError(f"precisions: each may appear once, got {', '.join(repeated)} more than once")
        if REFERENCE not in precisions:
            raise ValueError(f"precisions must include {REFERENCE}, the reference the others are "
                             f"compared with, got {','.join(precisions)!r}")
        if "tf32" in precisions and not cuda:
            raise ValueError(f"precisions: tf32 is a CUDA tensor-core mode, not available on device "
                             f"{self.device!r}; drop tf32 or use --device cuda")
        if self.cuda_graph and not cuda:
            raise ValueError(f"cuda_graph replays captured CUDA kernels; device {self.device!r} "
                             "is not a CUDA device (drop --cuda-graph)")
        if self.eval_episodes < 2:
            raise ValueError(f"eval_episodes must be >= 2 (a 95% interval needs two episodes), "
                             f"got {self.eval_episodes!r}")
        # the reference first, the others in the order given
        ordered = (REFERENCE,) + tuple(p for p in precisions if p != REFERENCE)
        object.__setattr__(self, "precisions", ordered)
        if self.threads is None and not cuda:
            object.__setattr__(self, "threads", 1)
        for p in ordered:
            self.train_config(p)   # train's own checks (source, cuda_graph, sizes) before any run

    def run_dir(self, precision: str) -> Path:
        return Path(self.out) / RUNS_DIR / precision

    def train_config(self, precision: str) -> TrainConfig:
        """The run of ``precision``, as ``testbed train`` will build it from :meth:`train_argv`."""
        return TrainConfig(algorithm="maml", source=self.source, data_root=self.data_root,
                           hidden=self.hidden, queries=self.queries, eval_queries=self.eval_queries,
                           meta_batch=self.meta_batch, iterations=self.iterations,
                           eval_episodes=self.eval_episodes, seed=self.seed, device=self.device,
                           threads=self.threads, task_batching=self.task_batching,
                           precision=precision, cuda_graph=self.cuda_graph,
                           out=str(self.run_dir(precision)))

    def train_argv(self, precision: str, resume: bool) -> list[str]:
        """The ``testbed train`` command of ``precision``'s run."""
        argv = [sys.executable, "-m", "experiments.cli", "train", "--algorithm", "maml",
                "--precision", precision, "--source", self.source, "--hidden", str(self.hidden),
                "--queries", str(self.queries), "--eval-queries", str(self.eval_queries),
                "--meta-batch", str(self.meta_batch), "--iterations", str(self.iterations),
                "--eval-episodes", str(self.eval_episodes), "--seed", str(self.seed),
                "--task-batching", self.task_batching, "--device", self.device,
                "--out", str(self.run_dir(precision)), "--quiet"]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        if self.data_root is not None:
            argv += ["--data-root", self.data_root]
        if self.cuda_graph:
            argv.append("--cuda-graph")
        if resume:
            argv.append("--resume")
        return argv


class RunFailed(RuntimeError):
    """A run's process ended with a non-zero status; the message gives it and its stderr's tail."""


def _finished_results(config: PrecisionStudyConfig, precision: str) -> dict[str, Any] | None:
    """The run's results.json if it holds this very run finished and tested, else None."""
    try:
        data = json.loads((config.run_dir(precision) / RESULTS_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not data.get("test"):
        return None
    expected = config.train_config(precision).to_dict()
    same = all(data["config"].get(k) == v for k, v in expected.items() if k not in _NOT_COMPARED)
    return data if same and data.get("iterations") == config.iterations else None


def _child_env() -> dict[str, str]:
    """This environment with the repository on PYTHONPATH, so ``-m experiments.cli`` imports
    this checkout from any working directory."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else root + os.pathsep + path}


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"    (its stderr could not be read: {error})"
    lines = [line.rstrip() for line in lines if line.strip()][-STDERR_TAIL_LINES:]
    return "\n".join("    " + line for line in lines) if lines else "    (its stderr is empty)"


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _say(progress: TextIO | None, text: str) -> None:
    if progress is not None:
        print(text, file=progress, flush=True)


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    """SIGTERM to every process still running (train saves its checkpoint), and wait for them;
    a second interrupt while waiting kills them (losing what followed their last checkpoint)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait()


def _train_all(config: PrecisionStudyConfig, todo: list[str], progress: TextIO | None) -> None:
    """Run ``todo``'s trainings (all at once, or one after another); RunFailed after all have
    ended if any failed.  On KeyboardInterrupt the running ones are stopped first.

    Each process gets its own session, so Ctrl-C on a terminal reaches only this one, which
    then sends each run exactly one SIGTERM: two signals in quick succession could land the
    second inside the first's handling in train."""
    queue, running, failures = list(todo), {}, []
    env = _child_env()
    try:
        while queue or running:
            while queue and not (config.sequential and running):
                precision = queue.pop(0)
                out = config.run_dir(precision)
                resume = (out / CHECKPOINT_NAME).is_file()
                out.mkdir(parents=True, exist_ok=True)
                with (out / STDERR_NAME).open("w") as stderr:
                    proc = subprocess.Popen(config.train_argv(precision, resume), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                            start_new_session=True)
                running[precision] = (proc, time.perf_counter())
                _say(progress, f"{precision}: {'resumed from its checkpoint' if resume else 'started'} ({out})")
            time.sleep(POLL_S)
            for precision, (proc, began) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[precision]
                wall = time.perf_counter() - began
                if code == 0:
                    _say(progress, f"{precision}: finished in {wall:.1f} s")
                else:
                    _say(progress, f"{precision}: failed ({_status(code)}) after {wall:.1f} s")
                    failures.append((precision, code))
    except BaseException:   # Ctrl-C, SIGTERM (see main) or an error here: no run left behind
        _stop([proc for proc, _ in running.values()])
        raise
    if failures:
        failures.sort(key=lambda failure: config.precisions.index(failure[0]))
        raise RunFailed("\n".join(
            f"the {p} run ({config.run_dir(p)}) failed with {_status(code)}; the end of its stderr "
            f"({config.run_dir(p) / STDERR_NAME}):\n{_tail(config.run_dir(p) / STDERR_NAME)}"
            for p, code in failures))


def verdict(accuracy: float, ci95: float, reference_accuracy: float, reference_ci95: float) -> str:
    """:data:`UNCHANGED` when ``|accuracy - reference_accuracy| <= ci95 + reference_ci95`` (the
    two 95% intervals overlap), else :data:`DIFFERS`."""
    for name, value in (("ci95", ci95), ("reference_ci95", reference_ci95)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    return UNCHANGED if abs(accuracy - reference_accuracy) <= ci95 + reference_ci95 else DIFFERS


def _row(precision: str, data: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    test = data["test"]
    accuracy, ci95 = float(test["accuracy"]), float(test["ci95"])
    if reference is None:
        diff, said = 0.0, "reference"
    else:
        diff = accuracy - float(reference["test"]["accuracy"])
        said = verdict(accuracy, ci95, float(reference["test"]["accuracy"]), float(reference["test"]["ci95"]))
    return {"precision": precision, "accuracy_pct": 100 * accuracy, "ci95_pct": 100 * ci95,
            "episodes": test["episodes"], "train_wall_s": data["train_wall_s"],
            "it_per_s": data["it_per_s"], "test_wall_s": data["test_wall_s"],
            "diff_points": 100 * diff, "verdict": said, "final_loss": data.get("final_loss"),
            "resumed_from": data.get("resumed_from"), "environment": data.get("environment"),
            "config": data["config"]}


def run(config: PrecisionStudyConfig, *, progress: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Train (resume, or reuse when finished) every precision's run and compare them.

    Returns ``{"rows": [one dict per precision, float32 first], "study": the config}``; each
    row holds accuracy and ci95 in percent, the difference to float32 in points, the verdict,
    the timings and the run's own config and environment.

    Raises:
        RunFailed: a run's process failed (after every other run has ended).
        KeyboardInterrupt: Ctrl-C (or SIGTERM turned into one by :func:`main`); the running
            processes have been stopped and have saved their checkpoints.
    """
    done = {p: _finished_results(config, p) for p in config.precisions}
    for p, data in done.items():
        if data is not None:
            _say(progress, f"{p}: finished earlier, reusing {config.run_dir(p) / RESULTS_NAME}")
    _train_all(config, [p for p, data in done.items() if data is None], progress)
    results = {p: done[p] or json.loads((config.run_dir(p) / RESULTS_NAME).read_text())
               for p in config.precisions}
    reference = results[REFERENCE]
    rows = [_row(p, results[p], None if p == REFERENCE else reference) for p in config.precisions]
    return {"study": asdict(config), "rows": rows}


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    lines = ["| precision | test accuracy (%) | train wall (s) | it/s | test wall (s) | "
             "vs float32 (points) | verdict |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        diff = "-" if r["verdict"] == "reference" else f"{r['diff_points']:+.2f}"
        lines.append(f"| {r['precision']} | {r['accuracy_pct']:.2f} ± {r['ci95_pct']:.2f} | "
                     f"{_number(r['train_wall_s'], 1)} | {_number(r['it_per_s'], 2)} | "
                     f"{_number(r['test_wall_s'], 1)} | {diff} | {r['verdict']} |")
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """The study as markdown: command, commit, torch and device, the set-up, the table."""
    s = result["study"]
    train = result["rows"][0]["config"]
    together = ("one after the other" if s["sequential"] else
                "side by side (sharing the machine: the speeds carry each other's load)")
    threads = ("torch's choice of threads" if s["threads"] is None else
               f"{s['threads']} torch thread{'s' if s['threads'] > 1 else ''} each")
    return "\n".join([
        f"# Precision against float32: MAML, {train['ways']}-way {train['shots']}-shot {s['source']}, "
        f"{s['device']}", "",
        f"`{result['command']}`  ", f"commit `{result['git_commit']}`, torch {result['torch']}, "
        f"device {result['device']}", "",
        f"The same run under each precision: Conv-4 with {s['hidden']} filters, {s['queries']} training "
        f"queries per class, meta-batch {s['meta_batch']}, {s['iterations']} meta-iterations, "
        f"{train['inner_steps']} inner step of {train['beta_low']}, Adam {train['meta_lr']}, seed "
        f"{s['seed']}, task batching {s['task_batching']}; tested on the same {s['eval_episodes']} "
        f"episodes ({s['eval_queries']} queries per class, {train['eval_inner_steps']} fine-tuning "
        f"steps, eval seed {train['eval_seed']}). Runs {together}, {threads}. Accuracy ± 95% CI "
        f"(1.96 · std(ddof=1) / √episodes); a precision leaves accuracy unchanged when its "
        f"difference to float32 is at most the sum of the two intervals.", "",
        format_table(result), "",
        f"Each run's files (results.json with every episode's accuracy, log.jsonl, checkpoint.pt) "
        f"are in `{Path(s['out']) / RUNS_DIR}/<precision>/`.", ""])


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt so that the same clean-up runs (exit 143, not 130)."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` (a KeyboardInterrupt) for the block, as Ctrl-C
    raises KeyboardInterrupt (main thread only; not over an ignored SIGTERM)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def handle(signum, frame):
        raise _Terminated

    before = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def build_parser() -> Parser:
    d = {f.name: f.default for f in fields(PrecisionStudyConfig)}
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes DIR/precision.md, DIR/precision.json and each run in DIR/runs/<precision>/")
    p.add_argument("--device", default=d["device"], help="torch device of every run (default %(default)s)")
    p.add_argument("--precisions", default=None,
                   type=comma_separated(str, lambda v: v in PRECISIONS, "values from " + ", ".join(PRECISIONS)),
                   help="comma-separated, float32 (the reference) among them (default: "
                        "float32,tf32,bf16 on CUDA, float32,bf16 otherwise)")
    p.add_argument("--iterations", type=positive_int, default=d["iterations"],
                   help="meta-iterations per run (default %(default)s)")
    p.add_argument("--hidden", type=positive_int, default=d["hidden"],
                   help="filters per conv layer of Conv-4 (default %(default)s)")
    p.add_argument("--queries", type=positive_int, default=d["queries"],
                   help="query images per class in meta-training (default %(default)s)")
    p.add_argument("--eval-queries", type=positive_int, default=d["eval_queries"],
                   help="query images per class at test (default %(default)s)")
    p.add_argument("--meta-batch", type=positive_int, default=d["meta_batch"],
                   help="tasks per meta-update (default %(default)s)")
    p.add_argument("--eval-episodes", type=positive_int, default=d["eval_episodes"],
                   help="test episodes per run, >= 2 (default %(default)s)")
    p.add_argument("--seed", type=nonnegative_int, default=d["seed"],
                   help="seed of the initial parameters and the training episodes (default %(default)s)")
    p.add_argument("--source", default=d["source"], help="data spec of testbed train (default %(default)s)")
    p.add_argument("--task-batching", choices=("auto", "loop", "vmap"), default=d["task_batching"],
                   help="tasks one after another or vectorised (default %(default)s, as the README's runs)")
    p.add_argument("--data-root", metavar="DIR", default=None, help="passed to testbed train")
    p.add_argument("--cuda-graph", action="store_true", help="passed to testbed train (CUDA only)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="torch threads per run (default: 1 on CPU, testbed train's choice on CUDA)")
    p.add_argument("--sequential", action="store_true",
                   help="train the runs one after another instead of side by side")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = PrecisionStudyConfig(**{f.name: getattr(args, f.name) for f in fields(PrecisionStudyConfig)})
    except ValueError as error:
        parser.error(str(error))
    import torch

    from experiments.fewshot.common import environment
    from experiments.provenance import git_commit
    command = " ".join([PROG, *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    out = Path(config.out)
    try:
        with _sigterm_as_interrupt():
            out.mkdir(parents=True, exist_ok=True)
            result = run(config, progress=sys.stderr)
            result = {"question": __doc__.split("\n")[0], "command": command,
                      "git_commit": git_commit() or "unknown", "torch": str(torch.__version__),
                      "device": environment(config.device)["device"], **result}
            text = format_markdown(result)
            (out / "precision.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
            (out / "precision.md").write_text(text)
    except KeyboardInterrupt as interrupt:   # 128 + the signal's number, as testbed train exits
        print(f"{PROG}: {INTERRUPTED}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(interrupt, _Terminated) else signal.SIGINT)
    except RunFailed as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:   # an unwritable --out
        parser.error(str(error))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
