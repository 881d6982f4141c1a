"""N-way K-shot episodes drawn from a FewShotSource, reproducible by (seed, index).

Public API:
    Episode  (NamedTuple: support_x, support_y, query_x, query_y, classes)
    sample_episode(source, ways, shots, queries, generator_or_seed, dtype=torch.float32) -> Episode
    episode_batch(source, ways, shots, queries, meta_batch, seed, index, dtype=torch.float32) -> Episode
    episode_rng(seed, index, task) -> np.random.Generator

Drawing one episode from a generator ``rng``: ``classes = rng.choice(num_classes, ways,
replace=False)`` (a random ordered choice, so label ``i`` goes to ``classes[i]`` and the
class order is randomly permuted); then for each class in turn, ``rng.choice(size,
shots + queries, replace=False)`` images, the first ``shots`` for support and the rest for
query. Support and query are class-major: rows ``i*shots : (i+1)*shots`` of support have
label ``i``. Pixels are ``uint8 / 255`` in ``dtype``; labels are int64.

Reproducibility (needed for exact resume): task ``j`` of batch ``index`` of a run with seed
``seed`` is drawn from its own generator ``np.random.default_rng([seed, index, j])``, so it
does not depend on what was sampled before, and a batch of ``meta_batch = m`` is the first
``m`` tasks of the same batch with any larger meta_batch.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from .errors import DataError, require_int
from .source import FewShotSource

__all__ = ["Episode", "episode_batch", "episode_rng", "sample_episode"]


class Episode(NamedTuple):
    """One few-shot task, or a batch of them with a leading [meta_batch] axis.

    Fields (single episode; C, H, W = source.image_shape):
        support_x: [ways*shots, C, H, W] float in [0, 1].
        support_y: [ways*shots] int64 labels in 0..ways-1, class-major.
        query_x: [ways*queries, C, H, W] float in [0, 1].
        query_y: [ways*queries] int64 labels in 0..ways-1, class-major.
        classes: [ways] int64, the source class that label i stands for.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor


def _check_episode_args(source: FewShotSource, ways, shots, queries, dtype) -> None:
    if not isinstance(source, FewShotSource):
        raise DataError(f"source must be a FewShotSource, got {type(source).__name__}")
    require_int("ways", ways, 2)
    if ways > source.num_classes:
        raise DataError(f"ways must be <= {source.num_classes} (classes in {source.name!r}), got {ways}")
    require_int("shots", shots, 1)
    require_int("queries", queries, 1)
    sizes = source.class_sizes
    smallest = int(np.argmin(sizes))
    if sizes[smallest] < shots + queries:
        raise DataError(
            f"class {source.class_names[smallest]!r} of {source.name!r} has {sizes[smallest]} images, "
            f"fewer than shots + queries = {shots} + {queries} = {shots + queries}"
        )
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise DataError(f"dtype must be a floating torch.dtype, got {dtype!r}")


def _as_generator(generator_or_seed) -> np.random.Generator:
    if isinstance(generator_or_seed, np.random.Generator):
        return generator_or_seed
    seeds = generator_or_seed if isinstance(generator_or_seed, (list, tuple)) else [generator_or_seed]
    valid = bool(seeds) and all(
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0 for value in seeds
    )
    if not valid:
        raise DataError(
            "generator_or_seed must be a numpy Generator, an int >= 0 or a non-empty list of them, "
            f"got {generator_or_seed!r}"
        )
    return np.random.default_rng([int(value) for value in seeds])


def episode_rng(seed: int, index: int, task: int) -> np.random.Generator:
    """The generator of task ``task`` in batch ``index`` of the run seeded ``seed``."""
    keys = [require_int("seed", seed, 0), require_int("index", index, 0), require_int("task", task, 0)]
    return np.random.default_rng(keys)


def _draw(source: FewShotSource, ways: int, shots: int, queries: int, rng: np.random.Generator):
    """uint8 images [ways, shots+queries, C, H, W] and the chosen classes [ways]."""
    classes = rng.choice(source.num_classes, size=ways, replace=False)
    sizes = source.class_sizes
    images = np.stack([
        source.class_images(c, rng.choice(sizes[c], size=shots + queries, replace=False)) for c in classes
    ])
    return images, classes


def _episode(images: np.ndarray, classes: np.ndarray, shots: int, dtype: torch.dtype) -> Episode:
    """Split drawn images [..., ways, shots+queries, C, H, W] into an Episode (leading axes kept)."""
    *lead, ways, per_class, channels, height, width = images.shape

    def part(block: np.ndarray, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(block)).to(dtype).div_(255)
        x = x.reshape(*lead, ways * count, channels, height, width)
        y = torch.arange(ways).repeat_interleave(count).expand(*lead, ways * count).contiguous()
        return x, y

    support_x, support_y = part(images[..., :shots, :, :, :], shots)
    query_x, query_y = part(images[..., shots:, :, :, :], per_class - shots)
    classes = torch.from_numpy(np.asarray(classes, dtype=np.int64))
    return Episode(support_x, support_y, query_x, query_y, classes)


def sample_episode(
    source: FewShotSource,
    ways: int,
    shots: int,
    queries: int,
    generator_or_seed: np.random.Generator | int | Sequence[int],
    dtype: torch.dtype = torch.float32,
) -> Episode:
    """One ``ways``-way ``shots``-shot episode with ``queries`` query images per class.

    ``generator_or_seed`` is a numpy Generator (advanced in place) or the seed(s) of a new one.
    """
    _check_episode_args(source, ways, shots, queries, dtype)
    images, classes = _draw(source, ways, shots, queries, _as_generator(generator_or_seed))
    return _episode(images, classes, shots, dtype)


def episode_batch(
    source: FewShotSource,
    ways: int,
    shots: int,
    queries: int,
    meta_batch: int,
    seed: int,
    index: int,
    dtype: torch.dtype = torch.float32,
) -> Episode:
    """Batch ``index`` of the run seeded ``seed``: ``meta_batch`` episodes stacked on axis 0.

    Task ``j`` is ``sample_episode(source, ways, shots, queries, episode_rng(seed, index, j))``.
    """
    _check_episode_args(source, ways, shots, queries, dtype)
    require_int("meta_batch", meta_batch, 1)
    drawn = [
        _draw(source, ways, shots, queries, episode_rng(seed, index, task)) for task in range(meta_batch)
    ]
    images = np.stack([task_images for task_images, _ in drawn])
    classes = np.stack([task_classes for _, task_classes in drawn])
    return _episode(images, classes, shots, dtype)
