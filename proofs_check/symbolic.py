"""Symbolic certificates for transcribed steps (sympy only, no numerics).

Identities: ``lhs - rhs`` is reduced to 0 by one of a fixed list of rewrites (expand, cancel,
expand_log under positivity assumptions, ceiling rewrite, radsimp, simplify on small input).

Inequalities ``lhs <= rhs`` (and friends) are reduced to ``e >= 0`` (``e > 0`` when strict) and
attacked, in order, by:

* sign certificates: sympy's assumption system (``is_nonnegative``/``is_positive``) on ``e``,
  on the numerator/denominator of ``together(e)`` after ``expand``, on ``factor(e)``, on
  ``expand_log(e)`` and, for small input, on ``simplify(e)``;
* the same over a *covering reparametrisation* of the domain: every variable is rewritten
  through fresh nonnegative symbols so that its interval becomes a sign condition
  (``lo + w``, ``hi - w``, ``lo + (hi - lo) w / (1 + w)``, ``hi - (hi - lo) w / (1 + w)``;
  a closed-closed interval needs two variants, all variants must succeed);
* monotone elimination: if ``d e / d v`` has a proven sign on the domain, ``v`` is replaced by
  the bound where ``e`` is smallest (the worst-case-substitution argument the paper uses);
* squares: when both sides are provably nonnegative, ``rhs**2 - lhs**2`` instead of ``e``;
* a Gram-matrix certificate for forms that are quadratic in a group of variables (all
  principal minors nonnegative), and the substitution ``v = w**2`` for nonnegative variables
  under square roots.

A certificate proves the claim on a superset of the stated domain (assumptions only widen), so
it is sound whenever sympy's assumption answers are.  Nothing here uses floating point.
"""

from __future__ import annotations

import itertools
import re

import sympy as sp

from .spec import Step, Var

MAX_VARIANTS = 8
SIMPLIFY_MAX_OPS = 40
FACTOR_MAX_OPS = 60
ELIMINATION_MAX_OPS = 150  # monotone elimination is not tried on larger expressions
SIGN_EXPAND_CAP = 400
SQUARES_MAX_OPS = 40  # squaring (both sides, or v = r**2) is only tried on small expressions  # expansions bigger than this are not attempted in sign certificates


def prove(step: Step) -> str | None:
    """Return a description of a symbolic certificate for ``step``, or None if none is found."""
    if step.array_form is not None or step.not_transcribable is not None or not step.try_symbolic:
        return None
    if step.relation == "==":
        return _prove_identity(step)
    return _prove_inequality(step)


# ---------------------------------------------------------------------------------------------
# identities


def _zero_rewrites():
    return (
        ("expand", lambda e: sp.expand(e.doit())),
        ("cancel", lambda e: sp.cancel(sp.together(sp.expand(e.doit())))),
        ("expand_log", lambda e: sp.expand(sp.expand_log(sp.expand(e.doit())))),
        ("rewrite(ceiling)", lambda e: sp.expand(e.rewrite(sp.ceiling))),
        ("radsimp", lambda e: sp.radsimp(sp.powsimp(sp.expand(e.doit())))),
        ("simplify", lambda e: sp.simplify(e.doit()) if sp.count_ops(e) <= 4 * SIMPLIFY_MAX_OPS else e),
    )


def _is_zero(expr) -> bool:
    return expr == 0 or expr.is_zero is True


def polynomial_identity(step: Step) -> bool | None:
    """Decide a polynomial identity exactly (True/False); None if a side is not polynomial."""
    if step.relation != "==" or step.array_form is not None or step.not_transcribable is not None:
        return None
    mapping = _assumption_mapping(step.variables)
    difference = step.lhs - step.rhs
    entries = list(difference) if isinstance(difference, sp.MatrixBase) else [difference]
    for entry in entries:
        entry = entry.xreplace(mapping).doit()
        symbols = sorted(entry.free_symbols, key=str)
        if not symbols or not entry.is_polynomial(*symbols):
            return None
        if not sp.Poly(entry, *symbols).is_zero:
            return False
    return True


