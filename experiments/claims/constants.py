"""The meta-gradient formula and the constants the convergence proofs use (App. C).

Claims:

* ``eq30.formula``: autograd's gradient of F equals eq. (30).
* ``lemma2.smoothness``: ``||hess F|| <= (1 + beta l1)^2 l1 + beta l2 l0``, the
  explicit form of "F is L_F-smooth with L_F = O(1)" that eq. (30) and
  Assumption 1 give (the paper cites Chen et al. 2021a, Lemma 4).
* ``lemma5.gamma``: the biases of the Sharp estimator, ``gamma_g`` and
  ``gamma_h``, against the Lipschitz bounds in the proof of Lemma 5.
* ``lemma3.bias``: ``E||grad F - h_bar||^2`` against eq. (31) evaluated at the
  biases ``gamma_g``, ``gamma_h`` measured at each point (Lemma 3 alone), exact
  and with inner-gradient noise ``sigma_b``; (31) at Lemma 5's upper bounds
  (Lemmas 3 and 5 together) is reported beside it.
* ``lemma4.variance``: ``E||h - h_bar||^2`` against ``sigma_tilde^2`` of eq. (34),
  with query-gradient noise only and with noisy inner gradients and Hessians
  (``sigma_b > 0``).
* ``lemma4.eq35``: the averaged squared gradient of the rate runs against the
  right side of eq. (35).

Every check measures on sampled points of the quadratic and the tanh family
(the quadratic's ``l0`` holds on a ball, so its points are drawn inside it)
and reports the ratio bound / measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.func import jacfwd, vmap

from experiments.claims import plots
from experiments.claims.registry import ClaimResult, Context, register
from experiments.claims.rates import rate_sweeps
from experiments.claims.sweeps import VARIANTS, make_family, single_threaded
from synthetic import QuadraticFamily, TanhRegressionFamily
from synthetic.closed_form import batched_sharp_meta_gradient, hessian_noise
from testbed import SharpMAMLConfig, meta_gradient

FORMULA_TOL = 1e-10
"""eq. (30) against autograd: float64 round-off of a few dozen operations."""
BOUND_RTOL = 1e-9
"""A measured value 'exceeds' a bound only beyond this relative round-off."""
BALL = 3.0
"""Radius of the ball the quadratic's points are drawn in (its l0 holds there)."""
BETA_LOW = 0.2


def _families(ctx: Context) -> dict[str, object]:
    return {
        "quadratic": QuadraticFamily.random(4, 4, eig_low=0.1, eig_high=1.0, seed=ctx.seed),
        "tanh": TanhRegressionFamily.random(4, 3, seed=ctx.seed),
    }


def _points(ctx: Context, family, name: str, count: int) -> torch.Tensor:
    rng = ctx.rng(7, len(name))
    x = rng.standard_normal((count, family.dim))
    if name == "quadratic":   # uniform in the ball of radius BALL
        x *= BALL * rng.random((count, 1)) ** (1 / family.dim) / np.linalg.norm(x, axis=1, keepdims=True)
    else:
        x *= 1.5
    return torch.as_tensor(x, dtype=family.dtype)


def _constants(family, name):
    return family.constants(radius=BALL) if name == "quadratic" else family.constants()


def _count(ctx: Context) -> int:
    return 48 if ctx.quick else 512


def _exceeds(measured: float, bound: float) -> bool:
    return measured > bound * (1 + BOUND_RTOL) + 1e-300


# ---------------------------------------------------------------------------
# eq. (30)


def eq30_formula(family, theta: torch.Tensor, beta: float, hessian: bool = True) -> torch.Tensor:
    """``1/M sum_m (I - beta H_m(theta)) grad L(theta'_m; D'_m)`` from explicit derivatives."""
    theta_m = theta - beta * family.gradient(theta, "support")
    v = family.gradient(theta_m, "query")
    if hessian:
        v = v - beta * family.hvp(theta, v, "support")
    return v.mean(-2)


@register("eq30.formula", "App. C.1, eq. (30); eq. (10) with zero radii",
          "the MAML meta-gradient is 1/M sum_m (I - beta_low hess L(theta; D_m)) grad L(theta'_m; D'_m)")
