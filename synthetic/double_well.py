"""Tilted, coupled double-well tasks: a quartic with every derivative in closed form.

Task ``m`` has, for ``theta in R^d``::

    L(theta; D_m)  = sum_j 1/4 (theta_j^2 - 1)^2 + 1/2 theta^T K theta + b_m^T theta
    L(theta; D'_m) = the same with the tilt b'_m

with one symmetric coupling ``K`` shared by all tasks and both sets, and a
tilt ``b_m`` (support) / ``b'_m`` (query) per task.  Then::

    grad L  = theta^3 - theta + K theta + b          (elementwise cube)
    hess L  = diag(3 theta^2 - 1) + K
    third L = diagonal tensor with entries 6 theta_j  (T_jjj = 6 theta_j, else 0)

With ``K = 0`` and ``b = 0`` each coordinate is the classical double well with
minima at ``+-1`` and a maximum at ``0``; a small tilt breaks the symmetry and
a small coupling mixes the coordinates.  Every task is nonconvex and has
several stationary points, the setting of Lemma 1 of Abbas et al. 2022.

Assumptions of Abbas et al. 2022 this family meets: ``C^infinity``, so Lemma 1
applies.  Assumption 1 does *not* hold globally (the gradient is cubic, the
Hessian quadratic): :meth:`DoubleWellFamily.constants` gives ``l0, l1, l2`` on
the box ``||theta||_inf <= R`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthetic import linalg
from synthetic.base import Constants, FamilyBase
from testbed import validate as V


def cubic_sup(radius: float) -> float:
    """``sup_{|t| <= radius} |t^3 - t|``: at ``t = radius`` or at ``t = 1/sqrt(3)``."""
    V.nonnegative("radius", radius)
    edge = abs(radius ** 3 - radius)
    inner = 2.0 / (3.0 * math.sqrt(3.0)) if radius >= 1.0 / math.sqrt(3.0) else 0.0
    return max(edge, inner)


@dataclass(frozen=True, eq=False)
class DoubleWellFamily(FamilyBase):
    """``M`` tilted double-well tasks in ``R^d``.

    K: ``[d, d]`` symmetric coupling, shared by every task and both sets.
    b: ``[M, d]`` tilts of ``L(.; D_m)``.
    b_val: ``[M, d]`` tilts of ``L(.; D'_m)``.
    sigma: gradient-oracle noise (Assumption 2).
    """

    K: torch.Tensor
    b: torch.Tensor
    b_val: torch.Tensor
    sigma: float = 0.0

    def __post_init__(self) -> None:
        V.nonnegative("sigma", self.sigma)
        if self.K.dim() != 2 or self.K.shape[0] != self.K.shape[1]:
            raise ValueError(f"K must have shape [d, d], got {list(self.K.shape)}")
        d = self.K.shape[0]
        if self.b.dim() != 2 or self.b.shape[1] != d:
            raise ValueError(f"b must have shape [M, {d}], got {list(self.b.shape)}")
        if tuple(self.b_val.shape) != tuple(self.b.shape):
            raise ValueError(f"b_val must have shape {list(self.b.shape)}, "
                             f"got {list(self.b_val.shape)}")
        if not torch.allclose(self.K, self.K.T, atol=0, rtol=1e-12):
            raise ValueError("K must be symmetric")
        for name, t in (("K", self.K), ("b", self.b), ("b_val", self.b_val)):
            if t.dtype != self.K.dtype:
                raise ValueError(f"{name} has dtype {t.dtype}, K has {self.K.dtype}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite")

    # -- construction ------------------------------------------------------
    @classmethod
    def random(cls, num_tasks: int, dim: int, *, coupling: float = 0.2, tilt: float = 0.1,
               val_shift: float = 0.05, sigma: float = 0.0, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> "DoubleWellFamily":
        """Random tasks: ``K = coupling * S / ||S||_2`` with ``S`` a symmetrised Gaussian
        (so ``||K||_2 = coupling`` exactly; ``K = 0`` when ``coupling = 0``),
        ``b_m ~ tilt N(0, I)`` and ``b'_m = b_m + val_shift N(0, I)``."""
        V.positive_int("num_tasks", num_tasks)
        V.positive_int("dim", dim)
        V.nonnegative("coupling", coupling)
        V.nonnegative("tilt", tilt)
        V.nonnegative("val_shift", val_shift)
        rng = np.random.default_rng(seed)
        g = rng.standard_normal((dim, dim))
        s = 0.5 * (g + g.T)
        K = coupling * s / np.linalg.norm(s, 2) if coupling > 0 else np.zeros((dim, dim))
        b = tilt * rng.standard_normal((num_tasks, dim))
        b_val = b + val_shift * rng.standard_normal((num_tasks, dim))
        t = lambda a: linalg.to_torch(a, dtype)  # noqa: E731
        return cls(t(0.5 * (K + K.T)), t(b), t(b_val), sigma=sigma)

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.K.shape[0]

    @property
    def num_tasks(self) -> int:  # type: ignore[override]
        return self.b.shape[0]

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.K.dtype

    def _batch(self, which: str) -> dict:
        K = self.K.expand(self.num_tasks, self.dim, self.dim)
        return {"K": K, "b": self.b if which == "support" else self.b_val}

    # -- the loss autograd sees -------------------------------------------
    @staticmethod
    def loss(params: dict, batch: dict) -> torch.Tensor:
        """Loss of one task (a single "sample": shape ``[1]``)."""
        th = params["theta"]
        value = (0.25 * (th ** 2 - 1) ** 2).sum() + 0.5 * (th @ (batch["K"] @ th)) \
            + batch["b"] @ th + FamilyBase._noise(params, batch)
        return value.reshape(1)

    # -- closed forms (all tasks at once) ---------------------------------
    def _tilt(self, which: str) -> torch.Tensor:
        self._check_which(which)
        return self.b if which == "support" else self.b_val

    def value(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """``L(theta_m; D_m)`` (or ``D'_m``) for each task: ``[..., M]``."""
        b, th = self._tilt(which), self._points(theta)
        quartic = (0.25 * (th ** 2 - 1) ** 2).sum(-1)
        return quartic + 0.5 * torch.einsum("...i,ij,...j->...", th, self.K, th) + (b * th).sum(-1)

    def gradient(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """``theta^3 - theta + K theta + b_m``: ``[..., M, d]``."""
        b, th = self._tilt(which), self._points(theta)
        return th ** 3 - th + th @ self.K + b   # K symmetric: (K theta)^T = theta^T K

    def hessian(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """``diag(3 theta^2 - 1) + K``: ``[..., M, d, d]``."""
        self._check_which(which)
        th = self._points(theta)
        return torch.diag_embed(3 * th ** 2 - 1) + self.K

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, which: str = "support") -> torch.Tensor:
        """Hessian-vector products ``(3 theta^2 - 1) * v_m + K v_m`` in O(d^2): ``[..., M, d]``
        (``v`` shaped like the points)."""
        self._check_which(which)
        th = self._points(theta)
        v = torch.as_tensor(v, dtype=self.dtype)
        return (3 * th ** 2 - 1) * v + v @ self.K

    def third(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """Diagonal tensor ``T_jjj = 6 theta_j``: ``[..., M, d, d, d]``."""
        self._check_which(which)
        th = self._points(theta)
        eye = torch.eye(self.dim, dtype=self.dtype)
        return 6 * torch.einsum("...j,ij,kj,lj->...ikl", th, eye, eye, eye)

    def constants(self, radius: float = 2.0) -> Constants:
        """Assumption 1 constants on the box ``||theta||_inf <= radius`` (not on all of R^d).

        On the box (convex, so Lipschitz constants are sups of derivative norms):

        * ``l1 = max(1, 3 R^2 - 1) + ||K||_2``: ``||diag(3 theta^2 - 1)||_2 =
          max_j |3 theta_j^2 - 1|`` is at most ``max(1, 3R^2 - 1)``;
        * ``l2 = 6 R``: ``hess(x) - hess(y) = diag(3 (x_j + y_j)(x_j - y_j))`` has
          norm ``<= 6 R ||x - y||_inf <= 6 R ||x - y||_2``;
        * ``l0 = max_m sqrt(d) (c(R) + ||K||_2 R) + ||b'_m||`` with
          ``c(R) = sup_{|t|<=R} |t^3 - t|`` (:func:`cubic_sup`) bounds
          ``||grad L(theta; D'_m)||``, since ``||theta||_2 <= sqrt(d) R``.
        """
        V.positive("radius", radius)
        R = float(radius)
        k = torch.linalg.matrix_norm(self.K, ord=2).item()
        l1 = max(1.0, 3 * R ** 2 - 1) + k
        l0 = math.sqrt(self.dim) * (cubic_sup(R) + k * R) + self.b_val.norm(dim=1).max().item()
        return Constants(l0=l0, l1=l1, l2=6 * R, sigma=self.sigma,
                         domain=f"box ||theta||_inf <= {R:g}", radius=R)
