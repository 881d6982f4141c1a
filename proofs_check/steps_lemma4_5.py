"""Appendix C.2-C.3, Abbas et al. 2022: Lemma 4 (eq. 34, identities (a), (b), eq. 35) and Lemma 5.

Conventions as in :mod:`proofs_check.steps_lemma2_3`: norms known only through assumption bounds
are premise variables; pure norm inequalities in R^d are ArrayForm steps.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .arrays import array_form, op_norm, sq
from .domains import above, between, count, nonnegative, positive, real
from .engine import array_claim, claim, untranscribable
from .steps_lemma2_3 import A1, A3, YOUNG, bound_31, constants

A2 = "Assumption 2: unbiased stochastic gradients/Hessians, variance <= sigma^2"
LOC = "App. C.2, proof of Lemma 4"


def sigma_tilde_sq(c, sigma):
    """sigma-tilde^2 defined in (34)."""
    b, gh, sb, l0, l1 = (c[n].symbol for n in ("beta_low", "gamma_h", "sigma_b", "l0", "l1"))
    return 4 * l1**2 * sigma**2 + 16 * (gh**2 + l1**2) * b**2 * sigma**2 + 16 * b**2 * sb**2 * (sigma**2 + l0**2)


def bound_35_tail(c):
    """Last term of (35)."""
    b, gg, gh, sb, l0, l1 = (c[n].symbol for n in ("beta_low", "gamma_g", "gamma_h", "sigma_b", "l0", "l1"))
    return 4 * b**2 * (l1**2 * (gg**2 + sb**2) + l0**2 * gh**2 + 4 * (gh**2 + l1**2) * l1**2 * b**2 * (gg**2 + sb**2))


def _arrays():
    tasks = 3

    def mean_parts(lat, d):
        return {f"x{m}": lat.vector(d) for m in range(tasks)}

    def mean_lhs(a):
        return sq(sum(a[f"x{m}"] for m in range(tasks)) / tasks)

    def mean_rhs(a):
        return 2 / tasks * sum(sq(a[f"x{m}"]) for m in range(tasks))

    def split(lat, d):
        return {"H_psi": lat.symmetric(d), "H_hat": lat.symmetric(d), "g_xi": lat.vector(d),
                "g": lat.vector(d), "beta": np.array(lat.scale())}

    def split_lhs(a):
        eye = np.eye(a["g"].shape[0])
        b = float(a["beta"])
        return sq((eye - b * a["H_psi"]) @ a["g_xi"] - (eye - b * a["H_hat"]) @ a["g"])

    def split_rhs(a):
        b = float(a["beta"])
        return 2 * sq(a["g_xi"] - a["g"]) + 2 * b**2 * sq(a["H_psi"] @ a["g_xi"] - a["H_hat"] @ a["g"])

    def product_lhs(a):
        return sq(a["H_psi"] @ a["g_xi"] - a["H_hat"] @ a["g"])

    def product_rhs(a):
        return (2 * sq(a["g_xi"]) * op_norm(a["H_psi"] - a["H_hat"]) ** 2
                + 2 * op_norm(a["H_hat"]) ** 2 * sq(a["g_xi"] - a["g"]))

    return [
        array_claim("proof.lemma4.step1", f"{LOC}, (34) first inequality", "<=",
                    array_form("M = 3 vectors x_m", mean_parts, mean_lhs, mean_rhs),
                    ["Jensen/Young: ||mean x_m||^2 <= (2/M) sum ||x_m||^2"],
                    note="x_m = task-m term minus its conditional mean; pointwise version"),
        array_claim("proof.lemma4.step2", f"{LOC}, (34) second inequality", "<=",
                    array_form("symmetric H_psi, H_hat; vectors g_xi, g; beta > 0", split, split_lhs, split_rhs),
                    [YOUNG]),
        array_claim("proof.lemma4.step4", f"{LOC}, (34) third inequality, Hessian-gradient product", "<=",
                    array_form("symmetric H_psi, H_hat; vectors g_xi, g", split, product_lhs, product_rhs),
                    [YOUNG, "||A x|| <= ||A|| ||x||"],
                    note="H_psi g_xi - H_hat g = (H_psi - H_hat) g_xi + H_hat (g_xi - g)"),
    ]


def _lemma4_steps():
    c = constants()
    allc = list(c.values())
    b, gg, gh, sb, l0, l1 = (c[n].symbol for n in ("beta_low", "gamma_g", "gamma_h", "sigma_b", "l0", "l1"))
    sig_var = nonnegative("sigma")
    sig = sig_var.symbol
    v_var = between("V", 0, sig**2)
    s_var = between("S", 0, sb**2)
    r_var = between("R", 0, 2 * (gh**2 + l1**2))
    w_var = nonnegative("W")
    gn = between("gnorm", 0, l0)
    w2 = between("W", 0, 2 * (l0**2 + sig**2))
    st2 = sigma_tilde_sq(c, sig)

    out = [
        claim("proof.lemma4.step3", f"{LOC}, (34): first term", 4 * v_var.symbol, "<=", 4 * l1**2 * sig**2,
              allc + [sig_var, v_var], [A2 + ": E||grad L(theta_hat;D',xi') - grad L(theta_hat;D')||^2 <= sigma^2"],
              note="(4/M) sum_m of a variance bounded by sigma^2 (Assumption 2) is <= 4 sigma^2; the proof "
                   "writes 4 l1^2 sigma^2, which needs l1 >= 1"),
        claim("proof.lemma4.step5", f"{LOC}, (34): fourth inequality",
              8 * b**2 * w_var.symbol * s_var.symbol + 8 * b**2 * r_var.symbol * v_var.symbol, "<=",
              8 * b**2 * sb**2 * w_var.symbol + 16 * (gh**2 + l1**2) * b**2 * sig**2,
              allc + [sig_var, w_var, s_var, r_var, v_var],
              [A3 + " (S = E||H_psi - H_hat||^2 <= sigma_b^2)", "R = ||H_hat||^2 <= 2(gamma_h^2 + l1^2)",
               A2 + " (V <= sigma^2)", "psi independent of xi'"],
              note="W = E||grad L(theta_hat;D',xi')||^2"),
        claim("proof.lemma4.step6", f"{LOC}, display after (34)", 2 * gn.symbol**2 + 2 * v_var.symbol, "<=",
              2 * (l0**2 + sig**2), allc + [sig_var, gn, v_var], [YOUNG, A1 + " (||grad L(.;D')|| <= l0)", A2]),
        claim("proof.lemma4.step7", f"{LOC}, (34): last inequality",
              4 * l1**2 * sig**2 + 8 * b**2 * sb**2 * w2.symbol + 16 * (gh**2 + l1**2) * b**2 * sig**2, "<=",
              st2, allc + [sig_var, w2], ["display after (34)"], note="W <= 2(l0^2 + sigma^2)"),
    ]

    probs = [between("p1", 0, 1), between("p2", 0, 1)]
    p1, p2 = (v.symbol for v in probs)
    weights = (p1, p2, 1 - p1 - p2)
    pts = [[real(f"a{i}{j}") for j in (1, 2)] for i in (1, 2, 3)]
    vecs = [sp.Matrix([v.symbol for v in row]) for row in pts]
    mean = sum((w * v for w, v in zip(weights, vecs)), sp.zeros(2, 1))
    e_sq = sum(w * v.dot(v) for w, v in zip(weights, vecs))
    var = sum(w * (v - mean).dot(v - mean) for w, v in zip(weights, vecs))
    out.append(claim("proof.lemma4.step8", f"{LOC}, identity (a)", e_sq, "==", mean.dot(mean) + var,
                     probs + [v for row in pts for v in row], ["three-point distribution in R^2, weights sum to 1"],
                     note="E||A||^2 = ||E A||^2 + E||A - E A||^2 (the paper writes (E[A|B])^2 for ||E[A|B]||^2)"))

    lf_var, hbar_var = positive("L_F"), nonnegative("hbar")
    st_var = nonnegative("sigma_tilde")
    var_h = between("Var", 0, st_var.symbol**2)
    beta_up = positive("beta_up")
    lf, bu = lf_var.symbol, beta_up.symbol
    out.append(claim("proof.lemma4.step9", f"{LOC}, step (a)",
                     lf * bu**2 / 2 * (hbar_var.symbol**2 + var_h.symbol), "<=",
                     lf * bu**2 / 2 * hbar_var.symbol**2 + lf * bu**2 * st_var.symbol**2 / 2,
                     [lf_var, beta_up, hbar_var, st_var, var_h], ["identity (a)", "(34): E||h - hbar||^2 <= sigma_tilde^2"]))

    av = [real(f"a{i}") for i in (1, 2, 3)]
    bv = [real(f"b{i}") for i in (1, 2, 3)]
    va, vb = sp.Matrix([v.symbol for v in av]), sp.Matrix([v.symbol for v in bv])
    out.append(claim("proof.lemma4.step10", f"{LOC}, identity (b)", 2 * va.dot(vb), "==",
                     va.dot(va) + vb.dot(vb) - (va - vb).dot(va - vb), av + bv, [], note="vectors in R^3"))

    f_var = nonnegative("F_t")
    gf = sp.Matrix([real("gF1").symbol, real("gF2").symbol])
    hb = sp.Matrix([real("hb1").symbol, real("hb2").symbol])
    grad_vars = [real("gF1"), real("gF2"), real("hb1"), real("hb2")]
    st = st_var.symbol
    before = f_var.symbol - bu * gf.dot(hb) + lf * bu**2 / 2 * hb.dot(hb) + lf * bu**2 * st**2 / 2
    after = (f_var.symbol - bu / 2 * gf.dot(gf) - (bu / 2 - lf * bu**2 / 2) * hb.dot(hb)
             + bu / 2 * (gf - hb).dot(gf - hb) + lf * bu**2 * st**2 / 2)
    out.append(claim("proof.lemma4.step11", f"{LOC}, step (b)", before, "==", after,
                     [f_var, lf_var, beta_up, st_var] + grad_vars, ["identity (b)"], note="vectors in R^2"))

    bu_small = between("beta_up", 0, 1 / lf, lo_open=True)
    out.append(claim("proof.lemma4.step12", f"{LOC}, choice beta_up <= 1/L_F", bu_small.symbol / 2
                     - lf * bu_small.symbol**2 / 2, ">=", 0, [lf_var, bu_small],
                     note="drops the ||hbar||^2 term before telescoping"))

    t_var = count("T")
    f1, fend = nonnegative("F1"), nonnegative("F_end")
    tt = t_var.symbol
    tail = bound_31(c)
    s_sum = between("S_sum", 0, 2 / bu_small.symbol * (f1.symbol - fend.symbol)
                    + tt * tail + tt * lf * bu_small.symbol * st**2)
    out.append(claim("proof.lemma4.step13", "App. C.2, eq. (35) (telescoping)", s_sum.symbol / tt, "<=",
                     2 * f1.symbol / (bu_small.symbol * tt) + lf * bu_small.symbol * st**2 + bound_35_tail(c),
                     allc + [lf_var, bu_small, st_var, t_var, f1, fend, s_sum],
                     ["per-iteration descent inequality summed over t = 1..T", "F >= 0 (loss maps to R_+, Sec. 2.1)",
                      "Lemma 3, eq. (31)"],
                     note="S_sum = sum_t E||grad F(theta^t)||^2; F_end = E F(theta^{T+1}) >= 0"))

    bu0, bl0 = positive("b_up"), positive("b_low")
    root_t = above("sqrtT", 1, lo_open=False, search=(1.0, 1e3))
    rt = root_t.symbol
    sub = {c["beta_low"].symbol: bl0.symbol / rt}
    rate_rhs = (2 * f1.symbol / (bu0.symbol * rt) + lf * bu0.symbol / rt * sigma_tilde_sq(c, sig)
                + bound_35_tail(c)).subs(sub)
    constant = (2 * f1.symbol / bu0.symbol + lf * bu0.symbol * sigma_tilde_sq(c, sig).subs(c["beta_low"].symbol, bl0.symbol)
                + bound_35_tail(c).subs(c["beta_low"].symbol, bl0.symbol))
    others = [v for k, v in c.items() if k != "beta_low"]
    out.append(claim("proof.lemma4.step14", "App. C.2, after (35): O(1/sqrt T) rate",
                     rate_rhs, "<=", constant / rt, others + [sig_var, lf_var, bu0, bl0, f1, root_t],
                     ["beta_up = b_up/sqrt(T), beta_low = b_low/sqrt(T), T >= 1", "gamma_g, gamma_h = O(1)"],
                     note="right side of (35) <= C/sqrt(T) with C free of T; checked for every real "
                          "sqrtT = sqrt(T) >= 1 (a superset of the integers T >= 1)"))
    return out + _arrays()


def _lemma5_arrays():
    def grad_family(lat, d):
        q = lat.orthogonal(d)
        return {"Q": q, "mix": np.array(lat.fraction()), "l1": np.array(lat.scale()), "theta": lat.vector(d),
                "eps": lat.scale() * lat.unit(d), "eps_m": lat.scale() * lat.unit(d), "beta": np.array(lat.scale())}

    def grad(a, x):
        q, w, l1 = a["Q"], float(a["mix"]), float(a["l1"])
        return l1 * (w * x + (1 - w) * q @ np.tanh(q.T @ x))

    def grad_lhs(a):
        th, e, em, b = a["theta"], a["eps"], a["eps_m"], float(a["beta"])
        return float(np.linalg.norm(grad(a, th + e + em) - e / b - grad(a, th)))

    def grad_rhs(a):
        alpha_up, alpha_low = np.linalg.norm(a["eps"]), np.linalg.norm(a["eps_m"])
        return float(a["l1"]) * (alpha_up + alpha_low) + alpha_up / float(a["beta"])

    def hess_family(lat, d):
        return {"Q": lat.orthogonal(d), "l2": np.array(lat.scale()), "theta": lat.vector(d),
                "eps": lat.scale() * lat.unit(d), "eps_m": lat.scale() * lat.unit(d)}

    def hess(a, x):
        q = a["Q"]
        return float(a["l2"]) * q @ np.diag(np.sin(q.T @ x)) @ q.T

    def hess_lhs(a):
        th = a["theta"]
        return op_norm(hess(a, th + a["eps"] + a["eps_m"]) - hess(a, th))

    def hess_rhs(a):
        return float(a["l2"]) * (np.linalg.norm(a["eps"]) + np.linalg.norm(a["eps_m"]))

    return [
        array_claim("proof.lemma5.step2", "App. C.3, proof of Lemma 5, first bound", "<=",
                    array_form("grad L(x) = l1 (w x + (1-w) Q tanh(Q^T x)), l1-Lipschitz; ||eps|| = alpha_up, "
                               "||eps_m|| = alpha_low", grad_family, grad_lhs, grad_rhs),
                    [A1 + " (grad L(.;D_m): l1)", "||eps|| = alpha_up (eq. 13), ||eps_m|| = alpha_low (eq. 11)"]),
        array_claim("proof.lemma5.step3", "App. C.3, proof of Lemma 5, second bound", "<=",
                    array_form("Hess L(x) = l2 Q diag(sin(Q^T x)) Q^T (L = -l2 sum sin(Q^T x)), l2-Lipschitz",
                               hess_family, hess_lhs, hess_rhs),
                    [A1 + " (Hess L(.;D_m): l2)"]),
    ]


def _lemma5_steps():
    b_var = positive("beta_low")
    b = b_var.symbol
    coords = [real(n) for n in ("th1", "th2", "e1", "e2", "G1", "G2")]
    th, e, g = (sp.Matrix([coords[i].symbol, coords[i + 1].symbol]) for i in (0, 2, 4))
    t_var = count("T")
    tt = t_var.symbol
    a_up, a_low, b_low0, l1, l2 = (positive(n) for n in ("a_up", "a_low", "b_low", "l1", "l2"))
    gamma_g = l1.symbol * (a_up.symbol / sp.sqrt(tt) + a_low.symbol) + (a_up.symbol / sp.sqrt(tt)) / (b_low0.symbol / sp.sqrt(tt))
    gamma_h = l2.symbol * (a_up.symbol / sp.sqrt(tt) + a_low.symbol)
    return [
        claim("proof.lemma5.step1", "App. C.3, proof of Lemma 5, rewriting theta_hat", th + e - b * g, "==",
              th - b * (g - e / b), [b_var] + coords, note="vectors in R^2; G = stochastic gradient at the "
              "perturbed point"),
        claim("proof.lemma5.step4", "App. C.3, proof of Lemma 5, 'satisfies the condition of Lemma 4' (gamma_g)",
              gamma_g, "<=", l1.symbol * (a_up.symbol + a_low.symbol) + a_up.symbol / b_low0.symbol,
              [t_var, a_up, a_low, b_low0, l1],
              ["alpha_up = a_up/sqrt(T), alpha_low = a_low, beta_low = b_low/sqrt(T)"],
              note="gamma_g(T) stays O(1)"),
        claim("proof.lemma5.step5", "App. C.3, proof of Lemma 5, 'satisfies the condition of Lemma 4' (gamma_h)",
              gamma_h, "<=", l2.symbol * (a_up.symbol + a_low.symbol), [t_var, a_up, a_low, l2],
              ["alpha_up = a_up/sqrt(T), alpha_low = a_low"]),
        untranscribable("proof.lemma5.step6", "App. C.3, proof of Lemma 5, applying Lemma 4",
                        "Lemma 4 also needs Assumption 3 (variance sigma_b^2 of the biased estimators about their "
                        "means) and independence of psi, xi' from the perturbations; for Sharp-MAML the "
                        "perturbations (11), (13) are built from other stochastic gradients and the proof does "
                        "not state or bound these, so there is no relation to check"),
    ] + _lemma5_arrays()


def steps():
    return tuple(_lemma4_steps() + _lemma5_steps())
