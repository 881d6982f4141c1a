"""Appendix D.1 (choice of alpha), D.2 (the assumption (36)) and Theorem 2 vs Theorem 3.

D.1 notation: c = ||theta||^2 (1 + sqrt(ln n / k))^2 > 0, B = 2 ln(1/delta) + 5 ln n + C0 with
C0 >= 0 the O(1) term, R(alpha) = sqrt((k ln(1 + c/alpha^2) + B) / (4n)), so that
g(alpha) = M(alpha) + R(alpha) + gamma_A with M(alpha) in [0, 1] the max of the empirical loss
over the ball.  The proof picks 0 < alpha_0 < sqrt(c / (e^{4n/k} - 1)) and any
alpha_1 > sqrt(c / ((1 + c/alpha_0^2) e^{-4n/k} - 1)).
"""

from __future__ import annotations

import sympy as sp

from .domains import above, between, closed_unit, count, nonnegative, open_unit, positive
from .engine import claim, untranscribable
from .special import Chi2Cdf

LOC_D1 = "App. D.1"
LOC_D2 = "App. D.2"


def _d1_box():
    n, k, delta = count("n"), count("k"), open_unit("delta")
    c0, c = nonnegative("C0", search=(1e-8, 1e3)), positive("c")
    nn, kk, cc = n.symbol, k.symbol, c.symbol
    x = 4 * nn / kk
    alpha0 = between("alpha_0", 0, sp.sqrt(cc / (sp.exp(x) - 1)), lo_open=True, hi_open=True)
    a0 = alpha0.symbol
    threshold = sp.sqrt(cc / ((1 + cc / a0**2) * sp.exp(-x) - 1))
    alpha1 = above("alpha_1", threshold)
    big_b = 2 * sp.log(1 / delta.symbol) + 5 * sp.log(nn) + c0.symbol
    root = lambda a: sp.sqrt((kk * sp.log(1 + cc / a**2) + big_b) / (4 * nn))  # noqa: E731
    return n, k, delta, c0, c, alpha0, alpha1, x, threshold, big_b, root


