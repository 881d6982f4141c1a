"""A few-shot source: the images of every class, in one uint8 array.

Public: ``FewShotSource``.

Storage. ``images`` is one read-only uint8 array [N, C, H, W] (pixel value 255 means 1.0);
base class ``b`` owns rows ``starts[b] : starts[b] + counts[b]``. Rows not owned by any class
may exist (they are never sampled), so a source can be a view into a larger array.

Rotation classes are lazy: with ``rotations = (0, 1, 2, 3)`` class ``c`` is base class
``c // 4`` turned by ``rotations[c % 4]`` quarter turns counter-clockwise (``np.rot90``
convention) when its images are read. Materialising them would store every Omniglot
image four times (4x memory, 4x cache) to save a ``rot90`` of a few 28x28 images per
episode, which costs microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import DataError, require_int

__all__ = ["FewShotSource"]

_QUARTER_TURNS = (0, 1, 2, 3)


@dataclass(frozen=True, eq=False, repr=False)
class FewShotSource:
    """Images grouped by class for few-shot episodes.

    Attributes:
        images: uint8 [N, C, H, W], read-only; float value is ``images / 255``.
        starts: int64 [B], first row of each base class in ``images``.
        counts: int64 [B], number of images of each base class (>= 1).
        base_names: B distinct names of the base classes.
        rotations: quarter turns (counter-clockwise) applied to every base class; each gives
            a class of its own. ``(0,)`` means no rotation classes.
        name: a human-readable description of where the source came from.
    """

    images: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    base_names: tuple[str, ...]
    rotations: tuple[int, ...] = (0,)
    name: str = ""
    _class_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(
                f"images must be uint8 [N, C, H, W], got {images.dtype} of shape {images.shape}"
            )
        starts = np.asarray(self.starts, dtype=np.int64).copy()
        counts = np.asarray(self.counts, dtype=np.int64).copy()
        base_names = tuple(self.base_names)
        rotations = tuple(self.rotations)
        if not (starts.shape == counts.shape == (len(base_names),)):
            raise DataError(
                f"starts {starts.shape}, counts {counts.shape} and base_names "
                f"({len(base_names)}) must have one entry per base class"
            )
        if len(set(base_names)) != len(base_names):
            raise DataError(f"base_names must be distinct in source {self.name!r}")
        if counts.size and (counts.min() < 1 or starts.min() < 0 or (starts + counts).max() > len(images)):
            raise DataError(
                f"class ranges of source {self.name!r} must be non-empty and lie inside "
                f"the {len(images)} images"
            )
        distinct = len(set(rotations)) == len(rotations)
        if not rotations or not distinct or not set(rotations) <= set(_QUARTER_TURNS):
            raise DataError(f"rotations must be distinct values in {_QUARTER_TURNS}, got {rotations!r}")
        if rotations != (0,) and images.shape[2] != images.shape[3]:
            raise DataError(f"rotation classes need square images, got shape {images.shape[1:]}")
        images = images.view()
        images.flags.writeable = False
        starts.flags.writeable = False
        counts.flags.writeable = False
        names = base_names if rotations == (0,) else tuple(
            f"{base}/rot{90 * k}" for base in base_names for k in rotations
        )
        for attribute, value in [
            ("images", images), ("starts", starts), ("counts", counts),
            ("base_names", base_names), ("rotations", rotations), ("_class_names", names),
        ]:
            object.__setattr__(self, attribute, value)

    @classmethod
    def from_counts(
        cls,
        images: np.ndarray,
        counts: Sequence[int],
        base_names: Sequence[str],
        rotations: tuple[int, ...] = (0,),
        name: str = "",
    ) -> FewShotSource:
        """A source whose base classes own consecutive blocks of ``counts`` rows, in order."""
        counts = np.asarray(counts, dtype=np.int64)
        return cls(images, np.cumsum(counts) - counts, counts, tuple(base_names), rotations, name)

    @property
    def num_classes(self) -> int:
        """Number of classes, rotation classes included."""
        return len(self.base_names) * len(self.rotations)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each class; rotation classes are ``"<base>/rot<degrees>"``."""
        return self._class_names

    @property
    def class_sizes(self) -> np.ndarray:
        """Number of images of each class, int64 [num_classes]."""
        return np.repeat(self.counts, len(self.rotations))

    def class_images(self, c: int, indices: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """uint8 [k, C, H, W]: images ``indices`` (default: all) of class ``c``, rotated."""
        require_int("class index", c, 0)
        if c >= self.num_classes:
            raise DataError(f"class index must be < {self.num_classes}, got {c}")
        base, turns = divmod(c, len(self.rotations))
        rows = np.arange(self.counts[base]) if indices is None else np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.counts[base]):
            raise DataError(
                f"image indices of class {self.class_names[c]!r} must lie in "
                f"[0, {self.counts[base]}), got {rows.tolist()}"
            )
        chosen = self.images[self.starts[base] + rows]
        return np.rot90(chosen, self.rotations[turns], axes=(-2, -1))

    def subset(
        self, base_indices: Sequence[int], rotations: tuple[int, ...] | None = None, name: str | None = None
    ) -> FewShotSource:
        """A compact copy holding only base classes ``base_indices`` (in that order)."""
        base_indices = [require_int("base class index", b, 0) for b in base_indices]
        if any(b >= len(self.base_names) for b in base_indices):
            raise DataError(f"base class indices must be < {len(self.base_names)}, got {base_indices}")
        counts = self.counts[base_indices]
        rows = np.concatenate(
            [np.arange(self.starts[b], self.starts[b] + self.counts[b]) for b in base_indices]
            or [np.empty(0, dtype=np.int64)]
        )
        return FewShotSource.from_counts(
            np.ascontiguousarray(self.images[rows]),
            counts,
            [self.base_names[b] for b in base_indices],
            self.rotations if rotations is None else rotations,
            self.name if name is None else name,
        )

    def __repr__(self) -> str:
        return (
            f"FewShotSource(name={self.name!r}, num_classes={self.num_classes}, "
            f"image_shape={self.image_shape}, num_images={int(self.counts.sum())}, "
            f"rotations={self.rotations})"
        )
