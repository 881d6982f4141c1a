"""Turning a source spec string into a FewShotSource.

Public API: ``resolve_source(spec, part, data_root=None, image_size=None) -> FewShotSource``
and ``SPEC_FORMS``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import DataError, require_part
from .folder_data import folder
from .miniimagenet_data import miniimagenet
from .omniglot_data import SPLITS, omniglot
from .source import FewShotSource

__all__ = ["SPEC_FORMS", "resolve_source"]

SPEC_FORMS = ("omniglot", "omniglot:vinyals", "omniglot:lake", "miniimagenet:PATH", "folder:PATH")


def resolve_source(
    spec: str,
    part: str,
    data_root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
) -> FewShotSource:
    """The ``part`` ("train", "val" or "test") of the source named by ``spec``.

    Specs:
        ``omniglot`` (= ``omniglot:vinyals``), ``omniglot:lake``: the shipped Omniglot,
            read from ``data_root`` (see ``paths.resolve_data_root``); default size 28.
        ``miniimagenet:PATH``: user-supplied mini-ImageNet in PATH; default size 84.
        ``folder:PATH``: class sub-folders loaded by ``folder``; if ``PATH/<part>`` is a
            directory it is used, else PATH itself serves every part (a UserWarning says so
            for val and test, whose classes are then the training classes).
    ``image_size`` None keeps each source's default. ``data_root`` applies to Omniglot only.
    """
    require_part(part)
    if not isinstance(spec, str):
        raise DataError(f"source spec must be a str, one of {SPEC_FORMS}, got {spec!r}")
    kind, _, argument = spec.partition(":")
    if kind == "omniglot" and (argument in SPLITS or spec == "omniglot"):
        sized = {} if image_size is None else {"image_size": image_size}
        return omniglot(argument or "vinyals", part, data_root, **sized)
    if kind == "miniimagenet" and argument:
        sized = {} if image_size is None else {"image_size": image_size}
        return miniimagenet(argument, part, **sized)
    if kind == "folder" and argument:
        root = Path(argument).expanduser()
        if (root / part).is_dir():
            return folder(root / part, image_size)
        if part != "train":
            warnings.warn(
                f"folder source {root} has no {part}/ sub-folder: its classes serve every part, "
                "so evaluation uses the training classes",
                stacklevel=2,
            )
        return folder(root, image_size)
    raise DataError(f"unknown source spec {spec!r}; accepted forms: {', '.join(SPEC_FORMS)}")
