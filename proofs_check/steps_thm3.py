"""Appendix D, proof of Theorem 3 (PAC-Bayes bound), Abbas et al. 2022.

Notation: n >= 1 samples, k >= 1 parameters, alpha > 0 posterior standard deviation,
t = ||theta||^2 >= 0, 0 < delta < 1, x = 4n/k, c = alpha^2 (1 + e^x) (the grid constant),
s = alpha^2 + t/k, j = floor(1 - k ln(s/c)) (the grid index), sigma_P^2 = c e^{(1-j)/k}.
"First case" means t <= alpha^2 (e^x - 1).  Later the proof renames the posterior standard
deviation sigma and sets alpha^2 = sigma^2 k (1 + sqrt(ln n / k))^2; both are transcribed as
printed.
"""

from __future__ import annotations

import sympy as sp

from .domains import above, between, closed_unit, count, nonnegative, open_unit, positive, real
from .engine import claim, untranscribable
from .special import Chi2Cdf, Chi2Sf

LOC = "App. D, proof of Thm 3"
LEMMA6 = "Lemma 6 (Farid & Majumdar 2021) with prior N(0, sigma_P^2 I), posterior N(theta, alpha^2 I)"
LN_TERM = "ln(1/delta_j) chain"


def _base(first_case: bool = True):
    n, k, alpha = count("n"), count("k"), positive("alpha")
    x = 4 * n.symbol / k.symbol
    hi = alpha.symbol**2 * (sp.exp(x) - 1) if first_case else sp.oo
    t = between("t", 0, hi) if first_case else nonnegative("t")
    return n, k, alpha, t, x


def _grid(n, k, alpha, t, x):
    c = alpha.symbol**2 * (1 + sp.exp(x))
    s = alpha.symbol**2 + t.symbol / k.symbol
    j = sp.floor(1 - k.symbol * sp.log(s / c))
    return c, s, j


def _kl(k, alpha_sq, t, sigma_p_sq):
    return sp.Rational(1, 2) * ((k * alpha_sq + t) / sigma_p_sq - k + k * sp.log(sigma_p_sq / alpha_sq))


def _kl_steps():
    xs, mu = sp.Symbol("xi", real=True), real("mu")
    alpha, sp2 = positive("alpha"), positive("sP2")
    a, s2 = alpha.symbol, sp2.symbol
    q = sp.exp(-(xs - mu.symbol) ** 2 / (2 * a**2)) / sp.sqrt(2 * sp.pi * a**2)
    p = sp.exp(-xs**2 / (2 * s2)) / sp.sqrt(2 * sp.pi * s2)
    integral = sp.Integral(q * sp.log(q / p), (xs, -sp.oo, sp.oo))
    n, k, alpha_k, t, _ = _base(first_case=False)
    kk, ak = k.symbol, alpha_k.symbol
    general = sp.Rational(1, 2) * (kk * ak**2 / s2 + t.symbol / s2 - kk + sp.log(s2**kk / ak**(2 * kk)))
    delta = open_unit("delta")
    jj = sp.Symbol("j", integer=True, positive=True)
    return [
        untranscribable("proof.thm3.step0", "App. D, Lemma 6",
                        "quoted from Farid & Majumdar (2021) without proof; used as given"),
        claim("proof.thm3.step1", f"{LOC}, KL of two Gaussians (k = 1, by integration)", integral, "==",
              _kl(1, a**2, mu.symbol**2, s2), [mu, alpha, sp2], note="KL(N(mu, alpha^2) || N(0, sP2))"),
        claim("proof.thm3.step2", f"{LOC}, KL of two Gaussians in R^k",
              general, "==", _kl(kk, ak**2, t.symbol, s2), [k, alpha_k, t, sp2],
              ["Sigma_P = sP2 I_k, Sigma_Q = alpha^2 I_k, mu_Q = theta, t = ||theta||^2"],
              note="tr(S_P^-1 S_Q) = k alpha^2/sP2, quadratic term t/sP2, ln det ratio = ln(sP2^k/alpha^(2k))"),
        claim("proof.thm3.step3", f"{LOC}, union bound over the grid T",
              sp.Sum(6 * delta.symbol / (sp.pi**2 * jj**2), (jj, 1, sp.oo)), "==", delta.symbol, [delta],
              note="sum_j delta_j = delta"),
    ]


