"""The autograd meta-gradient against closed forms, finite differences and its negative controls."""

import pytest
import torch
from hypothesis import given, strategies as st

from synthetic import QuadraticFamily, TanhRegressionFamily
from synthetic.closed_form import sharp_low_total_derivative, sharp_meta_gradient
from synthetic.strategies import quadratic_families, tanh_families
from testbed import SharpMAMLConfig, meta_gradient
from tolerances import CLOSED_FORM, DISTINCT, FD_STEP, FINITE_DIFFERENCE

TOL = CLOSED_FORM[torch.float64]

FAMILIES = {
    "quadratic": lambda: QuadraticFamily.random(4, 5, eig_low=0.2, eig_high=2.0, seed=1),
    "tanh": lambda: TanhRegressionFamily.random(4, 3, n_support=6, n_query=5, seed=2),
}
VARIANTS = {
    "maml": {},
    "fomaml": {"first_order": True},
    "sharp-low": {"alpha_low": 0.3},
    "sharp-up": {"alpha_up": 0.2},
    "sharp-both": {"alpha_low": 0.3, "alpha_up": 0.2},
    "fo-sharp-both": {"alpha_low": 0.3, "alpha_up": 0.2, "first_order": True},
}


def _theta(family, seed=3):
    return torch.randn(family.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _autograd(family, theta, **cfg):
    return meta_gradient(family.loss, family.params(theta), family.tasks(),
                         SharpMAMLConfig(**cfg)).grad["theta"]


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family_name", FAMILIES)
def test_autograd_meta_gradient_equals_closed_form(family_name, variant, steps):
    family = FAMILIES[family_name]()
    theta = _theta(family)
    kw = VARIANTS[variant]
    got = _autograd(family, theta, beta_low=0.2, inner_steps=steps, **kw)
    want = sharp_meta_gradient(family, theta, beta_low=0.2, steps=steps, **kw)
    assert (got - want).abs().max().item() <= TOL


@given(family=quadratic_families(max_dim=4), steps=st.integers(1, 3),
       alpha_low=st.sampled_from([0.0, 0.01, 1.0]), alpha_up=st.sampled_from([0.0, 0.05, 2.0]))
def test_autograd_equals_closed_form_on_drawn_quadratics(family, steps, alpha_low, alpha_up):
    theta = torch.linspace(-1, 1, family.dim, dtype=torch.float64)
    # beta_low below 1/l1 keeps the inner map a contraction, so values stay O(scale)
    beta = 0.5 / family.constants().l1
    got = _autograd(family, theta, beta_low=beta, inner_steps=steps, alpha_low=alpha_low,
                    alpha_up=alpha_up)
    want = sharp_meta_gradient(family, theta, beta_low=beta, steps=steps, alpha_low=alpha_low,
                               alpha_up=alpha_up)
    scale = max(1.0, want.abs().max().item())
    assert (got - want).abs().max().item() <= TOL * scale


@given(family=tanh_families(), steps=st.integers(1, 3),
       alpha_low=st.sampled_from([0.0, 0.1]), alpha_up=st.sampled_from([0.0, 0.1]))
def test_autograd_equals_closed_form_on_drawn_tanh_families(family, steps, alpha_low, alpha_up):
    theta = torch.linspace(-0.5, 0.7, family.dim, dtype=torch.float64)
    got = _autograd(family, theta, beta_low=0.1, inner_steps=steps, alpha_low=alpha_low,
                    alpha_up=alpha_up)
    want = sharp_meta_gradient(family, theta, beta_low=0.1, steps=steps, alpha_low=alpha_low,
                               alpha_up=alpha_up)
    assert (got - want).abs().max().item() <= TOL


def test_hessian_is_taken_at_the_perturbed_point():
    """Eq. (10): hess L(theta + eps + eps_m).  Hessian at theta instead is a different number."""
    family = FAMILIES["tanh"]()
    theta = _theta(family)
    beta, a_low, a_up = 0.2, 0.3, 0.2
    got = _autograd(family, theta, beta_low=beta, alpha_low=a_low, alpha_up=a_up)

    class HessianAtTheta:  # the same family, but its Hessian always read at the unperturbed theta
        def __getattr__(self, name):
            return getattr(family, name)

        def hvp(self, point, v, which="support"):
            return family.hvp(theta, v, which)

    wrong = sharp_meta_gradient(HessianAtTheta(), theta, beta_low=beta, alpha_low=a_low, alpha_up=a_up)
    right = sharp_meta_gradient(family, theta, beta_low=beta, alpha_low=a_low, alpha_up=a_up)
    assert (got - right).abs().max().item() <= TOL
    assert (got - wrong).abs().max().item() > DISTINCT


def test_fomaml_drops_exactly_the_hessian_term():
    """MAML - FO-MAML = -beta_low * mean_m H_m(theta) grad L(theta'_m; D'_m) (N = 1, eq. 30)."""
    family = FAMILIES["tanh"]()
    theta, beta = _theta(family), 0.2
    maml = _autograd(family, theta, beta_low=beta)
    fo = _autograd(family, theta, beta_low=beta, first_order=True)
    adapted = theta - beta * family.gradient(theta, "support")
    v = family.gradient(adapted, "query")
    hv = torch.einsum("mij,mj->mi", family.hessian(theta, "support"), v)
    assert (fo - v.mean(0)).abs().max().item() <= TOL
    assert (maml - fo - (-beta * hv.mean(0))).abs().max().item() <= TOL
    assert hv.mean(0).norm().item() > DISTINCT  # the term is really there


def _fd_gradient(fn, theta, h=FD_STEP):
    out = torch.zeros_like(theta)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = h
        out[i] = (fn(theta + e) - fn(theta - e)) / (2 * h)
    return out


@pytest.mark.parametrize("radii", [{"alpha_low": 0.3}, {"alpha_up": 0.2},
                                   {"alpha_low": 0.3, "alpha_up": 0.2}])
@pytest.mark.parametrize("steps", [1, 2])
def test_differentiating_through_perturbations_is_the_true_gradient(radii, steps):
    """With differentiate_perturbations the meta-gradient is the gradient of the composite map."""
    family = FAMILIES["tanh"]()
    theta, tasks = _theta(family), family.tasks()
    cfg = SharpMAMLConfig(beta_low=0.2, inner_steps=steps, differentiate_perturbations=True, **radii)

    def value(t):
        return meta_gradient(family.loss, family.params(t), tasks, cfg).loss.item()

    got = meta_gradient(family.loss, family.params(theta), tasks, cfg).grad["theta"]
    assert (got - _fd_gradient(value, theta)).abs().max().item() <= FINITE_DIFFERENCE
    constant = _autograd(family, theta, beta_low=0.2, inner_steps=steps, **radii)
    assert (got - constant).abs().max().item() > DISTINCT  # a curved loss tells them apart


def test_differentiated_sharp_low_matches_its_closed_form():
    family = FAMILIES["tanh"]()
    theta = _theta(family)
    got = _autograd(family, theta, beta_low=0.2, alpha_low=0.3, differentiate_perturbations=True)
    want = sharp_low_total_derivative(family, theta, beta_low=0.2, alpha_low=0.3)
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("radii", [{}, {"alpha_low": 0.3, "alpha_up": 0.2}])
def test_differentiate_option_coincides_where_perturbations_are_locally_constant(radii):
    """With zero radii, or in 1-D (g/|g| = sign(g) is locally constant), the options agree."""
    family = TanhRegressionFamily.random(3, 1, seed=4) if radii else FAMILIES["tanh"]()
    theta = torch.full((family.dim,), 0.3, dtype=torch.float64)
    a = _autograd(family, theta, beta_low=0.2, **radii)
    b = _autograd(family, theta, beta_low=0.2, differentiate_perturbations=True, **radii)
    assert (a - b).abs().max().item() <= TOL


def test_constant_perturbation_gradient_is_not_the_composite_gradient():
    """Negative control for eq. (10): constant eps is *not* d/dtheta of the composite map."""
    family = FAMILIES["tanh"]()
    theta, tasks = _theta(family), family.tasks()
    cfg = SharpMAMLConfig(beta_low=0.2, alpha_low=0.3)
    diff_cfg = SharpMAMLConfig(beta_low=0.2, alpha_low=0.3, differentiate_perturbations=True)
    value = lambda t: meta_gradient(family.loss, family.params(t), tasks, diff_cfg).loss.item()  # noqa: E731
    fd = _fd_gradient(value, theta)
    constant = meta_gradient(family.loss, family.params(theta), tasks, cfg).grad["theta"]
    assert (constant - fd).abs().max().item() > 100 * FINITE_DIFFERENCE


@pytest.mark.parametrize("family_name", FAMILIES)
def test_batched_closed_form_equals_one_run_at_a_time(family_name):
    """Many runs with different beta_low and radii in one call equal separate calls."""
    from synthetic.closed_form import batched_sharp_meta_gradient
    family = FAMILIES[family_name]()
    g = torch.Generator().manual_seed(0)
    thetas = torch.randn(5, family.dim, generator=g, dtype=torch.float64)
    beta = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.1], dtype=torch.float64)
    a_low = torch.tensor([0.0, 0.3, 0.0, 0.1, 0.2], dtype=torch.float64)
    a_up = torch.tensor([0.0, 0.0, 0.2, 0.1, 0.0], dtype=torch.float64)
    got = batched_sharp_meta_gradient(family, thetas, beta_low=beta, steps=2, alpha_low=a_low,
                                      alpha_up=a_up)
    for r in range(5):
        want = sharp_meta_gradient(family, thetas[r], beta_low=beta[r].item(), steps=2,
                                   alpha_low=a_low[r].item(), alpha_up=a_up[r].item())
        assert (got[r] - want).abs().max().item() <= TOL


@pytest.mark.parametrize("family_name", FAMILIES)
def test_batched_closed_form_noise_is_the_noisy_oracle_of_the_core(family_name):
    """The closed form with noise (z, z') equals autograd on batches carrying the same z."""
    from dataclasses import replace

    from synthetic.closed_form import batched_sharp_meta_gradient
    family = replace(FAMILIES[family_name](), sigma=0.7)
    theta = _theta(family)
    tasks = family.tasks(torch.Generator().manual_seed(5))
    cfg = SharpMAMLConfig(beta_low=0.2, inner_steps=2, alpha_low=0.3, alpha_up=0.2)
    got = meta_gradient(family.loss, family.params(theta), tasks, cfg).grad["theta"]
    want = batched_sharp_meta_gradient(family, theta, beta_low=0.2, steps=2, alpha_low=0.3,
                                       alpha_up=0.2, noise=(tasks.support["z"], tasks.query["z"]))
    assert (got - want).abs().max().item() <= TOL
    clean = sharp_meta_gradient(family, theta, beta_low=0.2, steps=2, alpha_low=0.3, alpha_up=0.2)
    assert (got - clean).abs().max().item() > DISTINCT
