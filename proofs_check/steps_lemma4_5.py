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
from .steps_lemma2_3 import A1, A3, BOOKKEEPING, YOUNG, at_least_norm, bound_31, constants, expect, three_point, vector

A2 = "Assumption 2: unbiased stochastic gradients/Hessians, variance <= sigma^2"
LOC = "App. C.2, proof of Lemma 4"
SMOOTH = "F is L_F-smooth (Lemma 4 of Chen et al. 2021a): F(y) <= F(x) + <grad F(x), y - x> + L_F/2 ||y - x||^2"
TELESCOPE_T = 3  # horizon of the telescoping check of (35)


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


def _descent_steps(lf_var, bu_var):
    """The smoothness line of Lemma 4's proof, its expectation, and step (a), theta in R^2.

    h^t is a three-point random vector (weights p1, p2, 1 - p1 - p2) with mean hbar; the update is
    theta^{t+1} = theta^t - beta_up h^t.  For the smoothness line F is a concrete L_F-smooth family
    F(x) = L_F (w c ||x||^2/2 + (1 - w) cos(<u, x>)), u = (cos phi, sin phi), |c| <= 1, 0 <= w <= 1:
    its Hessian L_F (w c I - (1 - w) cos(<u, x>) u u^T) has spectral norm <= L_F, and w = c = 1
    makes the quadratic bound an equality.
    """
    lf, bu = lf_var.symbol, bu_var.symbol
    w_vars, h_vars, hs, w = three_point("h")
    hbar = expect(w, hs)
    mix, curv = between("w", 0, 1), between("c", -1, 1)
    phi = between("phi", 0, 2 * sp.pi)
    th_vars, th = vector("theta")
    u = sp.Matrix([sp.cos(phi.symbol), sp.sin(phi.symbol)])

    def big_f(x):
        return lf * (mix.symbol * curv.symbol * x.dot(x) / 2 + (1 - mix.symbol) * sp.cos(u.dot(x)))

    def grad_f(x):
        return lf * (mix.symbol * curv.symbol * x - (1 - mix.symbol) * sp.sin(u.dot(x)) * u)

    steps_ = [-bu * v for v in hs]
    smooth_rhs = (big_f(th) + expect(w, [grad_f(th).dot(d) for d in steps_])
                  + lf / 2 * expect(w, [d.dot(d) for d in steps_]))
    family = [lf_var, bu_var, mix, curv, phi] + th_vars + w_vars + h_vars

    f_var = nonnegative("F_t")
    gf_vars, gf = vector("gF")
    generic = [f_var, lf_var, bu_var] + gf_vars + w_vars + h_vars
    after_expectation = f_var.symbol - bu * gf.dot(hbar) + lf * bu**2 / 2 * expect(w, [v.dot(v) for v in hs])
    st = at_least_norm("sigma_tilde", expect(w, [(v - hbar).dot(v - hbar) for v in hs]))
    return [
        claim("proof.lemma4.step7a", f"{LOC}, smoothness line (first inequality after (34))",
              expect(w, [big_f(th + d) for d in steps_]), "<=", smooth_rhs, family, [SMOOTH],
              note="E[F(theta^{t+1}) | F_t] <= F(theta^t) + E<grad F(theta^t), Delta> + L_F/2 E||Delta||^2 with "
                   "Delta = -beta_up h^t, h^t three-point in R^2, F a concrete L_F-smooth family (see "
                   "_descent_steps)"),
        claim("proof.lemma4.step7b", f"{LOC}, smoothness line (second line: E[h^t | F_t] = hbar^t)",
              f_var.symbol + expect(w, [gf.dot(d) for d in steps_]) + lf / 2 * expect(w, [d.dot(d) for d in steps_]),
              "==", after_expectation, generic, ["E[h^t | F_t] = hbar^t (definition of hbar^t)"],
              note="F_t = F(theta^t), gF = grad F(theta^t) in R^2; the paper writes <= for what is an equality"),
        claim("proof.lemma4.step9", f"{LOC}, step (a)", after_expectation, "<=",
              f_var.symbol - bu * gf.dot(hbar) + lf * bu**2 / 2 * hbar.dot(hbar) + lf * bu**2 * st.symbol**2 / 2,
              generic + [st], ["identity (a)", "(34): E||h - hbar||^2 <= sigma_tilde^2"],
              note="h^t three-point in R^2; sigma_tilde >= sqrt(E||h^t - hbar^t||^2) is (34)"),
    ]


