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
``np.std``, ddof=0: smaller by the factor ``sqrt((n-1)/n)``, 0.9992 at n = 600.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from experiments.data import FewShotSource, resolve_source, sample_episode
from experiments.fewshot.checkpoint import load_checkpoint
from experiments.fewshot.common import (STREAM_EVAL_SWP, derived_generator, episode_metrics,
                                        evaluation_episode_seed, precision_context, split_episode)
from experiments.fewshot.config import TrainConfig

Z_95 = 1.96
"""Two-sided 95% normal quantile, as in MAML's ``ci95 = 1.96 * std / sqrt(n)``."""


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over ``episodes`` test episodes.

    accuracy:   mean per-episode query accuracy.
    ci95:       half-width of the 95% interval, ``1.96 * std / sqrt(episodes)``.
    std:        sample standard deviation (ddof=1) of the per-episode accuracies.
    loss:       mean per-episode query cross-entropy.
    accuracies: the per-episode accuracies, in episode order.
    """

    accuracy: float
    ci95: float
    std: float
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
        out = asdict(self)
        if not per_episode:
            out.pop("accuracies")
        return out

    def __str__(self) -> str:
        return (f"{100 * self.accuracy:.2f}% +- {100 * self.ci95:.2f}% (95% CI, {self.episodes} "
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
                    queries: int | None = None, source_name: str | None = None) -> EvalResult:
    """Adapt to ``episodes`` episodes of ``source`` and score each on its query set.

    ``inner_steps`` default: ``config.eval_inner_steps``; ``queries`` default:
    ``config.eval_queries`` or ``config.queries``.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
    steps = config.eval_inner_steps if inner_steps is None else inner_steps
    per_class = queries or config.eval_queries or config.queries
    algorithm = config.build_algorithm(inner_steps=steps)
    needs_generator = algorithm.config.swp_keep is not None
    params = {k: v.to(config.device) for k, v in params.items()}
    accuracies, losses = [], []
    for i in range(episodes):
        episode = sample_episode(source, config.ways, config.shots, per_class,
                                 evaluation_episode_seed(seed, i))
        support, query = split_episode(episode, config.device)
        generator = derived_generator(seed, STREAM_EVAL_SWP, i, config.device) if needs_generator else None
        with precision_context(config.precision, config.device):
            loss, accuracy = episode_metrics(algorithm, params, support, query, generator)
        losses.append(loss)
        accuracies.append(accuracy)
    mean, std, ci95 = confidence_interval(accuracies)
    return EvalResult(
        accuracy=mean, ci95=ci95, std=std, loss=float(np.mean(losses)), episodes=episodes,
        accuracies=tuple(accuracies), source=source_name or source.name, part=part, seed=seed,
        inner_steps=steps, ways=config.ways, shots=config.shots, queries=per_class)


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], *, source: str | None = None,
                        part: str = "test", episodes: int = 600, seed: int = 0,
                        inner_steps: int | None = None, queries: int | None = None,
                        data_root: str | None = None) -> EvalResult:
    """:func:`evaluate_params` on a checkpoint's meta-parameters and configuration.

    ``source`` (a spec) defaults to the one the checkpoint was trained on; ``data_root`` to
    the checkpoint's.
    """
    payload = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(payload["config"])
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
                           inner_steps=inner_steps, queries=queries, source_name=spec)
