"""Every transcribed step of Appendices B-D gets a verdict; the report validates; findings stay found."""

from __future__ import annotations

import json

import pytest
import sympy as sp

from proofs_check import (FALSE, JSON_SCHEMA, NOT_TRANSCRIBABLE, VERDICTS, VERIFIED, Budget, all_steps,
                          evaluate_step, report_document, run_all, validate_report, write_table)

SMOKE = Budget("smoke", hypothesis_examples=15, sweep_points=400, optimizer_starts=1, optimizer_evals=40,
               mp_fallback_points=8, array_points=30, confirmations=16)
REEVALUATION_DIGITS = 50

# Steps of the paper that the checker reports false (the findings), and repairs that must hold.
EXPECTED_FALSE = {
    "proof.lemma1.step4",   # eq. (27) in R^2: (I - bH)^2 Hess(theta') instead of J Hess(theta') J
    "proof.lemma1.step9",   # "Hess >= 0 at a stationary point => local minimiser" (L = x^3)
    "proof.lemma2.step3",   # eq. (30) with the displayed Jacobian blocks: off by a factor M
    "proof.lemma4.step3",   # 4 l1^2 sigma^2 where Assumption 2 gives 4 sigma^2
    "proof.thm3.step14",    # j <= k ln(c/s), but j = 1 + floor(k ln(c/s))
    "proof.thm3.step17",    # ln^2(1 + e^(4n/k)) <= (4n/k)^2
    "proof.thm3.step19",    # ln(1/delta_j) <= ln(1/delta) + 2 ln(6n) end to end
    "proof.thm3.step25",    # P(||eps|| <= alpha) >= 1 - 1/sqrt(n) for eps ~ N(0, alpha^2 I)
    "proof.thm3.step29",    # folding 1/sqrt(n) into the constant 14
    "proof.d1.step8",       # 1 + sqrt(y - 1) <= sqrt(y)
    "proof.d1.step10",      # the D.1 chain end to end
    "proof.d2.step1",       # ||eps||^2 <= alpha^2 "with high probability" for N(0, alpha^2 I_k)
    "proof.d2.step4",       # local minimiser => L <= Gaussian smoothing of L
    "proof.thm2.step2",     # (18) drops Thm 3's O(1) term
}
EXPECTED_VERIFIED = {
    "proof.lemma1.repair1", "proof.lemma2.repair1", "proof.lemma3.step10", "proof.lemma3.step11",
    "proof.lemma4.step13", "proof.lemma4.step14", "proof.thm3.step2", "proof.thm3.step3", "proof.thm3.step12",
    "proof.thm3.step20", "proof.thm3.step23", "proof.d1.step2", "proof.thm2.step1",
    "proof.lemma3.step1", "proof.lemma3.step1a", "proof.lemma3.step3a", "proof.lemma4.step7b",
}


@pytest.fixture(scope="module")
def results():
    return run_all(SMOKE, workers=2)  # forked workers; results do not depend on the worker count


@pytest.fixture(scope="module")
def steps_by_id():
    return {s.id: s for s in all_steps()}


def test_every_step_returns_a_verdict(results, steps_by_id):
    assert [r.step_id for r in results] == list(steps_by_id)
    assert all(r.verdict in VERDICTS for r in results)
    parts = {s.split(".")[1] for s in steps_by_id}
    assert {"lemma1", "lemma3", "lemma4", "lemma5", "thm3", "d1", "d2"} <= parts


def test_paper_findings_are_reported_false_and_nothing_else(results):
    assert {r.step_id for r in results if r.verdict == FALSE} == EXPECTED_FALSE


def test_key_steps_and_repairs_are_verified(results):
    verdicts = {r.step_id: r.verdict for r in results}
    assert {i for i in EXPECTED_VERIFIED if verdicts[i] != VERIFIED} == set()


def _violated(relation, lhs, rhs) -> bool:
    tolerance = sp.Float(10) ** -30
    if relation == "==":
        return any(abs(l - r) > tolerance * (abs(l) + abs(r)) for l, r in zip(lhs, rhs))
    (l,), (r,) = lhs, rhs
    return {"<=": l > r, "<": l >= r, ">=": l < r, ">": l <= r}[relation]


def test_every_counterexample_violates_its_step_when_re_evaluated(results, steps_by_id):
    checked = 0
    for result in results:
        if result.counterexample is None or steps_by_id[result.step_id].array_form is not None:
            continue
        step = steps_by_id[result.step_id]
        point = dict(result.counterexample.point)
        subs = {v.symbol: sp.Float(point[v.name], REEVALUATION_DIGITS) for v in step.variables}
        sides = [[sp.N(e, REEVALUATION_DIGITS, subs=subs) for e in (list(side) if isinstance(side, sp.MatrixBase)
                                                                      else [side])]
                 for side in (step.lhs, step.rhs)]
        assert _violated(step.relation, *sides), (result.step_id, point, sides)
        _, _, inside, violated = evaluate_step(step, point)
        assert inside and violated, result.step_id
        checked += 1
    assert checked == len(EXPECTED_FALSE)


def test_untranscribable_steps_give_reasons(results):
    for result in results:
        if result.verdict == NOT_TRANSCRIBABLE:
            assert len(result.detail) > 20


def test_report_files_validate_against_the_documented_schema(results, tmp_path):
    md_path, json_path = write_table(results, tmp_path, SMOKE)
    document = json.loads(json_path.read_text())
    assert validate_report(document) == []
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(document, JSON_SCHEMA)
    rows = [line for line in md_path.read_text().splitlines() if line.startswith("| proof.")]
    assert len(rows) == len(results)


def test_schema_validator_rejects_a_corrupted_report(results):
    document = report_document(results[:3], SMOKE)
    document["results"][0]["verdict"] = "probably fine"
    del document["results"][1]["worst"]
    errors = validate_report(document)
    assert any("probably fine" in e for e in errors) and any("worst" in e for e in errors)


def test_run_all_selects_by_prefix_and_rejects_unknown_ids():
    selected = run_all(SMOKE, only=["proof.lemma2"])
    assert {r.step_id.split(".")[1] for r in selected} == {"lemma2"}
    with pytest.raises(ValueError, match="proof.nope"):
        run_all(SMOKE, only=["proof.nope"])
