"""What training, evaluation and the landscape share: episodes as tasks, seeds, the algorithm.

* :func:`as_tasks` / :func:`split_episode`: an :class:`experiments.data.Episode` as the
  ``{"x", "y"}`` batches that :func:`experiments.fewshot.model.cross_entropy_loss` takes.
* :func:`derived_generator`: a ``torch.Generator`` seeded from ``(seed, stream, index)``
  alone, so nothing depends on what was drawn before (exact resume).
* :func:`build_algorithm`: the :class:`testbed.algorithms.Algorithm` a config names.
* :func:`episode_metrics`: post-adaptation query loss and accuracy of one episode, the one
  definition used by the training log, validation and ``testbed eval``.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from experiments.data import Episode
from experiments.provenance import git_commit
from experiments.fewshot.model import HEAD_NAMES, conv4_forward, cross_entropy_loss
from testbed import Tasks, algorithms
from testbed.algorithms import Algorithm

# Independent random streams of one run, each seeded from (seed, stream, index).
STREAM_INIT = 0
"""Initial meta-parameters."""
STREAM_SWP = 1
"""ESAM's SWP masks of meta-iteration ``index``."""
STREAM_EVAL_SWP = 2
"""ESAM's SWP masks when adapting to evaluation episode ``index``."""
STREAM_LANDSCAPE = 3
"""Random directions of the loss landscape."""
STREAM_LOG_SWP = 4
"""ESAM's SWP masks of the training-accuracy log (never used by the meta-update)."""
EVAL_EPISODE_KEY = 1_000_003
"""Evaluation episode ``i`` is drawn from ``default_rng([seed, EVAL_EPISODE_KEY, i])``.

Training batches use the data layer's three-key ``[seed, index, task]`` generators; the
evaluation key keeps the two families of streams apart even on the same source."""


def derived_generator(seed: int, stream: int, index: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded by ``numpy.random.SeedSequence([seed, stream, index])``."""
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & ((1 << 63) - 1))


def split_episode(episode: Episode, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """``(support, query)`` as ``{"x", "y"}`` dicts (leading axes kept)."""
    support = {"x": episode.support_x.to(device), "y": episode.support_y.to(device)}
    query = {"x": episode.query_x.to(device), "y": episode.query_y.to(device)}
    return support, query


def as_tasks(episode: Episode, device: str | torch.device = "cpu") -> Tasks:
    """A batched episode (leading meta-batch axis) as :class:`testbed.Tasks`."""
    return Tasks(*split_episode(episode, device))


def evaluation_episode_seed(seed: int, episode: int) -> list[int]:
    """The numpy seed of evaluation episode ``episode`` (see :data:`EVAL_EPISODE_KEY`)."""
    return [int(seed), EVAL_EPISODE_KEY, int(episode)]


def build_algorithm(name: str, *, beta_low: float, inner_steps: int, alpha_low: float | None = None,
                    alpha_up: float | None = None, swp_keep: float | None = None,
                    sds_fraction: float | None = None, sam_alpha: float | None = None,
                    first_order: bool = False, task_batching: str = "vmap",
                    checkpoint: bool = False, cuda_graph: bool = False) -> Algorithm:
    """``testbed.algorithms.make`` for Conv-4: the ANIL variants adapt :data:`HEAD_NAMES`.

    ``checkpoint`` (gradient checkpointing) and ``cuda_graph`` (the meta-gradient replayed
    from a captured CUDA graph) apply to the MAML-type algorithms; for the others (reptile,
    imaml, sam, agnostic-sam), which keep no inner-loop graph, they are ignored.
    """
    alg = algorithms.make(
        name, beta_low=beta_low, inner_steps=inner_steps, alpha_low=alpha_low, alpha_up=alpha_up,
        head_names=HEAD_NAMES, swp_keep=swp_keep, sds_fraction=sds_fraction, sam_alpha=sam_alpha,
        first_order=first_order, task_batching=task_batching,
        checkpoint=checkpoint and name in algorithms.CHECKPOINTABLE)
    if cuda_graph and name in algorithms.CHECKPOINTABLE:
        alg = algorithms.with_config(alg, cuda_graph=True)
    return alg

PRECISIONS = ("float32", "bf16", "tf32")


@contextlib.contextmanager
def precision_context(precision: str, device: str):
    """The arithmetic of ``precision`` (:data:`PRECISIONS`) on ``device`` for the block.

    ``bf16``: ``torch.autocast`` with bfloat16 (on CPUs without native bfloat16 this is
    slower than float32).  ``tf32``: TensorFloat-32 matrix products and convolutions on
    CUDA, restored afterwards.  ``float32``: nothing changes.
    """
    if precision == "float32":
        yield
    elif precision == "bf16":
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32":
        if not device.startswith("cuda"):
            raise ValueError(f"precision 'tf32' needs a CUDA device, got {device!r}")
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    else:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def episode_metrics(algorithm: Algorithm, params: Mapping[str, torch.Tensor], support: Mapping,
                    query: Mapping, generator: torch.Generator | None = None) -> tuple[float, float]:
    """Query loss and accuracy after ``algorithm.adapt`` on ``support`` (one task, no task axis)."""
    adapted = algorithm.adapt(cross_entropy_loss, params, support, generator=generator)
    with torch.no_grad():
        logits = conv4_forward(adapted, query["x"])
        loss = torch.nn.functional.cross_entropy(logits, query["y"])
        accuracy = (logits.argmax(dim=-1) == query["y"]).double().mean()
    return float(loss), float(accuracy)


def environment(device: str) -> dict[str, Any]:
    """Where a run happened: device, torch version, threads, git commit."""
    described = device
    if device.startswith("cuda") and torch.cuda.is_available():
        described = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {"device": described, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "git_commit": git_commit()}


MALLOC_KEEP_BYTES = 1 << 30
"""glibc's trim and mmap thresholds set by :func:`keep_freed_memory` (1 GiB)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers in glibc's malloc.h


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse; True if it accepted.

    By default glibc serves every allocation above its (adaptive) mmap threshold with a fresh
    ``mmap`` and returns it with ``munmap``, so each activation tensor of a meta-gradient costs
    page faults and zeroing: measured on this project's 2-core machine (Conv-4, 32 filters,
    meta-batch 16, 1 thread), 0.56 s of system time per meta-iteration against 0.94 s of user
    time, and 1.5 s -> 0.8 s per iteration with both thresholds at 1 GiB.  The numbers computed
    are unchanged; the process keeps its peak memory.  A no-op (False) off glibc.  Called by
    the command-line entry points, never on import.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES))