def check_eq30(ctx: Context, hessian: bool = True) -> ClaimResult:
    worst = {"error": -1.0}
    for name, fam in _families(ctx).items():
        for theta in _points(ctx, fam, name, 16 if ctx.quick else 128):
            auto = meta_gradient(fam.loss, fam.params(theta), fam.tasks(),
                                 SharpMAMLConfig(beta_low=BETA_LOW)).grad["theta"]
            formula = eq30_formula(fam, theta, BETA_LOW, hessian)
            err = (auto - formula).abs().max().item() / max(1.0, auto.abs().max().item())
            if err > worst["error"]:
                worst = {"error": err, "family": name, "point": theta.tolist(),
                         "autograd": auto.tolist(), "formula": formula.tolist()}
    tol = f"max relative difference <= {FORMULA_TOL:g} (float64)"
    measured = {"max_relative_difference": worst["error"], "beta_low": BETA_LOW}
    if worst["error"] <= FORMULA_TOL:
        return ClaimResult("holds", measured, tol,
                           f"largest relative difference {worst['error']:.1e} over sampled points")
    return ClaimResult("fails", measured, tol,
                       f"the formula differs from autograd by {worst['error']:.2e}",
                       counterexample={**worst, "seed": ctx.seed})


SHARP_RADII = {"sharp-low": (0.3, 0.0), "sharp-up": (0.0, 0.3), "sharp-both": (0.3, 0.3)}
"""(alpha_low, alpha_up) of the eq. (10) check: large enough that the perturbations move the
meta-gradient far beyond the tolerance (the control below measures by how much)."""


@register("eq10.formula", "Sec. 3, eqs. (9)-(15): eq. (10) with non-zero radii",
          "with constant perturbations (eqs. 11, 13, 14) the Sharp-MAML meta-gradient is "
          "1/M sum_m (I - beta_low hess L(theta + eps + eps_m; D_m)) grad L(theta~_m; D'_m), for "
          "Sharp-MAML_low, _up and _both, one fine-tuning step and, step by step, two")
def check_eq10(ctx: Context, formula=None) -> ClaimResult:
    """The autograd core (:mod:`testbed.meta`) against eq. (10) written out from each
    family's explicit gradient and Hessian (:func:`synthetic.closed_form.sharp_meta_gradient`).

    Control: the same comparison against eq. (30), MAML's meta-gradient (radii 0); if that
    also agreed within the tolerance, the points would not tell eq. (10) from eq. (30) and the
    verdict is inconclusive.  ``formula`` replaces the closed form (tests plant a wrong one)."""
    from synthetic.closed_form import sharp_meta_gradient

    formula = formula or sharp_meta_gradient
    worst, control = {"error": -1.0}, math.inf
    for name, fam in _families(ctx).items():
        for variant, (a_low, a_up) in SHARP_RADII.items():
            for steps in (1, 2):
                cfg = SharpMAMLConfig(beta_low=BETA_LOW, inner_steps=steps, alpha_low=a_low,
                                      alpha_up=a_up)
                for theta in _points(ctx, fam, name, 8 if ctx.quick else 48):
                    auto = meta_gradient(fam.loss, fam.params(theta), fam.tasks(), cfg).grad["theta"]
                    scale = max(1.0, auto.abs().max().item())
                    closed = formula(fam, theta, beta_low=BETA_LOW, steps=steps, alpha_low=a_low,
                                     alpha_up=a_up)
                    err = (auto - closed).abs().max().item() / scale
                    maml = formula(fam, theta, beta_low=BETA_LOW, steps=steps)
                    control = min(control, (auto - maml).abs().max().item() / scale)
                    if err > worst["error"]:
                        worst = {"error": err, "family": name, "variant": variant, "steps": steps,
                                 "alpha_low": a_low, "alpha_up": a_up, "point": theta.tolist(),
                                 "autograd": auto.tolist(), "formula": closed.tolist()}
    tol = (f"max relative difference <= {FORMULA_TOL:g} (float64); the MAML formula (radii 0) "
           f"must differ by more")
    measured = {"max_relative_difference": worst["error"], "beta_low": BETA_LOW,
                "radii": SHARP_RADII, "min_relative_difference_to_eq30": control}
    summary = (f"largest relative difference {worst['error']:.1e} over 3 variants x N = 1, 2 x 2 "
               f"families; the same points differ from MAML's eq. (30) by at least {control:.1e}")
    if worst["error"] > FORMULA_TOL:
        return ClaimResult("fails", measured, tol, f"eq. (10) differs from autograd by "
                           f"{worst['error']:.2e} ({worst['variant']}, N = {worst['steps']})",
                           counterexample={**worst, "seed": ctx.seed})
    if control <= FORMULA_TOL:
        return ClaimResult("inconclusive", measured, tol, summary,
                           condition=f"at some point eq. (30) agrees with autograd too "
                                     f"({control:.1e}): the radii do not move the meta-gradient")
    return ClaimResult("holds", measured, tol, summary)


# ---------------------------------------------------------------------------
# smoothness of F


def paper_smoothness_bound(c, beta: float) -> float:
    return (1 + beta * c.l1) ** 2 * c.l1 + beta * c.l2 * c.l0


