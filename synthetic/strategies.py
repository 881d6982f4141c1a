"""Hypothesis strategies that draw task families constructively.

Every strategy builds what it promises (a spectrum, then an orthogonal basis;
never ``assume(is_spd)``) and validates its own arguments, raising
:class:`hypothesis.errors.InvalidArgument` with the bad value.

>>> from hypothesis import given
>>> from synthetic.strategies import quadratic_families
>>> @given(quadratic_families(max_dim=3))
... def test_something(family): ...
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from synthetic import linalg
from synthetic.quadratic import QuadraticFamily
from synthetic.tanh_regression import TanhRegressionFamily


def _check_range(name_lo: str, lo: float, name_hi: str, hi: float, *, positive: bool) -> None:
    for name, v in ((name_lo, lo), (name_hi, hi)):
        if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
            raise InvalidArgument(f"{name} must be a finite number, got {v!r}")
        if positive and v <= 0:
            raise InvalidArgument(f"{name} must be > 0, got {v!r}")
    if lo > hi:
        raise InvalidArgument(f"{name_lo}={lo!r} must not exceed {name_hi}={hi!r}")


def _check_count(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidArgument(f"{name} must be an integer >= {minimum}, got {value!r}")


def spectra(dim: int, min_eig: float = 1e-3, max_eig: float = 1e3) -> st.SearchStrategy[np.ndarray]:
    """Eigenvalues in ``[min_eig, max_eig]``, drawn log-uniformly, sorted descending.

    The exponent is drawn with hypothesis, which favours the ends of its range,
    so extreme condition numbers appear early.
    """
    _check_count("dim", dim)
    _check_range("min_eig", min_eig, "max_eig", max_eig, positive=True)
    lo, hi = math.log10(min_eig), math.log10(max_eig)
    exps = st.lists(st.floats(lo, hi, allow_nan=False), min_size=dim, max_size=dim)
    return exps.map(lambda e: np.clip(np.sort(10.0 ** np.asarray(e))[::-1], min_eig, max_eig))


@st.composite
def orthogonal_matrices(draw, dim: int) -> np.ndarray:
    """An orthogonal ``dim x dim`` matrix: QR of a drawn matrix (any draw is valid)."""
    _check_count("dim", dim)
    entries = draw(st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=dim * dim,
                            max_size=dim * dim))
    q, r = np.linalg.qr(np.asarray(entries).reshape(dim, dim))
    return q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))


@st.composite
def spd_matrices(draw, dim: int, min_eig: float = 1e-3, max_eig: float = 1e3) -> np.ndarray:
    """A symmetric positive-definite matrix with spectrum in ``[min_eig, max_eig]``."""
    return linalg.from_spectrum(draw(spectra(dim, min_eig, max_eig)), draw(orthogonal_matrices(dim)))


@st.composite
def quadratic_families(draw, *, max_tasks: int = 3, min_dim: int = 1, max_dim: int = 4,
                       min_eig: float = 1e-2, max_eig: float = 1e2, center_bound: float = 10.0,
                       sigma: float = 0.0) -> QuadraticFamily:
    """A :class:`QuadraticFamily` with SPD Hessians and bounded centres (float64)."""
    _check_count("max_tasks", max_tasks)
    _check_count("min_dim", min_dim)
    _check_count("max_dim", max_dim, min_dim)
    _check_range("min_eig", min_eig, "max_eig", max_eig, positive=True)
    _check_range("-center_bound", -center_bound, "center_bound", center_bound, positive=False)
    if sigma < 0:
        raise InvalidArgument(f"sigma must be >= 0, got {sigma!r}")
    m = draw(st.integers(1, max_tasks))
    d = draw(st.integers(min_dim, max_dim))
    A = np.stack([draw(spd_matrices(d, min_eig, max_eig)) for _ in range(m)])
    A_val = np.stack([draw(spd_matrices(d, min_eig, max_eig)) for _ in range(m)])
    vec = st.lists(st.floats(-center_bound, center_bound, allow_nan=False), min_size=m * d,
                   max_size=m * d).map(lambda v: np.asarray(v).reshape(m, d))
    c, c_val = draw(vec), draw(vec)
    t = linalg.to_torch
    return QuadraticFamily(t(A), t(c), t(A_val), t(c_val), sigma=sigma)


@st.composite
def tanh_families(draw, *, max_tasks: int = 3, min_dim: int = 1, max_dim: int = 3,
                  max_samples: int = 5, input_bound: float = 3.0,
                  y_max: float = 1.0) -> TanhRegressionFamily:
    """A :class:`TanhRegressionFamily` with bounded inputs and ``|y| <= y_max`` (float64)."""
    _check_count("max_tasks", max_tasks)
    _check_count("min_dim", min_dim)
    _check_count("max_dim", max_dim, min_dim)
    _check_count("max_samples", max_samples)
    _check_range("0", 0.0, "input_bound", input_bound, positive=False)
    _check_range("0", 0.0, "y_max", y_max, positive=False)
    m = draw(st.integers(1, max_tasks))
    d = draw(st.integers(min_dim, max_dim))

    def arr(shape, bound):
        size = int(np.prod(shape))
        return draw(st.lists(st.floats(-bound, bound, allow_nan=False), min_size=size,
                             max_size=size).map(lambda v: np.asarray(v).reshape(shape)))

    n, nv = draw(st.integers(1, max_samples)), draw(st.integers(1, max_samples))
    t = linalg.to_torch
    return TanhRegressionFamily(t(arr((m, n, d), input_bound)), t(arr((m, n), y_max)),
                                t(arr((m, nv, d), input_bound)), t(arr((m, nv), y_max)),
                                y_max=y_max)


def points(dim: int, bound: float = 10.0) -> st.SearchStrategy[torch.Tensor]:
    """A point ``theta`` in ``[-bound, bound]^dim`` as a float64 tensor."""
    _check_count("dim", dim)
    _check_range("0", 0.0, "bound", bound, positive=False)
    return st.lists(st.floats(-bound, bound, allow_nan=False), min_size=dim,
                    max_size=dim).map(lambda v: torch.tensor(v, dtype=torch.float64))
