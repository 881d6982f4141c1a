"""Double-well family: closed forms against autograd, box constants against drawn points."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch.func import grad, hessian, jacfwd

from synthetic import DoubleWellFamily, linalg
from synthetic.closed_form import sharp_meta_gradient
from synthetic.double_well import cubic_sup
from synthetic.strategies import orthogonal_matrices, points
from testbed import SharpMAMLConfig, meta_gradient, meta_objective
from tolerances import BOUND_SLACK, CLOSED_FORM

TOL = CLOSED_FORM[torch.float64]


@st.composite
def double_well_families(draw, *, max_tasks: int = 3, max_dim: int = 4,
                         max_coupling: float = 1.0, max_tilt: float = 1.0) -> DoubleWellFamily:
    """Constructive: the spectrum of ``K`` (signed, ``|eig| <= max_coupling``), then a basis."""
    m, d = draw(st.integers(1, max_tasks)), draw(st.integers(1, max_dim))
    eig = np.asarray(draw(st.lists(st.floats(-max_coupling, max_coupling), min_size=d, max_size=d)))
    K = linalg.from_spectrum(eig, draw(orthogonal_matrices(d)))
    vec = st.lists(st.floats(-max_tilt, max_tilt), min_size=m * d, max_size=m * d)
    b, b_val = (np.asarray(draw(vec)).reshape(m, d) for _ in range(2))
    t = linalg.to_torch
    return DoubleWellFamily(t(K), t(b), t(b_val))


def _task_loss(family, m, which):
    b = {k: v[m] for k, v in family.batch(which).items()}
    return lambda th: family.loss({"theta": th}, b).mean()


@given(family=double_well_families(), data=st.data())
def test_double_well_closed_forms_match_autograd(family, data):
    theta = data.draw(points(family.dim, 3.0))
    m = data.draw(st.integers(0, family.num_tasks - 1))   # one task and set per example: fast tier
    which = data.draw(st.sampled_from(("support", "query")))
    scale = 1.0 + theta.abs().max().item()
    f = _task_loss(family, m, which)
    assert abs(f(theta).item() - family.value(theta, which)[m].item()) <= TOL * scale ** 4
    assert (grad(f)(theta) - family.gradient(theta, which)[m]).abs().max() <= TOL * scale ** 3
    assert (hessian(f)(theta) - family.hessian(theta, which)[m]).abs().max() <= TOL * scale ** 2
    assert (jacfwd(hessian(f))(theta) - family.third(theta, which)[m]).abs().max() <= TOL * scale


@given(family=double_well_families(), data=st.data())
def test_double_well_hvp_equals_hessian_times_vector(family, data):
    theta = data.draw(points(family.dim, 3.0))
    v = torch.randn(2, family.num_tasks, family.dim, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    for which in ("support", "query"):
        want = torch.einsum("mij,kmj->kmi", family.hessian(theta, which), v)
        scale = (1 + theta.abs().max().item()) ** 2
        assert (family.hvp(theta, v, which) - want).abs().max().item() <= TOL * scale


def test_double_well_closed_forms_broadcast_over_runs():
    fam = DoubleWellFamily.random(3, 2, seed=4)
    theta = torch.randn(5, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert fam.value(theta).shape == (5, 3)
    assert fam.gradient(theta, "query").shape == (5, 3, 2)
    assert fam.hessian(theta).shape == (5, 3, 2, 2)
    assert fam.third(theta).shape == (5, 3, 2, 2, 2)
    for r in range(5):
        for m in range(3):
            assert torch.allclose(fam.gradient(theta)[r, m], fam.gradient(theta[r, m])[m], rtol=0, atol=TOL)


@given(family=double_well_families(), radius=st.floats(0.1, 4.0), data=st.data())
def test_double_well_stated_constants_hold_on_their_box(family, radius, data):
    c = family.constants(radius)
    x, y = data.draw(points(family.dim, radius)), data.draw(points(family.dim, radius))
    dist = (x - y).norm().item()
    for which in ("support", "query"):
        dg = (family.gradient(x, which) - family.gradient(y, which)).norm(dim=1).max().item()
        assert dg <= c.l1 * dist * (1 + BOUND_SLACK) + BOUND_SLACK
    dh = torch.linalg.matrix_norm(family.hessian(x) - family.hessian(y), ord=2).max().item()
    assert dh <= c.l2 * dist * (1 + BOUND_SLACK) + BOUND_SLACK
    assert family.gradient(x, "query").norm(dim=1).max().item() <= c.l0 * (1 + BOUND_SLACK)
    assert c.radius == radius and "box" in c.domain


def test_double_well_constants_are_attained_in_one_dimension():
    """With K = 0 and no tilt the 1-D bounds are exact: l0 at theta = R, l1 = |L''(R)|."""
    zero = torch.zeros(1, 1, dtype=torch.float64)
    fam = DoubleWellFamily(zero[0:1, 0:1], zero, zero)
    R = 2.0
    c = fam.constants(R)
    edge = torch.tensor([R], dtype=torch.float64)
    assert math.isclose(fam.gradient(edge, "query").abs().item(), c.l0, rel_tol=1e-12)
    assert math.isclose(fam.hessian(edge).abs().item(), c.l1, rel_tol=1e-12)
    assert c.l2 == 6 * R


def test_cubic_sup_matches_a_dense_grid():
    for R in (0.2, 1 / math.sqrt(3), 0.9, 1.0, 1.2, 3.0):
        t = np.linspace(-R, R, 200001)
        grid = np.abs(t ** 3 - t).max()
        assert grid <= cubic_sup(R) + 1e-12 and grid >= cubic_sup(R) * (1 - 1e-8)


def test_double_well_l1_fails_outside_its_box():
    """Negative control: l1 is a box constant; the cubic gradient outgrows it far away."""
    fam = DoubleWellFamily.random(2, 3, seed=0)
    c = fam.constants(1.0)
    x, y = torch.full((3,), 10.0, dtype=torch.float64), torch.full((3,), 9.0, dtype=torch.float64)
    dg = (fam.gradient(x) - fam.gradient(y)).norm(dim=1).max().item()
    assert dg > c.l1 * (x - y).norm().item()


def test_untilted_one_dimensional_well_has_its_three_stationary_points():
    zero = torch.zeros(1, 1, dtype=torch.float64)
    fam = DoubleWellFamily(zero, zero, zero)
    for t, curvature in ((-1.0, 2.0), (0.0, -1.0), (1.0, 2.0)):
        th = torch.tensor([t], dtype=torch.float64)
        assert fam.gradient(th).abs().item() == 0.0
        assert fam.hessian(th).item() == curvature


def test_random_coupling_has_the_requested_norm_and_is_symmetric():
    fam = DoubleWellFamily.random(4, 3, coupling=0.7, tilt=0.2, seed=3)
    assert torch.equal(fam.K, fam.K.T)
    assert math.isclose(torch.linalg.matrix_norm(fam.K, ord=2).item(), 0.7, rel_tol=1e-12)
    assert fam.b.shape == fam.b_val.shape == (4, 3) and fam.dtype == torch.float64
    assert not torch.equal(fam.b, fam.b_val)
    assert torch.count_nonzero(DoubleWellFamily.random(2, 3, coupling=0.0).K) == 0


def test_double_well_meta_gradient_matches_its_closed_form():
    """The family plugs into testbed.meta: autograd MAML / Sharp-MAML against closed_form."""
    fam = DoubleWellFamily.random(3, 2, coupling=0.3, seed=2)
    theta = torch.tensor([0.4, -0.8], dtype=torch.float64)
    for alpha_low in (0.0, 0.05):
        cfg = SharpMAMLConfig(beta_low=0.2, alpha_low=alpha_low)
        mg = meta_gradient(fam.loss, fam.params(theta), fam.tasks(), cfg).grad["theta"]
        ref = sharp_meta_gradient(fam, theta, beta_low=0.2, alpha_low=alpha_low)
        assert (mg - ref).abs().max() <= TOL
    value = meta_objective(fam.loss, fam.params(theta), fam.tasks(), SharpMAMLConfig(beta_low=0.2))
    adapted = theta - 0.2 * fam.gradient(theta)
    assert abs(value.item() - fam.value(adapted, "query").mean().item()) <= TOL


@pytest.mark.parametrize("make, match", [
    (lambda: DoubleWellFamily.random(0, 2), "num_tasks"),
    (lambda: DoubleWellFamily.random(2, 2, coupling=-1.0), "coupling"),
    (lambda: DoubleWellFamily.random(2, 2, tilt=float("nan")), "tilt"),
    (lambda: DoubleWellFamily.random(2, 2, sigma=-0.1), "sigma"),
    (lambda: DoubleWellFamily(torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
                              torch.zeros(1, 2, dtype=torch.float64),
                              torch.zeros(1, 2, dtype=torch.float64)), "symmetric"),
    (lambda: DoubleWellFamily(torch.zeros(2, 2, dtype=torch.float64),
                              torch.zeros(1, 3, dtype=torch.float64),
                              torch.zeros(1, 3, dtype=torch.float64)), "b must"),
    (lambda: DoubleWellFamily.random(2, 2).constants(0.0), "radius"),
    (lambda: DoubleWellFamily.random(2, 2).gradient(torch.zeros(3)), "theta"),
    (lambda: DoubleWellFamily.random(2, 2).hessian(torch.zeros(2), "train"), "which"),
])
def test_double_well_rejects_bad_arguments_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()
