"""Constructive draws of vectors and matrices for ArrayForm steps (norm inequalities in R^d).

A builder reads a latent standard-normal vector through :class:`Latent`: every array gets its
own scale ``10**(8 tanh(z / 4))`` (so magnitudes 1e-8 .. 1e8 are all reached) times a random
direction; symmetric matrices are symmetrised Gaussian matrices; orthogonal matrices come from
a QR factorisation.  :func:`array_form` counts the latent size by a dry run, so a builder is the
only place that knows its layout.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from .spec import ArrayForm

SCALE_DECADES = 8.0


class Latent:
    """Sequential reader of a latent vector (or, with ``z=None``, a counter of its length)."""

    def __init__(self, z: np.ndarray | None):
        self.z = z
        self.used = 0

    def take(self, count: int) -> np.ndarray:
        start, self.used = self.used, self.used + count
        if self.z is None:
            return np.ones(count)
        return np.asarray(self.z[start:self.used], dtype=float)

    def scale(self) -> float:
        return float(10.0 ** (SCALE_DECADES * np.tanh(self.take(1)[0] / 4.0)))

    def vector(self, d: int) -> np.ndarray:
        return self.scale() * self.take(d)

    def matrix(self, d: int) -> np.ndarray:
        return self.scale() * self.take(d * d).reshape(d, d)

    def symmetric(self, d: int) -> np.ndarray:
        raw = self.take(d * d).reshape(d, d)
        return self.scale() * (raw + raw.T) / 2.0

    def unit(self, d: int) -> np.ndarray:
        raw = self.take(d)
        norm = np.linalg.norm(raw)
        return raw / norm if norm > 0 else np.eye(d)[0]

    def orthogonal(self, d: int) -> np.ndarray:
        q, r = np.linalg.qr(self.take(d * d).reshape(d, d) + 1e-12 * np.eye(d))
        return q * np.where(np.diag(r) < 0, -1.0, 1.0)

    def fraction(self) -> float:
        return float(1.0 / (1.0 + np.exp(-self.take(1)[0])))


def array_form(family: str, builder: Callable[[Latent, int], Mapping[str, np.ndarray]],
               lhs: Callable, rhs: Callable, dims=(1, 2, 3, 5, 10)) -> ArrayForm:
    """ArrayForm whose latent size is found by a dry run of ``builder``."""

    def latent_size(d: int) -> int:
        counter = Latent(None)
        builder(counter, d)
        return counter.used

    def build(z: np.ndarray, d: int):
        return builder(Latent(z), d)

    return ArrayForm(family=family, latent_size=latent_size, build=build, lhs=lhs, rhs=rhs, dims=tuple(dims))


def op_norm(matrix: np.ndarray) -> float:
    """Spectral norm (the operator norm the proofs use for Hessians)."""
    return float(np.linalg.norm(matrix, 2))


def sq(vector: np.ndarray) -> float:
    """Squared Euclidean norm."""
    return float(np.dot(vector, vector))
