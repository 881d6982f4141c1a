"""Bounded-loss tasks with an exact population loss (Gaussian-kernel loss, Gaussian data).

Per-sample loss of a point ``theta in R^k`` on a datum ``x in R^k``::

    l(theta; x) = 1 - exp(-||theta - x||^2 / (2 s^2))        in [0, 1)

Task ``m`` draws its data from ``P_m = N(mu_m, tau^2 I_k)``.  With
``r_i = theta - x_i`` and ``w_i = exp(-||r_i||^2 / (2 s^2))`` the empirical loss
``L(theta; D) = mean_i l(theta; x_i)`` has, in closed form,

    grad L  = mean_i w_i r_i / s^2
    hess L  = mean_i w_i (I / s^2 - r_i r_i^T / s^4)
    third L = mean_i w_i [ r (x) r (x) r / s^6
                           - (I (x) r + perms) / s^4 ]   (the three placements of r)

and the population loss is exact (a Gaussian convolution, coordinate by coordinate)::

    L(theta; P_m) = 1 - (s^2 / v)^(k/2) exp(-||theta - mu_m||^2 / (2 v)),   v = s^2 + tau^2.

Fine-tuning is one gradient step on the task's data, ``A(theta; D) = theta - beta grad
L(theta; D)`` (Abbas et al. 2022, eq. 2), and the one-step MAML objective with the same
data inside and outside (as Theorem 3 writes it) is ``F(theta; D) = L(A(theta; D); D)``
with gradient ``(I - beta hess L(theta; D)) grad L(A(theta; D); D)`` (eq. 30, one task).

Constants (all of R^k; they bound the per-sample loss, hence every empirical mean):

* ``G = sup ||grad l|| = 1 / (s sqrt(e))`` (at ``||r|| = s``); this is ``l0``.
* ``l1 = sup ||hess l|| = 1 / s^2`` (at ``r = 0``; along ``r`` the eigenvalue
  ``w (1 - ||r||^2/s^2) / s^2`` has its most negative value ``-2 e^{-3/2} / s^2``).
* ``l2 = sup ||third l|| = sqrt(6) sqrt(3 - sqrt 6) exp(-(3 - sqrt 6)/2) / s^3``: for a
  symmetric tensor the norm is ``sup_u |T[u,u,u]|`` (Banach), ``T[u,u,u] = w t (t^2 - 3)/s^3``
  with ``t = r.u / s``, largest at ``t^2 = 3 - sqrt 6``.

Uniform stability of one GD step (Definition 1, eq. 17; Hardt et al. 2016).  Let ``S, S'``
differ in example ``i`` (``x_i`` against ``x'_i``), both of size ``n``.  Then
``A(theta; S) - A(theta; S') = -(beta / n) (grad l(theta; x_i) - grad l(theta; x'_i))``, so
``||A(S) - A(S')|| <= 2 beta G / n``, and because ``l(.; z)`` is ``G``-Lipschitz,
``|l(A(S); z) - l(A(S'); z)| <= G ||A(S) - A(S')|| <= 2 beta G^2 / n =: gamma_A``
for every ``theta``, ``S`` and ``z``: :func:`stability_bound`.

Shapes: the free functions broadcast ``theta [..., k]`` against data ``x [..., n, k]``
(any common leading dimensions), so many data sets, tasks and points go in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthetic.base import Constants, FamilyBase
from testbed import validate as V

L2_UNIT = math.sqrt(6.0) * math.sqrt(3.0 - math.sqrt(6.0)) * math.exp(-(3.0 - math.sqrt(6.0)) / 2.0)
"""``sup_t |t (3 - t^2) exp(-t^2/2)|``: the third-derivative constant for ``s = 1``."""


# ---------------------------------------------------------------------------
# closed forms on arbitrary batched data


def _residual(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``r_i = theta - x_i``: ``[..., n, k]``."""
    return theta.unsqueeze(-2) - x