def _grid_steps():
    n, k, alpha, t, x = _base()
    c, s, j = _grid(n, k, alpha, t, x)
    kk, a = k.symbol, alpha.symbol
    box = [n, k, alpha, t]
    sigma_p_sq = c * sp.exp((1 - j) / kk)
    big_x = real("X")
    sp2 = between("sP2", s, sp.exp(1 / kk) * s)
    return [
        claim("proof.thm3.step4", f"{LOC}, first case: k alpha^2 + ||theta||^2 bound",
              kk * a**2 + t.symbol, "<=", kk * a**2 * (sp.exp(x) + 1), box, ["first case"]),
        claim("proof.thm3.step5", f"{LOC}, 1 - j = ceil(k ln(s/c)) from j = floor(1 - k ln(s/c))",
              1 - sp.floor(1 - big_x.symbol), "==", sp.ceiling(big_x.symbol), [big_x]),
        claim("proof.thm3.step6", f"{LOC}, ln((alpha^2 + ||theta||^2/k)/c) < 0 with c = alpha^2(1 + e^(4n/k))",
              s / c, "<", 1, box, ["first case"]),
        claim("proof.thm3.step7", f"{LOC}, j is a positive integer", j, ">=", 1, box, ["first case"]),
        claim("proof.thm3.step8", f"{LOC}, alpha^2 + ||theta||^2/k <= sigma_P^2", s, "<=", sigma_p_sq, box,
              ["first case", "sigma_P^2 = c exp((1 - j)/k)"]),
        claim("proof.thm3.step9", f"{LOC}, sigma_P^2 <= exp(1/k)(alpha^2 + ||theta||^2/k)",
              sigma_p_sq, "<=", sp.exp(1 / kk) * s, box, ["first case"]),
        claim("proof.thm3.step10", f"{LOC}, KL bound, first inequality",
              _kl(kk, a**2, t.symbol, sp2.symbol), "<=",
              sp.Rational(1, 2) * ((kk * a**2 + t.symbol) / s - kk + kk * sp.log(sp.exp(1 / kk) * s / a**2)),
              box + [sp2], ["alpha^2 + t/k <= sigma_P^2 <= e^(1/k)(alpha^2 + t/k) (steps 8, 9)"]),
        claim("proof.thm3.step11", f"{LOC}, KL bound, equality 1", (kk * a**2 + t.symbol) / s, "==", kk, box),
        claim("proof.thm3.step12", f"{LOC}, KL bound, equality 2",
              sp.Rational(1, 2) * kk * sp.log(sp.exp(1 / kk) * s / a**2), "==",
              sp.Rational(1, 2) * (1 + kk * sp.log(1 + t.symbol / (kk * a**2))), box),
    ]


def _ln_steps():
    n, k, alpha, t, x = _base()
    c, s, j = _grid(n, k, alpha, t, x)
    kk, nn, a = k.symbol, n.symbol, alpha.symbol
    box = [n, k, alpha, t]
    delta = open_unit("delta")
    d = delta.symbol
    jv = count("j")
    delta_j = 6 * d / (sp.pi**2 * jv.symbol**2)
    pi2 = sp.pi**2
    return [
        claim("proof.thm3.step13", f"{LOC}, {LN_TERM}, equality", sp.log(1 / delta_j), "==",
              sp.log(1 / d) + sp.log(pi2 * jv.symbol**2 / 6), [delta, jv], ["delta_j = 6 delta/(pi^2 j^2)"]),
        claim("proof.thm3.step14", f"{LOC}, {LN_TERM}, first inequality (j <= k ln(c/s))",
              sp.log(pi2 * j**2 / 6), "<=", sp.log(pi2 * kk**2 * sp.log(c / s) ** 2 / 6), box, ["first case"],
              note="j = floor(1 + k ln(c/s)) = 1 + floor(k ln(c/s)) > k ln(c/s) always"),
        claim("proof.thm3.step15", f"{LOC}, {LN_TERM}, second inequality", sp.log(c / s) ** 2, "<=",
              sp.log(c / a**2) ** 2, box, ["first case", "s >= alpha^2 and c > s"]),
        claim("proof.thm3.step16", f"{LOC}, {LN_TERM}, equality c/alpha^2", sp.log(c / a**2), "==",
              sp.log(1 + sp.exp(x)), box),
        claim("proof.thm3.step17", f"{LOC}, {LN_TERM}, ln^2(1 + exp(4n/k)) <= (4n/k)^2",
              sp.log(1 + sp.exp(x)) ** 2, "<=", x**2, [n, k], note="ln(1 + e^x) > x for every x"),
        claim("proof.thm3.step18", f"{LOC}, {LN_TERM}, last inequality", sp.log(pi2 * kk**2 * x**2 / 6), "<=",
              2 * sp.log(6 * nn), [n, k]),
        claim("proof.thm3.step19", f"{LOC}, {LN_TERM}, end to end with the actual j",
              sp.log(1 / d) + sp.log(pi2 * j**2 / 6), "<=", sp.log(1 / d) + 2 * sp.log(6 * nn),
              box + [delta], ["first case"], note="ln(1/delta_j) <= ln(1/delta) + 2 ln(6n)"),
        claim("proof.thm3.repair1", f"{LOC}, {LN_TERM}, Foret et al. (2021) form (not in the paper)",
              sp.log(1 / d) + sp.log(pi2 * j**2 / 6), "<=", sp.log(1 / d) + 2 * sp.log(6 * nn + 3 * kk),
              box + [delta], ["first case"],
              note="candidate repair: j <= 1 + k ln(1 + e^(4n/k)) <= 1 + k ln 2 + 4n"),
    ]


