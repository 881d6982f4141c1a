"""Meta-gradients written out from a family's explicit derivatives (no autograd).

These are the oracles :mod:`testbed.meta` is tested against.  They follow the
same definitions (see :mod:`testbed.meta`): for each task, ``N`` steps

    eps_m^k     = alpha_low g_k / ||g_k||, g_k = grad L(theta_k; D_m)      (eq. 11)
    theta_{k+1} = theta_k - beta_low grad L(theta_k + eps_m^k; D_m)        (eqs. 9, 12)
    J_k         = I - beta_low hess L(theta_k + eps_m^k; D_m)              (eq. 10)

and the meta-gradient ``1/M sum_m J_0 ... J_{N-1} grad L(theta_N; D'_m)``:
the Hessian is taken at the perturbed point ``theta + eps + eps_m`` as eq. (10)
states.  With ``alpha_up > 0`` the first pass (``eps = 0``) gives ``h`` and
``eps = alpha_up h / ||h||`` (eq. 13); the second pass starts at
``theta + eps`` and reuses the first pass's ``eps_m^k`` (eq. 14).
"""

from __future__ import annotations

import torch

from testbed import validate as V


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, v / torch.where(n > 0, n, 1.0), torch.zeros_like(v))


def _pass(family, theta_start: torch.Tensor, beta_low: float, steps: int, alpha_low: float,
          first_order: bool, eps_plan: list[torch.Tensor] | None):
    """One pass over all tasks from per-task starts ``[M, d]``; returns (meta-grad ``[d]``, plan)."""
    M, d = family.num_tasks, family.dim
    eye = torch.eye(d, dtype=family.dtype).expand(M, d, d)
    x = theta_start.expand(M, d).clone()
    jacobians, plan = [], []
    for k in range(steps):
        if alpha_low > 0:
            e = alpha_low * _unit(family.gradient(x, "support")) if eps_plan is None else eps_plan[k]
        else:
            e = torch.zeros_like(x)
        plan.append(e)
        point = x + e
        jacobians.append(eye if first_order else eye - beta_low * family.hessian(point, "support"))
        x = x - beta_low * family.gradient(point, "support")
    v = family.gradient(x, "query")
    for J in reversed(jacobians):
        v = torch.einsum("mji,mj->mi", J, v)
    return v.mean(0), plan


def sharp_meta_gradient(family, theta: torch.Tensor, *, beta_low: float, steps: int = 1,
                        alpha_low: float = 0.0, alpha_up: float = 0.0,
                        first_order: bool = False) -> torch.Tensor:
    """The Sharp-MAML meta-gradient (constant perturbations, eq. 10) from explicit derivatives."""
    V.positive("beta_low", beta_low)
    V.positive_int("steps", steps)
    V.nonnegative("alpha_low", alpha_low)
    V.nonnegative("alpha_up", alpha_up)
    theta = torch.as_tensor(theta, dtype=family.dtype)
    h, plan = _pass(family, theta, beta_low, steps, alpha_low, first_order, None)
    if alpha_up == 0:
        return h
    eps = alpha_up * _unit(h)
    g, _ = _pass(family, theta + eps, beta_low, steps, alpha_low, first_order, plan)
    return g


def sharp_low_total_derivative(family, theta: torch.Tensor, *, beta_low: float,
                               alpha_low: float) -> torch.Tensor:
    """Gradient of ``theta -> 1/M sum_m L(theta - beta_low grad L(theta + eps_m(theta)); D'_m)``.

    One step, ``eps_m(theta) = alpha_low g/||g||`` differentiated (what
    ``differentiate_perturbations=True`` computes).  With ``u = g/||g||`` the
    Jacobian of ``eps_m`` is ``alpha_low (I - u u^T) H(theta) / ||g||``, so the
    gradient is ``v - beta_low (I + alpha_low H(theta)(I - u u^T)/||g||) H(theta + eps_m) v``
    with ``v = grad L(theta_1; D'_m)``.
    """
    V.positive("beta_low", beta_low)
    V.positive("alpha_low", alpha_low)
    M, d = family.num_tasks, family.dim
    theta = torch.as_tensor(theta, dtype=family.dtype)
    g = family.gradient(theta, "support")
    gn = g.norm(dim=1, keepdim=True)
    u = g / gn
    eps_m = alpha_low * u
    point = theta + eps_m
    H0 = family.hessian(theta, "support")
    H1 = family.hessian(point, "support")
    theta1 = theta - beta_low * family.gradient(point, "support")
    v = family.gradient(theta1, "query")
    eye = torch.eye(d, dtype=family.dtype).expand(M, d, d)
    proj = eye - torch.einsum("mi,mj->mij", u, u)
    D = alpha_low * torch.einsum("mij,mjk->mik", proj, H0) / gn.unsqueeze(-1)   # d eps_m / d theta
    jac = eye - beta_low * torch.einsum("mij,mjk->mik", H1, eye + D)              # d theta_1 / d theta
    return torch.einsum("mji,mj->mi", jac, v).mean(0)
