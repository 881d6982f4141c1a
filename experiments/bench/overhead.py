"""Host-side overhead of a MAML meta-gradient: the core's per-task loop against plain loops.

On a Conv-4 so small that the kernels cost almost nothing, the time of a meta-gradient is the
cost of dispatching its operations, as it is on a GPU at the paper's sizes (where the core's
loop trailed a plain ``torch.autograd.grad`` loop by 11% to 39% on an H200).  This measures
that cost on the CPU, so a change to it can be checked without a GPU:

    OMP_NUM_THREADS=1 python -m experiments.bench.overhead [--rounds 7]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from experiments.bench import fewshot as B
from experiments.cliutil import Parser, positive_int

TINY = B.Setting("tiny", ways=5, shots=1, queries=2, image_size=16, channels=1, inner_steps=5,
                 meta_batch=4, beta_low=0.1, hidden=4)
"""Conv-4 with 4 filters on 16x16 images: dispatch-bound."""


def run(rounds: int = 7) -> dict[str, float]:
    """Median milliseconds of one MAML meta-gradient per loop implementation (interleaved)."""
    torch.set_num_threads(1)
    params, tasks = B.make_problem(TINY)
    impls = B.implementations()
    fns = {k: impls[k] for k in ("core, loop", "autograd loop", "higher loop") if k in impls}
    for f in fns.values():
        f(params, tasks, TINY.beta_low, TINY.inner_steps)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f(params, tasks, TINY.beta_low, TINY.inner_steps)
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m experiments.bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds (default 7)")
    args = p.parse_args(argv)
    for k, ms in run(args.rounds).items():
        print(f"{k}: {ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
