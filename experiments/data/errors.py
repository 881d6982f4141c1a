"""Errors and argument checks shared by the data layer.

Public: ``DataError`` (a ``ValueError``) and ``PARTS``, the accepted split parts.
Every failure of the data layer, bad argument or bad file, raises ``DataError`` with the
offending value (or file) in its message.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["DataError", "PARTS", "require_int", "require_part"]

#: The parts a few-shot split is cut into.
PARTS = ("train", "val", "test")


class DataError(ValueError):
    """A data file is missing or corrupt, or a data-layer argument is invalid."""


def require_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int if it is an integer (not a bool) ``>= minimum``; else raise DataError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def require_part(part: Any) -> str:
    """Return ``part`` if it is one of PARTS; else raise DataError."""
    if part not in PARTS:
        raise DataError(f"part must be one of {PARTS}, got {part!r}")
    return part