def _prove_identity(step: Step) -> str | None:
    mapping = _assumption_mapping(step.variables)
    difference = step.lhs - step.rhs
    entries = list(difference) if isinstance(difference, sp.MatrixBase) else [difference]
    used: set[str] = set()
    for entry in entries:
        entry = entry.xreplace(mapping).doit()
        symbols = sorted(entry.free_symbols, key=str)
        if symbols and entry.is_polynomial(*symbols):
            # exact sparse polynomial arithmetic decides polynomial identities either way
            if not sp.Poly(entry, *symbols).is_zero:
                return None
            used.add("polynomial arithmetic")
            continue
        name = next((n for n, rewrite in _zero_rewrites() if _is_zero(rewrite(entry))), None)
        if name is None:
            return None
        used.add(name)
    return "sympy: " + "+".join(sorted(used)) + " of lhs - rhs is 0"


# ---------------------------------------------------------------------------------------------
# domain handling


def _assumed_symbol(var: Var, mapping: dict) -> sp.Symbol:
    kwargs = {"real": True}
    if var.integer:
        kwargs["integer"] = True
    lo = var.lo.xreplace(mapping)
    hi = var.hi.xreplace(mapping)
    if lo != -sp.oo and (lo.is_positive or (lo.is_nonnegative and var.lo_open)):
        kwargs["positive"] = True
    elif lo != -sp.oo and lo.is_nonnegative:
        kwargs["nonnegative"] = True
    elif hi != sp.oo and (hi.is_negative or (hi.is_nonpositive and var.hi_open)):
        kwargs["negative"] = True
    elif hi != sp.oo and hi.is_nonpositive:
        kwargs["nonpositive"] = True
    return sp.Symbol(var.name, **kwargs)


def _assumption_mapping(variables) -> dict:
    """Each variable -> a symbol of the same name carrying the sign/integer facts of its box."""
    mapping: dict = {}
    for var in variables:
        mapping[var.symbol] = _assumed_symbol(var, mapping)
    return mapping


def _fresh(var: Var, positive: bool, integer: bool = False) -> sp.Symbol:
    kwargs = {"positive": True} if positive else {"nonnegative": True}
    if integer:
        kwargs["integer"] = True
    return sp.Symbol(f"w_{var.name}", **kwargs)


def _covers(var: Var, lo, hi) -> list:
    """Expressions in fresh symbols whose ranges together cover the interval of ``var``."""
    if lo == -sp.oo and hi == sp.oo:
        return [_assumed_symbol(var, {})]
    if hi == sp.oo:
        integer = var.integer and lo.is_integer is True
        w = _fresh(var, positive=var.lo_open, integer=integer)
        return [w] if lo == 0 else [lo + w]
    if lo == -sp.oo:
        return [hi - _fresh(var, positive=var.hi_open)]
    if var.integer:
        return [_assumed_symbol(var, {})]
    covers = []
    if not var.hi_open:  # (lo, hi]
        w = _fresh(var, positive=False)
        covers.append(hi - (hi - lo) * w / (1 + w))
    if not var.lo_open or var.hi_open:  # [lo, hi) or (lo, hi)
        w = _fresh(var, positive=var.lo_open)
        covers.append(lo + (hi - lo) * w / (1 + w))
    return covers


def _reparametrisations(variables) -> list[dict]:
    """Substitution maps (variable -> expression in fresh symbols) covering the whole domain."""
    variants: list[dict] = [{}]
    for var in variables:
        grown = []
        for mapping in variants:
            lo = var.lo.xreplace(mapping)
            hi = var.hi.xreplace(mapping)
            grown.extend({**mapping, var.symbol: expr} for expr in _covers(var, lo, hi))
        variants = grown
        if len(variants) > MAX_VARIANTS:
            return []
    return variants


# ---------------------------------------------------------------------------------------------
# sign certificates