def _telescoping_step(c, lf_var, bu_var):
    """(35) from the per-iteration inequality after (b), for T = TELESCOPE_T iterations.

    For t = 1..T: D_t = E||grad F(theta^t) - hbar^t||^2 in [0, (31)] (Lemma 3), H_t = E||hbar^t||^2 >= 0,
    F_{t+1} = E F(theta^{t+1}) >= 0, and G_t = E||grad F(theta^t)||^2 ranges over what the
    per-iteration inequality (step (b) of Lemma 4's proof, in expectation)
        F_{t+1} <= F_t - beta_up/2 G_t - (beta_up/2 - L_F beta_up^2/2) H_t + beta_up/2 D_t
                   + L_F beta_up^2 sigma_tilde^2/2
    allows, solved for G_t.  The conclusion is (35) with T = 3.
    """
    lf, bu = lf_var.symbol, bu_var.symbol
    st_var = nonnegative("sigma_tilde")
    st = st_var.symbol
    lemma3 = bound_31(c)
    f_vars = [nonnegative("F1")]
    variables, grads = [], []
    for t in range(1, TELESCOPE_T + 1):
        f_now = f_vars[-1].symbol
        f_next = between(f"F{t + 1}", 0, f_now + bu / 2 * lemma3 + lf * bu**2 * st**2 / 2)
        d_t = between(f"D{t}", 0, lemma3)
        h_t = nonnegative(f"H{t}")
        budget = (f_now - f_next.symbol - (bu / 2 - lf * bu**2 / 2) * h_t.symbol + bu / 2 * d_t.symbol
                  + lf * bu**2 * st**2 / 2)
        g_t = between(f"G{t}", 0, budget / (bu / 2))
        f_vars.append(f_next)
        variables += [f_next, d_t, h_t, g_t]
        grads.append(g_t.symbol)
    tt = TELESCOPE_T
    return claim("proof.lemma4.step13", f"App. C.2, eq. (35) (telescoping, T = {tt})",
                 sum(grads) / tt, "<=",
                 2 * f_vars[0].symbol / (bu * tt) + lf * bu * st**2 + bound_35_tail(c),
                 list(c.values()) + [lf_var, bu_var, st_var, f_vars[0]] + variables,
                 ["per-iteration inequality after step (b), in expectation", "beta_up <= 1/L_F",
                  "F >= 0 (loss maps to R_+, Sec. 2.1)", "Lemma 3, eq. (31)"],
                 note=f"T = {tt}: G_t = E||grad F(theta^t)||^2 is bounded only through the per-iteration "
                      "inequality linking F_t and F_{t+1}; the check sums it, telescopes F_1 .. F_{T+1}, drops "
                      "the hbar term (beta_up <= 1/L_F) and F_{T+1} >= 0, and compares the average with (35)")


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
              note="W = E||grad L(theta_hat;D',xi')||^2; "
                   + BOOKKEEPING.format("step4 (the product split); E[W S] = E[W] E[S] needs psi independent "
                                        "of xi', which is not checkable here")),
        claim("proof.lemma4.step6", f"{LOC}, display after (34)", 2 * gn.symbol**2 + 2 * v_var.symbol, "<=",
              2 * (l0**2 + sig**2), allc + [sig_var, gn, v_var], [YOUNG, A1 + " (||grad L(.;D')|| <= l0)", A2],
              note="gnorm = ||grad L(theta_hat;D')||, V = its stochastic variance; "
                   + BOOKKEEPING.format("Young's inequality (proof.lemma3.step2)")),
        claim("proof.lemma4.step7", f"{LOC}, (34): last inequality",
              4 * l1**2 * sig**2 + 8 * b**2 * sb**2 * w2.symbol + 16 * (gh**2 + l1**2) * b**2 * sig**2, "<=",
              st2, allc + [sig_var, w2], ["display after (34)"],
              note="W <= 2(l0^2 + sigma^2); " + BOOKKEEPING.format("steps 3-6")),
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

    lf_var = positive("L_F")
    beta_up = positive("beta_up")
    lf, bu = lf_var.symbol, beta_up.symbol
    smoothness, expectation, step_a = _descent_steps(lf_var, beta_up)
    at = [s.id for s in out].index("proof.lemma4.step8")  # the smoothness line precedes identity (a)
    out[at:at] = [smoothness, expectation]
    out.append(step_a)
    st_var = nonnegative("sigma_tilde")

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

    out.append(_telescoping_step(c, lf_var, bu_small))
    f1 = nonnegative("F1")

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
