"""Meta-learning baselines beside MAML: Reptile, iMAML and Agnostic-SAM.

All share the conventions of :mod:`testbed.meta`: pure functions over
parameter dicts, per-sample losses, a :class:`~testbed.meta.Tasks` meta-batch,
the result a :class:`~testbed.meta.MetaGradient` averaged over tasks (a
direction to *descend* with :func:`testbed.sgd_update` or an optimizer).

Reptile (Nichol & Schulman 2018)
    ``N`` plain gradient steps on the support set from ``theta``; the direction
    is ``(theta - theta_N) / beta_low``, which for one step is exactly the
    support-set gradient (the first-order update) and in general the sum of
    the ``N`` gradients along the trajectory.

iMAML (Rajeswaran et al. 2019)
    Fine-tuning solves the proximally regularised problem
    ``phi* = argmin L(phi; D_m) + lambda/2 ||phi - theta||^2`` (approximately,
    with ``N`` gradient steps of size ``beta_low`` from ``theta``); the implicit
    meta-gradient is ``(I + H(phi*)/lambda)^-1 grad L(phi*; D'_m)``, the linear
    system solved by conjugate gradients to relative residual ``cg_tol`` (at
    most ``cg_steps`` iterations, Hessian-vector products by forward-over-
    reverse autograd).

Agnostic-SAM (Nguyen et al.; the paper in ``shared/`` is only an outline)
    Our reading of the outline: a SAM step on the training batch combined with a
    MAML-like step that keeps the validation loss low.  With ``D_m`` as the
    training batch and ``D'_m`` as the validation batch, summed over tasks:
    ``theta_v = theta - rho2 g_v/||g_v||`` with ``g_v = grad L(theta; D')``,
    the perturbation ``eps = rho1 g_t/||g_t|| - rho2 g'_v/||g'_v||`` with
    ``g_t = grad L(theta; D)`` and ``g'_v = grad L(theta_v; D')``, and the
    update direction ``grad L(theta + eps; D)``: ascend the training loss (SAM)
    while moving towards low validation loss.  ``rho2 = 0`` is SAM on the
    training batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.func import grad, grad_and_value, jvp

from testbed import params as P
from testbed import validate as V
from testbed.meta import (LossFn, MetaGradient, SharpMAMLConfig, Tasks, map_tasks, mean_loss,
                          num_tasks, task)


def _task_grad(loss_fn: LossFn, params: Mapping[str, torch.Tensor], batch) -> dict:
    return grad(lambda p: mean_loss(loss_fn, p, batch)[0])(dict(params))


def _plain_steps(loss_fn: LossFn, params: dict, support, cfg: SharpMAMLConfig) -> dict:
    fast = dict(params)
    for _ in range(cfg.inner_steps):
        fast = P.axpy(-cfg.beta_low, P.detach(_task_grad(loss_fn, fast, support)), fast)
    return fast


def reptile_gradient(loss_fn: LossFn, params: Mapping[str, torch.Tensor], tasks: Tasks,
                     cfg: SharpMAMLConfig) -> MetaGradient:
    """Reptile's direction ``mean_m (theta - theta_N^m) / beta_low`` (``cfg``: beta_low, inner_steps)."""
    params = dict(params)

    def one(p, support, query, plan, mask):
        fast = _plain_steps(loss_fn, p, support, cfg)
        return {k: (p[k] - fast[k]) / cfg.beta_low for k in p}, loss_fn(fast, query).mean()

    grads, values = map_tasks(one, params, tasks, None, {}, cfg.task_batching)
    return MetaGradient({k: v.mean(0) for k, v in grads.items()}, values.mean().detach(), None)


def _check_proximal_step(cfg: SharpMAMLConfig, lam: float) -> None:
    V.positive("lam", lam)
    if cfg.beta_low * lam >= 2:
        raise ValueError(
            f"iMAML's inner gradient descent diverges when beta_low * lambda >= 2 (the proximal term "
            f"alone has curvature lambda): got beta_low={cfg.beta_low!r}, lambda={lam!r}")


