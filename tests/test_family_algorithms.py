"""HF-MAML, Sign-MAML, Reptile, iMAML and Agnostic-SAM against what they must reduce to."""

import pytest
import torch

from synthetic import QuadraticFamily
from testbed import SharpMAMLConfig, adapt, algorithms, meta_gradient
from testbed.baselines import (agnostic_sam_gradient, conjugate_gradient, imaml_gradient,
                               reptile_gradient)
from test_meta_variants import HEAD, mlp_loss, mlp_setup
from tolerances import CLOSED_FORM, DISTINCT, VMAP_VS_LOOP

TOL = CLOSED_FORM[torch.float64]


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("kw", [{}, {"inner_steps": 2, "alpha_low": 0.2, "alpha_up": 0.1},
                                {"inner_steps": 3, "adapt_names": HEAD}])
def test_hf_maml_error_shrinks_like_delta_squared(kw):
    params, tasks = mlp_setup()
    exact = meta_gradient(mlp_loss, params, tasks, SharpMAMLConfig(beta_low=0.3, **kw)).grad
    errors = [_max_diff(meta_gradient(mlp_loss, params, tasks, SharpMAMLConfig(
        beta_low=0.3, hvp="finite-difference", fd_delta=d, **kw)).grad, exact) for d in (1e-2, 1e-3, 1e-4)]
    if "adapt_names" in kw:   # the head enters linearly: differences are exact
        assert max(errors) <= 1e-12
        return
    assert errors[0] > errors[1] > errors[2]
    assert 30 < errors[0] / errors[1] < 300   # O(delta^2): 100x per decade
    first_order = meta_gradient(mlp_loss, params, tasks, SharpMAMLConfig(beta_low=0.3, first_order=True,
                                                                         **kw)).grad
    assert _max_diff(first_order, exact) > 100 * errors[0]   # it is not just FO-MAML


def test_sign_maml_moves_every_coordinate_by_exactly_the_step():
    params, tasks = mlp_setup()
    alg = algorithms.make("sign-maml", beta_low=0.01, inner_steps=1)
    support = {k: v[0] for k, v in tasks.support.items()}
    adapted = alg.adapt(mlp_loss, params, support)
    for k in params:
        moved = (adapted[k] - params[k]).abs()
        assert torch.allclose(moved, torch.full_like(moved, 0.01), rtol=0, atol=1e-15), k


def test_sign_maml_meta_gradient_is_the_query_gradient_at_the_adapted_point():
    params, tasks = mlp_setup()
    alg = algorithms.make("sign-maml", beta_low=0.05, inner_steps=2)
    g = alg.meta_gradient(mlp_loss, params, tasks).grad
    want = {k: 0.0 for k in params}
    m = tasks.support["x"].shape[0]
    for i in range(m):
        s = {k: v[i] for k, v in tasks.support.items()}
        q = {k: v[i] for k, v in tasks.query.items()}
        adapted = alg.adapt(mlp_loss, params, s)
        gq = torch.func.grad(lambda p: mlp_loss(p, q).mean())(adapted)
        want = {k: want[k] + gq[k] / m for k in params}
    assert _max_diff(g, want) <= TOL


def test_imaml_matches_its_closed_form_on_quadratics():
    fam = QuadraticFamily.random(3, 4, seed=1)
    theta = torch.linspace(-1, 1, 4, dtype=torch.float64)
    lam = 2.0
    cfg = SharpMAMLConfig(beta_low=0.2, inner_steps=400)   # the proximal problem solved to ~1e-16
    got = imaml_gradient(fam.loss, fam.params(theta), fam.tasks(), cfg, lam=lam).grad["theta"]
    eye = torch.eye(4, dtype=torch.float64)
    phi = torch.linalg.solve(fam.A + lam * eye, (fam.A @ fam.c.unsqueeze(-1)).squeeze(-1) + lam * theta)
    want = (lam * torch.linalg.solve(fam.A + lam * eye, fam.gradient(phi, "query").unsqueeze(-1))
            .squeeze(-1)).mean(0)
    assert (got - want).abs().max().item() <= 1e-10
    few = imaml_gradient(fam.loss, fam.params(theta), fam.tasks(), cfg, lam=lam, cg_steps=1).grad["theta"]
    assert (few - want).abs().max().item() > DISTINCT   # one CG step is not the solution


