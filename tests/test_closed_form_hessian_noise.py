"""The optional Hessian-oracle noise of synthetic.closed_form (Assumption 3's psi_m)."""

import pytest
import torch

from synthetic import QuadraticFamily, TanhRegressionFamily
from synthetic.closed_form import HESSIAN_NOISE_KINDS, batched_sharp_meta_gradient, hessian_noise

DRAWS = 40000
MC_MEAN_TOL = 0.03
"""|mean entry| of 40000 draws of unit-scale noise: ~5 standard errors (1/sqrt(40000) = 0.005)."""
MC_VAR_RTOL = 0.03
"""Relative error of a mean of 40000 squared norms: ~5 standard errors."""


@pytest.mark.parametrize("kind", HESSIAN_NOISE_KINDS)
def test_hessian_noise_is_symmetric_with_mean_zero(kind):
    Z = hessian_noise((DRAWS,), 2, 3, 0.7, generator=torch.Generator().manual_seed(0), kind=kind)
    assert Z.shape == (DRAWS, 2, 3, 3) and Z.dtype == torch.float64
    assert torch.equal(Z, Z.transpose(-1, -2))
    assert Z.mean(0).abs().max().item() < MC_MEAN_TOL


def test_scalar_hessian_noise_has_spectral_norm_sigma_b_exactly():
    Z = hessian_noise((500,), 3, 4, 0.7, generator=torch.Generator().manual_seed(1), kind="scalar")
    norms = torch.linalg.matrix_norm(Z, ord=2)
    assert torch.allclose(norms, torch.full_like(norms, 0.7), rtol=0, atol=1e-15)
    signs = Z[..., 0, 0] / 0.7
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def test_gaussian_hessian_noise_has_frobenius_variance_sigma_b_squared():
    Z = hessian_noise((DRAWS,), 1, 4, 0.7, generator=torch.Generator().manual_seed(2), kind="gaussian")
    var = (torch.linalg.matrix_norm(Z) ** 2).mean().item()
    assert abs(var / 0.49 - 1) < MC_VAR_RTOL
    assert (torch.linalg.matrix_norm(Z, ord=2) ** 2).mean().item() <= 0.49


def test_hessian_noise_is_reproducible_from_its_generator():
    a = hessian_noise((5,), 2, 3, 1.0, generator=torch.Generator().manual_seed(3), kind="gaussian")
    b = hessian_noise((5,), 2, 3, 1.0, generator=torch.Generator().manual_seed(3), kind="gaussian")
    assert torch.equal(a, b)


def test_hessian_noise_rejects_bad_arguments():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="-1"):
        hessian_noise((2,), 1, 2, -1.0, generator=g)
    with pytest.raises(ValueError, match="'wishart'"):
        hessian_noise((2,), 1, 2, 1.0, generator=g, kind="wishart")
    fam = QuadraticFamily.random(2, 3, seed=0)
    with pytest.raises(ValueError, match=r"\(4, 2, 3, 3\)|\[\.\.\., 2, 3, 3\]"):
        batched_sharp_meta_gradient(fam, torch.zeros(4, 3), beta_low=0.1,
                                    hessian_noise=torch.zeros(4, 2, 3, 2))


@pytest.mark.parametrize("family", [QuadraticFamily.random(3, 4, seed=5),
                                    TanhRegressionFamily.random(3, 3, seed=5)])
def test_zero_hessian_noise_leaves_the_meta_gradient_unchanged(family):
    theta = torch.randn(6, family.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(beta_low=0.2, steps=2, alpha_low=0.1, alpha_up=0.05)
    plain = batched_sharp_meta_gradient(family, theta, **kw)
    zero = batched_sharp_meta_gradient(family, theta, **kw,
                                       hessian_noise=torch.zeros(6, family.num_tasks, family.dim, family.dim))
    assert torch.equal(plain, zero)


def test_hessian_noise_enters_as_the_perturbed_jacobian_on_a_quadratic():
    """One step, no radii: h = 1/M sum_m (I - beta (A_m + Z_m)) grad L(theta'_m; D'_m)."""
    fam = QuadraticFamily.random(3, 4, seed=6)
    theta = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    Z = hessian_noise((5,), 3, 4, 0.8, generator=torch.Generator().manual_seed(2), kind="gaussian")
    got = batched_sharp_meta_gradient(fam, theta, beta_low=0.3, hessian_noise=Z)
    pts = theta[:, None, :].expand(5, 3, 4)
    v = fam.gradient(pts - 0.3 * fam.gradient(pts, "support"), "query")
    J = torch.eye(4, dtype=torch.float64) - 0.3 * (fam.A + Z)
    want = torch.einsum("kmij,kmj->kmi", J, v).mean(-2)
    assert torch.allclose(got, want, rtol=0, atol=1e-13)
    assert (got - batched_sharp_meta_gradient(fam, theta, beta_low=0.3)).abs().max() > 1e-3
