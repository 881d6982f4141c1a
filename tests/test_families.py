"""Synthetic families: closed forms against autograd, stated constants against drawn points."""

import numpy as np
import pytest
import torch
from hypothesis import find, given, strategies as st
from hypothesis.errors import InvalidArgument
from torch.func import grad, hessian, jacfwd

from synthetic import QuadraticFamily, TanhRegressionFamily
from synthetic.strategies import (orthogonal_matrices, points, quadratic_families, spd_matrices,
                                  spectra, tanh_families)
from synthetic.tanh_regression import derivative_bounds
from testbed import SharpMAMLConfig, meta_gradient, meta_objective
from tolerances import BOUND_SLACK, CLOSED_FORM

TOL = CLOSED_FORM[torch.float64]


def _task_loss(family, m, which):
    b = {k: v[m] for k, v in family.batch(which).items()}
    return lambda th: family.loss({"theta": th}, b).mean()


def _check_derivatives(family, theta):
    for which in ("support", "query"):
        for m in range(family.num_tasks):
            f = _task_loss(family, m, which)
            scale = 1.0 + theta.abs().max().item()
            assert abs(f(theta).item() - family.value(theta, which)[m].item()) <= TOL * scale ** 2
            assert (grad(f)(theta) - family.gradient(theta, which)[m]).abs().max() <= TOL * scale
            assert (hessian(f)(theta) - family.hessian(theta, which)[m]).abs().max() <= TOL * scale
            assert (jacfwd(hessian(f))(theta) - family.third(theta, which)[m]).abs().max() <= TOL * scale


@given(family=quadratic_families(), data=st.data())
def test_quadratic_closed_forms_match_autograd(family, data):
    _check_derivatives(family, data.draw(points(family.dim, 5.0)))


@given(family=tanh_families(), data=st.data())
def test_tanh_closed_forms_match_autograd(family, data):
    _check_derivatives(family, data.draw(points(family.dim, 3.0)))


@given(family=tanh_families(), data=st.data())
def test_tanh_stated_constants_hold_on_drawn_points(family, data):
    c = family.constants()
    x, y = data.draw(points(family.dim, 20.0)), data.draw(points(family.dim, 20.0))
    dist = (x - y).norm().item()
    for which in ("support", "query"):
        dg = (family.gradient(x, which) - family.gradient(y, which)).norm(dim=1).max().item()
        assert dg <= c.l1 * dist + BOUND_SLACK
    dh = torch.linalg.matrix_norm(family.hessian(x) - family.hessian(y), ord=2).max().item()
    assert dh <= c.l2 * dist + BOUND_SLACK
    assert family.gradient(x, "query").norm(dim=1).max().item() <= c.l0 + BOUND_SLACK


@given(family=quadratic_families(), data=st.data())
def test_quadratic_stated_constants_hold_on_their_ball(family, data):
    c = family.constants(radius=5.0)
    x = data.draw(points(family.dim, 5.0 / family.dim ** 0.5))  # inside the ball of radius 5
    y = data.draw(points(family.dim, 5.0 / family.dim ** 0.5))
    dist = (x - y).norm().item()
    for which in ("support", "query"):
        dg = (family.gradient(x, which) - family.gradient(y, which)).norm(dim=1).max().item()
        assert dg <= c.l1 * dist + BOUND_SLACK * (1 + c.l1)
    assert family.gradient(x, "query").norm(dim=1).max().item() <= c.l0 * (1 + BOUND_SLACK)


def test_quadratic_l0_fails_outside_its_ball():
    """Negative control: l0 is a ball constant; far outside the ball the gradient exceeds it."""
    fam = QuadraticFamily.random(2, 3, seed=0)
    c = fam.constants(radius=1.0)
    far = torch.full((3,), 100.0, dtype=torch.float64)
    assert fam.gradient(far, "query").norm(dim=1).max().item() > c.l0


