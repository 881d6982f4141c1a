"""Whole meta-gradients replayed from captured CUDA graphs (``SharpMAMLConfig(cuda_graph=True)``).

Why: a Conv-4 meta-gradient at the paper's sizes is thousands of small kernels (N fine-tuning
steps, their double backward, M tasks, two passes for Sharp-MAML_up/both).  On an H200 the
host's cost of launching them dominates: the core's per-task loop took 0.27 s on mini-ImageNet
5-way 1-shot where its FLOPs need milliseconds (``results/bench/gpu-h200/``).  A CUDA graph
records the launches once and replays them as one.

How: the first call with a given loss, configuration and input layout (shapes, dtypes, device,
autocast and TF32 settings) copies its inputs into static buffers, runs the eager
meta-gradient a few times on a side stream (lazy initialisation, cuDNN's algorithm choice),
captures one more run into a :class:`torch.cuda.CUDAGraph`, replays it and returns a copy of
the outputs.  Later calls copy their inputs into the same buffers and replay.  The captured
function is the eager one (:func:`testbed.meta._meta_gradient`), so the numbers are the eager
path's; the SWP masks are drawn on the host side from the caller's generator, as eagerly, and
copied in like the data.

Memory: the graph keeps a private pool sized by what the eager call had alive at its peak;
tensors freed during the capture are reused within it, so ``task_batching="loop"`` keeps one
task's graph, as it does eagerly.  Each cached graph holds its pool until it is evicted
(:data:`MAX_GRAPHS`, least recently used first) or :func:`clear` is called.

Limits: the result is a constant (``meta_gradient`` under an outer ``grad`` or with parameters
that require grad is refused); everything must live on one CUDA device; and host-side values
are frozen at capture (nothing in :func:`~testbed.meta._meta_gradient` reads a tensor's value
on the host, and CUDA refuses a capture that tries).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from testbed import meta

MAX_GRAPHS = 16
"""Graphs kept at once (each holds its memory pool); the least recently used goes first."""
WARMUP = 2
"""Eager runs on a side stream before the capture, as CUDA graph capture needs."""

_DEVICE_TYPE = "cuda"
_GRAPHS: OrderedDict = OrderedDict()
_COUNTS = {"captures": 0, "replays": 0}


@dataclass
class _Graphed:
    inputs: tuple            # (params, tasks, masks): the static buffers the graph reads
    outputs: meta.MetaGradient   # the static buffers the graph writes
    replay: Callable[[], None]
    keep: object = None      # the CUDAGraph (its pool lives as long as it does)


def clear() -> None:
    """Drop every cached graph (and, once the caller holds no outputs, their memory)."""
    _GRAPHS.clear()


def supported(device: str | torch.device) -> bool:
    """Whether tensors on ``device`` can be captured (CUDA devices)."""
    return torch.device(device).type == _DEVICE_TYPE


def counts() -> dict[str, int]:
    """How many captures and replays this process has made (a capture is also replayed)."""
    return dict(_COUNTS)


def _layout(tree) -> str:
    """Everything about ``tree`` a capture depends on except its tensors' values."""
    return repr(meta._tree_map(lambda t: (tuple(t.shape), t.dtype, t.device), tree))


def _check(params: dict, tasks: meta.Tasks, masks: dict) -> torch.device:
    if not meta._no_transform_active() or any(
            v.requires_grad or meta.is_functorch_wrapped_tensor(v) for v in params.values()):
        raise ValueError("cuda_graph=True returns a constant meta-gradient: it cannot run under a "
                         "torch.func transform or with parameters that require grad (use "
                         "cuda_graph=False to differentiate through the meta-gradient)")
    leaves = meta._leaves((params, tasks, masks))
    devices = sorted({str(t.device) for t in leaves})
    if len(devices) != 1 or leaves[0].device.type != _DEVICE_TYPE:
        raise ValueError(f"cuda_graph=True needs the parameters and task data on one CUDA "
                         f"device; they are on {', '.join(devices)}")
    return leaves[0].device


def _key(body, loss_fn, params, tasks, cfg, masks, device) -> tuple:
    amp = (device.type == "cuda" and torch.is_autocast_enabled(device.type))
    return (body, loss_fn, cfg, _layout(params), _layout(tasks), _layout(masks), amp,
            torch.get_autocast_dtype(device.type) if amp else None,
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.are_deterministic_algorithms_enabled())


def _copy_into(static, new) -> None:
    for s, n in zip(meta._leaves(static), meta._leaves(new)):
        s.copy_(n)


def _cuda_capture(fn: Callable[[], object], device: torch.device) -> tuple[object, Callable, object]:
    """Warm ``fn`` up on a side stream, capture one call; returns (outputs, replay, graph)."""
    amp = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type)

    def run():
        # autocast's cache of cast weights would let a cast done before the capture be
        # read (stale) by the graph: the capture runs with the cache off
        if amp:
            with torch.autocast(device.type, dtype=dtype, cache_enabled=False):
                return fn()
        return fn()

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()        # the warm-up's blocks, so the graph's pool is not a second copy
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    return out, graph.replay, graph


_capture = _cuda_capture
"""The capture used (tests on machines without CUDA substitute an eager stand-in)."""


def replay(body: Callable, loss_fn, params: dict, tasks: meta.Tasks, cfg: meta.SharpMAMLConfig,
           masks: dict) -> meta.MetaGradient:
    """``body(loss_fn, params, tasks, cfg, masks)`` from a cached CUDA graph, captured on the
    first call of its kind; returns copies of the outputs (the next replay overwrites them)."""
    device = _check(params, tasks, masks)
    key = _key(body, loss_fn, params, tasks, cfg, masks, device)
    entry = _GRAPHS.get(key)
    if entry is None:
        static = meta._tree_map(lambda t: t.detach().clone(), (params, tasks, masks))
        s_params, s_tasks, s_masks = static
        try:
            out, run, keep = _capture(lambda: body(loss_fn, s_params, s_tasks, cfg, s_masks), device)
        except RuntimeError as error:
            raise RuntimeError(
                f"cuda_graph=True could not capture the meta-gradient ({error}). A loss that "
                "reads a tensor's value on the host (.item(), float(t), `if t:`, printing), "
                "synchronises, or makes shapes depend on values cannot be captured: run it "
                "with cuda_graph=False") from error
        entry = _Graphed((s_params, s_tasks, s_masks), out, run, keep)
        _COUNTS["captures"] += 1
        _GRAPHS[key] = entry
        while len(_GRAPHS) > MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    _GRAPHS.move_to_end(key)
    _copy_into(entry.inputs, (params, tasks, masks))
    entry.replay()
    _COUNTS["replays"] += 1
    g = entry.outputs
    return meta.MetaGradient({k: v.clone() for k, v in g.grad.items()}, g.loss.clone(),
                             None if g.eps is None else {k: v.clone() for k, v in g.eps.items()})
