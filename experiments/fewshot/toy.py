"""A tiny learnable image folder for tests and smoke runs (``folder:PATH`` source).

Class ``c`` is a random binary template; each of its images flips a few pixels of it.
Everything is drawn from ``numpy.random.default_rng(seed)``, so the files are the same on
every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def write_toy_folder(path: str | os.PathLike[str], *, classes: int = 8, per_class: int = 6,
                     size: int = 16, flip: float = 0.05, seed: int = 0,
                     parts: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """Write ``path/<part>/<class>/<i>.png`` (grey, ``size`` x ``size``) and return ``path``.

    Every part gets its own ``classes`` classes (disjoint templates), as a few-shot split.
    """
    for name, value, low in (("classes", classes, 2), ("per_class", per_class, 2), ("size", size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0 <= flip < 0.5:
        raise ValueError(f"flip must lie in [0, 0.5), got {flip!r}")
    root = Path(path)
    rng = np.random.default_rng(seed)
    for part in parts:
        for c in range(classes):
            template = rng.random((size, size)) < 0.5
            folder = root / part / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = template ^ (rng.random((size, size)) < flip)
                Image.fromarray((image * 255).astype(np.uint8), mode="L").save(folder / f"{i:03d}.png")
    return root
