"""Meta-test: mean accuracy over episodes with a 95% confidence interval.

Every episode is adapted with the trained algorithm's own inner loop
(``Algorithm.adapt``: N steps of (SAM-)gradient descent with step ``beta_low``, eqs. 9, 11,
12 of Abbas et al. 2022), run for ``inner_steps`` steps (default 10, MAML's
``test_num_updates`` for Omniglot), and scored on its query set.  Batch norm uses batch
statistics (see :mod:`experiments.fewshot.model`), so the query set is normalised with its
own statistics: transductive, as in MAML.

Episode ``i`` is drawn from ``numpy.random.default_rng([seed, EVAL_EPISODE_KEY, i])``, so the
same seed gives the same episodes and, the computation being deterministic on CPU, the
same number.

Confidence interval: ``ci95 = 1.96 * std / sqrt(n)`` with ``std`` the sample standard
deviation (``ddof=1``) of the ``n`` per-episode accuracies.  (MAML's ``main.py`` uses
``np.std``, ddof=0: smaller by the factor ``sqrt((n-1)/n)``, 0.9992 at n = 600.)  One
episode has no spread estimate: ``std`` and ``ci95`` are then None (``null`` in JSON, "n/a"
in text).

Progress: a line on the ``progress`` stream, ``\\r``-rewritten at most every
:data:`PROGRESS_INTERVAL_S` seconds on a terminal, else one line per tenth of the episodes
(the convention of the training progress line).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import numpy as np
import torch

from experiments.data import FewShotSource, resolve_source, sample_episode
from experiments.fewshot.checkpoint import load_checkpoint
from experiments.fewshot.common import (STREAM_EVAL_SWP, derived_generator, episode_metrics,
                                        evaluation_episode_seed, precision_context, split_episode)
from experiments.fewshot.config import TrainConfig, device_problem
from testbed import cudagraph

Z_95 = 1.96
"""Two-sided 95% normal quantile, as in MAML's ``ci95 = 1.96 * std / sqrt(n)``."""
PROGRESS_INTERVAL_S = 0.25
"""Shortest time between two redraws of a progress line on a terminal (training's too)."""
PROGRESS_LINES = 10
"""Progress lines of one evaluation when the stream is not a terminal (a log file)."""


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (in nested dicts, lists, tuples) replaced by None,
    for strict JSON (``json.dumps(..., allow_nan=False)``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


class _EpisodeProgress:
    """``episode i/n  r episodes/s`` on ``stream`` (see the module docstring)."""

    def __init__(self, stream: TextIO | None, total: int, what: str) -> None:
        self.stream, self.total, self.what = stream, total, what
        self.terminal = stream is not None and stream.isatty()
        self.every = max(1, math.ceil(total / PROGRESS_LINES))
        self.began = self.last = time.perf_counter()
        self.shown = False

    def update(self, done: int) -> None:
        if self.stream is None:
            return
        now = time.perf_counter()
        if self.terminal:
            if now - self.last < PROGRESS_INTERVAL_S and done < self.total:
                return
        elif done % self.every and done < self.total:
            return
        self.last = now
        rate = done / (now - self.began) if now > self.began else math.inf
        text = f"{self.what} episode {done:>{len(str(self.total))}}/{self.total}  {rate:.2f} episodes/s"
        self.stream.write(f"\r{text} " if self.terminal else text + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.stream is not None and self.terminal and self.shown:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over ``episodes`` test episodes.

    accuracy:   mean per-episode query accuracy.
    ci95:       half-width of the 95% interval, ``1.96 * std / sqrt(episodes)``; None for
                one episode.
    std:        sample standard deviation (ddof=1) of the per-episode accuracies; None for
                one episode.
    loss:       mean per-episode query cross-entropy.
    accuracies: the per-episode accuracies, in episode order.
    """

    accuracy: float
    ci95: float | None
    std: float | None
    loss: float
    episodes: int
    accuracies: tuple[float, ...]
    source: str
    part: str
    seed: int
    inner_steps: int
    ways: int
    shots: int
    queries: int

    def to_dict(self, per_episode: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers, such as the loss of a diverged model, None)."""
        out = asdict(self)
        if not per_episode:
            out.pop("accuracies")
        return finite_or_none(out)

    def __str__(self) -> str:
        ci = "n/a" if self.ci95 is None else f"{100 * self.ci95:.2f}%"
        return (f"{100 * self.accuracy:.2f}% +- {ci} (95% CI, {self.episodes} "
                f"{self.ways}-way {self.shots}-shot episodes of {self.source}/{self.part}, "
                f"{self.inner_steps} fine-tuning steps, seed {self.seed})")


def confidence_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, std, ci95)`` of ``values``: ``std`` with ddof=1, ``ci95 = 1.96 std / sqrt(n)``.

    One value has no spread estimate: std and ci95 are then NaN.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"need a non-empty 1-d sequence of values, got shape {array.shape}")
    mean = float(array.mean())
    if array.size == 1:
        return mean, math.nan, math.nan
    std = float(array.std(ddof=1))
    return mean, std, Z_95 * std / math.sqrt(array.size)