def _d1_steps():
    n, k, delta, c0, c, alpha0, alpha1, x, threshold, big_b, root = _d1_box()
    nn, kk, cc, a0, a1 = n.symbol, k.symbol, c.symbol, alpha0.symbol, alpha1.symbol
    m0, m1, gamma = closed_unit("M0"), closed_unit("M1"), nonnegative("gamma_A")
    base = [n, k, delta, c0, c, alpha0]
    big_x = kk * sp.log(1 + cc / a0**2) + big_b
    denominator = (1 + cc / a0**2) * sp.exp(-x) - 1
    shifted = sp.sqrt((kk * sp.log((1 + cc / a0**2) * sp.exp(-x)) + big_b) / (4 * nn))
    threshold_star = sp.sqrt(cc / (sp.exp((4 * nn * (1 + sp.sqrt(big_b / (4 * nn))) ** 2 - big_b) / kk) - 1))
    alpha0_star = between("alpha_0", 0, threshold_star, lo_open=True, hi_open=True)
    return [
        claim("proof.d1.step1", f"{LOC_D1}, lower bound on g(alpha_0)", m0.symbol + root(a0) + gamma.symbol, ">=",
              root(a0) + gamma.symbol, base + [m0, gamma], ["0 <= L <= 1"],
              note="bookkeeping: restates M(alpha_0) >= 0 (0 <= L); no content beyond the assumption"),
        claim("proof.d1.step2", f"{LOC_D1}, choice of alpha_1: the denominator is positive", denominator, ">", 0,
              base, ["alpha_0 < sqrt(c/(e^(4n/k) - 1))"], note="alpha_1's lower limit is well defined"),
        claim("proof.d1.step3", f"{LOC_D1}, choice of alpha_1: first inequality", threshold, ">",
              sp.sqrt(cc / ((1 + cc / a0**2) - 1)), base),
        claim("proof.d1.step4", f"{LOC_D1}, choice of alpha_1: equality", sp.sqrt(cc / ((1 + cc / a0**2) - 1)), "==",
              a0, base),
        claim("proof.d1.step5", f"{LOC_D1}, chain, first inequality (M(alpha_1) <= 1)",
              m1.symbol + root(a1) + gamma.symbol, "<=", 1 + root(a1) + gamma.symbol, base + [alpha1, m1, gamma],
              ["0 <= L <= 1"], note="bookkeeping: restates M(alpha_1) <= 1 (L <= 1); no content beyond the "
                                    "assumption"),
        claim("proof.d1.step6", f"{LOC_D1}, chain, second (strict) inequality", 1 + root(a1) + gamma.symbol, "<",
              1 + shifted + gamma.symbol, base + [alpha1, gamma], ["alpha_1 above its lower limit"]),
        claim("proof.d1.step7", f"{LOC_D1}, chain, equality", kk * sp.log((1 + cc / a0**2) * sp.exp(-x)), "==",
              -4 * nn + kk * sp.log(1 + cc / a0**2), base),
        claim("proof.d1.step8", f"{LOC_D1}, chain, third inequality",
              1 + sp.sqrt((-4 * nn + big_x) / (4 * nn)) + gamma.symbol, "<=",
              sp.sqrt(big_x / (4 * nn)) + gamma.symbol, base + [gamma],
              note="with y = X/(4n) > 1 this reads 1 + sqrt(y - 1) <= sqrt(y), false for every y > 1"),
        claim("proof.d1.step9", f"{LOC_D1}, chain, last inequality", root(a0) + gamma.symbol, "<=",
              m0.symbol + root(a0) + gamma.symbol, base + [m0, gamma], ["0 <= L <= 1"],
              note="bookkeeping: restates M(alpha_0) >= 0 (0 <= L), as step1"),
        claim("proof.d1.step10", f"{LOC_D1}, chain end to end (bound on g(alpha_1) < bound on g(alpha_0))",
              1 + root(a1), "<", root(a0), base + [alpha1],
              note="the inequality the chain needs for every admissible alpha_1"),
        claim("proof.d1.repair1", f"{LOC_D1}, existence of alpha_1 for small alpha_0 (not in the paper)",
              1 + sp.sqrt(big_b / (4 * nn)), "<", root(alpha0_star.symbol), [n, k, delta, c0, c, alpha0_star],
              note="candidate repair: for alpha_0 below this threshold, R(alpha_0) > 1 + lim R(alpha_1) as "
                   "alpha_1 -> oo, so a large enough finite alpha_1 gives g(alpha_1) < g(alpha_0)"),
    ]


