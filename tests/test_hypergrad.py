"""Bilevel hypergradients (ITD, AID, ES) against the closed forms of the bilevel families.

Oracles, in the house order: the closed forms of :mod:`synthetic.bilevel`
(themselves checked against autograd here), then the autograd core
(:func:`testbed.meta_gradient` with ``adapt_names``) for the ANIL family.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, jacrev

from synthetic import AnilRegressionFamily, BilevelQuadraticFamily
from testbed import SharpMAMLConfig, meta_gradient
from testbed import hypergrad as H

DT = torch.float64
CLOSED_FORM_TOL = 1e-11
"""float64 closed form vs autograd on O(1) quantities: a few hundred ulps of accumulated rounding."""
CONVERGED_TOL = 1e-8
"""What 'agrees with the exact hypergradient' means at large N (the brief's 1e-8)."""
ES_RATIO = 4.0
"""RMSE at 16 directions over RMSE at 1024: 8 in expectation (1/sqrt D); 4 leaves room for sampling."""


def family(feature="tanh", seed=0, **kw):
    kw = {"eig_low": 0.3, "eig_high": 1.0} | kw
    return BilevelQuadraticFamily.random(3, 4, 3, feature=feature, seed=seed, **kw)


def point(fam, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(fam.dim_phi, generator=g, dtype=DT),
            torch.randn(fam.num_tasks, fam.dim_u, generator=g, dtype=DT))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- the family's closed forms -------------------------------------------------


@pytest.mark.parametrize("feature", ["linear", "tanh"])
def test_bilevel_closed_forms_match_autograd(feature):
    fam = family(feature)
    phi, u = point(fam)
    assert torch.allclose(fam.inner_gradient(phi, u), grad(fam.inner, argnums=1)(phi, u),
                          atol=CLOSED_FORM_TOL, rtol=0)
    cross = jacrev(lambda p: grad(fam.inner, argnums=1)(p, u))(phi)
    assert torch.allclose(fam.cross_derivative(phi), cross, atol=CLOSED_FORM_TOL, rtol=0)
    hess = torch.func.hessian(fam.inner, argnums=1)(phi, u)             # [M, q, M, q]
    blocks = torch.stack([hess[m, :, m, :] for m in range(fam.num_tasks)])
    assert torch.allclose(blocks, fam.inner_hessian(), atol=CLOSED_FORM_TOL, rtol=0)
    assert fam.inner_gradient(phi, fam.solution(phi)).abs().max() < CLOSED_FORM_TOL
    assert torch.allclose(fam.response_jacobian(phi), jacrev(fam.solution)(phi), atol=CLOSED_FORM_TOL, rtol=0)
    assert torch.allclose(fam.hypergradient(phi), grad(fam.objective)(phi), atol=CLOSED_FORM_TOL, rtol=0)


def test_inner_iterate_is_gradient_descent():
    fam = family()
    phi, u0 = point(fam)
    lr = 1.0 / fam.constants().L
    u = u0
    for _ in range(7):
        u = u - lr * fam.inner_gradient(phi, u)
    assert torch.allclose(fam.inner_iterate(phi, u0, 7, lr), u, atol=CLOSED_FORM_TOL, rtol=0)
    assert torch.allclose(H.inner_gd(fam.inner, phi, u0, 7, lr), u, atol=CLOSED_FORM_TOL, rtol=0)


def test_constants_are_the_spectrum_ends_by_construction():
    fam = family(eig_low=0.2, eig_high=2.0)
    c = fam.constants()
    assert c.mu == pytest.approx(0.2, rel=1e-12) and c.L == pytest.approx(2.0, rel=1e-12)


def test_bilevel_family_rejects_an_indefinite_inner_hessian():
    fam = family()
    with pytest.raises(ValueError, match="positive definite"):
        BilevelQuadraticFamily(-fam.A, fam.B, fam.c, fam.target)
    with pytest.raises(ValueError, match="feature"):
        BilevelQuadraticFamily(fam.A, fam.B, fam.c, fam.target, feature="relu")


# -- ITD and AID -----------------------------------------------------------------


def test_itd_equals_the_closed_form_gradient_through_n_steps():
    fam = family()
    phi, _ = point(fam)
    u0 = torch.zeros(fam.num_tasks, fam.dim_u, dtype=DT)
    for n in (1, 5, 20):
        r = H.itd(fam.outer, fam.inner, phi, u0, n, 1.0)
        assert rel(r.grad, fam.itd_hypergradient(phi, u0, n, 1.0)) < CLOSED_FORM_TOL
        assert torch.allclose(r.u, fam.inner_iterate(phi, u0, n, 1.0), atol=CLOSED_FORM_TOL, rtol=0)


def test_itd_and_aid_errors_decrease_with_n_and_reach_1e_8():
    fam = family()
    phi, _ = point(fam)
    u0 = torch.zeros(fam.num_tasks, fam.dim_u, dtype=DT)
    exact = fam.hypergradient(phi)
    itd_err, aid_err = [], []
    for n in (2, 8, 32, 96):
        r = H.itd(fam.outer, fam.inner, phi, u0, n, 1.0)
        itd_err.append(rel(r.grad, exact))
        aid_err.append(rel(H.aid_cg(fam.outer, fam.inner, phi, r.u, 30, 1e-14).grad, exact))
    for errs in (itd_err, aid_err):
        assert all(b < a for a, b in zip(errs, errs[1:])), errs
        assert errs[-1] < CONVERGED_TOL, errs


@settings(max_examples=5)
@given(seed=st.integers(0, 10_000), feature=st.sampled_from(["linear", "tanh"]))
def test_itd_converges_on_every_drawn_family(seed, feature):
    fam = family(feature, seed=seed)
    phi, u0 = point(fam, seed + 1)
    lr = 1.0 / fam.constants().L
    r = H.itd(fam.outer, fam.inner, phi, u0, 60, lr)      # (1 - 0.3)^60 ~ 5e-10
    assert rel(r.grad, fam.hypergradient(phi)) < CONVERGED_TOL


def test_cg_converges_to_the_implicit_formula_and_reports_its_residual():
    fam = family()
    phi, u = point(fam)
    r = H.aid_cg(fam.outer, fam.inner, phi, u, 40, 1e-13)
    assert rel(r.grad, fam.aid_hypergradient(phi, u)) < CLOSED_FORM_TOL
    b = grad(fam.outer, argnums=1)(phi, u).reshape(-1)
    assert r.residual.item() <= 1e-13 * b.norm().item() * 1.0001
    loose = H.aid_cg(fam.outer, fam.inner, phi, u, 40, 1e-2)
    assert loose.residual.item() <= 1e-2 * b.norm().item()
    assert rel(loose.grad, fam.aid_hypergradient(phi, u)) > rel(r.grad, fam.aid_hypergradient(phi, u))


def test_neumann_series_converges_geometrically_with_its_terms():
    fam = family()
    phi, u = point(fam)
    target = fam.aid_hypergradient(phi, u)
    errs = [rel(H.aid_neumann(fam.outer, fam.inner, phi, u, k, 1.0).grad, target) for k in (5, 20, 80)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < CONVERGED_TOL
    r = H.aid_neumann(fam.outer, fam.inner, phi, u, 5, 1.0)
    b = (u - fam.target) / fam.num_tasks
    C5 = fam.contraction(5, 1.0)
    assert r.residual.item() == pytest.approx(torch.einsum("mij,mj->mi", C5, b).norm().item(), rel=1e-10)


def test_parameter_dicts_give_the_same_hypergradient_and_are_not_modified():
    fam = family()
    phi, u = point(fam)
    phi_d = {"a": phi[:1].clone(), "b": phi[1:].clone()}
    u_d = {"heads": u.clone()}
    before = {k: v.clone() for k, v in {**phi_d, **u_d}.items()}

    def f(p, w):
        return fam.outer(torch.cat([p["a"], p["b"]]), w["heads"])

    def g(p, w):
        return fam.inner(torch.cat([p["a"], p["b"]]), w["heads"])

    r = H.itd(f, g, phi_d, u_d, 6, 1.0)
    assert set(r.grad) == {"a", "b"} and set(r.u) == {"heads"}
    assert rel(torch.cat([r.grad["a"], r.grad["b"]]), H.itd(fam.outer, fam.inner, phi, u, 6, 1.0).grad) < 1e-12
    a = H.aid_cg(f, g, phi_d, u_d, 30, 1e-12)
    assert rel(torch.cat([a.grad["a"], a.grad["b"]]), fam.aid_hypergradient(phi, u)) < 1e-10
    for k, v in {**phi_d, **u_d}.items():
        assert torch.equal(v, before[k]), k


# -- ES ----------------------------------------------------------------------------


def test_es_jacobian_of_an_affine_inner_solution_is_unbiased_and_shrinks_with_directions():
    fam = family("linear")
    phi, _ = point(fam)
    u0 = torch.zeros(fam.num_tasks, fam.dim_u, dtype=DT)
    n, lr = 8, 1.0
    eye = torch.eye(fam.dim_u, dtype=DT)
    jac = torch.einsum("mij,mjp->mip", eye - fam.contraction(n, lr), fam.response_jacobian(phi))
    jac = jac.reshape(-1, fam.dim_phi)

    def rmse(D, reps=4):
        errs = [(H.es_jacobian(fam.inner, phi, u0, n, lr, 1e-2, D, torch.Generator().manual_seed(s))
                 - jac).norm() ** 2 for s in range(reps)]
        return torch.stack(errs).mean().sqrt().item()

    assert rmse(16) > ES_RATIO * rmse(1024)


def test_es_hypergradient_is_the_implicit_formula_with_the_es_jacobian():
    fam = family()
    phi, _ = point(fam)
    u0 = torch.zeros(fam.num_tasks, fam.dim_u, dtype=DT)
    est = H.es_hypergradient(fam.outer, fam.inner, phi, u0, 20, 1.0, 1e-3, 32, torch.Generator().manual_seed(3))
    J = H.es_jacobian(fam.inner, phi, u0, 20, 1.0, 1e-3, 32, torch.Generator().manual_seed(3))
    u_n = fam.inner_iterate(phi, u0, 20, 1.0)
    expected = fam.lam * phi + J.T @ ((u_n - fam.target) / fam.num_tasks).reshape(-1)
    assert rel(est.grad, expected) < CLOSED_FORM_TOL


# -- argument validation -------------------------------------------------------------


@pytest.mark.parametrize("call, name", [
    (lambda f, p, u: H.itd(f.outer, f.inner, p, u, 0, 1.0), "steps"),
    (lambda f, p, u: H.itd(f.outer, f.inner, p, u, 3, -1.0), "lr"),
    (lambda f, p, u: H.aid_cg(f.outer, f.inner, p, u, 10, 0.0), "tol"),
    (lambda f, p, u: H.aid_cg(f.outer, f.inner, p, u, 2.5, 1e-3), "cg_steps"),
    (lambda f, p, u: H.aid_neumann(f.outer, f.inner, p, u, 0, 1.0), "terms"),
    (lambda f, p, u: H.es_jacobian(f.inner, p, u, 3, 1.0, 0.0, 4, torch.Generator()), "smoothing"),
    (lambda f, p, u: H.es_jacobian(f.inner, p, u, 3, 1.0, 0.1, 0, torch.Generator()), "directions"),
    (lambda f, p, u: H.es_jacobian(f.inner, p, u, 3, 1.0, 0.1, 4, None), "generator"),
    (lambda f, p, u: H.itd(f.outer, f.inner, p.to(torch.int64), u, 3, 1.0), "phi"),
    (lambda f, p, u: H.inner_gd(f.inner, p, [u], 3, 1.0), "u0"),
])
def test_bad_arguments_are_named_in_the_error(call, name):
    fam = family()
    phi, u = point(fam)
    with pytest.raises(ValueError, match=name):
        call(fam, phi, u)


# -- the ANIL family -------------------------------------------------------------------


@pytest.mark.parametrize("geometry", ["strongly-convex", "nonconvex"])
def test_anil_closed_form_meta_gradient_matches_the_autograd_core(geometry):
    fam = AnilRegressionFamily.random(4, 5, 2, geometry=geometry, seed=3)
    g = torch.Generator().manual_seed(0)
    W = 0.5 * torch.randn(5, 2, generator=g, dtype=DT)
    u = torch.randn(2, generator=g, dtype=DT)
    gW, gu, value = fam.meta_gradient(W, u, 0.2, 4)
    core = meta_gradient(fam.loss, {"body": W, "head": u}, fam.tasks(),
                         SharpMAMLConfig(beta_low=0.2, inner_steps=4, adapt_names=("head",)))
    assert torch.allclose(gW, core.grad["body"], atol=CLOSED_FORM_TOL, rtol=0)
    assert torch.allclose(gu, core.grad["head"], atol=CLOSED_FORM_TOL, rtol=0)
    assert value.item() == pytest.approx(core.loss.item(), abs=CLOSED_FORM_TOL)


def test_anil_runs_with_different_n_in_one_call_equal_separate_calls():
    fam = AnilRegressionFamily.random(4, 5, 2, geometry="nonconvex", seed=1)
    g = torch.Generator().manual_seed(2)
    W = 0.5 * torch.randn(3, 5, 2, generator=g, dtype=DT)
    u = torch.randn(3, 2, generator=g, dtype=DT)
    steps = torch.tensor([1, 3, 6])
    batched = fam.meta_gradient(W, u, 0.2, steps)
    for i, n in enumerate(steps.tolist()):
        single = fam.meta_gradient(W[i], u[i], 0.2, n)
        for a, b in zip(batched, single):
            assert torch.allclose(a[i], b, atol=CLOSED_FORM_TOL, rtol=0)


def test_anil_geometries_have_the_head_curvature_they_claim():
    sc = AnilRegressionFamily.random(4, 5, 2, geometry="strongly-convex", seed=0)
    nc = AnilRegressionFamily.random(4, 5, 2, geometry="nonconvex", seed=0)
    W = torch.full((5, 2), 0.3, dtype=DT)
    assert sc.head_constants(W).mu >= sc.rho > 0
    assert nc.head_constants(W).mu < 0 and nc.gamma > 0
    with pytest.raises(ValueError, match="rho"):
        AnilRegressionFamily.random(4, 5, 2, geometry="strongly-convex", rho=-0.1)