def test_tanh_derivative_bounds_are_tight_on_a_dense_grid():
    t = np.linspace(-1, 1, 200001)
    for y_max in (0.0, 0.5, 1.0, 2.0):
        bounds = derivative_bounds(y_max)
        grid = np.zeros(3)
        for y in np.linspace(-y_max, y_max, 41):
            one_m = 1 - t ** 2
            inner = 1 - 3 * t ** 2 + 2 * t * y
            vals = [(t - y) * one_m, one_m * inner, one_m * (-2 * t * inner + one_m * (2 * y - 6 * t))]
            grid = np.maximum(grid, [np.abs(v).max() for v in vals])
        assert np.all(grid <= np.asarray(bounds) + 1e-12)       # a bound ...
        assert np.all(grid >= np.asarray(bounds) * (1 - 1e-6))  # ... that is attained


def test_quadratic_maml_objective_and_gradient_closed_forms():
    fam = QuadraticFamily.random(4, 5, seed=1)
    theta = torch.linspace(-2, 2, 5, dtype=torch.float64)
    for steps in (1, 2, 5):
        cfg = SharpMAMLConfig(beta_low=0.3, inner_steps=steps)
        f = lambda th: fam.maml_objective(th, 0.3, steps)  # noqa: E731
        assert (grad(f)(theta) - fam.maml_gradient(theta, 0.3, steps)).abs().max() <= TOL
        mg = meta_gradient(fam.loss, fam.params(theta), fam.tasks(), cfg).grad["theta"]
        assert (mg - fam.maml_gradient(theta, 0.3, steps)).abs().max() <= TOL
        value = meta_objective(fam.loss, fam.params(theta), fam.tasks(), cfg)
        assert abs(value.item() - fam.maml_objective(theta, 0.3, steps).item()) <= TOL


@given(spd_matrices(4, 1e-3, 1e3))
def test_drawn_spd_matrices_are_symmetric_with_spectrum_in_range(a):
    assert np.array_equal(a, a.T)
    eig = np.linalg.eigvalsh(a)
    assert eig.min() >= 1e-3 * (1 - 1e-6) and eig.max() <= 1e3 * (1 + 1e-6)


@given(orthogonal_matrices(3))
def test_drawn_bases_are_orthogonal(q):
    assert np.abs(q @ q.T - np.eye(3)).max() <= 1e-12


def test_spectrum_strategy_reaches_extreme_condition_numbers():
    s = find(spectra(3, 1e-3, 1e3), lambda e: e.max() / e.min() >= 1e5)
    assert s.max() / s.min() >= 1e5


def test_family_strategies_reach_one_dimension_and_one_task():
    fam = find(quadratic_families(max_dim=4), lambda f: f.dim == 1 and f.num_tasks == 1)
    assert fam.dim == 1
    fam = find(tanh_families(max_samples=4), lambda f: f.x.shape[1] == 1)
    assert fam.x.shape[1] == 1


@pytest.mark.parametrize("make", [
    lambda: spectra(0),
    lambda: spectra(2, min_eig=-1.0),
    lambda: spectra(2, min_eig=10.0, max_eig=1.0),
    lambda: quadratic_families(max_tasks=0),
    lambda: quadratic_families(min_dim=3, max_dim=2),
    lambda: tanh_families(y_max=float("nan")),
])
def test_strategies_validate_their_arguments(make):
    with pytest.raises(InvalidArgument):
        find(make(), lambda _: True)


@pytest.mark.parametrize("make, match", [
    (lambda: QuadraticFamily.random(0, 3), "num_tasks"),
    (lambda: QuadraticFamily.random(2, 3, eig_low=-1.0), "low"),
    (lambda: QuadraticFamily.random(2, 3, sigma=-0.1), "sigma"),
    (lambda: TanhRegressionFamily.random(2, 3, n_support=0), "n_support"),
    (lambda: QuadraticFamily.random(2, 3).gradient(torch.zeros(4)), "theta"),
    (lambda: QuadraticFamily.random(2, 3).value(torch.zeros(3), "train"), "which"),
])
def test_families_reject_bad_arguments_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@given(family=tanh_families(), data=st.data())
def test_hessian_vector_products_equal_hessian_times_vector(family, data):
    theta = data.draw(points(family.dim, 3.0))
    v = torch.randn(2, family.num_tasks, family.dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    for fam in (family, QuadraticFamily.random(family.num_tasks, family.dim, seed=1)):
        want = torch.einsum("mij,kmj->kmi", fam.hessian(theta), v)
        assert (fam.hvp(theta, v) - want).abs().max().item() <= TOL
