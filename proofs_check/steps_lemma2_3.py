"""Appendix C.1-C.2 up to Lemma 3, Abbas et al. 2022: eqs. (28)-(33) and Lemma 3's bound (31).

Scalar steps keep every norm as a nonnegative variable bounded by what the assumptions give
("premise variables"), so the check is exactly the arithmetic the proof does; the norm
inequalities themselves (Young, submultiplicativity) are ArrayForm steps searched over random
vectors and symmetric matrices in R^d, d in {1, 2, 3, 5, 10}, with the spectral norm.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .arrays import array_form, op_norm, sq
from .domains import COEFFICIENTS, between, nonnegative, positive, real
from .engine import array_claim, claim, untranscribable
from .spec import Var

A1 = "Assumption 1: L(.;D'_m), grad L(.;D_m), grad L(.;D'_m), Hess L(.;D_m) Lipschitz with l0, l1, l1, l2"
A3 = "Assumption 3: biased estimators unbiased for their means, variance <= sigma_b^2"
A4 = "Assumption 4: ||Hess_hat - Hess|| <= gamma_h, ||grad_hat - grad|| <= gamma_g"
YOUNG = "||a + b||^2 <= 2||a||^2 + 2||b||^2"
BOOKKEEPING = ("bookkeeping: substitutes the premise bounds (assumptions, earlier steps) and folds "
               "constants; its content is in {}")


def constants():
    """Shared variables: beta_low > 0 and the constants of Assumptions 1-4 (all >= 0)."""
    return {name: (positive(name) if name == "beta_low" else nonnegative(name))
            for name in ("beta_low", "gamma_g", "gamma_h", "sigma_b", "l0", "l1")}


def three_point(prefix: str, d: int = 2, search=(1e-4, 1e4)):
    """A random vector in R^d with three values ``prefix``1..3 and weights p1, p2, 1 - p1 - p2.

    The weights are a constructive box (``p2 <= 1 - p1``), so every point is a distribution.
    Returns (weight variables, coordinate variables, the three value vectors, the weights).
    """
    p1 = between(f"p1_{prefix}", 0, 1)
    p2 = between(f"p2_{prefix}", 0, 1 - p1.symbol)
    weights = (p1.symbol, p2.symbol, 1 - p1.symbol - p2.symbol)
    coords = [[real(f"{prefix}{i}_{j}", search=search) for j in range(1, d + 1)] for i in (1, 2, 3)]
    values = [sp.Matrix([v.symbol for v in row]) for row in coords]
    return [p1, p2], [v for row in coords for v in row], values, weights


def expect(weights, values):
    """E of a three-point random variable (vectors or scalars)."""
    return sum((w * v for w, v in zip(weights, values)), sp.zeros(*values[0].shape)
               if isinstance(values[0], sp.MatrixBase) else 0)


def vector(prefix: str, d: int = 2, search=(1e-4, 1e4)):
    """Coordinate variables of a fixed vector in R^d and the vector."""
    coords = [real(f"{prefix}{j}", search=search) for j in range(1, d + 1)]
    return coords, sp.Matrix([v.symbol for v in coords])


def at_least_norm(name: str, squared_norm, search=(1.0, 1e4)) -> Var:
    """A constant ``name >= sqrt(squared_norm)``: what an assumption bounding that norm gives."""
    return Var(name, sp.sqrt(squared_norm), sp.oo, scale="log", search=search)


def bound_31(c):
    """Right side of (31)."""
    b, gg, gh, sb, l0, l1 = (c[n].symbol for n in ("beta_low", "gamma_g", "gamma_h", "sigma_b", "l0", "l1"))
    return 4 * l1**2 * b**2 * (gg**2 + sb**2) + 4 * b**2 * (l0**2 * gh**2 + 4 * (gh**2 + l1**2) * l1**2 * b**2 * (gg**2 + sb**2))


def bound_32(c):
    b, gg, sb, l1 = (c[n].symbol for n in ("beta_low", "gamma_g", "sigma_b", "l1"))
    return 2 * l1**2 * b**2 * (gg**2 + sb**2)


def bound_33(c):
    b, gg, gh, sb, l0, l1 = (c[n].symbol for n in ("beta_low", "gamma_g", "gamma_h", "sigma_b", "l0", "l1"))
    return 2 * l0**2 * gh**2 + 8 * (gh**2 + l1**2) * l1**2 * b**2 * (gg**2 + sb**2)


def _lemma2_steps():
    theta, beta_var = real("theta"), positive("beta_low")
    th, b = theta.symbol, beta_var.symbol
    g_var = real("g")
    g = g_var.symbol
    theta_m = th - b * g
    out = [claim("proof.lemma2.step1", "App. C.1, eq. (29b) vs (28b)",
                 g + (theta_m - th) / b, "==", 0, [theta, beta_var, g_var],
                 ["objective of (29b) is strongly convex in theta_m (curvature 1/beta_low)"],
                 note="first-order condition of (29b) holds at theta - beta_low grad L(theta) = (28b)")]

    x = sp.Symbol("x", real=True)
    coeff_vars, lower, upper = [], [], []
    for m in (1, 2):
        pc = [real(f"p{m}{i}", search=COEFFICIENTS) for i in (1, 2, 3)]
        qc = [real(f"q{m}{i}", search=COEFFICIENTS) for i in (1, 2, 3)]
        coeff_vars += pc + qc
        lower.append(sum(v.symbol * x**i for v, i in zip(pc, (1, 2, 3))))
        upper.append(sum(v.symbol * x**i for v, i in zip(qc, (1, 2, 3))))
    dl = [sp.diff(p, x) for p in lower]
    dq = [sp.diff(q, x) for q in upper]
    adapted = [th - b * d.subs(x, th) for d in dl]
    big_f = sp.Rational(1, 2) * sum(q.subs(x, a) for q, a in zip(upper, adapted))
    rhs_30 = sp.Rational(1, 2) * sum((1 - b * sp.diff(d, x).subs(x, th)) * dqm.subs(x, a)
                                     for d, dqm, a in zip(dl, dq, adapted))
    variables = coeff_vars + [beta_var, theta]
    out.append(claim("proof.lemma2.step2", "App. C.1, eq. (30), second line vs chain rule",
                     sp.diff(big_f, th), "==", rhs_30, variables, ["eq. (28b)"],
                     note="M = 2 tasks, generic cubic lower/upper task losses, theta in R"))

    h_vars = [real("H1"), real("H2")]
    g_vars = [real("G1"), real("G2")]
    hs, gs = [v.symbol for v in h_vars], [v.symbol for v in g_vars]
    displayed = -sum((h - 1 / b) * b * gm for h, gm in zip(hs, gs))
    second_line = sp.Rational(1, 2) * sum((1 - b * h) * gm for h, gm in zip(hs, gs))
    out.append(claim("proof.lemma2.step3", "App. C.1, eq. (30), first line with the blocks as displayed",
                     displayed, "==", second_line, h_vars + g_vars + [beta_var],
                     ["displayed blocks: grad_phi f = [grad L(theta_m; D'_m)], "
                      "grad_phi_theta g = [Hess L - I/beta_low], grad_phi_phi g = I/beta_low"],
                     note="M = 2, theta in R. The displayed Jacobians drop the 1/M of f and g; two of "
                          "the three factors cancel, the third leaves a factor M"))

    phis = [sp.Symbol(f"phi{m}", real=True) for m in (1, 2)]
    g_fun = sp.Rational(1, 2) * sum(d.subs(x, th) * (ph - th) + (ph - th) ** 2 / (2 * b) for d, ph in zip(dl, phis))
    f_fun = sp.Rational(1, 2) * sum(q.subs(x, ph) for q, ph in zip(upper, phis))
    implicit = -sum(sp.diff(g_fun, th, ph) / sp.diff(g_fun, ph, 2) * sp.diff(f_fun, ph) for ph in phis)
    implicit = implicit.subs(dict(zip(phis, adapted)), simultaneous=True)
    out.append(claim("proof.lemma2.repair1", "App. C.1, eq. (30), first line with blocks derived from f, g "
                     "(not in the paper)", implicit, "==", rhs_30, variables, ["eq. (29)"],
                     note="blocks computed by differentiating the f and g defined in App. C.1 (1/M kept)"))
    out.append(untranscribable("proof.lemma2.step4", "App. C.1, Lemma 2",
                               "imported from ALSET (Chen et al. 2021a) without a proof in the paper"))
    return out


def _hessians(lat, d):
    return lat.symmetric(d), lat.symmetric(d)


def _lemma3_arrays():
    def young_matrices(lat, d):
        h, h_hat = _hessians(lat, d)
        return {"H": h, "H_hat": h_hat}

    def young_lhs(a):
        return op_norm(a["H_hat"]) ** 2

    def young_rhs(a):
        return 2 * op_norm(a["H"]) ** 2 + 2 * op_norm(a["H"] - a["H_hat"]) ** 2

    def product(lat, d):
        h, h_hat = _hessians(lat, d)
        return {"H": h, "H_hat": h_hat, "g": lat.vector(d), "g_hat": lat.vector(d)}

    def product_lhs(a):
        return sq(a["H"] @ a["g"] - a["H_hat"] @ a["g_hat"])

    def product_rhs(a):
        return (2 * op_norm(a["H"] - a["H_hat"]) ** 2 * sq(a["g"])
                + 2 * op_norm(a["H_hat"]) ** 2 * sq(a["g"] - a["g_hat"]))

    tasks = 3

    def combined(lat, d):
        out = {"beta": np.array(lat.scale())}
        for m in range(tasks):
            h, h_hat = _hessians(lat, d)
            out.update({f"H{m}": h, f"H_hat{m}": h_hat, f"g{m}": lat.vector(d), f"g_hat{m}": lat.vector(d)})
        return out

    def combined_lhs(a):
        eye = np.eye(a["g0"].shape[0])
        b = float(a["beta"])
        total = sum((eye - b * a[f"H{m}"]) @ a[f"g{m}"] - (eye - b * a[f"H_hat{m}"]) @ a[f"g_hat{m}"]
                    for m in range(tasks))
        return sq(total / tasks)

    def combined_rhs(a):
        b = float(a["beta"])
        first = 2 / tasks * sum(sq(a[f"g{m}"] - a[f"g_hat{m}"]) for m in range(tasks))
        second = 2 * b**2 / tasks * sum(sq(a[f"H{m}"] @ a[f"g{m}"] - a[f"H_hat{m}"] @ a[f"g_hat{m}"])
                                        for m in range(tasks))
        return first + second

    return [
        array_claim("proof.lemma3.step5", "App. C.2, proof of Lemma 3, display before (33), first inequality",
                    "<=", array_form("symmetric H, H_hat; spectral norm", young_matrices, young_lhs, young_rhs),
                    [YOUNG], note="||H_hat||^2 <= 2||H||^2 + 2||H - H_hat||^2"),
        array_claim("proof.lemma3.step7", "App. C.2, eq. (33), first inequality", "<=",
                    array_form("symmetric H, H_hat; vectors g, g_hat", product, product_lhs, product_rhs),
                    [YOUNG, "||A x|| <= ||A|| ||x||"],
                    note="H g - H_hat g_hat = (H - H_hat) g + H_hat (g - g_hat); expectations dropped "
                         "(the inequality holds pointwise)"),
        array_claim("proof.lemma3.step9", "App. C.2, proof of Lemma 3, last display, first inequality", "<=",
                    array_form("M = 3 tasks: symmetric H_m, H_hat_m, vectors g_m, g_hat_m, beta > 0",
                               combined, combined_lhs, combined_rhs, dims=(1, 2, 3, 5)),
                    [YOUNG, "Jensen: ||mean||^2 <= mean ||.||^2"], note="pointwise version"),
    ]


def _lemma3_first_display():
    """Lemma 3's first sentence and first display for one task, theta in R^2.

    theta' = theta - beta grad L(theta) (eq. 28b, g = grad L(theta; D_m)); the biased estimator
    grad_hat L(theta; D_m, xi) is a three-point random vector ``gx`` with mean g_hat (Assumption 3);
    theta_hat = theta - beta gx.  gamma_g >= ||g_hat - g|| (Assumption 4) and
    sigma_b >= sqrt(E||gx - g_hat||^2) (Assumption 3) are the only premises.
    """
    b_var = positive("beta_low")
    b = b_var.symbol
    th_vars, th = vector("theta")
    g_vars, g = vector("g")
    w_vars, gx_vars, gx, w = three_point("gx")
    g_hat = expect(w, gx)
    theta_prime = th - b * g
    theta_hat = [th - b * v for v in gx]
    mean_hat = expect(w, theta_hat)
    spread = expect(w, [(v - g_hat).dot(v - g_hat) for v in gx])
    base = [b_var] + th_vars + g_vars + w_vars + gx_vars
    gg = at_least_norm("gamma_g", (g_hat - g).dot(g_hat - g))
    sb = at_least_norm("sigma_b", spread)
    gap = theta_prime - mean_hat
    return [
        claim("proof.lemma3.step1", "App. C.2, proof of Lemma 3, first sentence (the difference)",
              gap, "==", b * (g_hat - g), base, [A3, "eq. (28b)"],
              note="theta' - E[theta_hat] = beta (g_hat - g) for a three-point estimator in R^2: the factor "
                   "beta and the cancellation of theta that the bound beta gamma_g rests on"),
        claim("proof.lemma3.step1a", "App. C.2, proof of Lemma 3, first sentence (the bound)",
              gap.dot(gap), "<=", b**2 * gg.symbol**2, base + [gg], [A3, A4],
              note="||theta' - E[theta_hat]||^2 <= beta^2 gamma_g^2, both sides from the coordinates; "
                   "gamma_g >= ||g_hat - g|| is Assumption 4"),
        claim("proof.lemma3.step3", "App. C.2, proof of Lemma 3, first display (end to end)",
              expect(w, [(theta_prime - v).dot(theta_prime - v) for v in theta_hat]), "<=",
              2 * b**2 * gg.symbol**2 + 2 * b**2 * sb.symbol**2, base + [gg, sb], [YOUNG, A3, A4],
              note="E||theta' - theta_hat||^2 <= 2 beta^2 gamma_g^2 + 2 beta^2 sigma_b^2 for a three-point "
                   "estimator in R^2; exact value beta^2 (||g_hat - g||^2 + E||gx - g_hat||^2), so "
                   "Young's factor 2 is slack"),
        claim("proof.lemma3.step3a", "App. C.2, proof of Lemma 3, first display (variance term)",
              expect(w, [(mean_hat - v).dot(mean_hat - v) for v in theta_hat]), "==", b**2 * spread, base,
              [A3], note="E||E[theta_hat] - theta_hat||^2 = beta^2 E||gx - g_hat||^2 (<= beta^2 sigma_b^2 "
                         "by Assumption 3)"),
    ]


def _lemma3_steps():
    c = constants()
    b, gg, gh, sb, l0, l1 = (c[n].symbol for n in ("beta_low", "gamma_g", "gamma_h", "sigma_b", "l0", "l1"))
    allc = list(c.values())
    d_var = between("D", 0, 2 * b**2 * gg**2 + 2 * b**2 * sb**2)
    g_var = between("G", 0, l1**2 * d_var.symbol)
    p_var, q_var = between("P", 0, l1), between("Q", 0, gh)
    u = [real(f"u{i}") for i in (1, 2, 3)]
    v = [real(f"v{i}") for i in (1, 2, 3)]
    young_3d = (sum((x.symbol + y.symbol) ** 2 for x, y in zip(u, v)), "<=",
                2 * sum(x.symbol**2 for x in u) + 2 * sum(y.symbol**2 for y in v))
    hd, gn = between("Hdiff", 0, gh), between("gnorm", 0, l0)
    hh = between("Hhat", 0, sp.sqrt(2 * (gh**2 + l1**2)))
    gd = between("Gdiff2", 0, bound_32(c))
    x_var, y_var = between("X", 0, bound_32(c)), between("Y", 0, bound_33(c))
    first, first_bound, third, variance = _lemma3_first_display()
    return [
        first, first_bound,
        claim("proof.lemma3.step2", "App. C.2, proof of Lemma 3, first display (Young in R^3)",
              young_3d[0], young_3d[1], young_3d[2], u + v, [YOUNG]),
        third, variance,
        claim("proof.lemma3.step4", "App. C.2, eq. (32)", g_var.symbol, "<=", bound_32(c),
              allc + [d_var, g_var], [A1 + " (grad L(.;D'_m): l1)"],
              note="G = E||grad L(theta') - grad L(theta_hat)||^2 <= l1^2 D, D = E||theta' - theta_hat||^2; "
                   + BOOKKEEPING.format("Assumption 1 and step3")),
        claim("proof.lemma3.step6", "App. C.2, proof of Lemma 3, display before (33), last inequality",
              2 * p_var.symbol**2 + 2 * q_var.symbol**2, "<=", 2 * (gh**2 + l1**2), allc + [p_var, q_var],
              [A1 + " (||Hess L|| <= l1)", A4],
              note="P = ||Hess L||, Q = ||Hess L - Hess_hat L||; " + BOOKKEEPING.format("step5 (Young)")),
        claim("proof.lemma3.step8", "App. C.2, eq. (33), second inequality",
              2 * hd.symbol**2 * gn.symbol**2 + 2 * hh.symbol**2 * gd.symbol, "<=", bound_33(c),
              allc + [hd, gn, hh, gd], [A1 + " (||grad L(.;D'_m)|| <= l0)", A4, "eq. (32)"],
              note="Hdiff = ||Hess - Hess_hat||, gnorm = ||grad L(theta';D')||, Hhat = ||Hess_hat||, "
                   "Gdiff2 = E||grad L(theta') - grad L(theta_hat)||^2; "
                   + BOOKKEEPING.format("step7 (the product split) and steps 4, 6")),
        claim("proof.lemma3.step10", "App. C.2, Lemma 3: constants of (31) from (32) and (33)",
              2 * bound_32(c) + 2 * b**2 * bound_33(c), "==", bound_31(c), allc, ["eqs. (32), (33)"],
              note="(31) prints gamma_q; read as gamma_g"),
        claim("proof.lemma3.step11", "App. C.2, proof of Lemma 3, last display, last inequality",
              2 * x_var.symbol + 2 * b**2 * y_var.symbol, "<=", bound_31(c), allc + [x_var, y_var],
              ["eqs. (32), (33)"], note="X, Y: the two averaged expectations, bounded by (32) and (33); "
                                        + BOOKKEEPING.format("step9 (the split) and step10 (the constants)")),
    ] + _lemma3_arrays()


def steps():
    return tuple(_lemma2_steps() + _lemma3_steps())
