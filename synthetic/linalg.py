"""Constructive random matrices: a spectrum first, then an orthogonal basis."""

from __future__ import annotations

import numpy as np
import torch

from testbed import validate as V


def orthogonal(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian, signs fixed)."""
    V.positive_int("dim", dim)
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))


def from_spectrum(eigenvalues: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``Q diag(lambda) Q^T``, symmetrised so it is exactly symmetric in floating point."""
    a = (basis * eigenvalues) @ basis.T
    return 0.5 * (a + a.T)


def log_uniform_spectrum(rng: np.random.Generator, dim: int, low: float, high: float) -> np.ndarray:
    """``dim`` eigenvalues log-uniform on [low, high] that always include both ends.

    With ``dim >= 2`` the extremes are hit exactly, so the condition number is
    ``high / low`` by construction (the cases a check most needs to see).
    """
    V.positive("low", low)
    V.positive("high", high)
    if high < low:
        raise ValueError(f"spectrum needs low <= high, got low={low!r}, high={high!r}")
    if dim == 1:
        return np.array([high])
    inner = np.exp(rng.uniform(np.log(low), np.log(high), size=dim - 2))
    return np.sort(np.concatenate([[low], inner, [high]]))[::-1]


def to_torch(x: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)
