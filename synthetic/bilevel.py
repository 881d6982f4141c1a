"""Shared-embedding families: bilevel quadratic heads (hypergradient in closed form) and ANIL.

* :class:`BilevelQuadraticFamily`: the bilevel problem below, for ITD/AID/ES.
* :class:`AnilRegressionFamily`: ANIL's linear-regression head on learned
  linear features, strongly convex or nonconvex in the head, with the
  meta-gradient through N head steps in closed form (batched over runs).

The problem of Liang's slides ("Bilevel meta-learning with shared embedding"):
an embedding ``phi in R^p`` shared by ``M`` tasks, each with its own head
``u_m in R^q`` fitted in the inner problem::

    g(phi, u) = sum_m [ 1/2 u_m^T A_m u_m - u_m^T (B_m s(phi) + c_m) ]          (inner, per task)
    f(phi, u) = 1/M sum_m 1/2 ||u_m - t_m||^2 + lam/2 ||phi||^2                 (outer)

with features ``s(phi) = phi`` (``feature="linear"``) or ``tanh(phi)``
elementwise (``feature="tanh"``).  ``A_m`` is symmetric positive definite,
drawn constructively (spectrum log-uniform on ``[eig_low, eig_high]`` with both
ends hit, then a Haar basis: :mod:`synthetic.linalg`).  Then, in closed form::

    u*_m(phi)   = A_m^-1 (B_m s(phi) + c_m)
    J_m(phi)    = d u*_m / d phi = A_m^-1 B_m diag(s'(phi))
    grad Phi    = lam phi + 1/M sum_m J_m^T (u*_m - t_m)

and for ``N`` inner gradient steps of size ``lr`` from ``u0`` (ITD)::

    u_N         = u* + C_m^N (u0 - u*),      C_m = I - lr A_m
    d u_N/d phi = (I - C_m^N) J_m

so the ITD hypergradient is ``lam phi + 1/M sum_m ((I - C_m^N) J_m)^T (u_N - t_m)``.

Constants (:meth:`BilevelQuadraticFamily.constants`), on all of ``R^p x R^{Mq}``:
``g(phi, .)`` is ``mu``-strongly convex and ``L``-smooth with ``mu = eig_low``,
``L = eig_high`` (the extreme eigenvalues of the ``A_m``); ``s`` is
1-Lipschitz.  With ``feature="linear"`` every ``u_N(phi)`` is affine in ``phi``;
with ``"tanh"`` it is not (the ES estimate then has a smoothing bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from synthetic import linalg
from synthetic.base import check_regression_data
from testbed import validate as V

FEATURES = ("linear", "tanh")


@dataclass(frozen=True)
class BilevelConstants:
    """mu, L: strong convexity and smoothness of ``g(phi, .)``; ``lr <= 1/L`` is a safe inner step."""

    mu: float
    L: float
    domain: str


@dataclass(frozen=True, eq=False)
class BilevelQuadraticFamily:
    """``M`` tasks of the shared-embedding bilevel problem (see the module docstring).

    A: ``[M, q, q]`` SPD inner Hessians.
    B: ``[M, q, p]`` how the features enter each head's problem.
    c: ``[M, q]`` offsets.
    target: ``[M, q]`` the heads the outer loss asks for (``t_m``).
    lam: the outer ridge ``lam/2 ||phi||^2``, >= 0.
    feature: "linear" (``s(phi) = phi``) or "tanh".
    """

    A: torch.Tensor
    B: torch.Tensor
    c: torch.Tensor
    target: torch.Tensor
    lam: float = 0.1
    feature: str = "linear"

    def __post_init__(self) -> None:
        V.nonnegative("lam", self.lam)
        V.one_of("feature", self.feature, FEATURES)
        if self.A.dim() != 3 or self.A.shape[1] != self.A.shape[2]:
            raise ValueError(f"A must have shape [M, q, q], got {list(self.A.shape)}")
        m, q, _ = self.A.shape
        if self.B.dim() != 3 or tuple(self.B.shape[:2]) != (m, q):
            raise ValueError(f"B must have shape [{m}, {q}, p], got {list(self.B.shape)}")
        for name, t in (("c", self.c), ("target", self.target)):
            if tuple(t.shape) != (m, q):
                raise ValueError(f"{name} must have shape [{m}, {q}], got {list(t.shape)}")
        if not torch.allclose(self.A, self.A.transpose(1, 2), atol=0, rtol=1e-12):
            raise ValueError("A must be symmetric")
        low = torch.linalg.eigvalsh(self.A).min().item()
        if low <= 0:
            raise ValueError(f"A must be positive definite (strongly convex heads), "
                             f"smallest eigenvalue {low!r}")

    # -- construction ------------------------------------------------------
    @classmethod
    def random(cls, num_tasks: int, dim_u: int, dim_phi: int, *, eig_low: float = 0.1,
               eig_high: float = 1.0, lam: float = 0.1, feature: str = "linear", seed: int = 0,
               dtype: torch.dtype = torch.float64) -> "BilevelQuadraticFamily":
        """Random tasks: ``A_m`` spectra log-uniform on ``[eig_low, eig_high]`` (both ends hit),
        ``B_m ~ N(0, I/p)``, ``c_m, t_m ~ N(0, I)``."""
        V.positive_int("num_tasks", num_tasks)
        V.positive_int("dim_u", dim_u)
        V.positive_int("dim_phi", dim_phi)
        V.positive("eig_low", eig_low)
        V.positive("eig_high", eig_high)
        rng = np.random.default_rng(seed)
        A = np.stack([linalg.from_spectrum(linalg.log_uniform_spectrum(rng, dim_u, eig_low, eig_high),
                                           linalg.orthogonal(rng, dim_u))
                      for _ in range(num_tasks)])
        B = rng.standard_normal((num_tasks, dim_u, dim_phi)) / np.sqrt(dim_phi)
        c = rng.standard_normal((num_tasks, dim_u))
        target = rng.standard_normal((num_tasks, dim_u))
        t = lambda x: linalg.to_torch(x, dtype)  # noqa: E731
        return cls(t(A), t(B), t(c), t(target), lam=lam, feature=feature)

    @property
    def num_tasks(self) -> int:
        return self.A.shape[0]

    @property
    def dim_u(self) -> int:
        return self.A.shape[1]

    @property
    def dim_phi(self) -> int:
        return self.B.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    def constants(self) -> BilevelConstants:
        eig = torch.linalg.eigvalsh(self.A)
        return BilevelConstants(mu=eig.min().item(), L=eig.max().item(),
                                domain="all of R^p x R^(M q) (s is 1-Lipschitz)")

    def _phi(self, phi: torch.Tensor) -> torch.Tensor:
        phi = torch.as_tensor(phi, dtype=self.dtype)
        if phi.shape != (self.dim_phi,):
            raise ValueError(f"phi must have shape ({self.dim_phi},), got {tuple(phi.shape)}")
        return phi

    def _u(self, u: torch.Tensor) -> torch.Tensor:
        u = torch.as_tensor(u, dtype=self.dtype)
        if u.shape != (self.num_tasks, self.dim_u):
            raise ValueError(f"u must have shape ({self.num_tasks}, {self.dim_u}), got {tuple(u.shape)}")
        return u

    # -- features ----------------------------------------------------------
    def features(self, phi: torch.Tensor) -> torch.Tensor:
        """``s(phi)``: ``phi`` or ``tanh(phi)``."""
        return phi if self.feature == "linear" else torch.tanh(phi)

    def feature_derivative(self, phi: torch.Tensor) -> torch.Tensor:
        """``s'(phi)`` elementwise: 1 or ``1 - tanh(phi)^2``."""
        return torch.ones_like(phi) if self.feature == "linear" else 1 - torch.tanh(phi) ** 2

    # -- the two levels (what testbed.hypergrad differentiates) ------------
    def inner(self, phi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``g(phi, u)``, summed over tasks (so each head's step is its own task's)."""
        rhs = torch.einsum("mqp,p->mq", self.B, self.features(phi)) + self.c
        return 0.5 * torch.einsum("mi,mij,mj->", u, self.A, u) - (u * rhs).sum()

    def outer(self, phi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``f(phi, u)``: mean head error plus the ridge on ``phi``."""
        return 0.5 * ((u - self.target) ** 2).sum(-1).mean() + 0.5 * self.lam * (phi * phi).sum()

    # -- closed forms ------------------------------------------------------
    def inner_gradient(self, phi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``grad_u g = A_m u_m - B_m s(phi) - c_m``: ``[M, q]``."""
        phi, u = self._phi(phi), self._u(u)
        return (torch.einsum("mij,mj->mi", self.A, u)
                - torch.einsum("mqp,p->mq", self.B, self.features(phi)) - self.c)

    def inner_hessian(self) -> torch.Tensor:
        """``hess_uu g``: block diagonal with blocks ``A_m``, ``[M, q, q]``."""
        return self.A.clone()

    def cross_derivative(self, phi: torch.Tensor) -> torch.Tensor:
        """``d (grad_u g) / d phi = -B_m diag(s'(phi))``: ``[M, q, p]``."""
        return -self.B * self.feature_derivative(self._phi(phi))

    def solution(self, phi: torch.Tensor) -> torch.Tensor:
        """``u*_m(phi) = A_m^-1 (B_m s(phi) + c_m)``: ``[M, q]``."""
        rhs = torch.einsum("mqp,p->mq", self.B, self.features(self._phi(phi))) + self.c
        return torch.linalg.solve(self.A, rhs)

    def response_jacobian(self, phi: torch.Tensor) -> torch.Tensor:
        """``J_m = d u*_m / d phi = A_m^-1 B_m diag(s'(phi))``: ``[M, q, p]``."""
        return torch.linalg.solve(self.A, -self.cross_derivative(phi))

    def objective(self, phi: torch.Tensor) -> torch.Tensor:
        """``Phi(phi) = f(phi, u*(phi))``."""
        phi = self._phi(phi)
        return self.outer(phi, self.solution(phi))

    def hypergradient(self, phi: torch.Tensor) -> torch.Tensor:
        """``grad Phi = lam phi + 1/M sum_m J_m^T (u*_m - t_m)``: ``[p]``."""
        phi = self._phi(phi)
        resid = self.solution(phi) - self.target
        return self.lam * phi + torch.einsum("mqp,mq->p", self.response_jacobian(phi), resid) / self.num_tasks

    def contraction(self, steps: int, lr: float) -> torch.Tensor:
        """``C_m^N = (I - lr A_m)^N``: ``[M, q, q]``."""
        V.positive_int("steps", steps)
        V.positive("lr", lr)
        eye = torch.eye(self.dim_u, dtype=self.dtype)
        return torch.linalg.matrix_power(eye - lr * self.A, steps)

    def inner_iterate(self, phi: torch.Tensor, u0: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
        """``u_N = u* + C^N (u0 - u*)``: ``N`` inner gradient steps from ``u0``, ``[M, q]``."""
        star = self.solution(phi)
        return star + torch.einsum("mij,mj->mi", self.contraction(steps, lr), self._u(u0) - star)

    def itd_hypergradient(self, phi: torch.Tensor, u0: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
        """The exact gradient of ``phi -> f(phi, u_N(phi))`` (what ITD computes): ``[p]``."""
        phi = self._phi(phi)
        CN = self.contraction(steps, lr)
        eye = torch.eye(self.dim_u, dtype=self.dtype)
        jac = torch.einsum("mij,mjp->mip", eye - CN, self.response_jacobian(phi))
        resid = self.inner_iterate(phi, u0, steps, lr) - self.target
        return self.lam * phi + torch.einsum("mqp,mq->p", jac, resid) / self.num_tasks

    def aid_hypergradient(self, phi: torch.Tensor, u_hat: torch.Tensor) -> torch.Tensor:
        """The implicit formula with an exact linear solve at ``u_hat`` (AID's limit): ``[p]``."""
        phi = self._phi(phi)
        resid = self._u(u_hat) - self.target
        return self.lam * phi + torch.einsum("mqp,mq->p", self.response_jacobian(phi), resid) / self.num_tasks


# ----------------------------------------------------------------------------
# ANIL: a linear-regression head on learned linear features


GEOMETRIES = ("strongly-convex", "nonconvex")


@dataclass(frozen=True, eq=False)
class AnilRegressionFamily:
    """``M`` regression tasks for ANIL: a shared body ``W in R^{d x k}`` and a head ``u in R^k``.

    Task ``m`` has support data ``(X_m, y_m)`` and query data ``(X'_m, y'_m)``;
    the prediction is ``x^T W u`` (features ``W^T x``, a linear head).  With
    ``S_m = X_m^T X_m / n``, ``r_m = X_m^T y_m / n`` and ``s_m = mean y_m^2``::

        l_S(u, W) = 1/2 u^T W^T S_m W u - u^T W^T r_m + s_m/2 + rho/2 ||u||^2 + gamma sum_k cos(u_k)
        l_T(u, W) = 1/2 u^T W^T S'_m W u - u^T W^T r'_m + s'_m/2

    (the mean squared error, plus a regulariser on the head in the support loss).
    ANIL fine-tunes the head, ``N`` steps ``u_{j+1} = u_j - alpha grad_u l_S(u_j, W)``
    from the shared ``u_0 = u``, and meta-learns ``(W, u)`` on
    ``F_N(W, u) = 1/M sum_m l_T(u_N^m, W)`` (Raghu et al. 2020; Ji, Lee,
    Liang & Poor 2020, the slides' "ANIL training").

    Geometries of the head problem (``hess_u l_S = W^T S_m W + rho I - gamma diag(cos u)``):

    * ``"strongly-convex"``: ``gamma = 0`` (ridge regression on fixed features,
      ``rho``-strongly convex);
    * ``"nonconvex"``: ``gamma > rho``: a corrugated ridge regression, still
      bounded below and globally smooth (``L = ||W^T S_m W|| + rho + gamma``,
      Hessian ``gamma``-Lipschitz, the assumptions of Ji et al.'s nonconvex
      ANIL) but with curvature down to ``rho - gamma < 0`` and many local minima.

    x, y, x_val, y_val: ``[M, n, d]``, ``[M, n]``, ``[M, n', d]``, ``[M, n']``.
    """

    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    rho: float = 0.1
    gamma: float = 0.0

    def __post_init__(self) -> None:
        V.nonnegative("gamma", self.gamma)
        V.positive("rho", self.rho)
        check_regression_data(self.x, self.y, self.x_val, self.y_val)

    @classmethod
    def random(cls, num_tasks: int, dim_x: int, dim_feature: int, *, geometry: str = "strongly-convex",
               n_support: int = 20, n_query: int = 20, rho: float = 0.5,
               gamma: float = 1.5, noise: float = 0.1, seed: int = 0,
               dtype: torch.dtype = torch.float64) -> "AnilRegressionFamily":
        """Teacher tasks ``y = x^T W* v_m + noise N(0, 1)``, ``x ~ N(0, I)``, one body ``W*``
        (``d x k``, entries ``N(0, 1/d)``) and heads ``v_m ~ N(0, I)``.

        ``gamma`` (the ripple) is used by the nonconvex geometry only and must
        exceed ``rho`` there (else the head problem could be convex).
        """
        V.one_of("geometry", geometry, GEOMETRIES)
        V.positive_int("num_tasks", num_tasks)
        V.positive_int("dim_x", dim_x)
        V.positive_int("dim_feature", dim_feature)
        V.positive_int("n_support", n_support)
        V.positive_int("n_query", n_query)
        V.nonnegative("noise", noise)
        V.positive("rho", rho)
        if geometry == "nonconvex" and not gamma > rho:
            raise ValueError(f"the nonconvex geometry needs gamma > rho, got gamma={gamma!r}, rho={rho!r}")
        rng = np.random.default_rng(seed)
        body = rng.standard_normal((dim_x, dim_feature)) / np.sqrt(dim_x)
        heads = rng.standard_normal((num_tasks, dim_feature))

        def draw(n):
            xs = rng.standard_normal((num_tasks, n, dim_x))
            ys = np.einsum("mnd,dk,mk->mn", xs, body, heads) + noise * rng.standard_normal((num_tasks, n))
            return xs, ys

        (x, y), (xv, yv) = draw(n_support), draw(n_query)
        t = lambda a: linalg.to_torch(a, dtype)  # noqa: E731
        return cls(t(x), t(y), t(xv), t(yv), rho=float(rho),
                   gamma=gamma if geometry == "nonconvex" else 0.0)

    @property
    def num_tasks(self) -> int:
        return self.x.shape[0]

    @property
    def dim_x(self) -> int:
        return self.x.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def _moments(self, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xs, ys = (self.x, self.y) if which == "support" else (self.x_val, self.y_val)
        n = xs.shape[1]
        return (torch.einsum("mni,mnj->mij", xs, xs) / n, torch.einsum("mni,mn->mi", xs, ys) / n,
                (ys * ys).mean(-1))

    def head_constants(self, W: torch.Tensor) -> BilevelConstants:
        """Bounds on the head Hessian over all ``u`` for the body ``W``, over tasks:
        ``mu = min eig(W^T S W) + rho - gamma`` (negative when nonconvex),
        ``L = max eig(W^T S W) + rho + gamma``."""
        S, _, _ = self._moments("support")
        eig = torch.linalg.eigvalsh(torch.einsum("dk,mde,el->mkl", W, S, W)) + self.rho
        return BilevelConstants(mu=eig.min().item() - self.gamma, L=eig.max().item() + self.gamma,
                                domain="all u, for this W (the ripple's curvature lies in [-gamma, gamma])")

    # -- what testbed.meta differentiates: params {"body": W, "head": u} ---
    def tasks(self):
        """A :class:`testbed.meta.Tasks` meta-batch (``reg`` marks the support sets)."""
        from testbed.meta import Tasks

        m = self.num_tasks
        one, zero = torch.ones(m, dtype=self.dtype), torch.zeros(m, dtype=self.dtype)
        return Tasks({"x": self.x, "y": self.y, "reg": one},
                     {"x": self.x_val, "y": self.y_val, "reg": zero})

    def loss(self, params: dict, batch: dict) -> torch.Tensor:
        """Per-sample losses of one task, ``[n]``: squared error plus (support only) the regulariser."""
        u, W = params["head"], params["body"]
        err = batch["x"] @ (W @ u) - batch["y"]
        return 0.5 * err * err + batch["reg"] * (0.5 * self.rho * (u * u).sum() + self.gamma * torch.cos(u).sum())

    # -- closed forms, batched over runs: W [..., d, k], u [..., M, k] --------
    def meta_gradient(self, W: torch.Tensor, u: torch.Tensor, alpha, steps
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(grad_W F_N, grad_u F_N, F_N)`` for many runs at once: ``W [..., d, k]``, ``u [..., k]``.

        Forward: per task ``P = W^T S W``, ``b = W^T r`` and the ``N`` head steps.
        Backward (adjoint ``a``): ``a_N = grad_u l_T(u_N)``; step ``j`` adds
        ``-alpha (S W u_j a^T + S W a u_j^T - r a^T)`` to ``grad_W`` and sets
        ``a <- (I - alpha hess_u l_S(u_j)) a``; the query adds its direct
        ``S' W u_N u_N^T - r' u_N^T``; ``grad_u = a_0``; means over tasks.
        ``alpha``: float or a tensor over the run dimensions; ``steps``: an int
        or an integer tensor over the run dimensions (runs with fewer steps
        stop early: one call serves several N).
        """
        lead = u.shape[:-1]
        if isinstance(steps, torch.Tensor):
            n_run = steps.expand(lead)
            if (n_run < 1).any():
                raise ValueError(f"steps must be >= 1, got min {int(n_run.min())!r}")
            n_max = int(n_run.max())
        else:
            n_max = V.positive_int("steps", steps)
            n_run = None
        a1 = torch.as_tensor(alpha, dtype=self.dtype).expand(lead)
        if (a1 <= 0).any():
            raise ValueError(f"alpha must be > 0, got min {a1.min().item()!r}")
        a3 = a1[..., None, None]
        S, r, _ = self._moments("support")
        Sq, rq, sq_y = self._moments("query")
        SW = torch.einsum("mde,...ek->...mdk", S, W)
        P = torch.einsum("...dk,...mdl->...mkl", W, SW)
        b = torch.einsum("...dk,md->...mk", W, r)

        def head_grad(x):
            return (P @ x[..., None])[..., 0] - b + self.rho * x - self.gamma * torch.sin(x)

        def head_hvp(x, v):
            return (P @ v[..., None])[..., 0] + self.rho * v - self.gamma * torch.cos(x) * v

        x = u.unsqueeze(-2).expand(*lead, self.num_tasks, u.shape[-1])
        path = []
        for j in range(n_max):
            path.append(x)
            step = a3 * head_grad(x)
            x = x - (step if n_run is None else torch.where((j < n_run)[..., None, None], step, 0.0))
        SqW = torch.einsum("mde,...ek->...mdk", Sq, W)
        Pq_x = torch.einsum("...mdk,...md->...mk", SqW, torch.einsum("...dk,...mk->...md", W, x))
        bq = torch.einsum("...dk,md->...mk", W, rq)
        value = (0.5 * (x * Pq_x).sum(-1) - (x * bq).sum(-1) + 0.5 * sq_y).mean(-1)
        adj = Pq_x - bq
        # the steps' W-terms, summed per task before contracting with S W and r:
        # sum_j alpha_j (u_j a_{j+1}^T + a_{j+1} u_j^T) and sum_j alpha_j a_{j+1}
        outer = torch.zeros(*adj.shape, adj.shape[-1], dtype=self.dtype)
        lin = torch.zeros_like(adj)
        for j in reversed(range(n_max)):
            point = path[j]
            live = a3 if n_run is None else torch.where((j < n_run)[..., None, None], a3, 0.0)
            outer = outer + live[..., None] * (point[..., :, None] * adj[..., None, :]
                                               + adj[..., :, None] * point[..., None, :])
            lin = lin + live * adj
            adj = adj - live * head_hvp(point, adj)
        g_W = (torch.einsum("...mdk,...mk,...ml->...dl", SqW, x, x) - torch.einsum("md,...ml->...dl", rq, x)
               - torch.einsum("...mdk,...mkl->...dl", SW, outer) + torch.einsum("md,...ml->...dl", r, lin))
        m = self.num_tasks
        return g_W / m, adj.mean(-2), value