def evaluate_params(params: Mapping[str, torch.Tensor], config: TrainConfig, source: FewShotSource, *,
                    part: str, episodes: int, seed: int = 0, inner_steps: int | None = None,
                    queries: int | None = None, source_name: str | None = None,
                    progress: TextIO | None = None) -> EvalResult:
    """Adapt to ``episodes`` episodes of ``source`` and score each on its query set.

    ``inner_steps`` default: ``config.eval_inner_steps``; ``queries`` default:
    ``config.eval_queries`` or ``config.queries``; ``progress``: stream for the progress
    line (None: silent).  Runs on ``config.device``.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
    steps = config.eval_inner_steps if inner_steps is None else inner_steps
    per_class = queries or config.eval_queries or config.queries
    algorithm = config.build_algorithm(inner_steps=steps)
    needs_generator = algorithm.config.swp_keep is not None
    params = {k: v.to(config.device) for k, v in params.items()}
    accuracies, losses = [], []
    bar = _EpisodeProgress(progress, episodes, part)
    try:
        for i in range(episodes):
            episode = sample_episode(source, config.ways, config.shots, per_class,
                                     evaluation_episode_seed(seed, i))
            support, query = split_episode(episode, config.device)
            generator = derived_generator(seed, STREAM_EVAL_SWP, i, config.device) if needs_generator else None
            with precision_context(config.precision, config.device):
                loss, accuracy = episode_metrics(algorithm, params, support, query, generator)
            losses.append(loss)
            accuracies.append(accuracy)
            bar.update(i + 1)
    finally:
        bar.close()
    mean, std, ci95 = confidence_interval(accuracies)
    std, ci95 = (None, None) if episodes == 1 else (std, ci95)
    return EvalResult(
        accuracy=mean, ci95=ci95, std=std, loss=float(np.mean(losses)), episodes=episodes,
        accuracies=tuple(accuracies), source=source_name or source.name, part=part, seed=seed,
        inner_steps=steps, ways=config.ways, shots=config.shots, queries=per_class)


def checkpoint_config(saved: Mapping[str, Any], device: str | None = None,
                      notes: TextIO | None = None) -> TrainConfig:
    """A checkpoint's :class:`TrainConfig` to run on ``device``.

    ``device`` None: the checkpoint's device if it is usable here, else ``cpu``, saying so on
    ``notes``.  A ``tf32`` run evaluated off CUDA uses float32 (said too).  A ``device`` given
    but unusable is a ValueError naming it.
    """
    data = dict(saved)
    said = []
    if device is None:
        device = data.get("device", "cpu")
        problem = device_problem(device)
        if problem is not None:
            said.append(f"{problem}; the checkpoint's device, using cpu")
            device = "cpu"
    else:
        problem = device_problem(device)
        if problem is not None:
            raise ValueError(problem)
    if data.get("precision") == "tf32" and not device.startswith("cuda"):
        said.append(f"precision tf32 needs CUDA; using float32 on {device}")
        data["precision"] = "float32"
    if not cudagraph.supported(device):
        # training's CUDA-graph replay changes speed, not numbers, and evaluation never
        # replays a meta-gradient: nothing to say, nothing to refuse
        data["cuda_graph"] = False
    data["device"] = device
    config = TrainConfig.from_dict(data)
    if notes is not None:
        for line in said:
            print(f"note: {line}", file=notes, flush=True)
    return config


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], *, source: str | None = None,
                        part: str = "test", episodes: int = 600, seed: int = 0,
                        inner_steps: int | None = None, queries: int | None = None,
                        data_root: str | None = None, device: str | None = None,
                        progress: TextIO | None = None, notes: TextIO | None = None) -> EvalResult:
    """:func:`evaluate_params` on a checkpoint's meta-parameters and configuration.

    ``source`` (a spec) defaults to the one the checkpoint was trained on; ``data_root`` to
    the checkpoint's; ``device`` as :func:`checkpoint_config` (notices go to ``notes``);
    ``progress``: stream for the progress line.
    """
    payload = load_checkpoint(checkpoint)
    config = checkpoint_config(payload["config"], device, notes)
    spec = source or config.source
    root = data_root if data_root is not None else config.data_root
    data = resolve_source(spec, part, root, config.image_size)
    params = payload["params"]
    expected = tuple(payload["image_shape"])
    if tuple(data.image_shape) != expected:
        raise ValueError(f"source {spec!r} gives images {data.image_shape}, the checkpoint was "
                         f"trained on {expected}")
    if data.num_classes < config.ways:
        raise ValueError(f"source {spec!r} part {part!r} has {data.num_classes} classes, fewer than "
                         f"ways={config.ways}")
    return evaluate_params(params, config, data, part=part, episodes=episodes, seed=seed,
                           inner_steps=inner_steps, queries=queries, source_name=spec, progress=progress)
