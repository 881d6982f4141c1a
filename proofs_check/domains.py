"""Standard variable boxes used by the transcriptions (numeric search ranges stated here).

Unbounded quantities are searched log-uniformly over 1e-8 .. 1e8 (radii, step sizes, constants),
counts over 1 .. 1e6 (n, k, T), real coordinates with a signed log scale over magnitudes
1e-8 .. 1e8.  The symbolic prover only sees the mathematical interval, never these boxes.
"""

from __future__ import annotations

import sympy as sp

from .spec import Var

WIDE = (1e-8, 1e8)
COUNTS = (1.0, 1e6)
COEFFICIENTS = (1e-4, 1e4)


def positive(name: str, search=WIDE) -> Var:
    """name > 0 (radius, step size, Lipschitz constant...)."""
    return Var(name, 0, sp.oo, lo_open=True, scale="log", search=search)


def nonnegative(name: str, search=WIDE) -> Var:
    """name >= 0 (a constant that may vanish)."""
    return Var(name, 0, sp.oo, scale="log", search=search)


def count(name: str, lo: int = 1, search=COUNTS) -> Var:
    """Integer name >= lo (sample size n, dimension k, horizon T)."""
    return Var(name, lo, sp.oo, integer=True, scale="log", search=search)


def real(name: str, search=WIDE) -> Var:
    """Any real number (coordinates, polynomial coefficients)."""
    return Var(name, scale="symlog", search=search)


def open_unit(name: str) -> Var:
    """0 < name < 1 (confidence parameter delta)."""
    return Var(name, 0, 1, lo_open=True, hi_open=True)


def closed_unit(name: str) -> Var:
    """0 <= name <= 1 (a loss value under the boundedness assumption)."""
    return Var(name, 0, 1)


def between(name: str, lo, hi, lo_open: bool = False, hi_open: bool = False) -> Var:
    """lo <= name <= hi with (possibly symbolic) bounds; a quantity known only through them."""
    return Var(name, lo, hi, lo_open=lo_open, hi_open=hi_open)


def above(name: str, lo, lo_open: bool = True, search=(1.0, 1e16)) -> Var:
    """name > lo (symbolic lo > 0), searched log-uniformly over lo .. lo * 1e16."""
    return Var(name, lo, sp.oo, lo_open=lo_open, scale="log", search=search)
