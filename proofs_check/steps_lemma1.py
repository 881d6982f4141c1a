"""Appendix B (proof of Lemma 1), Abbas et al. 2022: eqs. (24)-(27) and the closing argument.

The one-step MAML loss of a task is ``L(theta'(theta))`` with ``theta' = theta - beta_low grad L``
(eq. 2).  Scalar steps use an abstract sympy function ``L``; steps in R^2 use the generic cubic
``L(x, y) = sum_{1 <= i + j <= 3} c_ij x^i y^j`` (its third derivative is constant and generic, so
Hessians at theta and at theta' need not commute).
"""

from __future__ import annotations

import itertools

import sympy as sp

from .domains import COEFFICIENTS, between, nonnegative, positive, real
from .engine import claim

LOCATION = "App. B"
C3 = "L is C^3 (statement of Lemma 1)"

_x = sp.Symbol("x", real=True)
_y = sp.Symbol("y", real=True)
_L = sp.Function("L")


def _cubic(prefix: str = "c", no_linear: bool = False):
    """Generic cubic in (x, y) and its coefficient variables."""
    terms, variables = 0, []
    for i, j in itertools.product(range(4), repeat=2):
        if not 1 <= i + j <= 3 or (no_linear and i + j == 1):
            continue
        var = real(f"{prefix}{i}{j}", search=COEFFICIENTS)
        variables.append(var)
        terms += var.symbol * _x**i * _y**j
    return terms, variables


def _grad(expr, point):
    return sp.Matrix([sp.diff(expr, v) for v in (_x, _y)]).subs(dict(zip((_x, _y), point)), simultaneous=True)


def _hess(expr, point):
    return sp.hessian(expr, (_x, _y)).subs(dict(zip((_x, _y), point)), simultaneous=True)


def _third_contracted(expr, vector):
    """Matrix T[v]_{ij} = sum_k d^3 L / dx_i dx_j dx_k v_k (constant for a cubic)."""
    coords = (_x, _y)
    return sp.Matrix(2, 2, lambda i, j: sum(sp.diff(expr, coords[i], coords[j], coords[k]) * vector[k]
                                              for k in range(2)))


def _maml_objects(no_linear: bool = False):
    loss, coeffs = _cubic(no_linear=no_linear)
    beta = positive("beta_low")
    t1, t2 = real("theta1"), real("theta2")
    theta = (t1.symbol, t2.symbol)
    adapted = sp.Matrix(theta) - beta.symbol * _grad(loss, theta)
    composite = loss.subs({_x: adapted[0], _y: adapted[1]}, simultaneous=True)
    return loss, coeffs, beta, (t1, t2), theta, adapted, composite


