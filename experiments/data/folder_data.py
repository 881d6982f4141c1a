"""A directory with one sub-folder of images per class, as a few-shot source.

Public API:
    folder(path, image_size=None, channels=None) -> FewShotSource
    IMAGE_SUFFIXES

Layout: ``path/<class>/<image>``. Classes are the non-hidden sub-directories of ``path`` in
sorted order; a class's images are its non-hidden files whose suffix (any case) is in
IMAGE_SUFFIXES, in sorted order. Other files are ignored.

``channels`` (1 or 3) fixes the colour mode ("L" or "RGB") of every image; None takes it from
the first image (one channel if its PIL mode is one of ``images.GRAY_MODES``, else three).
``image_size`` (an int, giving S x S) fixes the size; None takes the first image's (H, W).
Every image is resized to that size with ``images.RESAMPLE``.

DataError: path missing or not a directory, fewer than 2 classes, a class without images,
an unreadable image (named), bad ``image_size`` / ``channels``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError, require_int
from .images import GRAY_MODES, open_image, to_array
from .source import FewShotSource

__all__ = ["IMAGE_SUFFIXES", "folder"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_MODES = {1: "L", 3: "RGB"}


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(entry for entry in entries if not entry.name.startswith("."))


def folder(
    path: str | os.PathLike[str], image_size: int | None = None, channels: int | None = None
) -> FewShotSource:
    """Load every class sub-folder of ``path`` (see the module docstring)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(
            f"folder source {root} does not exist or is not a directory; expected <path>/<class>/<image>"
        )
    if image_size is not None:
        require_int("image_size", image_size, 1)
    if channels is not None and channels not in _MODES:
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    classes = [entry for entry in _visible(list(root.iterdir())) if entry.is_dir()]
    if len(classes) < 2:
        raise DataError(
            f"folder source {root} has {len(classes)} class sub-folder(s), a few-shot source needs at least 2"
        )
    files = []
    for directory in classes:
        images = [
            entry for entry in _visible(list(directory.iterdir()))
            if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not images:
            raise DataError(
                f"class folder {directory} has no images (suffixes {sorted(IMAGE_SUFFIXES)})"
            )
        files.append(images)
    first = open_image(files[0][0], str(files[0][0]))
    mode = _MODES[channels] if channels is not None else ("L" if first.mode in GRAY_MODES else "RGB")
    size = (first.height, first.width) if image_size is None else (image_size, image_size)
    counts = [len(images) for images in files]
    array = np.empty((sum(counts), len(mode), *size), dtype=np.uint8)
    row = 0
    for images in files:
        for file in images:
            array[row] = to_array(open_image(file, str(file)), mode, size)
            row += 1
    names = [directory.name for directory in classes]
    return FewShotSource.from_counts(array, counts, names, name=f"folder:{root}")
