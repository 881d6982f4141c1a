"""Decoding one image file into a uint8 array, the same way for every source.

Public: ``RESAMPLE`` (the resize filter), ``open_image(source, name) -> PIL.Image.Image``,
``to_array(image, mode, size) -> np.ndarray`` and ``resize_array(images, size)``.

Every resize uses ``PIL.Image.Resampling.LANCZOS``, the filter of MAML's Omniglot
preprocessing (``proc_images.py``) and of Ravi & Larochelle's mini-ImageNet script.
Arrays are channel-first uint8 ``[C, H, W]``; a float image is ``uint8 / 255``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError

__all__ = ["RESAMPLE", "GRAY_MODES", "open_image", "to_array", "resize_array"]

RESAMPLE = Image.Resampling.LANCZOS
#: PIL modes that hold one channel; anything else is read as RGB.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def open_image(source: bytes | str | os.PathLike[str], name: str) -> Image.Image:
    """Open and fully decode an image from bytes or a path; DataError naming ``name`` if not."""
    try:
        # Reading the bytes first means PIL never holds an open file, even when decoding fails.
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # PIL signals unreadable, truncated and malformed files with these types.
        raise DataError(f"cannot read image {name}: {error}") from error
    return image


def to_array(image: Image.Image, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Convert ``image`` to ``mode`` ("L" or "RGB"), resize to ``size`` = (H, W), return [C,H,W] uint8."""
    image = image.convert(mode)
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), resample=RESAMPLE)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def resize_array(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 batch [N, C, H, W] (C in {1, 3}) to [N, C, *size] with ``RESAMPLE``."""
    if images.shape[-2:] == tuple(size):
        return images
    mode = "L" if images.shape[1] == 1 else "RGB"
    out = np.empty((images.shape[0], images.shape[1], *size), dtype=np.uint8)
    for i, image in enumerate(images):
        pixels = image[0] if mode == "L" else image.transpose(1, 2, 0)
        out[i] = to_array(Image.fromarray(pixels), mode, size)
    return out