def steps():
    theta = sp.Symbol("theta", real=True)
    beta_var = positive("beta_low")
    beta = beta_var.symbol
    scalar_vars = [real("theta"), beta_var]
    d1 = sp.diff(_L(theta), theta)
    d2 = sp.diff(_L(theta), theta, 2)
    d3 = sp.diff(_L(theta), theta, 3)
    adapted = theta - beta * d1
    at_adapted = lambda order: sp.Derivative(_L(_x), (_x, order)).subs(_x, adapted)  # noqa: E731
    composite = _L(adapted)

    out = [
        claim("proof.lemma1.step1", "App. B, eq. (26), scalar", sp.diff(composite, theta), "==",
              (1 - beta * d2) * at_adapted(1), scalar_vars, [C3, "chain rule"],
              note="gradient of L(theta - beta L'(theta)) in one dimension, abstract L"),
        claim("proof.lemma1.step3", "App. B, eq. (27), scalar", sp.diff(composite, theta, 2), "==",
              -beta * d3 * at_adapted(1) + (1 - beta * d2) ** 2 * at_adapted(2), scalar_vars, [C3],
              note="second derivative of the one-step MAML loss in one dimension, abstract L"),
    ]

    loss, coeffs, beta2, (t1, t2), th, adapted2, composite2 = _maml_objects()
    b = beta2.symbol
    variables = coeffs + [beta2, t1, t2]
    hess_theta = _hess(loss, th)
    jac = sp.eye(2) - b * hess_theta
    true_hessian = sp.hessian(composite2, th)
    grad_at_adapted = _grad(loss, tuple(adapted2))
    hess_at_adapted = _hess(loss, tuple(adapted2))
    third = _third_contracted(loss, grad_at_adapted)
    out += [
        claim("proof.lemma1.step2", "App. B, eq. (26), in R^2",
              sp.Matrix([sp.diff(composite2, v) for v in th]), "==", jac * grad_at_adapted, variables,
              [C3, "chain rule; Hessian symmetric"], note="generic cubic L on R^2"),
        claim("proof.lemma1.step4", "App. B, eq. (27) as printed, in R^2", true_hessian, "==",
              -b * third + jac**2 * hess_at_adapted, variables, [C3],
              note="(27) writes (I - beta H(theta))^2 Hess L(theta'); the chain rule gives "
                   "(I - beta H(theta)) Hess L(theta') (I - beta H(theta)), equal only when the two "
                   "Hessians commute (always in 1-D, see step3)"),
        claim("proof.lemma1.repair1", "App. B, eq. (27) with the symmetric product (not in the paper)",
              true_hessian, "==", -b * third + jac * hess_at_adapted * jac, variables, [C3],
              note="candidate repair of (27): J Hess L(theta') J with J = I - beta H(theta)"),
    ]

    loss0, coeffs0, beta0, _, th0, _, composite0 = _maml_objects(no_linear=True)
    b0 = beta0.symbol
    origin = {th0[0]: 0, th0[1]: 0}
    h0 = _hess(loss0, (0, 0))
    vars0 = coeffs0 + [beta0]
    out += [
        claim("proof.lemma1.step5", "App. B, (24) plugged into (26)",
              sp.Matrix([sp.diff(composite0, v) for v in th0]).subs(origin), "==", sp.zeros(2, 1), vars0,
              ["grad L(0) = 0 (cubic without linear terms)"],
              note="at a stationary point of L the one-step MAML gradient vanishes (generic cubic, R^2)"),
        claim("proof.lemma1.step6", "App. B, (25) plugged into (27)",
              sp.hessian(composite0, th0).subs(origin), "==", (sp.eye(2) - b0 * h0) ** 2 * h0, vars0,
              ["grad L(0) = 0"], note="at a stationary point both Hessians are H(0), so they commute"),
    ]

    lam_var, beta_var2 = nonnegative("lam"), positive("beta_low")
    lam, bb = lam_var.symbol, beta_var2.symbol
    out.append(claim("proof.lemma1.step7", "App. B, last display: PSD claim, eigenvalue form",
                     (1 - bb * lam) ** 2 * lam, ">=", 0, [lam_var, beta_var2],
                     ["Hess L(theta) >= 0 (eq. 25): eigenvalues lam >= 0",
                      "(I - beta H)^2 H has eigenvalues (1 - beta lam)^2 lam"]))

    p, q, r = real("p"), real("q"), real("r")
    lower = sp.Matrix([[p.symbol, 0], [q.symbol, r.symbol]])
    h = lower * lower.T
    m = (sp.eye(2) - bb * h) ** 2 * h
    lam_min = ((m[0, 0] + m[1, 1]) - sp.sqrt((m[0, 0] - m[1, 1]) ** 2 + 4 * m[0, 1] ** 2)) / 2
    out.append(claim("proof.lemma1.step8", "App. B, last display: PSD claim, explicit 2x2",
                     lam_min, ">=", 0, [p, q, r, beta_var2], ["H = L L^T >= 0 (constructive)"],
                     note="smallest eigenvalue of (I - beta H)^2 H for H = L L^T, closed form"))

    rho = between("rho", 0, 1, lo_open=True)
    t = between("t", -rho.symbol, rho.symbol)
    out.append(claim(
        "proof.lemma1.step9", "App. B, closing inference (grad = 0 and Hess >= 0 => local minimiser)",
        (t.symbol - 3 * bb * t.symbol**2) ** 3, ">=", 0, [rho, beta_var2, t],
        ["L(x) = x^3: grad = 0 and Hess = 0 >= 0 at theta = 0, for L and for the MAML loss"],
        note="the proof concludes 'local minimiser' from second-order necessary conditions; with "
             "L = x^3 the one-step MAML loss (t - 3 beta t^2)^3 takes negative values in every "
             "neighbourhood [-rho, rho] of 0. Lemma 1(b) itself still holds for genuine local "
             "minimisers (theta' is continuous and theta'(theta*) = theta*), so this is a gap in the "
             "argument, not in the statement."))

    two = []
    total = 0
    task_vars = []
    for m_index in (1, 2):
        coeff = [real(f"a{m_index}{i}", search=COEFFICIENTS) for i in (2, 3, 4)]
        task_vars += coeff
        loss_m = sum(cv.symbol * _x**i for cv, i in zip(coeff, (2, 3, 4)))
        grad_m = sp.diff(loss_m, _x).subs(_x, theta)
        total += loss_m.subs(_x, theta - bb * grad_m)
        two.append(loss_m)
    out.append(claim("proof.lemma1.step10", "App. B, final paragraph (sum over tasks)",
                     sp.diff(total, theta).subs(theta, 0), "==", 0, task_vars + [beta_var2],
                     ["every task loss stationary at theta = 0"],
                     note="two generic scalar quartic task losses without linear term"))
    return tuple(out)