def _weights(r: torch.Tensor, s: float) -> torch.Tensor:
    return torch.exp(-(r * r).sum(-1) / (2.0 * s * s))


def per_sample_loss(theta: torch.Tensor, x: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``l(theta; x_i) = 1 - exp(-||theta - x_i||^2 / (2 s^2))``: ``[..., n]``."""
    return 1.0 - _weights(_residual(theta, x), s)


def empirical_value(theta: torch.Tensor, x: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``L(theta; D) = mean_i l(theta; x_i)``: ``[...]``."""
    return per_sample_loss(theta, x, s).mean(-1)


def empirical_gradient(theta: torch.Tensor, x: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``grad L(theta; D) = mean_i w_i r_i / s^2``: ``[..., k]``."""
    r = _residual(theta, x)
    return (_weights(r, s).unsqueeze(-1) * r).mean(-2) / (s * s)


def empirical_hessian(theta: torch.Tensor, x: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``hess L(theta; D) = mean_i w_i (I/s^2 - r_i r_i^T / s^4)``: ``[..., k, k]``."""
    r = _residual(theta, x)
    w = _weights(r, s)
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    outer = torch.einsum("...n,...ni,...nj->...ij", w, r, r) / x.shape[-2]
    return w.mean(-1)[..., None, None] * eye / s ** 2 - outer / s ** 4


def empirical_hvp(theta: torch.Tensor, x: torch.Tensor, v: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """``hess L(theta; D) v`` in O(n k) without forming the Hessian: ``[..., k]``."""
    r = _residual(theta, x)
    w = _weights(r, s)
    rv = (r * v.unsqueeze(-2)).sum(-1)
    return (w.mean(-1).unsqueeze(-1) * v / s ** 2
            - (w * rv).unsqueeze(-1).mul(r).mean(-2) / s ** 4)


def empirical_third(theta: torch.Tensor, x: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """Third derivative ``[..., k, k, k]`` (see the module docstring)."""
    r = _residual(theta, x)
    w = _weights(r, s)
    n, k = x.shape[-2], r.shape[-1]
    eye = torch.eye(k, dtype=r.dtype)
    rrr = torch.einsum("...n,...ni,...nj,...nl->...ijl", w, r, r, r) / n
    wr = torch.einsum("...n,...ni->...i", w, r) / n
    sym = (torch.einsum("ij,...l->...ijl", eye, wr) + torch.einsum("il,...j->...ijl", eye, wr)
           + torch.einsum("jl,...i->...ijl", eye, wr))
    return rrr / s ** 6 - sym / s ** 4


def population_value(theta: torch.Tensor, mean: torch.Tensor, s: float = 1.0,
                     tau: float = 1.0) -> torch.Tensor:
    """``L(theta; N(mean, tau^2 I)) = 1 - (s^2/v)^(k/2) exp(-||theta - mean||^2/(2v))``, ``v = s^2+tau^2``."""
    v = s * s + tau * tau
    k = theta.shape[-1]
    d2 = ((theta - mean) ** 2).sum(-1)
    return 1.0 - (s * s / v) ** (k / 2.0) * torch.exp(-d2 / (2.0 * v))


def population_gradient(theta: torch.Tensor, mean: torch.Tensor, s: float = 1.0,
                        tau: float = 1.0) -> torch.Tensor:
    """``grad L(theta; P) = (1 - L(theta; P)) (theta - mean) / v``: ``[..., k]``."""
    v = s * s + tau * tau
    return (1.0 - population_value(theta, mean, s, tau)).unsqueeze(-1) * (theta - mean) / v


def population_hessian(theta: torch.Tensor, mean: torch.Tensor, s: float = 1.0,
                       tau: float = 1.0) -> torch.Tensor:
    """``hess L(theta; P) = (1 - L) (I/v - (theta-mean)(theta-mean)^T / v^2)``: ``[..., k, k]``."""
    v = s * s + tau * tau
    r = theta - mean
    q = (1.0 - population_value(theta, mean, s, tau))[..., None, None]
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    return q * (eye / v - r.unsqueeze(-1) * r.unsqueeze(-2) / v ** 2)


def smoothed_population_value(theta: torch.Tensor, mean: torch.Tensor, alpha: float,
                              s: float = 1.0, tau: float = 1.0) -> torch.Tensor:
    """``E_{eps ~ N(0, alpha^2 I)} L(theta + eps; P)``: ``tau^2 -> tau^2 + alpha^2`` (exact)."""
    return population_value(theta, mean, s, math.sqrt(tau * tau + alpha * alpha))


def finetune(theta: torch.Tensor, x: torch.Tensor, beta: float, s: float = 1.0) -> torch.Tensor:
    """One GD step on the task's data: ``A(theta; D) = theta - beta grad L(theta; D)`` (eq. 2)."""
    return theta - beta * empirical_gradient(theta, x, s)


def maml_value(theta: torch.Tensor, x: torch.Tensor, beta: float, s: float = 1.0,
               x_outer: torch.Tensor | None = None) -> torch.Tensor:
    """``L(A(theta; D); D')`` with ``D' = D`` unless ``x_outer`` is given: ``[...]``."""
    outer = x if x_outer is None else x_outer
    return empirical_value(finetune(theta, x, beta, s), outer, s)


def maml_gradient(theta: torch.Tensor, x: torch.Tensor, beta: float, s: float = 1.0,
                  x_outer: torch.Tensor | None = None) -> torch.Tensor:
    """``(I - beta hess L(theta; D)) grad L(A(theta; D); D')`` (eq. 30, one task): ``[..., k]``."""
    outer = x if x_outer is None else x_outer
    g = empirical_gradient(finetune(theta, x, beta, s), outer, s)
    return g - beta * empirical_hvp(theta, x, g, s)


def gradient_bound(s: float = 1.0) -> float:
    """``G = sup_{theta, x} ||grad l(theta; x)|| = 1 / (s sqrt(e))``."""
    V.positive("s", s)
    return 1.0 / (s * math.sqrt(math.e))


def stability_bound(beta: float, n: int, s: float = 1.0) -> float:
    """``gamma_A = 2 beta G^2 / n``: uniform stability of one GD step (module docstring)."""
    V.positive("beta", beta)
    V.positive_int("n", n)
    return 2.0 * beta * gradient_bound(s) ** 2 / n


def sample_data(means: torch.Tensor, tau: float, n: int, *, draws: tuple[int, ...] = (),
                seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``draws`` independent data sets of ``n`` points per task: ``[*draws, M, n, k]``.

    ``means`` is ``[M, k]``; each point is ``mu_m + tau N(0, I)``.  Give a ``seed`` or a
    ``generator`` (not both) for reproducible draws.
    """
    V.nonnegative("tau", tau)
    V.positive_int("n", n)
    if means.dim() != 2:
        raise ValueError(f"means must have shape [M, k], got {list(means.shape)}")
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    for d in draws:
        V.positive_int("draws", d)
    z = torch.randn(*draws, *means.shape[:1], n, means.shape[1], generator=generator,
                    dtype=means.dtype)
    return means.unsqueeze(-2) + tau * z


# ---------------------------------------------------------------------------
# the family


@dataclass(frozen=True, eq=False)
class KernelTaskFamily(FamilyBase):
    """``M`` Gaussian-kernel tasks with Gaussian data and an exact population loss.

    means: ``[M, k]`` task centres ``mu_m``.
    x: ``[M, n, k]`` support data ``D_m``; x_val: ``[M, n', k]`` query data ``D'_m``.
    s: kernel width; tau: data standard deviation (``P_m = N(mu_m, tau^2 I)``).
    sigma: gradient-oracle noise (Assumption 2).
    """

    means: torch.Tensor
    x: torch.Tensor
    x_val: torch.Tensor
    s: float = 1.0
    tau: float = 0.5
    sigma: float = 0.0

    def __post_init__(self) -> None:
        V.positive("s", self.s)
        V.nonnegative("tau", self.tau)
        V.nonnegative("sigma", self.sigma)
        if self.means.dim() != 2:
            raise ValueError(f"means must have shape [M, k], got {list(self.means.shape)}")
        m, k = self.means.shape
        for name, t in (("x", self.x), ("x_val", self.x_val)):
            if t.dim() != 3 or t.shape[0] != m or t.shape[2] != k:
                raise ValueError(f"{name} must have shape [{m}, n, {k}], got {list(t.shape)}")

    @classmethod
    def random(cls, num_tasks: int, dim: int, *, n_support: int = 20, n_query: int = 20,
               s: float = 1.0, tau: float = 0.5, mean_offset: float = 1.0,
               mean_spread: float = 0.5, sigma: float = 0.0, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> "KernelTaskFamily":
        """``mu_m = mean_offset e_1 + mean_spread N(0, I)``; data drawn from ``N(mu_m, tau^2 I)``."""
        V.positive_int("num_tasks", num_tasks)
        V.positive_int("dim", dim)
        V.nonnegative("mean_offset", mean_offset)
        V.nonnegative("mean_spread", mean_spread)
        rng = np.random.default_rng(seed)
        means = mean_spread * rng.standard_normal((num_tasks, dim))
        means[:, 0] += mean_offset
        means_t = torch.as_tensor(means, dtype=dtype)
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        x = sample_data(means_t, tau, n_support, generator=gen)
        x_val = sample_data(means_t, tau, n_query, generator=gen)
        return cls(means_t, x, x_val, s=s, tau=tau, sigma=sigma)

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.means.shape[1]

    @property
    def num_tasks(self) -> int:  # type: ignore[override]
        return self.means.shape[0]

    @property
    def dtype(self) -> torch.dtype:  # type: ignore[override]
        return self.means.dtype

    def _batch(self, which: str) -> dict:
        return {"x": self.x if which == "support" else self.x_val}

    def loss(self, params: dict, batch: dict) -> torch.Tensor:
        """Per-sample losses of one task: ``[n]`` (a bound method: the width ``s`` is the family's)."""
        return per_sample_loss(params["theta"], batch["x"], self.s) + FamilyBase._noise(params, batch)

    # -- closed forms (all tasks at once) ---------------------------------
    def _data(self, which: str) -> torch.Tensor:
        self._check_which(which)
        return self.x if which == "support" else self.x_val

    def value(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        """``L(theta_m; D_m)`` (or ``D'_m``): ``[..., M]``."""
        return empirical_value(self._points(theta), self._data(which), self.s)

    def gradient(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        return empirical_gradient(self._points(theta), self._data(which), self.s)

    def hessian(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        return empirical_hessian(self._points(theta), self._data(which), self.s)

    def hvp(self, theta: torch.Tensor, v: torch.Tensor, which: str = "support") -> torch.Tensor:
        return empirical_hvp(self._points(theta), self._data(which), v, self.s)

    def third(self, theta: torch.Tensor, which: str = "support") -> torch.Tensor:
        return empirical_third(self._points(theta), self._data(which), self.s)

    def population(self, theta: torch.Tensor) -> torch.Tensor:
        """``L(theta_m; P_m)`` exactly: ``[..., M]``."""
        return population_value(self._points(theta), self.means, self.s, self.tau)

    def constants(self) -> Constants:
        """Assumption 1 constants on all of ``R^k`` (per-sample sups; see the module docstring)."""
        return Constants(l0=gradient_bound(self.s), l1=1.0 / self.s ** 2, l2=L2_UNIT / self.s ** 3,
                         sigma=self.sigma, domain="all of R^k", radius=float("inf"))

    def stability(self, beta: float, which: str = "support") -> float:
        """``gamma_A = 2 beta G^2 / n`` for one GD step on ``D_m`` (or ``D'_m``)."""
        return stability_bound(beta, self._data(which).shape[1], self.s)