def _proximal_steps(loss_fn: LossFn, theta: dict, support, cfg: SharpMAMLConfig, lam: float) -> dict:
    phi = dict(theta)
    for _ in range(cfg.inner_steps):
        g = P.detach(_task_grad(loss_fn, phi, support))
        phi = {k: phi[k] - cfg.beta_low * (g[k] + lam * (phi[k] - theta[k])) for k in phi}
    return phi


def conjugate_gradient(matvec, b: torch.Tensor, steps: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``A x = b`` (``A`` symmetric positive definite) by CG; returns (x, residual norm).

    Runs ``steps`` iterations but freezes once ``||r|| <= tol ||b||`` (written
    without data-dependent branches, so it works under ``vmap``).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    stop = (tol * torch.linalg.vector_norm(b)) ** 2
    for _ in range(steps):
        active = rs > stop
        Ap = matvec(p)
        pAp = p @ Ap
        alpha = torch.where(active & (pAp > 0), rs / torch.where(pAp > 0, pAp, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = r @ r
        beta = torch.where(active & (rs > 0), rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
        p = torch.where(active, r + beta * p, p)
        rs = torch.where(active, rs_new, rs)
    return x, torch.sqrt(rs)


def imaml_adapt(loss_fn: LossFn, params: Mapping[str, torch.Tensor], support, cfg: SharpMAMLConfig,
                lam: float) -> dict:
    """iMAML fine-tuning on one task: ``N`` steps on ``L(phi; D) + lambda/2 ||phi - theta||^2``."""
    _check_proximal_step(cfg, lam)
    return _proximal_steps(loss_fn, P.detach(dict(params)), support, cfg, lam)


def imaml_gradient(loss_fn: LossFn, params: Mapping[str, torch.Tensor], tasks: Tasks,
                   cfg: SharpMAMLConfig, *, lam: float, cg_steps: int = 20,
                   cg_tol: float = 1e-10) -> MetaGradient:
    """The implicit meta-gradient ``mean_m (I + H(phi*_m)/lambda)^-1 grad L(phi*_m; D'_m)``."""
    _check_proximal_step(cfg, lam)
    V.positive_int("cg_steps", cg_steps)
    V.positive("cg_tol", cg_tol)
    params = P.detach(dict(params))

    def one(p, support, query, plan, mask):
        phi = _proximal_steps(loss_fn, p, support, cfg, lam)
        g_out, value = grad_and_value(lambda q: loss_fn(q, query).mean())(phi)
        grad_support = lambda q: _task_grad(loss_fn, q, support)  # noqa: E731

        def matvec(v_flat):
            v = P.unflatten(v_flat, phi)
            hv = jvp(grad_support, (phi,), (v,))[1]
            return v_flat + P.flatten(hv) / lam

        x, _ = conjugate_gradient(matvec, P.flatten(g_out), cg_steps, cg_tol)
        return P.unflatten(x, phi), value

    grads, values = map_tasks(one, params, tasks, None, {}, cfg.task_batching)
    return MetaGradient({k: v.mean(0) for k, v in grads.items()}, values.mean().detach(), None)


def agnostic_sam_gradient(loss_fn: LossFn, params: Mapping[str, torch.Tensor], tasks: Tasks, *,
                          rho1: float, rho2: float) -> MetaGradient:
    """Agnostic-SAM's direction (our reading; see the module docstring)."""
    V.nonnegative("rho1", rho1)
    V.nonnegative("rho2", rho2)
    params = dict(params)
    m = num_tasks(tasks)

    def objective(p, which):
        batches = tasks.support if which == "train" else tasks.query
        return sum(mean_loss(loss_fn, p, task(batches, i))[0] for i in range(m)) / m

    g_val = P.detach(grad(lambda p: objective(p, "val"))(params))
    theta_v = P.axpy(-1.0, P.normalized(g_val, rho2), params)
    g_val2 = P.detach(grad(lambda p: objective(p, "val"))(theta_v))
    g_train = P.detach(grad(lambda p: objective(p, "train"))(params))
    eps = P.add(P.normalized(g_train, rho1), P.scale(-1.0, P.normalized(g_val2, rho2)))
    g, value = grad_and_value(lambda p: objective(p, "train"))(P.add(params, eps))
    return MetaGradient(g, value.detach(), eps)