def _d2_steps():
    k = count("k")
    a_var, u_var = positive("a"), positive("u")
    v_var = above("v", u_var.symbol, search=(1.0, 1e8))
    r_var = open_unit("r")
    alpha = positive("alpha")
    a, u, v, r, al = a_var.symbol, u_var.symbol, v_var.symbol, r_var.symbol, alpha.symbol
    b = r * a * v**2 / u**2
    xs = sp.Symbol("xi", real=True)
    loss = a * (1 - sp.exp(-xs**2 / (2 * u**2))) - b * (1 - sp.exp(-xs**2 / (2 * v**2)))
    smoothed = a * (1 - u / sp.sqrt(u**2 + al**2)) - b * (1 - v / sp.sqrt(v**2 + al**2))
    density = sp.exp(-xs**2 / (2 * al**2)) / sp.sqrt(2 * sp.pi * al**2)
    family = [a_var, u_var, v_var, r_var]
    return [
        claim("proof.d2.step1", f"{LOC_D2}, 'with high probability ||eps||^2 <= alpha^2' for eps ~ N(0, alpha^2 I_k)",
              Chi2Cdf(1, k.symbol), ">=", sp.Rational(1, 2), [k], try_symbolic=False,
              note="weakest reading of 'high probability' (at least 1/2); P = P(chi2_k <= 1)"),
        claim("proof.d2.step2", f"{LOC_D2}, premise: theta_hat = 0 is a strict local minimiser of the test family",
              sp.diff(loss, xs, 2).subs(xs, 0), ">", 0, family,
              ["L(x) = a(1 - e^{-x^2/2u^2}) - b(1 - e^{-x^2/2v^2}), b = r a v^2/u^2, 0 < r < 1, v > u"]),
        claim("proof.d2.step3", f"{LOC_D2}, Gaussian smoothing of the test family (closed form)",
              sp.Integral(loss * density, (xs, -sp.oo, sp.oo)), "==", smoothed, family + [alpha]),
        claim("proof.d2.step4", f"{LOC_D2}, local minimiser => L(theta_hat) <= E_eps L(theta_hat + eps)",
              loss.subs(xs, 0), "<=", smoothed, family + [alpha],
              ["theta_hat a local minimiser (step2)"],
              note="1-D family; the claim is affine in L, so shifting/scaling into [0, 1] changes nothing"),
        untranscribable("proof.d2.step5", f"{LOC_D2}, passage from D to P",
                        "informal: 'D representative of P and preserves the local property ... |D| -> oo' has "
                        "no quantified statement to check"),
    ]


def _thm3_bound(size, k, alpha, t, delta, extra):
    """Square-root term of Thm 3 (App. D statement) for sample size ``size``, O(1) = ``extra``."""
    q = sp.sqrt(sp.log(size) / k)
    return sp.sqrt((k * sp.log(1 + t / alpha**2 * (1 + q) ** 2) + 2 * sp.log(1 / delta) + 5 * sp.log(size) + extra)
                   / (4 * size))


def _eq18_bound(n, m, k, alpha, t, delta):
    """Square-root term of eq. (18) as printed (|D| = nM, no O(1) term)."""
    return sp.sqrt((k * sp.log(1 + t / alpha**2 * (1 + sp.sqrt(sp.log(n * m) / k)) ** 2) + 2 * sp.log(1 / delta)
                    + 5 * sp.log(n * m)) / (4 * n * m))


def _thm2_steps():
    n, k, m_tasks = count("n"), count("k"), count("M_tasks", search=(1.0, 1e4))
    alpha, t, delta = positive("alpha"), nonnegative("t"), open_unit("delta")
    c0 = positive("C0", search=(1e-8, 1e3))
    args = (k.symbol, alpha.symbol, t.symbol, delta.symbol)
    total = n.symbol * m_tasks.symbol
    eq18 = _eq18_bound(n.symbol, m_tasks.symbol, *args)
    box = [n, m_tasks, k, alpha, t, delta]
    return [
        claim("proof.thm2.step1", "Sec. 4.2, eq. (18) vs Thm 3 with n -> nM and O(1) = 0",
              _thm3_bound(total, *args, 0), "==", eq18, box,
              note="Lemma 6 counts all meta-training data; with M tasks of n points Thm 3's n is nM. The two "
                   "square roots then agree term by term except for Thm 3's O(1)"),
        claim("proof.thm2.step2", "Sec. 4.2, eq. (18) vs Thm 3 with n -> nM, O(1) = C0 > 0",
              _thm3_bound(total, *args, c0.symbol), "<=", eq18, box + [c0],
              note="what App. D proves (with C0 = 14) must be <= what (18) states for (18) to follow"),
        untranscribable("proof.thm2.step3", "Sec. 4.2, Thm 2 (F(theta; P)) vs Thm 3 (L(theta_m(theta); P))",
                        "notation only: Thm 2 is stated for F = task average, Thm 3 for L(theta_m(.); P), which "
                        "eq. (3) already defines as an average over tasks; no relation to check"),
    ]


def steps():
    return tuple(_d1_steps() + _d2_steps() + _thm2_steps())
