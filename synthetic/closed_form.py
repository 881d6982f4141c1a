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


def _per_run(value, lead: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A hyper-parameter (float or tensor over the run dimensions) as a tensor of shape ``lead``."""
    t = torch.as_tensor(value, dtype=dtype)
    return t.expand(lead) if t.shape != lead else t


def batched_sharp_meta_gradient(family, theta: torch.Tensor, *, beta_low, steps: int = 1,
                                alpha_low=0.0, alpha_up=0.0, first_order: bool = False,
                                noise: tuple[torch.Tensor, torch.Tensor] | None = None,
                                hessian_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Sharp-MAML meta-gradients of many runs at once: ``theta`` is ``[..., d]``.

    ``beta_low``, ``alpha_low`` and ``alpha_up`` are floats or tensors over the
    leading (run) dimensions, so one call evaluates runs with different step
    sizes and radii.  ``noise = (z, z')`` with shapes ``[..., M, d]`` adds the
    oracle noise of :meth:`synthetic.base.FamilyBase.tasks` to every support and
    query gradient (Hessians exact), exactly as a batch carrying ``z`` does in
    :mod:`testbed.meta`.  ``hessian_noise`` (default None: exact Hessians) with
    shape ``[..., M, d, d]`` is added to every support Hessian of the
    meta-gradient's Jacobian products, ``J_k = I - beta_low (hess L + Z)``: the
    stochastic Hessian oracle of Assumptions 2-3 (Abbas et al. 2022, App. C.2, the
    ``psi_m`` of ``h^t``); draw it with :func:`hessian_noise`.  The same ``Z`` is used
    in every step and in both passes (one batch).  Returns ``[..., d]``.
    """
    V.positive_int("steps", steps)
    theta = torch.as_tensor(theta, dtype=family.dtype)
    lead = theta.shape[:-1]
    M, d = family.num_tasks, family.dim
    bl = _per_run(beta_low, lead, family.dtype)
    al = _per_run(alpha_low, lead, family.dtype)
    au = _per_run(alpha_up, lead, family.dtype)
    for name, t, strict in (("beta_low", bl, True), ("alpha_low", al, False), ("alpha_up", au, False)):
        if (t <= 0).any() if strict else (t < 0).any():
            raise ValueError(f"{name} must be {'> 0' if strict else '>= 0'}, got min {t.min().item()!r}")
    zs, zq = noise if noise is not None else (None, None)
    if hessian_noise is not None:
        hessian_noise = torch.as_tensor(hessian_noise, dtype=family.dtype)
        if hessian_noise.shape[-3:] != (M, d, d):
            raise ValueError(f"hessian_noise must have shape [..., {M}, {d}, {d}], "
                             f"got {tuple(hessian_noise.shape)}")
    b3 = bl[..., None, None]

    def grad(x, which, z):
        g = family.gradient(x, which)
        return g if z is None else g + z

    def one_pass(start, plan):
        x = start.unsqueeze(-2).expand(*lead, M, d)
        points, new_plan = [], []
        for k in range(steps):
            if plan is not None:
                e = plan[k]
            elif (al > 0).any():
                e = al[..., None, None] * _unit(grad(x, "support", zs))
            else:
                e = torch.zeros_like(x)
            new_plan.append(e)
            point = x + e
            points.append(point)
            x = x - b3 * grad(point, "support", zs)
        v = grad(x, "query", zq)
        if not first_order:   # J_0^T ... J_{N-1}^T v with J_k = I - beta H(point_k), H symmetric
            for point in reversed(points):
                hv = family.hvp(point, v, "support")
                if hessian_noise is not None:
                    hv = hv + torch.einsum("...ij,...j->...i", hessian_noise, v)
                v = v - b3 * hv
        return v.mean(-2), new_plan

    h, plan = one_pass(theta, None)
    if not (au > 0).any():
        return h
    return one_pass(theta + au[..., None] * _unit(h), plan)[0]


HESSIAN_NOISE_KINDS = ("scalar", "gaussian")


def hessian_noise(lead: tuple[int, ...], num_tasks: int, dim: int, sigma_b: float, *,
                  generator: torch.Generator, dtype: torch.dtype = torch.float64,
                  kind: str = "scalar") -> torch.Tensor:
    """Mean-zero symmetric noise ``Z`` of shape ``[*lead, num_tasks, dim, dim]`` for a Hessian oracle.

    Assumption 3 (Abbas et al. 2022, App. C.2) bounds the variance of the
    Hessian estimator by ``sigma_b^2``; the paper does not name the matrix norm.

    * ``"scalar"``: ``Z = s sigma_b I`` with ``s = +-1`` equally likely, so
      ``||Z||_2 = sigma_b`` exactly and ``||Z v|| = sigma_b ||v||`` for every ``v``:
      the proof of Lemma 4's step ``||Z v|| <= ||Z|| ||v||`` is tight.  Its Frobenius
      norm is ``sigma_b sqrt(dim)``.
    * ``"gaussian"``: ``Z = c (G + G^T)`` with ``G`` standard normal, scaled so that
      ``E ||Z||_F^2 = sigma_b^2`` (hence ``E ||Z||_2^2 <= sigma_b^2`` as well).
    """
    V.nonnegative("sigma_b", sigma_b)
    V.positive_int("num_tasks", num_tasks)
    V.positive_int("dim", dim)
    if kind not in HESSIAN_NOISE_KINDS:
        raise ValueError(f"kind must be one of {HESSIAN_NOISE_KINDS}, got {kind!r}")
    shape = (*lead, num_tasks)
    if kind == "scalar":
        s = torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1
        return (s * sigma_b)[..., None, None] * torch.eye(dim, dtype=dtype)
    G = torch.randn(*shape, dim, dim, generator=generator, dtype=dtype)
    # entries of G + G^T: variance 2 off the diagonal, 4 on it; E||.||_F^2 = 2 d (d + 1)
    return (G + G.transpose(-1, -2)) * (sigma_b / (2 * dim * (dim + 1)) ** 0.5)


def sharp_meta_gradient(family, theta: torch.Tensor, *, beta_low: float, steps: int = 1,
                        alpha_low: float = 0.0, alpha_up: float = 0.0,
                        first_order: bool = False) -> torch.Tensor:
    """The Sharp-MAML meta-gradient (constant perturbations, eq. 10) at one point ``[d]``."""
    V.positive("beta_low", beta_low)
    V.nonnegative("alpha_low", alpha_low)
    V.nonnegative("alpha_up", alpha_up)
    return batched_sharp_meta_gradient(family, theta, beta_low=beta_low, steps=steps,
                                       alpha_low=alpha_low, alpha_up=alpha_up,
                                       first_order=first_order)


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