def test_conjugate_gradient_solves_spd_systems_to_its_tolerance():
    g = torch.Generator().manual_seed(0)
    B = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = B @ B.T + 0.1 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x, res = conjugate_gradient(lambda v: A @ v, b, steps=50, tol=1e-12)
    assert (A @ x - b).norm().item() <= 1e-10 * b.norm().item()
    x_vm, _ = torch.func.vmap(lambda bb: conjugate_gradient(lambda v: A @ v, bb, 50, 1e-12))(
        torch.stack([b, 2 * b]))
    assert torch.allclose(x_vm[1], 2 * x, atol=1e-10)


def test_reptile_with_one_step_is_the_support_gradient():
    fam = QuadraticFamily.random(3, 4, seed=2)
    theta = torch.linspace(-1, 1, 4, dtype=torch.float64)
    one = reptile_gradient(fam.loss, fam.params(theta), fam.tasks(), SharpMAMLConfig(beta_low=0.1)).grad
    assert (one["theta"] - fam.gradient(theta).mean(0)).abs().max().item() <= TOL
    small = reptile_gradient(fam.loss, fam.params(theta), fam.tasks(),
                             SharpMAMLConfig(beta_low=1e-6, inner_steps=3)).grad
    assert (small["theta"] - 3 * fam.gradient(theta).mean(0)).abs().max().item() <= 1e-5


def test_agnostic_sam_reduces_to_sam_and_to_the_gradient():
    params, tasks = mlp_setup()
    plain = agnostic_sam_gradient(mlp_loss, params, tasks, rho1=0.0, rho2=0.0).grad
    m = tasks.support["x"].shape[0]

    def train_loss(p):
        return sum(mlp_loss(p, {k: v[i] for k, v in tasks.support.items()}).mean() for i in range(m)) / m

    g = torch.func.grad(train_loss)(params)
    assert _max_diff(plain, g) <= TOL
    sam = agnostic_sam_gradient(mlp_loss, params, tasks, rho1=0.1, rho2=0.0).grad
    norm = torch.sqrt(sum((v ** 2).sum() for v in g.values()))
    want = torch.func.grad(train_loss)({k: params[k] + 0.1 * g[k] / norm for k in params})
    assert _max_diff(sam, want) <= TOL
    both = agnostic_sam_gradient(mlp_loss, params, tasks, rho1=0.1, rho2=0.1).grad
    assert _max_diff(both, sam) > DISTINCT


@pytest.mark.parametrize("name", ["hf-maml", "sign-maml", "reptile", "imaml", "agnostic-sam"])
def test_new_algorithms_agree_across_vmap_and_loop(name):
    params, tasks = mlp_setup()
    alg = algorithms.make(name, beta_low=0.1, inner_steps=2)
    loop = algorithms.with_config(alg, task_batching="loop")
    a, b = alg.meta_gradient(mlp_loss, params, tasks), loop.meta_gradient(mlp_loss, params, tasks)
    assert _max_diff(a.grad, b.grad) <= VMAP_VS_LOOP[torch.float64]
    support = {k: v[0] for k, v in tasks.support.items()}
    assert set(alg.adapt(mlp_loss, params, support)) == set(params)


def test_imaml_adapts_to_the_proximal_solution_and_refuses_divergent_steps():
    fam = QuadraticFamily.random(1, 4, seed=3)
    theta = torch.linspace(-1, 1, 4, dtype=torch.float64)
    alg = algorithms.make("imaml", beta_low=0.2, inner_steps=400, imaml_lambda=3.0)
    support = {k: v[0] for k, v in fam.batch("support").items()}
    got = alg.adapt(fam.loss, fam.params(theta), support)["theta"]
    eye = torch.eye(4, dtype=torch.float64)
    want = torch.linalg.solve(fam.A[0] + 3.0 * eye, fam.A[0] @ fam.c[0] + 3.0 * theta)
    assert (got - want).abs().max().item() <= 1e-12
    bad = algorithms.make("imaml", beta_low=0.2, imaml_lambda=10.0)
    with pytest.raises(ValueError, match="beta_low=0.2, lambda=10.0"):
        bad.adapt(fam.loss, fam.params(theta), support)
