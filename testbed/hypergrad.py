"""Hypergradients of bilevel problems: ITD, AID (CG or Neumann) and ES-based Jacobians.

The problem (Liang's slides, "Bilevel meta-learning with shared embedding";
Ji, Yang & Liang, ICML 2021)::

    min_phi Phi(phi) = f(phi, u*(phi)),     u*(phi) = argmin_u g(phi, u)

with ``phi`` the shared embedding (outer variable) and ``u`` the task heads
(inner variable).  When ``g(phi, .)`` is strongly convex the hypergradient is
the implicit-function formula::

    grad Phi = grad_phi f - grad_phi grad_u g (hess_uu g)^-1 grad_u f      at (phi, u*(phi))
             = grad_phi f + J*^T grad_u f,        J* = d u*/d phi  (the response Jacobian)

Every function here approximates it from ``f`` and ``g`` alone:

* :func:`itd` (iterative differentiation): autograd through ``N`` inner
  gradient steps ``u_{k+1} = u_k - lr grad_u g(phi, u_k)`` from ``u0``; the
  gradient of ``phi -> f(phi, u_N(phi))``.
* :func:`aid_cg` / :func:`aid_neumann` (approximate implicit differentiation):
  the formula above at an approximate ``u_hat`` (e.g. :func:`inner_gd`), the
  linear system ``hess_uu g v = grad_u f`` solved by conjugate gradients to
  relative residual ``tol`` or by the truncated Neumann series
  ``v = lr sum_{k<K} (I - lr hess_uu g)^k grad_u f``.
* :func:`es_jacobian` / :func:`es_hypergradient` (Sow, Ji & Liang, ESJ): the
  Hessian-free response Jacobian estimate
  ``J = 1/D sum_z (u_N(phi + beta z) - u_N(phi)) z^T / beta``, ``z ~ N(0, I)``,
  and ``grad_phi f + J^T grad_u f`` at ``(phi, u_N(phi))``.

``f(phi, u)`` and ``g(phi, u)`` return scalars; ``phi`` and ``u`` are tensors
or parameter dicts (what :func:`torch.func.functional_call` takes).  All
functions are pure: they never modify their inputs, and results have the
structure of ``phi`` (gradients) or ``u`` (inner points).  Internally both
variables are flattened to vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, Union

import torch
from torch.func import grad, vjp, vmap

from testbed import params as P
from testbed import validate as V
from testbed.baselines import conjugate_gradient

Tree = Union[torch.Tensor, Mapping[str, torch.Tensor]]
Objective = Callable[[Tree, Tree], torch.Tensor]


class Hypergradient(NamedTuple):
    """What a hypergradient evaluation returns.

    grad:     the hypergradient estimate, shaped like ``phi``.
    u:        the inner point it was evaluated at (``u_N`` or ``u_hat``), shaped like ``u``.
    residual: ``||hess_uu g v - grad_u f||`` of the linear solve (AID), else ``None``.
    """

    grad: Tree
    u: Tree
    residual: torch.Tensor | None


# ----------------------------------------------------------------------------
# flat views of tensors and parameter dicts


def _check_tree(name: str, x: object) -> None:
    leaves = [x] if isinstance(x, torch.Tensor) else (
        list(x.values()) if isinstance(x, Mapping) else None)
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        raise ValueError(f"{name} must be a tensor or a non-empty dict of tensors, got {type(x).__name__}")
    for t in leaves:
        if not t.is_floating_point():
            raise ValueError(f"{name} must hold floating-point tensors, got dtype {t.dtype}")


def _flat(x: Tree) -> torch.Tensor:
    return x.detach().reshape(-1) if isinstance(x, torch.Tensor) else P.flatten(P.detach(x))


def _unflat(v: torch.Tensor, like: Tree) -> Tree:
    return v.reshape(like.shape) if isinstance(like, torch.Tensor) else P.unflatten(v, like)


def _flat_fn(fn: Objective, phi: Tree, u: Tree) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if not callable(fn):
        raise ValueError(f"f and g must be callables fn(phi, u) -> scalar, got {fn!r}")
    return lambda p, q: fn(_unflat(p, phi), _unflat(q, u))


def _grad_u(gf):
    return grad(gf, argnums=1)


def _gd(gf, p: torch.Tensor, u: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    step = _grad_u(gf)
    for _ in range(steps):
        u = u - lr * step(p, u)
    return u


def _check_inner(steps: int, lr: float) -> None:
    V.positive_int("steps", steps)
    V.positive("lr", lr)


# ----------------------------------------------------------------------------
# the inner solver and ITD


def inner_gd(g: Objective, phi: Tree, u0: Tree, steps: int, lr: float) -> Tree:
    """``u_N``: ``N = steps`` gradient steps ``u <- u - lr grad_u g(phi, u)`` from ``u0`` (no graph)."""
    _check_tree("phi", phi)
    _check_tree("u0", u0)
    _check_inner(steps, lr)
    gf = _flat_fn(g, phi, u0)
    with torch.no_grad():
        return _unflat(_gd(gf, _flat(phi), _flat(u0), steps, lr).detach(), u0)


def itd(f: Objective, g: Objective, phi: Tree, u0: Tree, steps: int, lr: float) -> Hypergradient:
    """ITD: ``d/dphi f(phi, u_N(phi))`` by autograd through ``N = steps`` inner gradient steps.

    ``u0`` is held constant (it does not depend on ``phi``).  For a strongly
    convex ``g(phi, .)`` with ``lr <= 1/L`` the error to ``grad Phi`` decays
    like ``(1 - lr mu)^N`` (Ji, Yang & Liang 2021, Prop. 3).
    """
    _check_tree("phi", phi)
    _check_tree("u0", u0)
    _check_inner(steps, lr)
    ff, gf = _flat_fn(f, phi, u0), _flat_fn(g, phi, u0)
    u_start = _flat(u0)

    def through_steps(p):
        u = _gd(gf, p, u_start, steps, lr)
        return ff(p, u), u.detach()

    hyper, u_n = grad(through_steps, has_aux=True)(_flat(phi))
    return Hypergradient(_unflat(hyper.detach(), phi), _unflat(u_n, u0), None)


# ----------------------------------------------------------------------------
# AID


def _implicit(ff, gf, p: torch.Tensor, u: torch.Tensor, solve) -> tuple[torch.Tensor, torch.Tensor]:
    """``grad_phi f - grad_phi <grad_u g, v>`` with ``v = solve(hvp, grad_u f)``; returns (hyper, residual)."""
    grad_u_g = _grad_u(gf)
    g_phi = grad(ff, argnums=0)(p, u)
    g_u = grad(ff, argnums=1)(p, u)

    _, pullback = vjp(lambda q: grad_u_g(p, q), u)   # hess_uu g is symmetric: v^T H = H v

    def hvp(v):
        return pullback(v)[0]

    v, residual = solve(hvp, g_u)
    v = v.detach()
    cross = grad(lambda pp: grad_u_g(pp, u) @ v)(p)
    return (g_phi - cross).detach(), residual.detach()


def aid_cg(f: Objective, g: Objective, phi: Tree, u_hat: Tree, cg_steps: int,
           tol: float) -> Hypergradient:
    """AID with conjugate gradients at ``u_hat`` (Ji, Yang & Liang 2021, AID-CG).

    Solves ``hess_uu g(phi, u_hat) v = grad_u f(phi, u_hat)`` by at most
    ``cg_steps`` CG iterations, stopping once the residual is at most ``tol``
    times ``||grad_u f||`` (:func:`testbed.baselines.conjugate_gradient`);
    returns ``grad_phi f - grad_phi grad_u g v``.  Needs ``hess_uu g`` symmetric
    positive definite (a strongly convex inner problem).
    """
    _check_tree("phi", phi)
    _check_tree("u_hat", u_hat)
    V.positive_int("cg_steps", cg_steps)
    V.positive("tol", tol)
    ff, gf = _flat_fn(f, phi, u_hat), _flat_fn(g, phi, u_hat)
    hyper, res = _implicit(ff, gf, _flat(phi), _flat(u_hat),
                           lambda hvp, b: conjugate_gradient(hvp, b, cg_steps, tol))
    return Hypergradient(_unflat(hyper, phi), u_hat, res)


def aid_neumann(f: Objective, g: Objective, phi: Tree, u_hat: Tree, terms: int,
                lr: float) -> Hypergradient:
    """AID with the truncated Neumann series ``(hess_uu g)^-1 ~ lr sum_{k<K} (I - lr hess_uu g)^k``.

    ``K = terms``; converges when ``0 < lr < 2/L`` and ``hess_uu g`` is positive
    definite, with residual ``||(I - lr hess_uu g)^K grad_u f||`` (returned).
    """
    _check_tree("phi", phi)
    _check_tree("u_hat", u_hat)
    V.positive_int("terms", terms)
    V.positive("lr", lr)
    ff, gf = _flat_fn(f, phi, u_hat), _flat_fn(g, phi, u_hat)

    def neumann(hvp, b):
        v, r = torch.zeros_like(b), b
        for _ in range(terms):
            v = v + lr * r
            r = r - lr * hvp(r)
        return v, torch.linalg.vector_norm(r)

    hyper, res = _implicit(ff, gf, _flat(phi), _flat(u_hat), neumann)
    return Hypergradient(_unflat(hyper, phi), u_hat, res)


# ----------------------------------------------------------------------------
# ES-based Jacobians


def _check_es(steps, lr, smoothing, directions, generator) -> None:
    _check_inner(steps, lr)
    V.positive("smoothing", smoothing)
    V.positive_int("directions", directions)
    if not isinstance(generator, torch.Generator):
        raise ValueError("es_jacobian draws random directions: pass a seeded "
                         f"generator=torch.Generator().manual_seed(...), got {generator!r}")


def _es(gf, p: torch.Tensor, u0: torch.Tensor, steps: int, lr: float, smoothing: float,
        directions: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(directions, p.numel(), generator=generator, dtype=p.dtype).to(p.device)

    def solve(pp):
        return _gd(gf, pp, u0, steps, lr)

    with torch.no_grad():
        base = solve(p)
        moved = vmap(solve)(p + smoothing * z)
    jac = (moved - base).T @ z / (smoothing * directions)
    return jac, base


def es_jacobian(g: Objective, phi: Tree, u0: Tree, steps: int, lr: float, smoothing: float,
                directions: int, generator: torch.Generator) -> torch.Tensor:
    """The ES estimate of the response Jacobian ``d u_N / d phi`` (Sow, Ji & Liang, ESJ).

    ``J = 1/D sum_{i<D} (u_N(phi + beta z_i) - u_N(phi)) z_i^T / beta`` with
    ``z_i ~ N(0, I)`` drawn from ``generator``, ``beta = smoothing``,
    ``D = directions`` and ``u_N`` the :func:`inner_gd` output from ``u0``.
    Its mean is the Jacobian of the Gaussian smoothing of ``u_N`` (Stein's
    lemma): bias ``O(beta^2)``, variance ``O(1/D)``.  Returns the matrix
    ``[numel(u), numel(phi)]`` over the flattened variables.
    """
    _check_tree("phi", phi)
    _check_tree("u0", u0)
    _check_es(steps, lr, smoothing, directions, generator)
    gf = _flat_fn(g, phi, u0)
    return _es(gf, _flat(phi), _flat(u0), steps, lr, smoothing, directions, generator)[0]


def es_hypergradient(f: Objective, g: Objective, phi: Tree, u0: Tree, steps: int, lr: float,
                     smoothing: float, directions: int, generator: torch.Generator) -> Hypergradient:
    """``grad_phi f + J^T grad_u f`` at ``(phi, u_N(phi))`` with ``J`` from :func:`es_jacobian`.

    Hessian-free: only gradients of ``g`` (the inner steps) and of ``f``.
    """
    _check_tree("phi", phi)
    _check_tree("u0", u0)
    _check_es(steps, lr, smoothing, directions, generator)
    ff, gf = _flat_fn(f, phi, u0), _flat_fn(g, phi, u0)
    p = _flat(phi)
    jac, u_n = _es(gf, p, _flat(u0), steps, lr, smoothing, directions, generator)
    g_phi = grad(ff, argnums=0)(p, u_n)
    g_u = grad(ff, argnums=1)(p, u_n)
    return Hypergradient(_unflat((g_phi + jac.T @ g_u).detach(), phi), _unflat(u_n, u0), None)
