"""Nonconvex tasks: regression through a tanh link, derivatives to third order in closed form.

Task ``m`` holds samples ``(x_i, y_i)`` with per-sample loss
``l(theta; x, y) = 1/2 (tanh(x^T theta) - y)^2`` and
``L(theta; D) = mean_i l(theta; x_i, y_i)``.  With ``s = x^T theta`` and
``t = tanh(s)`` the scalar derivatives are polynomials in ``t`` and affine in
``y``::

    f'(s)   = (t - y)(1 - t^2)
    f''(s)  = (1 - t^2)(1 - 3 t^2 + 2 t y)
    f'''(s) = (1 - t^2) [ -2t (1 - 3t^2 + 2ty) + (1 - t^2)(2y - 6t) ]

so ``grad L = mean f'(s_i) x_i``, ``hess L = mean f''(s_i) x_i x_i^T`` and
``third L = mean f'''(s_i) x_i (x) x_i (x) x_i``.

Assumptions of Abbas et al. 2022 this family meets, on all of ``R^d``:
with ``|y| <= y_max`` and ``F_k = sup |f^(k)|`` over ``t in [-1, 1]``,
``|y| <= y_max`` (computed exactly from the polynomials' critical points),

* ``l0 = F_1 max_m mean_i ||x'_i||``  (``L(.; D'_m)`` is Lipschitz),
* ``l1 = F_2 max_m ||mean_i x_i x_i^T||`` over both sets,
* ``l2 = F_3 max_m max_i ||x_i|| ||mean_i x_i x_i^T||`` (support sets).

The loss is nonconvex in ``theta`` (tanh saturates), so the MAML landscape
can have stationary points that ``L`` lacks (Lemma 1).  Not met: none of
Assumption 1 fails; strong convexity (not assumed by the paper) fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from numpy.polynomial import Polynomial

from synthetic.base import Constants, FamilyBase, check_regression_data
from synthetic import linalg
from testbed import validate as V


def _f_polys(y: float) -> tuple[Polynomial, Polynomial, Polynomial]:
    """``f', f'', f'''`` as polynomials in ``t`` for a fixed target ``y``."""
    t = Polynomial([0.0, 1.0])
    one_m = 1 - t ** 2
    f1 = (t - y) * one_m
    inner = 1 - 3 * t ** 2 + 2 * y * t
    f2 = one_m * inner
    f3 = one_m * (-2 * t * inner + one_m * (2 * y - 6 * t))
    return f1, f2, f3


def _sup_abs_on_unit_interval(p: Polynomial) -> float:
    crit = [r.real for r in p.deriv().roots() if abs(r.imag) < 1e-12 and -1 <= r.real <= 1]
    return float(max(abs(p(x)) for x in [-1.0, 1.0, *crit]))


@lru_cache(maxsize=64)
def derivative_bounds(y_max: float) -> tuple[float, float, float]:
    """``(sup|f'|, sup|f''|, sup|f'''|)`` over ``t in [-1,1]``, ``|y| <= y_max``.

    Each ``f^(k)`` is affine in ``y``, so its extreme over ``y`` sits at
    ``+-y_max``; over ``t`` it sits at an endpoint or a critical point.
    """
    V.nonnegative("y_max", y_max)
    sups = np.zeros(3)
    for y in (-y_max, y_max):
        sups = np.maximum(sups, [_sup_abs_on_unit_interval(p) for p in _f_polys(y)])
    return tuple(float(s) for s in sups)


def _scalar_derivs(s: torch.Tensor, y: torch.Tensor, orders: tuple[int, ...] = (0, 1, 2, 3)):
    """``f^(k)(s)`` for the requested orders ``k`` (the others are None)."""
    t = torch.tanh(s)
    one_m = 1 - t * t
    out = [None, None, None, None]
    if 0 in orders:
        out[0] = 0.5 * (t - y) ** 2
    if 1 in orders:
        out[1] = (t - y) * one_m
    if 2 in orders or 3 in orders:
        inner = 1 - 3 * t * t + 2 * t * y
        out[2] = one_m * inner
        if 3 in orders:
            out[3] = one_m * (-2 * t * inner + one_m * (2 * y - 6 * t))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class TanhRegressionFamily(FamilyBase):
    """``M`` tanh-link regression tasks.

    x: ``[M, n, d]`` support inputs; y: ``[M, n]`` support targets.
    x_val: ``[M, n', d]`` query inputs; y_val: ``[M, n']`` query targets.
    y_max: bound on ``|y|`` used for the constants (checked).
    sigma: gradient-oracle noise (Assumption 2).
    """

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    y_max: float = 1.0
    sigma: float = 0.0

    def __post_init__(self) -> None:
        V.nonnegative("sigma", self.sigma)
        V.nonnegative("y_max", self.y_max)
        check_regression_data(self.x, self.y, self.x_val, self.y_val)
        for yn in ("y", "y_val"):
            y = getattr(self, yn)
            if y.abs().max().item() > self.y_max:
                raise ValueError(f"|{yn}| must be <= y_max={self.y_max!r}, "
                                 f"found {y.abs().max().item()!r}")

    @classmethod
    def random(cls, num_tasks: int, dim: int, *, n_support: int = 10, n_query: int = 10,
               theta_scale: float = 1.5, theta_spread: float = 0.5, noise: float = 0.1,
               input_scale: float = 1.0, y_max: float = 1.0, sigma: float = 0.0,
               seed: int = 0, dtype: torch.dtype = torch.float64) -> "TanhRegressionFamily":
        """Teacher tasks: ``theta*_m = theta_scale u + theta_spread N(0, I)`` with one shared
        unit ``u``, ``x ~ N(0, input_scale^2 I)``, ``y = clip(tanh(x^T theta*_m) + noise N(0,1))``."""
        V.positive_int("num_tasks", num_tasks)
        V.positive_int("dim", dim)
        V.positive_int("n_support", n_support)
        V.positive_int("n_query", n_query)
        V.nonnegative("noise", noise)
        V.positive("input_scale", input_scale)
        rng = np.random.default_rng(seed)
        u = rng.standard_normal(dim)
        u /= np.linalg.norm(u)
        teacher = theta_scale * u + theta_spread * rng.standard_normal((num_tasks, dim))

        def draw(n):
            x = input_scale * rng.standard_normal((num_tasks, n, dim))
            y = np.tanh(np.einsum("mnd,md->mn", x, teacher)) + noise * rng.standard_normal((num_tasks, n))
            return x, np.clip(y, -y_max, y_max)

        (x, y), (xv, yv) = draw(n_support), draw(n_query)
        t = lambda a: linalg.to_torch(a, dtype)  # noqa: E731
        return cls(t(x), t(y), t(xv), t(yv), y_max=y_max, sigma=sigma)

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.x.shape[2]

    @property
    def num_tasks(self) -> int:  # type: ignore[override]
        return self.x.shape[0]

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.x.dtype

    def _batch(self, which: str) -> dict:
        if which == "support":
            return {"x": self.x, "y": self.y}
        return {"x": self.x_val, "y": self.y_val}

    @staticmethod
    def loss(params: dict, batch: dict) -> torch.Tensor:
        """Per-sample losses of one task: ``[n]``."""
        s = batch["x"] @ params["theta"]
        return 0.5 * (torch.tanh(s) - batch["y"]) ** 2 + FamilyBase._noise(params, batch)

    # -- closed forms ------------------------------------------------------
    def _derivs(self, theta, which, orders=(0, 1, 2, 3)):
        self._check_which(which)
        x, y = (self.x, self.y) if which == "support" else (self.x_val, self.y_val)
        s = torch.einsum("mnd,...md->...mn", x, self._points(theta))
        return x, _scalar_derivs(s, y, orders)

    def value(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        _, (f0, _, _, _) = self._derivs(theta, which, (0,))
        return f0.mean(-1)

    def gradient(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        x, (_, f1, _, _) = self._derivs(theta, which, (1,))
        return torch.einsum("...mn,mnd->...md", f1, x) / x.shape[1]

    def hessian(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        x, (_, _, f2, _) = self._derivs(theta, which, (2,))
        return torch.einsum("...mn,mni,mnj->...mij", f2, x, x) / x.shape[1]

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, which: str = "support") -> torch.Tensor:
        """Hessian-vector products ``mean_i f''(s_i) x_i (x_i^T v_m)`` in O(n d): ``[..., M, d]``."""
        x, (_, _, f2, _) = self._derivs(theta, which, (2,))
        xv = torch.einsum("mnd,...md->...mn", x, v)
        return torch.einsum("...mn,mnd->...md", f2 * xv, x) / x.shape[1]

    def third(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        x, (_, _, _, f3) = self._derivs(theta, which, (3,))
        return torch.einsum("...mn,mni,mnj,mnk->...mijk", f3, x, x, x) / x.shape[1]

    def constants(self) -> Constants:
        """Assumption 1 constants, valid on all of ``R^d`` (see the module docstring)."""
        F1, F2, F3 = derivative_bounds(float(self.y_max))

        def second_moment_norm(x):
            cov = torch.einsum("mni,mnj->mij", x, x) / x.shape[1]
            return torch.linalg.matrix_norm(cov, ord=2)

        l0 = F1 * self.x_val.norm(dim=2).mean(1).max().item()
        l1 = F2 * max(second_moment_norm(self.x).max().item(),
                      second_moment_norm(self.x_val).max().item())
        l2 = F3 * (self.x.norm(dim=2).max(1).values * second_moment_norm(self.x)).max().item()
        return Constants(l0=l0, l1=l1, l2=l2, sigma=self.sigma, domain="all of R^d",
                         radius=float("inf"))
