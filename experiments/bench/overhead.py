"""Host-side overhead of a MAML meta-gradient: the core's per-task loop against plain loops.

On a Conv-4 so small that the kernels cost almost nothing, the time of a meta-gradient is the
cost of dispatching its operations, as it is on a GPU at the paper's sizes (where the core's
loop trailed a plain ``torch.autograd.grad`` loop by 11% to 39% on an H200).  This measures
that cost on the CPU, so a change to it can be checked without a GPU:

    OMP_NUM_THREADS=1 python -m experiments.bench.overhead [--rounds 7]

``--setting omniglot-20w1s`` (or ``miniimagenet-5w1s``) runs the same comparison at the paper's
sizes, where the CPU is compute-bound and the question is whether the core's loop is slower than
the plain loop at all.  Beside the medians it prints the per-round ratio of each loop to the plain
one (paired: a slow spell of the machine falls on both), whose spread says how far one median
of a few rounds can be trusted.  The order of the implementations turns by one each round.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from experiments.bench import fewshot as B
from experiments.cliutil import Parser, positive_int
from experiments.fewshot.common import keep_freed_memory

TINY = B.Setting("tiny", ways=5, shots=1, queries=2, image_size=16, channels=1, inner_steps=5,
                 meta_batch=4, beta_low=0.1, hidden=4)
"""Conv-4 with 4 filters on 16x16 images: dispatch-bound."""


PLAIN = "autograd loop"


def run(rounds: int = 7, setting: B.Setting = TINY,
        say=lambda _: None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median milliseconds of one MAML meta-gradient per loop implementation (interleaved),
    and each implementation's per-round time over the plain loop's in the same round."""
    torch.set_num_threads(1)
    params, tasks = B.make_problem(setting)
    impls = B.implementations()
    fns = {k: impls[k] for k in ("core, loop", PLAIN, "higher loop") if k in impls}
    for f in fns.values():
        f(params, tasks, setting.beta_low, setting.inner_steps)
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        # the order turns by one each round, so that no implementation always runs after the
        # same one (and inherits the heap state it leaves)
        for k in B.turned(names, r):
            f = fns[k]
            t = time.perf_counter()
            f(params, tasks, setting.beta_low, setting.inner_steps)
            times[k].append(time.perf_counter() - t)
        say(f"round {r + 1} of {rounds}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    ratios = {k: [a / b for a, b in zip(v, times[PLAIN])] for k, v in times.items() if k != PLAIN}
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}, ratios


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m experiments.bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--setting", choices=("tiny", *B.SETTINGS), default="tiny",
                   help="tiny: Conv-4 with 4 filters on 16x16 images (dispatch-bound, a CPU proxy "
                        "for the GPU; default); or a paper-scale setting of testbed bench fewshot")
    args = p.parse_args(argv)
    setting = TINY if args.setting == "tiny" else B.SETTINGS[args.setting]
    kept = keep_freed_memory()      # as testbed bench and train run (page faults otherwise dominate)
    medians, ratios = run(args.rounds, setting, say=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"{setting.name}, median of {args.rounds} interleaved rounds, {torch.get_num_threads()} "
          f"thread, allocator: {'glibc keeps freed memory' if kept else 'default'}")
    for k, ms in medians.items():
        print(f"{k}: {ms:.1f} ms")
    for k, rs in ratios.items():
        q = statistics.quantiles(rs, n=4, method="inclusive") if len(rs) > 1 else [rs[0]] * 3
        print(f"{k} / {PLAIN}, per round: median {statistics.median(rs):.3f}, quartiles "
              f"{q[0]:.3f}-{q[2]:.3f}, range {min(rs):.3f}-{max(rs):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