def _hessian_norms(family, thetas: torch.Tensor, beta: float) -> torch.Tensor:
    grad_F = lambda th: eq30_formula(family, th, beta)  # noqa: E731
    H = vmap(jacfwd(grad_F))(thetas)
    return torch.linalg.matrix_norm(H, ord=2)


@register("lemma2.smoothness", "Lemma 4 proof (L_F = O(1), via Chen et al. 2021a); eq. (30)",
          "F is L_F-smooth with L_F <= (1 + beta_low l1)^2 l1 + beta_low l2 l0 under Assumption 1")
def check_smoothness(ctx: Context,
                     bound: Callable[[object, float], float] = paper_smoothness_bound) -> ClaimResult:
    rows, worst = {}, None
    for name, fam in _families(ctx).items():
        c = _constants(fam, name)
        for beta in (0.05, BETA_LOW, 0.5):
            thetas = _points(ctx, fam, name, _count(ctx))
            norms = _hessian_norms(fam, thetas, beta)
            i = int(norms.argmax())
            b = bound(c, beta)
            rows[f"{name}, beta_low={beta:g}"] = {"measured_sup": norms[i].item(), "bound": b,
                                                  "ratio_bound_over_measured": b / norms[i].item()}
            if _exceeds(norms[i].item(), b) and worst is None:
                worst = {"family": name, "beta_low": beta, "point": thetas[i].tolist(),
                         "hessian_norm": norms[i].item(), "bound": b, "seed": ctx.seed}
    tol = f"measured sup over sampled points <= bound x (1 + {BOUND_RTOL:g})"
    ratios = ", ".join(f"{k}: {v['ratio_bound_over_measured']:.2f}" for k, v in rows.items())
    if worst is None:
        return ClaimResult("holds", {"rows": rows}, tol, f"bound / measured sup: {ratios}")
    return ClaimResult("fails", {"rows": rows}, tol, f"bound / measured sup: {ratios}",
                       counterexample=worst)


# ---------------------------------------------------------------------------
# Lemma 5: the biases gamma_g, gamma_h of the Sharp estimator


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, v / torch.where(n > 0, n, 1.0), torch.zeros_like(v))


def _estimator_biases(family, g_hat, H_hat, pts) -> tuple[torch.Tensor, torch.Tensor]:
    """``||g_hat - grad L||`` and ``||H_hat - hess L||_2`` per point and task (Assumption 4)."""
    dg = (g_hat - family.gradient(pts, "support")).norm(dim=-1)
    dH = torch.linalg.matrix_norm(H_hat - family.hessian(pts, "support"), ord=2)
    return dg, dH


def sharp_biases(family, theta: torch.Tensor, beta: float, a_low: float, a_up: float):
    """Per task ``||g_hat - g||`` and ``||H_hat - H||`` at ``theta`` ``[d]`` (Lemma 5, N = 1),
    for the Sharp estimator of :func:`sharp_estimator` (App. C.3)."""
    dg, dH = _estimator_biases(family, *sharp_estimator(family, theta[None], beta, a_low, a_up))
    return dg[0], dH[0]


def lemma5_bounds(c, beta: float, a_low: float, a_up: float) -> tuple[float, float]:
    return c.l1 * (a_up + a_low) + a_up / beta, c.l2 * (a_up + a_low)


RADII = ((0.01, 0.0), (0.1, 0.0), (0.0, 0.01), (0.0, 0.1), (0.05, 0.05), (0.3, 0.3))


@register("lemma5.gamma", "Lemma 5 proof (App. C.3)",
          "the Sharp-MAML_both estimator meets Assumption 4 with gamma_g <= l1 (alpha_up + alpha_low) "
          "+ alpha_up / beta_low and gamma_h <= l2 (alpha_up + alpha_low)")
