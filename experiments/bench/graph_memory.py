"""Peak CUDA memory of the eager loop against a CUDA graph of it, counting cuBLAS's workspaces.

    python -m experiments.bench.graph_memory [--setting omniglot-20w1s|miniimagenet-5w1s|all] [--out DIR]

Why: cuBLAS keeps workspaces for every stream that has run a matrix product, held until the
process ends (on an H200 with torch 2.11: 32 MiB after a plain product, 65 MiB after a Conv-4
meta-gradient).  A CUDA graph is warmed up and captured on a side stream, so a program that
runs its eager work on the default stream and its graph on the side stream holds two sets;
``testbed bench fewshot``'s rows, read one after another in one process, cannot show that.
Here each arrangement starts with no workspace (freed between them, with no graph alive) and
its peak is read over what was allocated at its start:

- eager: the core's per-task loop, two calls on the default stream (what a ``higher`` or eager
  training process holds);
- graph after eager work: one eager call on the default stream (as training's evaluation
  runs), then a :class:`testbed.cudagraph.MetaGradientGraph` over the same tensors, first call
  (warm-ups and capture) and a replay;
- graph under capture_stream: the same inside :func:`testbed.cudagraph.capture_stream`, as
  ``testbed train --cuda-graph`` runs it.

CUDA only (exit 2 elsewhere).  Writes ``graph_memory.md`` and ``.json`` (every setting asked
for) under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
from pathlib import Path

import torch

from experiments.bench import fewshot
from experiments.fewshot.model import cross_entropy_loss
from testbed import algorithms, cudagraph

MiB = 2 ** 20


def without_workspaces() -> None:
    """Free cuBLAS's workspaces and the cached blocks.  A captured graph keeps using the workspace
    it was captured with, so the bench's and the cache's graphs are dropped and garbage is
    collected first: call it with no other graph alive."""
    fewshot.clear_graphs()
    gc.collect()
    torch.cuda.synchronize()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()


def allocated() -> int:
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()


def arrangements(setting: fewshot.Setting) -> dict[str, dict[str, float]]:
    """Each arrangement's peak and what it keeps, in MiB over its start."""
    params, tasks = fewshot.make_problem(setting, device="cuda")
    alg = algorithms.make("maml", beta_low=setting.beta_low, inner_steps=setting.inner_steps,
                          task_batching="loop")

    def eager():
        alg.meta_gradient(cross_entropy_loss, params, tasks)

    def eager_only():
        eager()
        eager()

    def graphed():
        eager()
        graph = cudagraph.MetaGradientGraph(cross_entropy_loss, params, tasks, alg.config)
        graph()
        graph()
        return graph   # held until the arrangement's memory is read

    out = {}
    for name, fn, context in (
            ("eager loop, default stream", eager_only, contextlib.nullcontext),
            ("graph after eager work on the default stream", graphed, contextlib.nullcontext),
            ("graph under capture_stream", graphed, lambda: cudagraph.capture_stream("cuda"))):
        without_workspaces()
        torch.cuda.reset_peak_memory_stats()
        start = allocated()
        with context():
            kept = fn()
        out[name] = {"peak_mib": (torch.cuda.max_memory_allocated() - start) / MiB,
                     "kept_mib": (allocated() - start) / MiB}
        del kept
    without_workspaces()
    return out


def workspace_mib() -> float:
    """What a plain matrix product on a new stream keeps allocated (cuBLAS's workspace for it;
    the Conv-4 meta-gradient keeps more, see the eager arrangement's kept MiB)."""
    without_workspaces()
    a, stream = torch.ones(64, 64, device="cuda"), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    before = allocated()
    with torch.cuda.stream(stream):
        a @ a
    held = (allocated() - before) / MiB
    without_workspaces()
    return held


def format_table(asked: str, workspace: float, results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [f"`python -m experiments.bench.graph_memory --setting {asked}` on "
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}; a plain matrix product "
             f"on a new stream keeps {workspace:.1f} MiB (cuBLAS's workspace); the eager row's kept "
             f"MiB is what a stream that ran the meta-gradient keeps"]
    for name, rows in results.items():
        lines += ["", f"{name}: arrangement (from no workspace) | peak MiB over start | kept MiB after",
                  "---|---|---"]
        lines += [f"{row} | {r['peak_mib']:.1f} | {r['kept_mib']:.1f}" for row, r in rows.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench.graph_memory",
        description="Peak CUDA memory of the eager per-task loop against a CUDA graph of it, each "
                    "arrangement from no cuBLAS workspace (see the module docstring).")
    parser.add_argument("--setting", default="omniglot-20w1s", choices=sorted(fewshot.SETTINGS) + ["all"],
                        help="the bench setting, or all of them (default: omniglot-20w1s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for graph_memory.md and .json (default: print only)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("python -m experiments.bench.graph_memory: error: needs a CUDA device, and torch "
              "sees none", file=sys.stderr)
        return 2
    names = sorted(fewshot.SETTINGS) if args.setting == "all" else [args.setting]
    workspace = workspace_mib()
    results = {}
    for name in names:
        print(f"[{name}] three arrangements, each from no cuBLAS workspace", file=sys.stderr, flush=True)
        results[name] = arrangements(fewshot.SETTINGS[name])
    text = format_table(args.setting, workspace, results)
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "graph_memory.md").write_text(text)
        (args.out / "graph_memory.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
             "workspace_mib": workspace, "settings": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