def _assembly_steps():
    n, k = count("n"), count("k")
    nn, kk = n.symbol, k.symbol
    delta, sigma = open_unit("delta"), positive("sigma")
    d = delta.symbol
    t = nonnegative("t")
    kl_term = sp.Rational(1, 2) * kk * sp.log(1 + t.symbol / (kk * sigma.symbol**2))
    t_lm = positive("t_lm", search=(1e-8, 700.0))  # exp(-700) is still a normal float64
    q = sp.sqrt(sp.log(nn) / kk)
    alpha = positive("alpha")
    a = alpha.symbol
    sigma_from_alpha = a**2 / (kk * (1 + q) ** 2)
    return [
        claim("proof.thm3.step20", f"{LOC}, Lemma 6 with the KL and ln(1/delta_j) bounds (constant folding)",
              kl_term + sp.Rational(1, 2) + sp.log(2 * sp.sqrt(nn) / d) + 2 * sp.log(6 * nn), "==",
              kl_term + sp.Rational(1, 2) + sp.log(72) + sp.log(1 / d) + sp.Rational(5, 2) * sp.log(nn),
              [n, k, delta, sigma, t], [LEMMA6]),
        claim("proof.thm3.step21", f"{LOC}, Laurent-Massart Lemma 1 (chi-square upper tail)",
              Chi2Sf(kk + 2 * sp.sqrt(kk * t_lm.symbol) + 2 * t_lm.symbol, kk), "<=", sp.exp(-t_lm.symbol),
              [k, t_lm], ["||eps||^2/sigma^2 ~ chi2_k"], try_symbolic=False),
        claim("proof.thm3.step22", f"{LOC}, t = ln sqrt(n) gives probability 1 - 1/sqrt(n)",
              sp.exp(-sp.log(sp.sqrt(nn))), "==", 1 / sp.sqrt(nn), [n]),
        claim("proof.thm3.step23", f"{LOC}, radius: 2 ln sqrt(n) + k + 2 sqrt(k ln sqrt(n)) <= k(1 + sqrt(ln n/k))^2",
              sigma.symbol**2 * (2 * sp.log(sp.sqrt(nn)) + kk + 2 * sp.sqrt(kk * sp.log(sp.sqrt(nn)))), "<=",
              sigma.symbol**2 * kk * (1 + q) ** 2, [n, k, sigma]),
        claim("proof.thm3.step24", f"{LOC}, alpha^2 = sigma^2 k (1 + sqrt(ln n/k))^2 in the KL term",
              kk * sp.log(1 + t.symbol / (kk * sigma_from_alpha)), "==",
              kk * sp.log(1 + t.symbol / a**2 * (1 + q) ** 2), [n, k, alpha, t]),
        claim("proof.thm3.step25", f"{LOC}, P(||eps|| <= alpha) >= 1 - 1/sqrt(n) for eps ~ N(0, alpha^2 I) as printed",
              Chi2Cdf(1, kk), ">=", 1 - 1 / sp.sqrt(nn), [n, k],
              ["the final chain takes E over eps ~ N(0, alpha^2 I) and bounds it by the max over ||eps|| <= alpha"],
              note="||eps||^2/alpha^2 ~ chi2_k; the radius argument needs eps ~ N(0, sigma^2 I) with "
                   "alpha^2 = sigma^2 k (1 + sqrt(ln n / k))^2, a different variance", try_symbolic=False),
        claim("proof.thm3.repair2", f"{LOC}, same with eps ~ N(0, sigma^2 I) (not in the paper)",
              Chi2Cdf(kk * (1 + q) ** 2, kk), ">=", 1 - 1 / sp.sqrt(nn), [n, k], try_symbolic=False,
              note="candidate repair: state the assumption of Thm 3 with N(0, sigma^2 I)"),
    ]


