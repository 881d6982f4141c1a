"""``testbed bench``: benchmarks that print measured ratios (and save them with --out)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments.cliutil import comma_separated, positive_int, positive_int_list


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="benchmarks: measured speed ratios",
        description="Benchmarks that print measured times and ratios. Suites: 'synthetic' runs "
                    "the claim registry's batched rate sweep against per-run loops doing the "
                    "same work (closed form one run at a time, and the torch.func core one run "
                    "and one iteration at a time), after checking that all three agree. "
                    "'fewshot' times Conv-4 meta-gradients: the core (vmap and loop) against a "
                    "plain autograd loop, a 'higher' loop and parallel-metalearn's vmapped MAML "
                    "(the last two with pip install '.[bench]'), after checking they agree in "
                    "float64, and every Sharp variant against MAML with its FLOP ratio and the "
                    "paper's Table 3 ratio (with --cuda-graph, also under one captured CUDA "
                    "graph per meta-gradient). 'memory' measures the peak memory and time of one "
                    "Conv-4 MAML meta-gradient as the inner loop grows (--steps), for the graph "
                    "path with tasks vectorised or looped, the checkpointed adjoint sweep, and "
                    "first order, each in a fresh process.")
    p.add_argument("suite", nargs="?", default="fewshot", choices=("synthetic", "fewshot", "memory"),
                   help="which benchmark (default %(default)s)")
    p.add_argument("--family", choices=("quadratic", "tanh"), default="quadratic",
                   help="task family of the sweep (default %(default)s)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per setting (default %(default)s)")
    p.add_argument("--max-horizon", type=positive_int, default=200,
                   help="longest horizon T; the sweep uses T/4, T/2, T (default %(default)s)")
    p.add_argument("--setting", choices=("omniglot-20w1s", "miniimagenet-5w1s", "all"),
                   default="all", help="fewshot: input shapes and meta-batch (default %(default)s)")
    p.add_argument("--scale", choices=("paper", "small"), default="paper",
                   help="fewshot: the paper's sizes, or 2 tasks, 2 queries, 8 filters, 2 inner "
                        "steps (default %(default)s)")
    p.add_argument("--device", default="cpu", help="fewshot: torch device, cpu or cuda (default %(default)s)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="fewshot: timed runs per measurement, median reported (default %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="fewshot: also time the core's per-task loop under torch.compile, after "
                        "checking it in float64 (compiling takes minutes on a CPU and is not timed)")
    p.add_argument("--compile-mode", type=_compile_modes, default=("default",),
                   help="fewshot, with --compile: torch.compile modes to time, comma-separated, of "
                        "default, reduce-overhead (CUDA graphs on CUDA), max-autotune "
                        "(default: default)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="fewshot, CUDA only: also time the core with each meta-gradient replayed "
                        "from one captured CUDA graph (cuda_graph=True): MAML rows 'core, loop, "
                        "CUDA graph' and 'core, vmap, CUDA graph', checked in float64 first, and "
                        "a graphed time for every variant beside its eager one (each graph's "
                        "capture is in the warm-up, not timed)")
    p.add_argument("--steps", type=positive_int_list, default=(1, 5, 10, 20),
                   help="memory: inner-step counts N to measure, comma-separated (default 1,5,10,20)")
    p.add_argument("--out", type=Path, help="also write bench_<suite>.json and .md here")
    p.set_defaults(func=_run)


def _compile_modes(text: str) -> tuple[str, ...]:
    from testbed.meta import COMPILE_MODES     # here, not at import: keeps `testbed --help` free of torch

    return comma_separated(str, COMPILE_MODES.__contains__, "modes of " + ", ".join(COMPILE_MODES))(text)


def _run(args: argparse.Namespace) -> int:
    from experiments.provenance import git_commit

    # the code that runs is the code at the start: a commit made while a long bench runs
    # must not be credited with its numbers
    args.commit = git_commit() or "unknown"
    if args.out is not None:   # an unwritable --out fails now, not after the bench
        args.out.mkdir(parents=True, exist_ok=True)
    return {"fewshot": _fewshot, "memory": _memory, "synthetic": _synthetic}[args.suite](args)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device must be cpu or cuda[:N], got {device!r}")


def _memory(args: argparse.Namespace) -> int:
    from experiments.bench import fewshot, memory

    _check_device(args.device)
    names = list(fewshot.SETTINGS) if args.setting == "all" else [args.setting]
    tables, bodies = [], {}
    for name in names:
        result = memory.run(name, args.scale, tuple(args.steps), args.device, progress=sys.stderr)
        tables.append(memory.format_table(result))
        bodies[result.setting] = result.to_dict()
        print(tables[-1] + "\n", flush=True)
    meta = {**_meta(f"testbed bench memory --setting {args.setting} --scale {args.scale} "
                    f"--device {args.device} --steps {','.join(map(str, args.steps))}", args.commit),
            "device": _device_name(args.device)}
    _write(args.out, "memory", meta, {"results": bodies}, "\n\n".join(tables))
    return 0


def _device_name(device: str) -> str:
    import torch

    return device if device == "cpu" else torch.cuda.get_device_name(device)


def _meta(command: str, commit: str | None) -> dict:
    import platform

    import torch

    return {"command": command, "git_commit": commit, "torch": torch.__version__,
            "python": platform.python_version()}


def _write(out: Path | None, suite: str, meta: dict, body: dict, table: str) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_{suite}.json").write_text(json.dumps({**meta, **body}, indent=1))
    (out / f"bench_{suite}.md").write_text(
        f"`{meta['command']}` at commit `{meta['git_commit']}`, torch {meta['torch']}, "
        f"device {meta['device']}" + (f", allocator: {meta['allocator']}" if "allocator" in meta else "")
        + f"\n\n{table}\n")


def _fewshot(args: argparse.Namespace) -> int:
    from experiments.bench import fewshot

    _check_device(args.device)
    if args.cuda_graph and not args.device.startswith("cuda"):
        raise ValueError(f"--cuda-graph needs --device cuda, got {args.device}")
    from experiments.fewshot.common import keep_freed_memory

    # as testbed train does: without it glibc unmaps and re-faults every large temporary,
    # which costs the torch.func core more system time than the plain loops
    kept = keep_freed_memory()
    names = list(fewshot.SETTINGS) if args.setting == "all" else [args.setting]
    tables, bodies = [], {}
    for name in names:
        setting = fewshot.SETTINGS[name]
        if args.scale == "small":
            setting = fewshot.small(setting)
        result = fewshot.run(setting, args.device, args.repeats, progress=sys.stderr,
                             compile=args.compile, compile_modes=args.compile_mode,
                             cuda_graph=args.cuda_graph)
        tables.append(fewshot.format_table(result))
        bodies[setting.name] = result.to_dict()
        print(tables[-1] + "\n", flush=True)
    device = _device_name(args.device)
    meta = {**_meta(f"testbed bench fewshot --setting {args.setting} --scale {args.scale} "
                    f"--device {args.device} --repeats {args.repeats}"
                    + (f" --compile --compile-mode {','.join(args.compile_mode)}" if args.compile else "")
                    + (" --cuda-graph" if args.cuda_graph else ""),
                    args.commit), "device": device,
            "allocator": "glibc keeps freed memory (as testbed train)" if kept else "default"}
    _write(args.out, "fewshot", meta, {"results": bodies}, "\n\n".join(tables))
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from experiments.bench import synthetic

    T = args.max_horizon
    if T < 4:
        raise ValueError(f"--max-horizon must be >= 4, got {T}")
    spec = replace(synthetic.default_spec(args.family), seeds=args.seeds,
                   horizons=(T // 4, T // 2, T))
    result = synthetic.run(spec, progress=sys.stderr)
    table = synthetic.format_table(result)
    print(table)
    meta = {**_meta(f"testbed bench synthetic --family {args.family} --seeds {args.seeds} "
                    f"--max-horizon {T}", args.commit), "device": "cpu"}
    _write(args.out, "synthetic", meta, result.to_dict(), table)
    return 0
