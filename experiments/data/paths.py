"""Where the data and the decoded-image cache live.

Public: ``DATA_ENV``, ``CACHE_ENV``, ``DEFAULT_DATA_ROOT``, ``DEFAULT_CACHE_DIR``,
``resolve_data_root(data_root=None) -> Path``, ``resolve_cache_dir() -> Path``.

Precedence for the data root: explicit ``data_root`` argument > ``$SHARP_MAML_DATA`` >
``<repo>/../shared/data``. The data root is the directory that holds ``omniglot/``.
The cache directory is ``$SHARP_MAML_CACHE`` if set, else ``~/.cache/sharp-maml-testbed``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_DATA_ROOT",
    "resolve_cache_dir",
    "resolve_data_root",
]

DATA_ENV = "SHARP_MAML_DATA"
CACHE_ENV = "SHARP_MAML_CACHE"
# experiments/data/paths.py -> parents[2] is the repository root; the data sits beside it.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEFAULT_CACHE_DIR = Path("~/.cache/sharp-maml-testbed")


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``data_root`` if given, else ``$SHARP_MAML_DATA``, else the default."""
    if data_root is not None:
        return Path(data_root).expanduser()
    from_env = os.environ.get(DATA_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return DEFAULT_DATA_ROOT


def resolve_cache_dir() -> Path:
    """The decoded-image cache directory: ``$SHARP_MAML_CACHE`` if set, else the default."""
    from_env = os.environ.get(CACHE_ENV)
    return Path(from_env or DEFAULT_CACHE_DIR).expanduser()
