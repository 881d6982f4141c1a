"""Consecutive meta-gradients of one implementation, with the page faults and system time of each.

Why: on the CPU the vmapped meta-gradient of Omniglot 20-way (meta-batch 16) keeps about 16 GiB
alive, in tensors near or above the 1 GiB glibc is told to keep (``keep_freed_memory``); each
call then touches fresh pages, and the kernel's work of mapping them shows as system time that
depends on the state of the heap and the machine more than on the code.  This makes that
visible, call by call:

    OMP_NUM_THREADS=1 python -m experiments.bench.faults --impl "core, vmap" --calls 6

``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in the environment (glibc 2.35 or later, transparent
huge pages in ``madvise`` mode) makes glibc ask for 2 MiB pages, 512 times fewer faults.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from experiments.bench import fewshot as B
from experiments.cliutil import Parser, positive_int
from experiments.fewshot.common import keep_freed_memory


def run(impl: str, calls: int, setting: B.Setting, say=lambda _: None) -> list[dict]:
    """One row per call: seconds, minor page faults, system seconds, peak resident GiB so far."""
    torch.set_num_threads(1)
    params, tasks = B.make_problem(setting)
    fn = B.implementations()[impl]
    rows = []
    for i in range(calls):
        before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn(params, tasks, setting.beta_low, setting.inner_steps)
        seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
        rows.append({"call": i + 1, "seconds": seconds, "minor_faults": after.ru_minflt - before.ru_minflt,
                     "system_seconds": after.ru_stime - before.ru_stime,
                     "peak_rss_gib": after.ru_maxrss / 2 ** 20})   # ru_maxrss is KiB on Linux
        say(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m experiments.bench.faults", description=__doc__.split("\n\n")[0])
    impls = tuple(B.implementations())
    p.add_argument("--impl", choices=impls, default="core, vmap",
                   help="which MAML implementation of testbed bench fewshot (default %(default)r)")
    p.add_argument("--setting", choices=tuple(B.SETTINGS), default="omniglot-20w1s",
                   help="paper-scale setting (default %(default)s)")
    p.add_argument("--calls", type=positive_int, default=4, help="consecutive calls (default 4)")
    args = p.parse_args(argv)
    kept = keep_freed_memory()
    print(f"{args.impl}, {args.setting}, {args.calls} consecutive calls, 1 thread, allocator: "
          f"{'glibc keeps freed memory' if kept else 'default'}", flush=True)
    print("call | seconds | minor page faults | system seconds | peak RSS GiB", flush=True)
    run(args.impl, args.calls, B.SETTINGS[args.setting], say=lambda r: print(
        f"{r['call']} | {r['seconds']:.2f} | {r['minor_faults']} | {r['system_seconds']:.2f} | "
        f"{r['peak_rss_gib']:.2f}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
