"""Special functions used by transcribed steps, with float64 and mpmath implementations.

``Chi2Cdf(x, k)`` is P(X <= x) and ``Chi2Sf(x, k)`` is P(X > x) for X chi-square with k degrees of
freedom (the law of ||eps||^2 / sigma^2 for eps ~ N(0, sigma^2 I_k), used in the Theorem 3 proof,
Abbas et al. 2022, Appendix D, through Laurent & Massart 2000, Lemma 1).
"""

from __future__ import annotations

import mpmath
import scipy.special
import sympy as sp


def _mp_chi2_cdf(x, k):
    return mpmath.gammainc(mpmath.mpf(k) / 2, 0, mpmath.mpf(x) / 2, regularized=True)


def _mp_chi2_sf(x, k):
    return mpmath.gammainc(mpmath.mpf(k) / 2, mpmath.mpf(x) / 2, mpmath.inf, regularized=True)


class Chi2Cdf(sp.Function):
    """P(chi2_k <= x)."""

    nargs = 2

    def _eval_evalf(self, prec):
        x, k = (arg.evalf(prec) for arg in self.args)
        if not (x.is_Number and k.is_Number):
            return None
        with mpmath.workprec(prec):
            return sp.Float(_mp_chi2_cdf(mpmath.mpf(str(x)), mpmath.mpf(str(k))), precision=prec)


class Chi2Sf(sp.Function):
    """P(chi2_k > x)."""

    nargs = 2

    def _eval_evalf(self, prec):
        x, k = (arg.evalf(prec) for arg in self.args)
        if not (x.is_Number and k.is_Number):
            return None
        with mpmath.workprec(prec):
            return sp.Float(_mp_chi2_sf(mpmath.mpf(str(x)), mpmath.mpf(str(k))), precision=prec)


NUMPY_FUNCTIONS = {
    "Chi2Cdf": lambda x, k: scipy.special.chdtr(k, x),
    "Chi2Sf": lambda x, k: scipy.special.chdtrc(k, x),
}
MPMATH_FUNCTIONS = {"Chi2Cdf": _mp_chi2_cdf, "Chi2Sf": _mp_chi2_sf}
SPECIAL_FUNCTIONS = (Chi2Cdf, Chi2Sf)