def _expansion_size(expr) -> int:
    """Upper bound on the number of terms ``expand(expr)`` can produce (deterministic guard)."""
    if expr.is_Add:
        return sum(_expansion_size(arg) for arg in expr.args)
    if expr.is_Mul:
        size = 1
        for arg in expr.args:
            size *= _expansion_size(arg)
        return size
    if expr.is_Pow and expr.exp.is_Integer and expr.exp > 0:
        return _expansion_size(expr.base) ** int(expr.exp)
    return 1


def _signed(expr, strict: bool) -> bool:
    return bool(expr.is_positive) if strict else bool(expr.is_nonnegative)


def _sign_certificate(expr, strict: bool, heavy: bool = True) -> str | None:
    """Name of the first rewrite under which sympy decides ``expr >= 0`` (``> 0``).

    ``heavy`` also allows ``factor`` and ``simplify`` (only on the un-reparametrised expression,
    where they are affordable).
    """
    expr = expr.doit()
    if _signed(expr, strict):
        return "assumptions"
    numerator, denominator = sp.fraction(sp.together(expr))
    if max(_expansion_size(numerator), _expansion_size(denominator)) <= SIGN_EXPAND_CAP:
        numerator, denominator = sp.expand(numerator), sp.expand(denominator)
        if _signed(numerator, strict) and denominator.is_positive:
            return "together"
        if _signed(-numerator, strict) and denominator.is_negative:
            return "together"
    if expr.has(sp.log) and _signed(sp.expand(sp.expand_log(expr)), strict):
        return "expand_log"
    if not heavy:
        return None
    ops = sp.count_ops(expr)
    small = _expansion_size(expr) <= SIGN_EXPAND_CAP
    if small and ops <= FACTOR_MAX_OPS and _signed(sp.factor(expr), strict):
        return "factor"
    if small and ops <= SIMPLIFY_MAX_OPS and _signed(sp.simplify(expr), strict):
        return "simplify"
    return None


def _sign_on_domain(expr, variables, strict: bool, reparametrise: bool = True) -> str | None:
    """Certificate that ``expr >= 0`` (``> 0``) on the whole domain of ``variables``."""
    method = _sign_certificate(expr.xreplace(_assumption_mapping(variables)), strict, heavy=reparametrise)
    if method is not None or not reparametrise:
        return method
    variants = _reparametrisations(variables)
    if not variants:
        return None
    methods = set()
    for mapping in variants:
        method = _sign_certificate(expr.xreplace(mapping), strict, heavy=False)
        if method is None:
            return None
        methods.add(method)
    return "reparametrised " + "+".join(sorted(methods))


def _depends_on(var: Var, others) -> bool:
    return any(var.symbol in (w.lo.free_symbols | w.hi.free_symbols) for w in others)


def _eliminate(expr, variables, strict: bool):
    """Monotone elimination; returns (expr, remaining vars, log, strict_gain)."""
    remaining = list(variables)
    log: list[str] = []
    strict_gain = False
    if expr.has(sp.floor, sp.ceiling, sp.Piecewise) or sp.count_ops(expr) > ELIMINATION_MAX_OPS:
        return expr, remaining, log, strict_gain
    progress = True
    while progress:
        progress = False
        for var in reversed(remaining):
            others = [w for w in remaining if w is not var]
            if _depends_on(var, others):
                continue
            derivative = sp.diff(expr, var.symbol)
            if derivative == 0:
                remaining.remove(var)
                progress = True
                break
            for bound, sign, is_open in ((var.hi, -1, var.hi_open), (var.lo, 1, var.lo_open)):
                if bound in (sp.oo, -sp.oo):
                    continue
                substituted = expr.xreplace({var.symbol: bound})
                if substituted.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
                    continue
                strict_sign = is_open and strict
                if _sign_on_domain(sign * derivative, remaining, strict_sign, reparametrise=False) is None:
                    if not strict_sign or _sign_on_domain(sign * derivative, remaining, False,
                                                          reparametrise=False) is None:
                        continue
                    strict_sign = False
                expr = substituted
                strict_gain = strict_gain or strict_sign
                log.append(f"{var.name}->{'hi' if sign < 0 else 'lo'}")
                remaining.remove(var)
                progress = True
                break
            if progress:
                break
    return expr, remaining, log, strict_gain


