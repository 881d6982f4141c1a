"""No proof step holds just because a variable's interval restates its conclusion.

Two guards.  (1) A scan of every scalar step: a step whose two sides become identical once some
variables are replaced by ends of their intervals only restates those intervals, unless its sides
do real algebra; each such step is either reviewed below (with the reason it has content) or says
"bookkeeping" in its note.  (2) Each step that replaced a by-construction check (App. C.2: Lemma 3's
first sentence and first display, Lemma 4's smoothness line, step (a) and the telescoping to (35))
holds, and the same step with a planted wrong constant is reported false.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import sympy as sp

from proofs_check import FALSE, QUICK, all_steps, check_step
from proofs_check.domains import between, positive
from proofs_check.steps_lemma2_3 import bound_31, constants, expect, three_point
from proofs_check.steps_lemma4_5 import TELESCOPE_T, bound_35_tail

# Steps whose sides coincide at an end of some interval, reviewed as having content of their own.
TIGHT_WITH_CONTENT = {
    "proof.lemma1.step7": "(1 - beta lam)^2 lam >= 0 is tight at lam = 0; its content is the square",
    "proof.lemma1.step9": "false finding",
    "proof.lemma3.step1a": "lhs is ||theta' - E theta_hat||^2 from coordinates; gamma_g's end is Assumption 4",
    "proof.lemma4.step3": "false finding (l1^2 where Assumption 2 gives 1)",
    "proof.lemma4.step9": "lhs is E||h||^2 from a three-point distribution (identity (a)); sigma_tilde's end is (34)",
    "proof.lemma4.step12": "coefficient beta_up (1 - L_F beta_up)/2 from the choice beta_up <= 1/L_F",
    "proof.lemma5.step4": "gamma_g(T) decreasing in T, equal to the bound at T = 1",
    "proof.lemma5.step5": "gamma_h(T) decreasing in T, equal to the bound at T = 1",
    "proof.thm3.step7": "j = 1 exactly at the end of the first case with n = k = 1",
    "proof.thm3.step15": "monotonicity of ln^2 in s",
    "proof.thm3.step26": "uses M <= 1 to move the weight p",
    "proof.d1.step2": "algebra of alpha_0's threshold",
    "proof.d1.step3": "monotonicity in alpha_0 of alpha_1's threshold",
    "proof.d1.step6": "R is decreasing in alpha; its value at alpha_1's threshold",
    "proof.d2.step2": "second derivative of the test family",
    "proof.d2.step4": "false finding",
    "proof.thm2.step2": "false finding",
}


def _bounded(step):
    """Variables whose ends can carry a conclusion: an end that is an expression in other symbols,
    or a finite numeric end of a variable that is not on both sides (a premise quantity, or one only
    an interval mentions).  A numeric end of a variable on both sides is a corner of the domain,
    where a sharp step may be tight."""
    both_sides = step.lhs.free_symbols & step.rhs.free_symbols
    out = []
    for var in step.variables:
        ends = [e for e in (var.lo, var.hi) if e not in (-sp.oo, sp.oo)]
        if any(e.free_symbols for e in ends) or (ends and var.symbol not in both_sides):
            out.append(var)
    return out


MAX_SUBSTITUTED = 4  # the by-construction steps found so far substitute at most 4 premise variables


def _restates_its_intervals(step) -> bool:
    difference = step.lhs - step.rhs
    bounded = _bounded(step)
    for size in range(1, min(len(bounded), MAX_SUBSTITUTED) + 1):
        for subset in itertools.combinations(bounded, size):
            for ends in itertools.product(("lo", "hi"), repeat=size):
                expr = difference
                # later variables first: their ends may use earlier ones
                for var, end in sorted(zip(subset, ends), key=lambda p: -step.variables.index(p[0])):
                    expr = expr.subs(var.symbol, getattr(var, end))
                if sp.expand(expr) == 0:
                    return True
    return False


def test_every_step_that_restates_its_intervals_is_reviewed_or_labelled_bookkeeping():
    unexplained = []
    for step in all_steps():
        if step.not_transcribable or step.array_form is not None or step.relation == "==":
            continue
        if step.id in TIGHT_WITH_CONTENT or "bookkeeping" in step.note:
            continue
        if _restates_its_intervals(step):
            unexplained.append(step.id)
    assert unexplained == []


def test_reviewed_steps_are_still_flagged_by_the_scan():
    steps = {s.id: s for s in all_steps()}
    assert [i for i in TIGHT_WITH_CONTENT if not _restates_its_intervals(steps[i])] == []


def test_scan_flags_a_step_that_restates_its_interval():
    step = next(s for s in all_steps() if s.id == "proof.d1.step5")
    assert _restates_its_intervals(step) and "bookkeeping" in step.note
    delta = sp.Symbol("Delta", real=True)
    b, gg = positive("beta_low"), positive("gamma_g")
    by_construction = replace(step, lhs=b.symbol * delta, rhs=b.symbol * gg.symbol, relation="<=",
                              variables=(b, gg, between("Delta", 0, gg.symbol)), note="")
    assert _restates_its_intervals(by_construction)


# ---------------------------------------------------------------------------------------------
# planted wrong constants: each must be reported false


def _sym(name):
    return sp.Symbol(name, real=True)


def _steps():
    return {s.id: s for s in all_steps()}


def _plants():
    b, bu, lf, st, f1 = (_sym(n) for n in ("beta_low", "beta_up", "L_F", "sigma_tilde", "F1"))
    gg, sb = _sym("gamma_g"), _sym("sigma_b")
    _, _, gx, w_g = three_point("gx")
    g = sp.Matrix([_sym("g1"), _sym("g2")])
    g_hat = expect(w_g, gx)
    spread = expect(w_g, [(v - g_hat).dot(v - g_hat) for v in gx])
    _, _, hs, w_h = three_point("h")
    hbar = expect(w_h, hs)
    gf = sp.Matrix([_sym("gF1"), _sym("gF2")])
    step_sq = expect(w_h, [(bu * v).dot(bu * v) for v in hs])
    tail = bound_35_tail(constants())
    tt = TELESCOPE_T
    return {
        "lemma3.step1 with 2 beta": ("proof.lemma3.step1", lambda s: replace(s, rhs=2 * b * (g_hat - g))),
        "lemma3.step1a with beta^2 gamma_g^2 / 2": ("proof.lemma3.step1a", lambda s: replace(s, rhs=s.rhs / 2)),
        "lemma3.step1a with beta gamma_g^2": ("proof.lemma3.step1a", lambda s: replace(s, rhs=b * gg**2)),
        "lemma3.step3 with 1/2 for 2": ("proof.lemma3.step3", lambda s: replace(s, rhs=s.rhs / 4)),
        "lemma3.step3 without beta^2 on sigma_b^2": (
            "proof.lemma3.step3", lambda s: replace(s, rhs=2 * b**2 * gg**2 + 2 * sb**2)),
        "lemma3.step3a with beta for beta^2": ("proof.lemma3.step3a", lambda s: replace(s, rhs=b * spread)),
        "lemma4.step7a with L_F/4": ("proof.lemma4.step7a", lambda s: replace(s, rhs=s.rhs - lf / 4 * step_sq)),
        "lemma4.step7b with 2 beta_up <grad F, hbar>": (
            "proof.lemma4.step7b", lambda s: replace(s, rhs=s.rhs - bu * gf.dot(hbar))),
        "lemma4.step9 with sigma_tilde^2/4": (
            "proof.lemma4.step9", lambda s: replace(s, rhs=s.rhs - lf * bu**2 * st**2 / 4)),
        "lemma4.step13 with F1/(beta_up T)": (
            "proof.lemma4.step13", lambda s: replace(s, rhs=s.rhs - f1 / (bu * tt))),
        "lemma4.step13 normalised by T^2": (
            "proof.lemma4.step13", lambda s: replace(s, rhs=s.rhs - 2 * f1 / (bu * tt) + 2 * f1 / (bu * tt**2))),
        "lemma4.step13 with L_F beta_up sigma_tilde^2/2": (
            "proof.lemma4.step13", lambda s: replace(s, rhs=s.rhs - lf * bu * st**2 / 2)),
        "lemma4.step13 with half of Lemma 3's bound": (
            "proof.lemma4.step13", lambda s: replace(s, rhs=s.rhs - tail / 2)),
    }


PLANTS = _plants()
CHANGED = sorted({step_id for step_id, _ in PLANTS.values()})


def test_lemma3_and_lemma4_tails_agree():
    """(35) writes Lemma 3's bound (31) regrouped; the plants above rely on it."""
    c = constants()
    assert sp.expand(bound_31(c) - bound_35_tail(c)) == 0


@pytest.mark.parametrize("step_id", CHANGED)
def test_replacement_step_holds(step_id):
    assert check_step(_steps()[step_id], QUICK).verdict != FALSE


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_wrong_constant_is_reported_false(plant):
    step_id, mutate = PLANTS[plant]
    wrong = mutate(_steps()[step_id])
    result = check_step(wrong, QUICK)
    assert result.verdict == FALSE, (plant, result.verdict, result.worst)
