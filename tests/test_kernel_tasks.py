"""Kernel tasks (synthetic.kernel_tasks): closed forms, exact population loss, stability bound."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch.func import grad, hessian, jacfwd

import synthetic.kernel_tasks as KT
from synthetic import KernelTaskFamily
from tolerances import BOUND_SLACK, CLOSED_FORM

TOL = CLOSED_FORM[torch.float64]
MC_Z = 4.5
"""Monte Carlo against an exact mean: |difference| <= 4.5 standard errors (p ~ 1e-5 per test)."""


def _draw(seed: int, n: int, k: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    theta = scale * torch.randn(k, generator=g, dtype=torch.float64)
    return x, theta


@given(seed=st.integers(0, 2 ** 31), n=st.integers(1, 6), k=st.integers(1, 4),
       s=st.floats(0.3, 3.0))
def test_empirical_closed_forms_match_autograd(seed, n, k, s):
    x, theta = _draw(seed, n, k)
    f = lambda th: KT.empirical_value(th, x, s)  # noqa: E731
    assert abs(f(theta) - KT.per_sample_loss(theta, x, s).mean()) <= TOL
    assert (grad(f)(theta) - KT.empirical_gradient(theta, x, s)).abs().max() <= TOL
    assert (hessian(f)(theta) - KT.empirical_hessian(theta, x, s)).abs().max() <= TOL / s ** 2
    assert (jacfwd(hessian(f))(theta) - KT.empirical_third(theta, x, s)).abs().max() <= TOL / s ** 3
    v = torch.randn(k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    assert (KT.empirical_hessian(theta, x, s) @ v - KT.empirical_hvp(theta, x, v, s)).abs().max() <= TOL


@given(seed=st.integers(0, 2 ** 31), k=st.integers(1, 4), beta=st.floats(0.05, 1.0))
def test_maml_objective_and_gradient_match_autograd(seed, k, beta):
    x, theta = _draw(seed, 5, k)
    x_out, _ = _draw(seed + 7, 4, k)
    for outer in (None, x_out):
        f = lambda th: KT.maml_value(th, x, beta, 0.8, x_outer=outer)  # noqa: E731
        assert (grad(f)(theta) - KT.maml_gradient(theta, x, beta, 0.8, x_outer=outer)).abs().max() <= TOL


@given(seed=st.integers(0, 2 ** 31), k=st.integers(1, 4), tau=st.floats(0.1, 2.0))
def test_population_gradient_and_hessian_match_autograd(seed, k, tau):
    _, theta = _draw(seed, 1, k)
    mean = torch.linspace(-1, 1, k, dtype=torch.float64)
    f = lambda th: KT.population_value(th, mean, 0.7, tau)  # noqa: E731
    assert (grad(f)(theta) - KT.population_gradient(theta, mean, 0.7, tau)).abs().max() <= TOL
    assert (hessian(f)(theta) - KT.population_hessian(theta, mean, 0.7, tau)).abs().max() <= TOL


@pytest.mark.parametrize("k, s, tau", [(1, 1.0, 0.5), (2, 1.0, 1.0), (5, 0.7, 0.4)])
def test_population_loss_equals_monte_carlo_mean_of_per_sample_loss(k, s, tau):
    g = torch.Generator().manual_seed(k)
    mean = torch.randn(k, generator=g, dtype=torch.float64)
    for theta in (mean, mean + 0.8, torch.zeros(k, dtype=torch.float64)):
        xs = mean + tau * torch.randn(200_000, k, generator=g, dtype=torch.float64)
        losses = KT.per_sample_loss(theta, xs, s)
        se = losses.std().item() / math.sqrt(len(losses))
        exact = KT.population_value(theta, mean, s, tau).item()
        assert abs(losses.mean().item() - exact) <= MC_Z * se + 1e-12


def test_smoothed_population_equals_monte_carlo_over_eps():
    g = torch.Generator().manual_seed(3)
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    theta = torch.tensor([0.2, 0.3], dtype=torch.float64)
    eps = 0.6 * torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    vals = KT.population_value(theta + eps, mean, 1.0, 0.5)
    se = vals.std().item() / math.sqrt(len(vals))
    exact = KT.smoothed_population_value(theta, mean, 0.6, 1.0, 0.5).item()
    assert abs(vals.mean().item() - exact) <= MC_Z * se


def test_gradient_bound_is_attained_at_distance_s_and_never_exceeded():
    s = 0.7
    r = torch.linspace(0, 6 * s, 20001, dtype=torch.float64)
    norms = torch.exp(-r ** 2 / (2 * s * s)) * r / s ** 2       # ||grad l|| at ||theta - x|| = r
    G = KT.gradient_bound(s)
    assert norms.max().item() <= G * (1 + BOUND_SLACK)
    assert norms.max().item() >= G * (1 - 1e-6)
    x = torch.zeros(1, 3, dtype=torch.float64)
    at_s = torch.tensor([s, 0.0, 0.0], dtype=torch.float64)
    assert abs(KT.empirical_gradient(at_s, x, s).norm().item() - G) <= TOL


@given(seed=st.integers(0, 2 ** 31), k=st.integers(1, 3))
def test_stated_constants_hold_on_drawn_points(seed, k):
    fam = KernelTaskFamily.random(2, k, n_support=4, n_query=3, s=0.8, seed=seed % 1000)
    c = fam.constants()
    _, theta = _draw(seed, 1, k, scale=2.0)
    assert fam.gradient(theta).norm(dim=-1).max() <= c.l0 * (1 + BOUND_SLACK)
    assert torch.linalg.matrix_norm(fam.hessian(theta), ord=2).max() <= c.l1 * (1 + BOUND_SLACK)
    u = torch.nn.functional.normalize(torch.randn(64, k, dtype=torch.float64), dim=-1)
    T = fam.third(theta)                                           # [M, k, k, k]
    tuuu = torch.einsum("mijl,ui,uj,ul->mu", T, u, u, u).abs().max()
    assert tuuu <= c.l2 * (1 + BOUND_SLACK)


def test_third_derivative_constant_is_the_sup_of_the_radial_profile():
    t = np.linspace(0, 6, 600001)
    assert abs(np.abs(t * (3 - t * t) * np.exp(-t * t / 2)).max() - KT.L2_UNIT) <= 1e-9


def _replace_one(x: torch.Tensor, i: int, new: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y[i] = new
    return y


@given(seed=st.integers(0, 2 ** 31), n=st.integers(2, 40), beta=st.floats(0.05, 1.0))
def test_one_gd_step_is_uniformly_stable_with_gamma_2_beta_G2_over_n(seed, n, beta):
    g = torch.Generator().manual_seed(seed)
    k, s = 2, 1.0
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    theta = torch.randn(k, generator=g, dtype=torch.float64)
    i = int(torch.randint(n, (1,), generator=g))
    x2 = _replace_one(x, i, 2 * torch.randn(k, generator=g, dtype=torch.float64))
    a, a2 = KT.finetune(theta, x, beta, s), KT.finetune(theta, x2, beta, s)
    z = a + 2 * torch.randn(512, k, generator=g, dtype=torch.float64)
    diff = (KT.per_sample_loss(a, z[:, None], s) - KT.per_sample_loss(a2, z[:, None], s)).abs()
    assert diff.max().item() <= KT.stability_bound(beta, n, s) * (1 + BOUND_SLACK)


def test_stability_bound_is_nearly_attained_so_half_of_it_is_refuted():
    """The first-order worst case (x_i, x'_i at distance s on opposite sides, z at distance s
    from A(S) along the shift) reaches the bound to O(beta G / n): a bound half as large fails."""
    n, beta, s = 50, 0.5, 1.0
    theta = torch.zeros(2, dtype=torch.float64)
    x = torch.full((n, 2), 50.0, dtype=torch.float64)      # far away: no gradient
    x[0] = torch.tensor([-s, 0.0], dtype=torch.float64)   # grad l(theta; x_0) = +G e_1
    x2 = _replace_one(x, 0, torch.tensor([s, 0.0], dtype=torch.float64))
    a, a2 = KT.finetune(theta, x, beta, s), KT.finetune(theta, x2, beta, s)
    z = a + s * torch.nn.functional.normalize(a2 - a, dim=0)
    diff = abs(KT.per_sample_loss(a, z[None], s) - KT.per_sample_loss(a2, z[None], s)).item()
    bound = KT.stability_bound(beta, n, s)
    assert bound * 0.99 <= diff <= bound * (1 + BOUND_SLACK)
    assert diff > 0.5 * bound


def test_sample_data_is_reproducible_and_shaped():
    means = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    a = KT.sample_data(means, 0.5, 7, draws=(4,), seed=3)
    b = KT.sample_data(means, 0.5, 7, draws=(4,), seed=3)
    assert a.shape == (4, 3, 7, 2) and torch.equal(a, b)
    assert not torch.equal(a, KT.sample_data(means, 0.5, 7, draws=(4,), seed=4))
    big = KT.sample_data(means, 0.5, 20000, seed=0)
    assert (big.mean(1) - means).abs().max() <= 5 * 0.5 / math.sqrt(20000)


def test_family_closed_forms_match_its_per_sample_loss_and_population():
    fam = KernelTaskFamily.random(3, 2, n_support=6, n_query=4, seed=2)
    theta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    for which in ("support", "query"):
        for m in range(fam.num_tasks):
            b = {k: v[m] for k, v in fam.batch(which).items()}
            f = lambda th: fam.loss({"theta": th}, b).mean()  # noqa: E731
            assert abs(f(theta) - fam.value(theta, which)[m]) <= TOL
            assert (grad(f)(theta) - fam.gradient(theta, which)[m]).abs().max() <= TOL
            assert (hessian(f)(theta) - fam.hessian(theta, which)[m]).abs().max() <= TOL
    pop = fam.population(theta)
    assert pop.shape == (3,) and ((pop > 0) & (pop < 1)).all()
    assert fam.stability(0.5) == pytest.approx(2 * 0.5 * KT.gradient_bound(1.0) ** 2 / 6)


@pytest.mark.parametrize("make, match", [
    (lambda: KT.stability_bound(0.5, 0), "n"),
    (lambda: KT.stability_bound(-0.1, 5), "beta"),
    (lambda: KT.gradient_bound(0.0), "s"),
    (lambda: KT.sample_data(torch.zeros(3), 0.5, 4), "means"),
    (lambda: KT.sample_data(torch.zeros(1, 2), -1.0, 4), "tau"),
    (lambda: KernelTaskFamily.random(0, 2), "num_tasks"),
    (lambda: KernelTaskFamily(torch.zeros(2, 2), torch.zeros(2, 3, 3), torch.zeros(2, 3, 2)), "x"),
])
def test_kernel_tasks_reject_bad_arguments_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()