def check_gamma(ctx: Context) -> ClaimResult:
    rows, worst = {}, None
    for name, fam in _families(ctx).items():
        c = _constants(fam, name)
        for a_low, a_up in RADII:
            bg, bh = lemma5_bounds(c, BETA_LOW, a_low, a_up)
            mg = mh = 0.0
            for theta in _points(ctx, fam, name, _count(ctx) // 4):
                dg, dH = sharp_biases(fam, theta, BETA_LOW, a_low, a_up)
                mg, mh = max(mg, dg.max().item()), max(mh, dH.max().item())
                if worst is None and (_exceeds(dg.max().item(), bg) or _exceeds(dH.max().item(), bh)):
                    worst = {"family": name, "alpha_low": a_low, "alpha_up": a_up,
                             "point": theta.tolist(), "gamma_g": dg.max().item(), "bound_g": bg,
                             "gamma_h": dH.max().item(), "bound_h": bh, "seed": ctx.seed}
            rows[f"{name}, alpha_low={a_low:g}, alpha_up={a_up:g}"] = {
                "gamma_g": mg, "bound_g": bg, "gamma_h": mh, "bound_h": bh}
    tol = f"measured <= bound x (1 + {BOUND_RTOL:g})"
    ratio = min(v["bound_g"] / v["gamma_g"] for v in rows.values() if v["gamma_g"] > 0)
    summary = f"smallest bound/measured ratio for gamma_g: {ratio:.2f}"
    if worst is None:
        return ClaimResult("holds", {"rows": rows, "beta_low": BETA_LOW}, tol, summary)
    return ClaimResult("fails", {"rows": rows, "beta_low": BETA_LOW}, tol, summary,
                       counterexample=worst)


# ---------------------------------------------------------------------------
# Lemma 3, eq. (31): bias of the averaged estimator


def eq31_rhs(c, beta: float, gamma_g: float, gamma_h: float, sigma_b: float) -> float:
    """Right side of eq. (31); ``gamma_g``, ``gamma_h`` may be tensors (one value per point)."""
    s = gamma_g ** 2 + sigma_b ** 2
    return (4 * c.l1 ** 2 * beta ** 2 * s
            + 4 * beta ** 2 * (c.l0 ** 2 * gamma_h ** 2 + 4 * (gamma_h ** 2 + c.l1 ** 2) * c.l1 ** 2 * beta ** 2 * s))


def sharp_estimator(family, thetas: torch.Tensor, beta: float, a_low: float, a_up: float):
    """The Sharp-MAML_both estimator written as biased MAML (App. C.3), at points ``[K, d]``.

    Returns ``(g_hat, H_hat, point)`` per point and task (``[K, M, d]``,
    ``[K, M, d, d]``, ``[K, M, d]``): ``g_hat = grad L(theta + eps + eps_m) - eps / beta``
    and ``H_hat = hess L(theta + eps + eps_m)``, with ``eps_m`` from eq. (11) and
    ``eps`` from eq. (13) (exact oracles), so that the Sharp inner step is
    ``theta - beta g_hat`` and its meta-gradient ``1/M sum_m (I - beta H_hat) grad L(.; D'_m)``.
    """
    K, M, d = thetas.shape[0], family.num_tasks, family.dim
    pts = thetas[:, None, :].expand(K, M, d)
    h = batched_sharp_meta_gradient(family, thetas, beta_low=beta, alpha_low=a_low)
    eps = (a_up * _unit(h))[:, None, :]
    point = pts + eps + a_low * _unit(family.gradient(pts, "support"))
    g_hat = family.gradient(point, "support") - eps / beta
    return g_hat, family.hessian(point, "support"), pts


def lemma3_bias_sq(family, thetas: torch.Tensor, beta: float, a_low: float, a_up: float,
                   sigma_b: float, draws: int, gen: torch.Generator):
    """``E||grad F - h_bar||^2`` of eq. (31) at each point ``[K]``, with the measured biases.

    The biased-MAML model of App. C.2 with the Sharp estimator of App. C.3 as
    its mean: the inner step is ``theta_hat = theta - beta (g_hat + z)`` with
    ``z ~ N(0, sigma_b^2 I / d)`` (Assumption 3: mean zero, ``E||z||^2 = sigma_b^2``),
    and ``h_bar = 1/M sum_m (I - beta H_hat_m) grad L(theta_hat_m; D'_m)`` (the
    mean Hessian estimator, as ``h_bar`` is defined before Lemma 3).  The
    expectation over ``z`` is a Monte Carlo mean over ``draws`` (exact for ``sigma_b = 0``).

    Returns ``(bias_sq, gamma_g, gamma_h)``, each ``[K]``: ``gamma_g``, ``gamma_h`` are
    Assumption 4's biases measured at each point (max over tasks of
    ``||g_hat - grad L||`` and ``||H_hat - hess L||_2``).
    """
    K, M, d = thetas.shape[0], family.num_tasks, family.dim
    g_hat, H_hat, pts = sharp_estimator(family, thetas, beta, a_low, a_up)
    gamma_g, gamma_h = (b.amax(-1) for b in _estimator_biases(family, g_hat, H_hat, pts))
    exact = batched_sharp_meta_gradient(family, thetas, beta_low=beta)
    n = 1 if sigma_b == 0 else draws
    z = torch.randn(n, K, M, d, generator=gen, dtype=family.dtype) * (sigma_b / math.sqrt(d))
    v = family.gradient(pts - beta * (g_hat + z), "query")
    h_bar = (v - beta * torch.einsum("kmij,nkmj->nkmi", H_hat, v)).mean(-2)
    return ((exact - h_bar) ** 2).sum(-1).mean(0), gamma_g, gamma_h


BIAS_SIGMA_B = (0.0, 0.5)
"""Inner-gradient noise levels of the Lemma 3 sweeps (0: exact oracle)."""


@register("lemma3.bias", "Lemma 3, eq. (31) (Assumptions 1, 3, 4); Lemma 5 reported beside it",
          "E||grad F(theta) - h_bar(theta)||^2 <= 4 l1^2 beta^2 (gamma_g^2 + sigma_b^2) + "
          "4 beta^2 (l0^2 gamma_h^2 + 4 (gamma_h^2 + l1^2) l1^2 beta^2 (gamma_g^2 + sigma_b^2)), "
          "with gamma_g, gamma_h the estimator's biases (Assumption 4), here the Sharp estimator's")
def check_bias(ctx: Context, rhs: Callable = eq31_rhs) -> ClaimResult:
    """Eq. (31) at each sampled point, its right side at the biases measured there.

    This tests Lemma 3 by itself: ``gamma_g``, ``gamma_h`` are the Sharp
    estimator's measured biases at that point (Assumption 4 holds with them
    exactly).  The same left sides against (31) with Lemma 5's upper bounds for
    ``gamma`` (Lemmas 3 and 5 together) are reported as ``with_lemma5_bounds``;
    they do not decide the verdict (``lemma5.gamma`` tests Lemma 5).
    """
    gen = torch.Generator().manual_seed(ctx.seed)
    grid = np.geomspace(1e-3, 0.5, 5 if ctx.quick else 9)
    draws = 64 if ctx.quick else 256
    rows, combined, worst, series = {}, {}, None, {}
    for name, fam in _families(ctx).items():
        c = _constants(fam, name)
        thetas = _points(ctx, fam, name, _count(ctx) // 2)
        for sigma_b in BIAS_SIGMA_B:
            for which in ("alpha_low", "alpha_up"):
                ratios, meas, bnd, comb = [], [], [], []
                for a in grid:
                    a_low, a_up = (a, 0.0) if which == "alpha_low" else (0.0, a)
                    m, gg, gh = lemma3_bias_sq(fam, thetas, BETA_LOW, a_low, a_up, sigma_b, draws, gen)
                    b = torch.as_tensor(rhs(c, BETA_LOW, gg, gh, sigma_b), dtype=m.dtype).expand_as(m)
                    ratio = torch.where(m > 0, b / m.clamp_min(1e-300), torch.inf)
                    i = int(ratio.argmin())
                    ratios.append(ratio[i].item())
                    meas.append(m[i].item())
                    bnd.append(b[i].item())
                    bad = (m > b * (1 + BOUND_RTOL) + 1e-300).nonzero()
                    if len(bad) and worst is None:
                        j = int(bad[0])
                        worst = {"family": name, "sigma_b": sigma_b, "alpha_low": a_low, "alpha_up": a_up,
                                 "point": thetas[j].tolist(), "measured": m[j].item(), "bound": b[j].item(),
                                 "gamma_g": gg[j].item(), "gamma_h": gh[j].item(), "seed": ctx.seed}
                    g5, h5 = lemma5_bounds(c, BETA_LOW, a_low, a_up)
                    comb.append(rhs(c, BETA_LOW, g5, h5, sigma_b) / m.max().item()
                                if m.max() > 0 else math.inf)
                key = f"{name}, sigma_b={sigma_b:g}, varying {which}"
                rows[key] = {"alpha": grid.tolist(), "min_ratio_bound_over_measured": ratios,
                             "measured_at_tightest_point": meas, "bound_at_tightest_point": bnd}
                combined[key] = comb
                if sigma_b == 0:
                    series[f"{name}, {which}"] = (np.asarray(meas), np.asarray(bnd))
    path = ctx.plot_path("lemma3_bias.png")
    if path is not None:
        plots.measured_vs_bound(path, grid, series, "radius (the other radius 0)",
                                "||grad F - h_bar||^2 at the tightest point",
                                "Lemma 3: bias vs eq. (31) at the measured gamma_g, gamma_h")
    tol = (f"at every sampled point, the (Monte Carlo) mean <= eq. (31) at the biases measured "
           f"there x (1 + {BOUND_RTOL:g})")
    ratio = min(min(v["min_ratio_bound_over_measured"]) for v in rows.values())
    ratio5 = min(min(v) for v in combined.values())
    measured = {"rows": rows, "beta_low": BETA_LOW, "monte_carlo_draws": draws,
                "with_lemma5_bounds": {"min_ratio_bound_over_measured_max": combined,
                                       "smallest_ratio": ratio5}}
    summary = (f"smallest bound/measured ratio {ratio:.3g} over {len(rows)} sweeps with the measured "
               f"gamma_g, gamma_h (Lemma 3 alone; beta_low={BETA_LOW}, sigma_b in "
               f"{list(BIAS_SIGMA_B)}); with Lemma 5's upper bounds for gamma instead: {ratio5:.3g}")
    plot_files = ("lemma3_bias.png",)
    if worst is None:
        return ClaimResult("holds", measured, tol, summary, plots=plot_files)
    return ClaimResult("fails", measured, tol, summary, counterexample=worst, plots=plot_files)


# ---------------------------------------------------------------------------
# Lemma 4, eq. (34): variance of the estimator


def eq34_sigma_tilde_sq(c, beta: float, gamma_h: float, sigma: float, sigma_b: float) -> float:
    return (4 * c.l1 ** 2 * sigma ** 2 + 16 * (gamma_h ** 2 + c.l1 ** 2) * beta ** 2 * sigma ** 2
            + 16 * beta ** 2 * sigma_b ** 2 * (sigma ** 2 + c.l0 ** 2))


def _variance(family, theta, beta, a_low, a_up, sigma, draws, gen):
    """E over query-gradient noise of ||h - h_bar||^2 at ``theta`` (inner step exact)."""
    M, d = family.num_tasks, family.dim
    rep = theta.expand(draws, d)
    z = torch.randn(draws, M, d, generator=gen, dtype=family.dtype) * sigma / math.sqrt(d)
    h = batched_sharp_meta_gradient(family, rep, beta_low=beta, alpha_low=a_low, alpha_up=a_up,
                                    noise=(torch.zeros_like(z), z))
    h_bar = batched_sharp_meta_gradient(family, theta, beta_low=beta, alpha_low=a_low, alpha_up=a_up)
    return ((h - h_bar) ** 2).sum(-1).mean().item()


def lemma4_variance(family, theta: torch.Tensor, beta: float, a_low: float, sigma: float,
                    sigma_b: float, draws: int, gen: torch.Generator,
                    kind: str = "scalar") -> tuple[float, float]:
    """``E||h - h_bar||^2`` of eq. (34) with every oracle noisy, at ``theta`` (``alpha_up = 0``).

    ``h`` is the estimator of App. C.2 for Sharp-MAML_low (MAML when
    ``a_low = 0``): inner gradients carry noise ``xi_m`` with ``E||xi||^2 = sigma_b^2``
    (which also moves ``eps_m`` of eq. 11), the Hessian carries ``psi_m`` from
    :func:`synthetic.closed_form.hessian_noise` (``||psi||_2 = sigma_b``, Assumption 3),
    the query gradient ``xi'_m`` with ``E||xi'||^2 = sigma^2`` (Assumption 2).
    ``h_bar = E[h | F_t]`` fixes the inner step: with ``psi``, ``xi'`` independent
    and mean zero it is ``h`` with ``psi = xi' = 0`` and the same ``xi``.  The mean
    over ``draws`` joint draws estimates ``E||h - h_bar||^2``.

    Returns ``(measured, gamma_h)``: ``gamma_h`` is the largest Hessian bias
    ``||hess L(theta + eps_m) - hess L(theta)||_2`` over draws and tasks
    (Assumption 4 at the drawn ``eps_m``).
    """
    M, d = family.num_tasks, family.dim
    rep = theta.expand(draws, d)
    zs = torch.randn(draws, M, d, generator=gen, dtype=family.dtype) * (sigma_b / math.sqrt(d))
    zq = torch.randn(draws, M, d, generator=gen, dtype=family.dtype) * (sigma / math.sqrt(d))
    psi = hessian_noise((draws,), M, d, sigma_b, generator=gen, dtype=family.dtype, kind=kind)
    h = batched_sharp_meta_gradient(family, rep, beta_low=beta, alpha_low=a_low, noise=(zs, zq),
                                    hessian_noise=psi)
    h_bar = batched_sharp_meta_gradient(family, rep, beta_low=beta, alpha_low=a_low,
                                        noise=(zs, torch.zeros_like(zq)))
    pts = theta.expand(draws, M, d)
    point = pts + a_low * _unit(family.gradient(pts, "support") + zs)
    gamma_h = torch.linalg.matrix_norm(family.hessian(point, "support") - family.hessian(pts, "support"),
                                       ord=2).max().item()
    return ((h - h_bar) ** 2).sum(-1).mean().item(), gamma_h


VARIANCE_SIGMA_B = (0.5, 2.0)
"""Levels of inner-gradient and Hessian noise (Assumption 3) of the sigma_b > 0 rows."""


@register("lemma4.variance", "Lemma 4, eq. (34) (Assumptions 1-4)",
          "E||h - h_bar||^2 <= sigma_tilde^2 = 4 l1^2 sigma^2 + 16 (gamma_h^2 + l1^2) beta^2 sigma^2 "
          "+ 16 beta^2 sigma_b^2 (sigma^2 + l0^2) when the query gradients have variance sigma^2 and "
          "the inner gradients and Hessians variance sigma_b^2")
def check_variance(ctx: Context, bound: Callable = eq34_sigma_tilde_sq) -> ClaimResult:
    """Eq. (34) measured in two settings, each row against its own right side.

    * ``sigma_b = 0``: exact inner step and Hessian, query-gradient noise only
      (for ``alpha_up > 0`` the ascent step sees the same noise, and ``h_bar`` is
      the noise-free estimator);
    * ``sigma_b > 0`` (``alpha_up = 0``): noisy inner gradients, noisy Hessians
      (``||psi||_2 = sigma_b``) and noisy query gradients, once with the query noise
      on (``sigma = 1``) and once off (``sigma = 0``, where (34) reduces to its
      Hessian-noise term ``16 beta^2 sigma_b^2 l0^2``).

    ``gamma_h`` in the bound is the Hessian bias measured at the drawn points.
    A row fails where its mean minus 3 Monte Carlo standard errors exceeds the bound.
    """
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    sigma, draws = 1.0, (2000 if ctx.quick else 20000)
    cases = {
        "quadratic, 1 task, eigenvalues in [0.01, 0.1]":
            QuadraticFamily.random(1, 4, eig_low=0.01, eig_high=0.1, seed=ctx.seed),
        "quadratic, 4 tasks, eigenvalues in [0.1, 1]":
            QuadraticFamily.random(4, 4, eig_low=0.1, eig_high=1.0, seed=ctx.seed),
        "tanh, 4 tasks": TanhRegressionFamily.random(4, 3, seed=ctx.seed),
    }
    rows, noisy_rows, worst = {}, {}, None

    def judge(key, m, b, record):
        nonlocal worst
        se = m * math.sqrt(2 / draws) * 3   # ~3 standard errors of a chi-square-like mean
        if m - se > b and worst is None:
            query_noise = record["sigma"] > 0 and 4 * record["l1"] ** 2 < 1
            worst = {**record, "measured": m, "bound": b, "beta_low": BETA_LOW, "seed": ctx.seed,
                     "why": ("the first term of eq. (34) carries l1^2; Assumption 2 alone gives "
                             "sigma^2 for the query-gradient noise, which exceeds 4 l1^2 sigma^2 "
                             "when l1 < 1/2") if query_noise else
                            "the measured variance exceeds the right side of eq. (34)"}

    for label, fam in cases.items():
        c = fam.constants(radius=BALL) if isinstance(fam, QuadraticFamily) else fam.constants()
        theta = torch.full((fam.dim,), 0.5, dtype=fam.dtype)
        for a_low, a_up in ((0.0, 0.0), (0.1, 0.1)):
            gh = sharp_biases(fam, theta, BETA_LOW, a_low, a_up)[1].max().item()
            b = bound(c, BETA_LOW, gh, sigma, 0.0)
            m = _variance(fam, theta, BETA_LOW, a_low, a_up, sigma, draws, gen)
            key = f"{label}, alpha=({a_low:g}, {a_up:g})"
            rows[key] = {"measured": m, "bound": b, "l1": c.l1, "gamma_h": gh,
                         "gamma_h_lemma5": lemma5_bounds(c, BETA_LOW, a_low, a_up)[1],
                         "monte_carlo_draws": draws}
            judge(key, m, b, {"case": label, "alpha_low": a_low, "alpha_up": a_up, "sigma_b": 0.0,
                              "point": theta.tolist(), "sigma": sigma, "l1": c.l1})
        for a_low in (0.0, 0.1):
            for sigma_b in VARIANCE_SIGMA_B:
                for s in (sigma, 0.0):
                    m, gh = lemma4_variance(fam, theta, BETA_LOW, a_low, s, sigma_b, draws, gen)
                    b = bound(c, BETA_LOW, gh, s, sigma_b)
                    key = f"{label}, alpha=({a_low:g}, 0), sigma={s:g}, sigma_b={sigma_b:g}"
                    noisy_rows[key] = {"measured": m, "bound": b, "l1": c.l1, "l0": c.l0,
                                       "gamma_h": gh, "monte_carlo_draws": draws}
                    judge(key, m, b, {"case": label, "alpha_low": a_low, "alpha_up": 0.0,
                                      "sigma_b": sigma_b, "point": theta.tolist(), "sigma": s,
                                      "l1": c.l1})
    tol = "measured mean minus 3 Monte Carlo standard errors must not exceed the bound"
    failing = [k for k, v in noisy_rows.items()
               if v["measured"] * (1 - 3 * math.sqrt(2 / draws)) > v["bound"]]
    hess_ratio = min(v["bound"] / v["measured"] if v["measured"] > 0 else math.inf
                     for k, v in noisy_rows.items() if "sigma=0," in k)
    summary = ("; ".join(f"{k}: measured {v['measured']:.3g} vs bound {v['bound']:.3g}"
                         for k, v in rows.items())
               + f". With sigma_b > 0 (noisy inner gradients and Hessians): {len(failing)}/"
               f"{len(noisy_rows)} rows exceed the bound"
               + (f" ({', '.join(failing)})" if failing else "")
               + f"; smallest bound/measured ratio of the Hessian-noise-only rows (sigma=0) {hess_ratio:.3g}")
    measured = {"rows": rows, "sigma_b_rows": noisy_rows, "hessian_noise": "scalar (||psi||_2 = sigma_b)"}
    if worst is None:
        return ClaimResult("holds", measured, tol, summary)
    return ClaimResult("fails", measured, tol, summary, counterexample=worst)


# ---------------------------------------------------------------------------
# eq. (35): the telescoped bound on the rate runs


@register("lemma4.eq35", "Lemma 4, eq. (35)",
          "(1/T) sum_t E||grad F(theta_t)||^2 <= 2 F(theta_1)/(beta_up T) + L_F beta_up sigma_tilde^2 "
          "+ 4 beta_low^2 (l1^2 (gamma_g^2 + sigma_b^2) + l0^2 gamma_h^2 + 4 (gamma_h^2 + l1^2) l1^2 "
          "beta_low^2 (gamma_g^2 + sigma_b^2)) for beta_up <= 1/L_F")
def check_eq35(ctx: Context) -> ClaimResult:
    sweeps = rate_sweeps(ctx)
    rows, worst = {}, None
    for (fam_name, sigma), result in sweeps.items():
        spec = result.spec
        fam = make_family(spec)
        c = _constants(fam, fam_name)
        init = np.random.default_rng([spec.seed, 1]).normal(0.0, spec.init_scale, (spec.seeds, fam.dim))
        si = spec.schedules.index("theorem")
        for vi, variant in enumerate(spec.variants):
            for hi, T in enumerate(spec.horizons):
                bl, bu = spec.c_low / math.sqrt(T), spec.c_up / math.sqrt(T)
                uses_low, uses_up = VARIANTS[variant]
                au = spec.c_alpha / math.sqrt(T) if uses_up else 0.0
                al = spec.alpha_low if uses_low else 0.0
                gg, gh = lemma5_bounds(c, bl, al, au)
                LF = paper_smoothness_bound(c, bl)
                st2 = eq34_sigma_tilde_sq(c, bl, gh, sigma, 0.0)
                with single_threaded():
                    F1 = torch.stack([maml_objective(fam, torch.as_tensor(x), bl) for x in init])
                rhs = (2 * F1 / (bu * T) + LF * bu * st2
                       + 4 * bl ** 2 * (c.l1 ** 2 * gg ** 2 + c.l0 ** 2 * gh ** 2
                                        + 4 * (gh ** 2 + c.l1 ** 2) * c.l1 ** 2 * bl ** 2 * gg ** 2))
                lhs = torch.as_tensor(result.avg_sq_grad[si, vi, hi])
                ok_step = bu <= 1 / LF
                key = f"{fam_name}, sigma={sigma:g}, {variant}, T={T}"
                rows[key] = {"lhs_max": lhs.max().item(), "rhs_min": rhs.min().item(),
                             "min_ratio_rhs_over_lhs": (rhs / lhs).min().item(),
                             "beta_up_le_1_over_LF": ok_step}
                bad = (lhs > rhs * (1 + BOUND_RTOL)).nonzero()
                if ok_step and len(bad) and worst is None:
                    s = int(bad[0])
                    worst = {"where": key, "seed_index": s, "lhs": lhs[s].item(), "rhs": rhs[s].item(),
                             "seed": ctx.seed}
    tol = "every run (with beta_up <= 1/L_F) has left side <= right side x (1 + 1e-9)"
    applicable = [v for v in rows.values() if v["beta_up_le_1_over_LF"]]
    ratio = min(v["min_ratio_rhs_over_lhs"] for v in applicable) if applicable else float("nan")
    summary = (f"{len(applicable)}/{len(rows)} run groups satisfy beta_up <= 1/L_F (the others are "
               f"outside the lemma's step-size condition); smallest right/left ratio over their "
               f"runs {ratio:.3g}")
    if worst is None:
        return ClaimResult("holds", {"rows": rows}, tol, summary)
    return ClaimResult("fails", {"rows": rows}, tol, summary, counterexample=worst)


def maml_objective(family, theta: torch.Tensor, beta: float) -> torch.Tensor:
    """``F(theta)`` of eq. (29a), one step, from the family's closed forms."""
    theta_m = theta - beta * family.gradient(theta, "support")
    return family.value(theta_m, "query").mean()
