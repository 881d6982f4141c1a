"""Trust-region maximiser against brute force; Clopper-Pearson coverage of planted bounds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from proofs_check import coverage, coverage_verdict, max_quadratic_on_ball

GRID_RADIAL, GRID_ANGULAR, BOUNDARY = 300, 720, 20_000
KKT_TOLERANCE = 1e-7  # residuals of (lam I - A) e = b, relative to ||b|| + ||A|| r


def _random_quadratic(rng, kind):
    angle = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    spectra = {"indefinite": [-2.0, 1.5], "negative definite": [-3.0, -0.5], "positive definite": [0.7, 2.0],
               "hard case": [-1.0, 2.0], "zero gradient indefinite": [-1.0, 0.5]}
    eigenvalues = np.array(spectra[kind]) * rng.uniform(0.5, 2.0)
    a = rotation @ np.diag(eigenvalues) @ rotation.T
    top = rotation[:, np.argmax(eigenvalues)]
    if kind == "hard case":
        b = 0.3 * rng.uniform(0.2, 1.0) * rotation[:, np.argmin(eigenvalues)]  # orthogonal to the top eigenvector
    elif kind == "zero gradient indefinite":
        b = np.zeros(2)
    else:
        b = rng.normal(size=2) * rng.uniform(0.1, 3.0)
    assert kind != "hard case" or abs(b @ top) < 1e-12
    return a, b, float(rng.normal())


def _brute_force(a, b, c, radius):
    r = np.linspace(0, radius, GRID_RADIAL)[:, None]
    theta = np.linspace(0, 2 * np.pi, GRID_ANGULAR, endpoint=False)[None, :]
    disk = np.stack([(r * np.cos(theta)).ravel(), (r * np.sin(theta)).ravel()], axis=1)
    phi = np.linspace(0, 2 * np.pi, BOUNDARY, endpoint=False)
    circle = radius * np.stack([np.cos(phi), np.sin(phi)], axis=1)
    points = np.vstack([disk, circle])
    values = 0.5 * np.einsum("ij,jk,ik->i", points, a, points) + points @ b + c
    return float(values.max())


KINDS = ["indefinite", "negative definite", "positive definite", "hard case", "zero gradient indefinite"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trust_region_maximum_matches_brute_force_on_the_disk(kind, seed):
    rng = np.random.default_rng(seed)
    a, b, c = _random_quadratic(rng, kind)
    radius = float(rng.uniform(0.3, 3.0))
    result = max_quadratic_on_ball(a, b, c, radius)
    brute = _brute_force(a, b, c, radius)
    grid_error = (np.abs(a).max() * radius + np.linalg.norm(b)) * radius * 2 * np.pi / BOUNDARY * 4
    assert result.value >= brute - 1e-12
    assert result.value - brute <= grid_error
    assert np.linalg.norm(result.maximiser) <= radius * (1 + 1e-12)
    e = result.maximiser
    assert np.isclose(0.5 * e @ a @ e + b @ e + c, result.value)


@pytest.mark.parametrize("kind", KINDS)
def test_maximiser_satisfies_the_optimality_conditions(kind):
    a, b, c = _random_quadratic(np.random.default_rng(11), kind)
    radius = 1.7
    result = max_quadratic_on_ball(a, b, c, radius)
    lam, e = result.multiplier, result.maximiser
    scale = np.linalg.norm(b) + np.linalg.norm(a, 2) * radius + 1.0
    assert lam >= 0
    assert np.linalg.norm((lam * np.eye(2) - a) @ e - b) <= KKT_TOLERANCE * scale
    assert np.linalg.eigvalsh(lam * np.eye(2) - a).min() >= -KKT_TOLERANCE * scale
    assert lam * (radius - np.linalg.norm(e)) <= KKT_TOLERANCE * scale


def test_hard_case_is_flagged_and_fills_the_ball():
    a = np.diag([2.0, -1.0])
    b = np.array([0.0, 0.5])  # orthogonal to the top eigenvector e1
    result = max_quadratic_on_ball(a, b, 0.0, 2.0)
    assert result.hard_case and result.on_boundary
    assert np.isclose(np.linalg.norm(result.maximiser), 2.0)
    assert np.isclose(result.maximiser[1], 0.5 / 3.0)  # (lam - w2)^-1 b2 with lam = 2


def test_interior_maximum_of_a_concave_quadratic():
    a = -np.eye(3)
    b = np.array([0.1, -0.2, 0.05])
    result = max_quadratic_on_ball(a, b, 1.0, 5.0)
    assert not result.on_boundary
    assert np.allclose(result.maximiser, b)


@pytest.mark.parametrize("args, message", [
    ((np.array([[1.0, 2.0], [0.0, 1.0]]), np.zeros(2), 0.0, 1.0), "symmetric"),
    ((np.eye(2), np.zeros(3), 0.0, 1.0), "shape"),
    ((np.eye(2), np.zeros(2), 0.0, -1.0), "-1.0"),
])
def test_invalid_inputs_are_rejected_with_the_value(args, message):
    with pytest.raises(ValueError, match=message):
        max_quadratic_on_ball(*args)


def test_coverage_recovers_a_planted_ninety_percent_bound():
    rng = np.random.default_rng(3)
    k = 5
    draws = rng.chisquare(k, size=4000)
    holds = draws <= scipy.stats.chi2.ppf(0.9, k)  # holds with probability exactly 0.9
    estimate, lower, upper = coverage(holds)
    assert lower <= 0.9 <= upper
    assert upper < 0.99
    assert abs(estimate - holds.mean()) < 1e-15
    assert coverage_verdict(holds, delta=0.01).verdict == "below target"
    verdict = coverage_verdict(holds, delta=0.1)
    assert verdict.verdict == "consistent" and verdict.draws == 4000


def test_clopper_pearson_edges_match_closed_forms():
    n = 10
    _, lower, upper = coverage(np.zeros(n, dtype=bool), confidence=0.95)
    assert lower == 0.0 and np.isclose(upper, 1 - 0.025 ** (1 / n))
    _, lower, upper = coverage(np.ones(n, dtype=bool), confidence=0.95)
    assert upper == 1.0 and np.isclose(lower, 0.025 ** (1 / n))


@pytest.mark.parametrize("holds, confidence, message", [
    (np.array([1, 0, 1]), 0.95, "booleans"),
    (np.array([], dtype=bool), 0.95, "non-empty"),
    (np.array([True]), 1.5, "1.5"),
])
def test_coverage_rejects_bad_input(holds, confidence, message):
    with pytest.raises(ValueError, match=message):
        coverage(holds, confidence)
