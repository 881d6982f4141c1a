"""``testbed bench synthetic``: batched rate sweeps against plain loops on the same work.

Three ways to run the same set of meta-training runs (every variant x
horizon x seed of a :class:`~experiments.claims.sweeps.SweepSpec`):

* ``batched``: :func:`experiments.claims.sweeps.run_sweep`, all runs in one
  vectorised closed-form call per iteration (what ``testbed verify`` uses);
* ``loop, closed form``: the same closed form, one run at a time;
* ``loop, autograd``: the straightforward code a user would write, the
  torch.func core (:func:`testbed.meta_gradient`) one run and one iteration
  at a time.

All three must agree on every run's average squared gradient (checked before
the times are reported); the speed-up is the ratio of wall times.  With a
``progress`` stream, ``run`` says which implementation is running and how long
each took (on a terminal the loops also count their runs in place).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from experiments.claims.sweeps import (SweepSpec, run_subset, run_sweep, run_sweep_reference,
                                       run_table, single_threaded)

AGREEMENT = 1e-10
"""Relative agreement required between the three implementations (float64)."""


@dataclass(frozen=True)
class SyntheticBench:
    spec: SweepSpec
    runs: int
    iterations: int
    seconds: dict[str, float]
    max_relative_difference: float

    @property
    def speedups(self) -> dict[str, float]:
        return {k: v / self.seconds["batched"] for k, v in self.seconds.items()}

    def to_dict(self) -> dict:
        return {"spec": asdict(self.spec), "runs": self.runs, "iterations": self.iterations,
                "seconds": self.seconds, "speedup_over_batched": self.speedups,
                "max_relative_difference": self.max_relative_difference}


def default_spec(family: str = "quadratic") -> SweepSpec:
    return SweepSpec(family=family, horizons=(50, 100, 200), seeds=3,
                     schedules=("theorem", "constant"))


class _Progress:
    """``[bench synthetic] <implementation> ...`` lines on ``stream`` (None: silent)."""

    def __init__(self, stream, runs: int):
        self.stream, self.runs = stream, runs
        self.terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()

    def start(self, name: str, what: str) -> None:
        if self.stream is not None:
            print(f"[bench synthetic] {name}: {what} ...", file=self.stream, flush=True)

    def run_done(self, name: str, i: int) -> None:
        # per-run counts only where they can be rewritten in place (a log gets start/end lines)
        if self.terminal:
            print(f"\r[bench synthetic] {name}: run {i}/{self.runs}".ljust(78), end="",
                  file=self.stream, flush=True)

    def end(self, name: str, seconds: float) -> None:
        if self.stream is not None:
            print(f"\r[bench synthetic] {name}: {self.runs} runs in {seconds:.1f} s".ljust(78),
                  file=self.stream, flush=True)


def _closed_form_loop(spec: SweepSpec, done=lambda i: None) -> np.ndarray:
    """The same closed-form code, one run per call (a batch of one)."""
    count = len(run_table(spec)["T"])
    out = []
    for i in range(count):
        out.append(run_subset(spec, np.array([i]))[0][0])
        done(i + 1)
    return np.array(out)


def run(spec: SweepSpec | None = None, progress=None) -> SyntheticBench:
    """Time the three implementations on ``spec``; ``progress``: a stream (e.g. ``sys.stderr``)
    that is told which implementation runs, or None."""
    spec = spec or default_spec()
    if spec.sigma != 0:
        raise ValueError(f"the comparison needs an exact oracle, got sigma={spec.sigma!r}")
    count = len(run_table(spec)["T"])
    report = _Progress(progress, count)
    seconds = {}
    report.start("batched", f"{count} runs in one batch, up to {max(spec.horizons)} iterations")
    t = time.perf_counter()
    batched = run_sweep(spec).avg_sq_grad.reshape(-1)
    seconds["batched"] = time.perf_counter() - t
    report.end("batched", seconds["batched"])
    name = "loop, closed form"
    report.start(name, f"{count} runs one at a time")
    t = time.perf_counter()
    with single_threaded():
        looped = _closed_form_loop(spec, lambda i: report.run_done(name, i))
    seconds[name] = time.perf_counter() - t
    report.end(name, seconds[name])
    name = "loop, autograd"
    report.start(name, f"{count} runs one at a time, one iteration at a time (the slowest)")
    t = time.perf_counter()
    with single_threaded():
        reference = []
        for i in range(batched.size):
            reference.append(run_sweep_reference(spec, i))
            report.run_done(name, i + 1)
        reference = np.array(reference)
    seconds[name] = time.perf_counter() - t
    report.end(name, seconds[name])
    diff = max(np.max(np.abs(batched - looped) / np.maximum(1.0, np.abs(batched))),
               np.max(np.abs(batched - reference) / np.maximum(1.0, np.abs(batched))))
    if diff > AGREEMENT:
        raise RuntimeError(f"implementations disagree by {diff:.2e} (> {AGREEMENT:g}); no timing reported")
    return SyntheticBench(spec, int(batched.size), int(np.sum(spec.horizons) * batched.size
                                                       // len(spec.horizons)), seconds, float(diff))


def format_table(b: SyntheticBench) -> str:
    s = b.spec
    lines = [f"bench synthetic: {s.family}, {len(s.schedules)} schedules x {len(s.variants)} variants x "
             f"horizons {list(s.horizons)} x {s.seeds} seeds = {b.runs} runs, {b.iterations} "
             f"meta-iterations in all; implementations agree to {b.max_relative_difference:.1e}",
             "", "implementation | seconds | time / batched", "---|---|---"]
    for k, v in b.seconds.items():
        lines.append(f"{k} | {v:.2f} | {b.speedups[k]:.1f}x")
    return "\n".join(lines)
