"""Quadratic tasks: every derivative and the MAML objective in closed form.

Task ``m`` has ``L(theta; D_m) = 1/2 (theta - c_m)^T A_m (theta - c_m)`` and
``L(theta; D'_m) = 1/2 (theta - c'_m)^T A'_m (theta - c'_m)``; the centres of
the two sets differ (``D_m != D'_m``).  The Hessians are drawn constructively:
a spectrum, then a Haar orthogonal basis.

Assumptions of Abbas et al. 2022 this family meets:
* Assumption 1: ``l1 = max_m ||A_m||, ||A'_m||`` globally; ``l2 = 0``
  (constant Hessian).  ``L(.; D'_m)`` is *not* globally Lipschitz: ``l0``
  holds on a ball ``||theta|| <= R`` only (see :meth:`constants`).
* Assumption 2: with ``sigma > 0`` the gradient oracle is unbiased with
  variance ``sigma^2``; the Hessian is exact (variance 0).
* Lemma 1 needs C^3: yes.  Every quadratic with SPD ``A_m`` has exactly one
  stationary point, so Lemma 1 is only interesting on the nonconvex family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthetic import linalg
from synthetic.base import Constants, FamilyBase
from testbed import validate as V


@dataclass(frozen=True, eq=False)
class QuadraticFamily(FamilyBase):
    """``M`` quadratic tasks in ``R^d``.

    A: ``[M, d, d]`` symmetric Hessians of ``L(.; D_m)``.
    c: ``[M, d]`` minimisers of ``L(.; D_m)``.
    A_val: ``[M, d, d]`` Hessians of ``L(.; D'_m)``.
    c_val: ``[M, d]`` minimisers of ``L(.; D'_m)``.
    sigma: gradient-oracle noise (Assumption 2).
    """

    A: torch.Tensor
    c: torch.Tensor
    A_val: torch.Tensor
    c_val: torch.Tensor
    sigma: float = 0.0

    def __post_init__(self) -> None:
        V.nonnegative("sigma", self.sigma)
        if self.A.dim() != 3 or self.A.shape[1] != self.A.shape[2]:
            raise ValueError(f"A must have shape [M, d, d], got {tuple(self.A.shape)}")
        m, d, _ = self.A.shape
        for name, t, shape in (("c", self.c, (m, d)), ("A_val", self.A_val, (m, d, d)),
                               ("c_val", self.c_val, (m, d))):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
        for name, a in (("A", self.A), ("A_val", self.A_val)):
            if not torch.allclose(a, a.transpose(1, 2), atol=0, rtol=1e-12):
                raise ValueError(f"{name} must be symmetric")

    # -- construction ------------------------------------------------------
    @classmethod
    def random(cls, num_tasks: int, dim: int, *, eig_low: float = 0.1, eig_high: float = 1.0,
               center_scale: float = 1.0, val_shift: float = 0.5, sigma: float = 0.0,
               same_hessian: bool = True, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> "QuadraticFamily":
        """Random tasks: spectra log-uniform on ``[eig_low, eig_high]`` (both ends hit).

        ``c_m ~ N(0, center_scale^2 I)``, ``c'_m = c_m + val_shift * N(0, I)``;
        ``A'_m = A_m`` when ``same_hessian`` (both sets drawn from one task
        distribution), else an independent draw.
        """
        V.positive_int("num_tasks", num_tasks)
        V.positive_int("dim", dim)
        V.nonnegative("center_scale", center_scale)
        V.nonnegative("val_shift", val_shift)
        rng = np.random.default_rng(seed)

        def hessians():
            return np.stack([
                linalg.from_spectrum(linalg.log_uniform_spectrum(rng, dim, eig_low, eig_high),
                                     linalg.orthogonal(rng, dim))
                for _ in range(num_tasks)])

        A = hessians()
        A_val = A.copy() if same_hessian else hessians()
        c = center_scale * rng.standard_normal((num_tasks, dim))
        c_val = c + val_shift * rng.standard_normal((num_tasks, dim))
        t = lambda x: linalg.to_torch(x, dtype)  # noqa: E731
        return cls(t(A), t(c), t(A_val), t(c_val), sigma=sigma)

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.A.shape[1]

    @property
    def num_tasks(self) -> int:  # type: ignore[override]
        return self.A.shape[0]

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.A.dtype

    def _batch(self, which: str) -> dict:
        if which == "support":
            return {"A": self.A, "c": self.c}
        return {"A": self.A_val, "c": self.c_val}

    # -- the loss autograd sees -------------------------------------------
    @staticmethod
    def loss(params: dict, batch: dict) -> torch.Tensor:
        """Per-sample loss of one task (a single "sample": shape ``[1]``)."""
        r = params["theta"] - batch["c"]
        value = 0.5 * (r @ (batch["A"] @ r)) + FamilyBase._noise(params, batch)
        return value.reshape(1)

    # -- closed forms (all tasks at once) ---------------------------------
    def _data(self, which):
        self._check_which(which)
        return (self.A, self.c) if which == "support" else (self.A_val, self.c_val)

    def value(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """``L(theta_m; D_m)`` (or ``D'_m``) for each task: ``[..., M]``."""
        A, c = self._data(which)
        r = self._points(theta) - c
        return 0.5 * torch.einsum("...mi,mij,...mj->...m", r, A, r)

    def gradient(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """``A_m (theta_m - c_m)``: ``[..., M, d]``."""
        A, c = self._data(which)
        return torch.einsum("mij,...mj->...mi", A, self._points(theta) - c)

    def hessian(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """``A_m``: ``[..., M, d, d]`` (independent of ``theta``)."""
        lead = self._points(theta).shape[:-2]
        return self._data(which)[0].expand(*lead, self.num_tasks, self.dim, self.dim).clone()

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, which: str = "support") -> torch.Tensor:
        """Hessian-vector products ``A_m v_m``: ``[..., M, d]`` (``v`` shaped like the points)."""
        self._points(theta)
        return torch.einsum("mij,...mj->...mi", self._data(which)[0], v)

    def third(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """Zero: ``[..., M, d, d, d]``."""
        lead = self._points(theta).shape[:-2]
        return torch.zeros(*lead, self.num_tasks, self.dim, self.dim, self.dim, dtype=self.dtype)

    def constants(self, radius: float = 10.0) -> Constants:
        """Assumption 1 constants on the ball ``||theta|| <= radius``.

        ``l0 = max_m ||A'_m|| (radius + ||c'_m||)`` bounds ``||grad L(theta; D'_m)||``
        on the ball; ``l1`` and ``l2 = 0`` hold on all of ``R^d``.
        """
        V.positive("radius", radius)
        norm = lambda a: torch.linalg.matrix_norm(a, ord=2)  # noqa: E731
        l1 = max(norm(self.A).max().item(), norm(self.A_val).max().item())
        l0 = (norm(self.A_val) * (radius + self.c_val.norm(dim=1))).max().item()
        return Constants(l0=l0, l1=l1, l2=0.0, sigma=self.sigma,
                         domain=f"ball ||theta|| <= {radius:g} (l1, l2 hold on all of R^d)",
                         radius=float(radius))

    # -- the MAML objective in closed form --------------------------------
    def contraction(self, beta_low: float, steps: int) -> torch.Tensor:
        """``(I - beta_low A_m)^N``: the Jacobian of N exact fine-tuning steps, ``[M, d, d]``."""
        V.positive("beta_low", beta_low)
        V.positive_int("steps", steps)
        eye = torch.eye(self.dim, dtype=self.dtype)
        return torch.linalg.matrix_power(eye - beta_low * self.A, steps)

    def adapted(self, theta: torch.Tensor, beta_low: float, steps: int = 1) -> torch.Tensor:
        """``theta_N = c_m + (I - beta_low A_m)^N (theta - c_m)``: ``[..., M, d]``."""
        B = self.contraction(beta_low, steps)
        return self.c + torch.einsum("mij,...mj->...mi", B, self._points(theta) - self.c)

    def maml_objective(self, theta: torch.Tensor, beta_low: float, steps: int = 1) -> torch.Tensor:
        """``F(theta)`` of eq. (29a) with ``N`` exact gradient steps: ``[...]``."""
        return self.value(self.adapted(theta, beta_low, steps), "query").mean(-1)

    def maml_gradient(self, theta: torch.Tensor, beta_low: float, steps: int = 1) -> torch.Tensor:
        """``grad F(theta) = 1/M sum_m (I - beta_low A_m)^N A'_m (theta_N - c'_m)`` (eq. 30): ``[..., d]``."""
        B = self.contraction(beta_low, steps)
        g_val = self.gradient(self.adapted(theta, beta_low, steps), "query")
        return torch.einsum("mji,...mj->...mi", B, g_val).mean(-2)