def _gram_certificate(expr, variables) -> str | None:
    """PSD Gram matrix for an expression that is a quadratic form in a group of variables."""
    if not expr.is_polynomial(*[v.symbol for v in variables]):
        return None
    symbols = [v.symbol for v in variables]
    groups = [symbols] + [
        [s for s in symbols if re.sub(r"\d+$", "", s.name) == prefix]
        for prefix in sorted({re.sub(r"\d+$", "", s.name) for s in symbols})
    ]
    expanded = sp.expand(expr)
    for group in groups:
        if len(group) < 1:
            continue
        poly = sp.Poly(expanded, *group)
        if not all(sum(m) == 2 for m in poly.monoms()):
            continue
        size = len(group)
        gram = sp.zeros(size, size)
        for i, j in itertools.product(range(size), repeat=2):
            coeff = poly.coeff_monomial(group[i] * group[j])
            gram[i, j] = coeff if i == j else coeff / 2
        others = [v for v in variables if v.symbol not in group]
        minors_ok = all(
            _sign_on_domain(sp.factor(gram.extract(list(idx), list(idx)).det()), others, False)
            for r in range(1, size + 1)
            for idx in itertools.combinations(range(size), r)
        )
        if minors_ok:
            return f"Gram matrix in {','.join(s.name for s in group)} is PSD (principal minors)"
    return None


def _has_root(expr) -> bool:
    return any(abs(p.exp) == sp.Rational(1, 2) for p in expr.atoms(sp.Pow))


def _square_substitution(expr, variables, strict: bool) -> str | None:
    if not _has_root(expr) or sp.count_ops(expr) > SQUARES_MAX_OPS:
        return None
    nonneg = [v for v in variables if v.lo.is_number and v.lo >= 0 and v.hi == sp.oo]
    if not nonneg:
        return None
    mapping = _assumption_mapping(variables)
    squares = {mapping[v.symbol]: sp.Symbol(f"r_{v.name}", positive=True) ** 2 for v in nonneg}
    method = _sign_certificate(expr.xreplace(mapping).xreplace(squares), strict)
    return None if method is None else f"v=r**2 then {method}"


def _attempt(expr, variables, strict: bool) -> str | None:
    method = _sign_on_domain(expr, variables, strict)
    if method is not None:
        return method
    reduced, remaining, log, gain = _eliminate(expr, variables, strict)
    if log:
        final = _sign_on_domain(reduced, remaining, strict)
        if final is None and strict and gain:
            final = _sign_on_domain(reduced, remaining, False)
        if final is not None:
            return f"monotone elimination [{', '.join(log)}] then {final}"
    if not strict:
        method = _gram_certificate(expr, variables)
        if method is not None:
            return method
    return _square_substitution(expr, variables, strict)


def _prove_inequality(step: Step) -> str | None:
    strict = step.relation in ("<", ">")
    small, big = (step.lhs, step.rhs) if step.relation in ("<=", "<") else (step.rhs, step.lhs)
    if (big - small).has(sp.floor, sp.ceiling):
        return None  # no certificate here reasons about integer parts
    method = _attempt(big - small, step.variables, strict)
    if method is not None:
        return "sympy: " + method
    if not _has_root(big - small) or sp.count_ops(big - small) > SQUARES_MAX_OPS:
        return None
    both_nonnegative = (_sign_on_domain(small, step.variables, False) is not None
                        and _sign_on_domain(big, step.variables, False) is not None)
    if both_nonnegative:
        method = _attempt(sp.expand(big**2 - small**2), step.variables, strict)
        if method is not None:
            return "sympy: squares (both sides >= 0), " + method
    return None
