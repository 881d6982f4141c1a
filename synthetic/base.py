"""What every synthetic task family provides.

A family holds ``M`` tasks, each with a fine-tuning set ``D_m`` ("support")
and a separate validation set ``D'_m`` ("query").  It gives

* ``loss(params, batch)``: per-sample losses, the form :mod:`testbed.meta`
  differentiates (``params = {"theta": tensor[d]}``);
* closed forms ``value``, ``gradient``, ``hessian``, ``third`` of the task
  losses ``L(theta; D_m)`` / ``L(theta; D'_m)`` for all tasks at once;
* ``hvp(theta, v, which)``: Hessian-vector products without forming the Hessian;
* ``constants(...)``: the constants of Assumption 1 of Abbas et al. 2022 and
  the domain on which they hold;
* ``tasks(generator)``: a :class:`testbed.meta.Tasks` meta-batch.  With
  ``sigma > 0`` and a generator it carries fresh oracle noise: the loss gains
  a term ``z^T theta`` with ``z ~ N(0, sigma^2 I / d)``, so the gradient
  estimate is unbiased with variance ``sigma^2`` (Assumption 2) and the
  Hessian is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from testbed.meta import Tasks

WHICH = ("support", "query")


def check_regression_data(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor,
                          y_val: torch.Tensor) -> None:
    """ValueError unless ``x, x_val`` are ``[M, n, d]`` with targets ``[M, n]`` and the two
    sets agree on ``M`` and ``d``."""
    for xs, ys, xn, yn in ((x, y, "x", "y"), (x_val, y_val, "x_val", "y_val")):
        if xs.dim() != 3 or ys.shape != xs.shape[:2]:
            raise ValueError(f"{xn} must be [M, n, d] and {yn} [M, n]; got {list(xs.shape)} and "
                             f"{list(ys.shape)}")
    if x.shape[0] != x_val.shape[0] or x.shape[2] != x_val.shape[2]:
        raise ValueError(f"support and query disagree on M or d: {list(x.shape)} vs {list(x_val.shape)}")


@dataclass(frozen=True)
class Constants:
    """Constants of Assumption 1 (Abbas et al. 2022) and where they hold.

    l0: Lipschitz constant of ``L(.; D'_m)`` (a bound on its gradient norm).
    l1: Lipschitz constant of ``grad L(.; D_m)`` and ``grad L(.; D'_m)``.
    l2: Lipschitz constant of ``hess L(.; D_m)``.
    sigma: standard deviation of the gradient oracle (Assumption 2).
    domain: where the constants hold, in words ("all of R^d", "ball ||theta|| <= R").
    radius: the radius of that ball, or ``inf`` for all of R^d.
    """

    l0: float
    l1: float
    l2: float
    sigma: float
    domain: str
    radius: float


class FamilyBase:
    """Shared plumbing; subclasses define ``_batch``, ``loss`` and the closed forms."""

    dim: int
    num_tasks: int
    sigma: float
    dtype: torch.dtype

    def _batch(self, which: str) -> dict:
        raise NotImplementedError

    def _check_which(self, which: str) -> None:
        if which not in WHICH:
            raise ValueError(f"which must be 'support' or 'query', got {which!r}")

    def _points(self, theta: torch.Tensor) -> torch.Tensor:
        """``theta`` as per-task points ``[..., M, d]``.

        Accepts one point ``[d]`` (shared by all tasks) or per-task points with
        any leading batch dimensions ``[..., M, d]`` (many runs at once).
        """
        theta = torch.as_tensor(theta, dtype=self.dtype)
        if theta.shape == (self.dim,):
            return theta.expand(self.num_tasks, self.dim)
        if theta.dim() >= 2 and theta.shape[-2:] == (self.num_tasks, self.dim):
            return theta
        raise ValueError(
            f"theta must have shape ({self.dim},) or (..., {self.num_tasks}, {self.dim}), "
            f"got {tuple(theta.shape)}")

    def batch(self, which: str, generator: torch.Generator | None = None) -> dict:
        """Stacked data of all tasks; with ``sigma > 0`` and a generator, fresh oracle noise."""
        self._check_which(which)
        b = self._batch(which)
        if self.sigma > 0 and generator is not None:
            z = torch.randn(self.num_tasks, self.dim, generator=generator, dtype=self.dtype)
            b = {**b, "z": z * (self.sigma / self.dim ** 0.5)}
        return b

    def tasks(self, generator: torch.Generator | None = None) -> Tasks:
        """A meta-batch of all ``M`` tasks (noise drawn independently for D_m and D'_m)."""
        return Tasks(self.batch("support", generator), self.batch("query", generator))

    @staticmethod
    def _noise(params: dict, batch: dict) -> torch.Tensor | float:
        z = batch.get("z")
        return 0.0 if z is None else (z * params["theta"]).sum()

    def params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameter dict :mod:`testbed.meta` takes for the point ``theta``."""
        theta = torch.as_tensor(theta, dtype=self.dtype)
        if theta.shape != (self.dim,):
            raise ValueError(f"theta must have shape ({self.dim},), got {tuple(theta.shape)}")
        return {"theta": theta}