def _final_steps():
    n, k = count("n"), count("k")
    nn, kk = n.symbol, k.symbol
    delta, alpha, gamma = open_unit("delta"), positive("alpha"), nonnegative("gamma_A")
    d, a = delta.symbol, alpha.symbol
    m_var = closed_unit("M")
    p_low = between("p", 1 - 1 / sp.sqrt(nn), 1)
    q = sp.sqrt(sp.log(nn) / kk)
    x = 4 * nn / kk
    t1 = between("t", 0, a**2 * (sp.exp(x) - 1))
    t2 = above("t", a**2 * (sp.exp(x) - 1))
    log_term = lambda t: kk * sp.log(1 + t / a**2 * (1 + q) ** 2)  # noqa: E731
    a_sum = (sp.Rational(1, 2) * log_term(t1.symbol) + sp.Rational(1, 2) + sp.log(72) + sp.log(1 / d)
             + sp.Rational(5, 2) * sp.log(nn))
    m = m_var.symbol
    stated = lambda t, extra: sp.sqrt((extra + 14 + 2 * sp.log(1 / d) + 5 * sp.log(nn)) / (4 * nn))  # noqa: E731
    lp = closed_unit("L_P")
    a_var = nonnegative("A")
    return [
        claim("proof.thm3.step26", f"{LOC}, splitting E over eps into the ball and its complement",
              p_low.symbol * m + (1 - p_low.symbol) * 1, "<=", (1 - 1 / sp.sqrt(nn)) * m + 1 / sp.sqrt(nn),
              [n, m_var, p_low], ["0 <= L <= 1", "P(||eps|| <= alpha) = p >= 1 - 1/sqrt(n)"],
              note="M = max over the ball of the empirical loss"),
        claim("proof.thm3.step27", f"{LOC}, 1/2 + ln 72 folded into 14 (after doubling)",
              1 + 2 * sp.log(72), "<=", 14, []),
        claim("proof.thm3.step28", f"{LOC}, denominator 2n -> 4n", sp.sqrt(a_var.symbol / (2 * nn)), "==",
              sp.sqrt(2 * a_var.symbol / (4 * nn)), [n, a_var]),
        claim("proof.thm3.step29", f"{LOC}, final inequality of the first case ('1 - 1/sqrt(n) <= 1 and Jensen')",
              (1 - 1 / sp.sqrt(nn)) * m + 1 / sp.sqrt(nn) + sp.sqrt(a_sum / (2 * nn)), "<=",
              m + stated(t1.symbol, log_term(t1.symbol)), [n, k, alpha, t1, delta, m_var],
              ["first case", "0 <= M <= 1"],
              note="gamma_A cancels; the additive 1/sqrt(n) outside the root is not absorbed by 14"),
        claim("proof.thm3.step30", f"{LOC}, second case: RHS of (18) exceeds the 4n version",
              m + stated(t2.symbol, log_term(t2.symbol)) + gamma.symbol, ">",
              m + stated(t2.symbol, 4 * nn) + gamma.symbol, [n, k, alpha, t2, delta, m_var, gamma],
              ["second case: t > alpha^2 (e^(4n/k) - 1)"]),
        claim("proof.thm3.step31", f"{LOC}, second case: the root exceeds 1", stated(None, 4 * nn), ">", 1,
              [n, delta]),
        claim("proof.thm3.step32", f"{LOC}, second case: 1 + M + gamma_A >= population loss",
              m + 1 + gamma.symbol, ">=", lp.symbol, [m_var, gamma, lp], ["0 <= L <= 1"],
              note="bookkeeping: restates L_P <= 1 <= 1 + M + gamma_A (0 <= L <= 1, gamma_A >= 0); no content "
                   "beyond the assumption"),
    ]


def steps():
    return tuple(_kl_steps() + _grid_steps() + _ln_steps() + _assembly_steps() + _final_steps())
