"""The claim registry: every entry runs at small sizes, planted false claims fail, the report is valid."""

import json

import jsonschema
import numpy as np
import pytest

from experiments.claims import REGISTRY, Context, select, verify
from experiments.claims import constants as C
from experiments.claims import rates as R
from experiments.claims.registry import VERDICTS, ClaimResult, fit_loglog_slope
from experiments.claims.report import SCHEMA_PATH
from experiments.claims.sweeps import SweepSpec, run_sweep, run_sweep_reference
from experiments.cli import main


MEMO: dict = {}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of the whole registry (shared: it is the expensive part)."""
    out = tmp_path_factory.mktemp("verify")
    return out, verify(out, quick=True, progress=False, memo=MEMO)


@pytest.fixture(scope="module")
def ctx(quick_run):
    """The quick run's context: its sweeps are reused, not recomputed."""
    return Context(quick=True, memo=MEMO)


def test_every_registered_claim_runs_quickly_and_gets_a_verdict(quick_run):
    out, report = quick_run
    assert set(report["claims"]) == set(REGISTRY)
    assert report["complete"] is True
    for cid, entry in report["claims"].items():
        assert entry["verdict"] in VERDICTS, cid
        for plot in entry["plots"]:
            assert (out / plot).is_file(), f"{cid} names a missing plot {plot}"


def test_report_json_validates_against_its_schema(quick_run):
    out, _ = quick_run
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads((out / "report.json").read_text()), schema)
    assert "| claim | paper | verdict |" in (out / "report.md").read_text()


def test_schema_rejects_a_fails_verdict_without_counterexample(quick_run):
    out, _ = quick_run
    schema = json.loads(SCHEMA_PATH.read_text())
    bad = json.loads((out / "report.json").read_text())
    cid = next(iter(bad["claims"]))
    bad["claims"][cid].update(verdict="fails", counterexample=None)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_claims_are_listed_in_the_papers_order():
    heads = [c.id.split(".")[0] for c in select()]
    assert heads.index("lemma1") < heads.index("eq30") < heads.index("thm1")


def test_planted_rate_exponent_minus_one_fails(quick_run, ctx):
    assert R.check_rate(ctx, "maml").verdict == "holds"
    planted = R.check_rate(ctx, "maml", claimed=-1.0)
    assert planted.verdict == "fails"
    assert planted.counterexample["ci_low"] > -1.0 + R.SLOPE_TOL


def test_planted_false_formula_and_bounds_fail(ctx):
    assert C.check_eq30(ctx, hessian=False).verdict == "fails"
    assert C.check_smoothness(ctx, bound=lambda c, beta: 0.0).verdict == "fails"
    assert C.check_bias(ctx, rhs=lambda *a: 0.0).verdict == "fails"


def test_variance_bound_of_eq34_fails_and_its_corrected_form_holds(ctx):
    """Eq. (34) writes 4 l1^2 sigma^2 for the query-gradient noise; Assumption 2 gives 4 sigma^2."""
    stated = C.check_variance(ctx)
    assert stated.verdict == "fails"
    ce = stated.counterexample
    assert ce["measured"] > ce["bound"] and ce["l1"] < 0.5

    def corrected(c, beta, gamma_h, sigma, sigma_b):
        return (4 * sigma ** 2 + 16 * (gamma_h ** 2 + c.l1 ** 2) * beta ** 2 * sigma ** 2
                + 16 * beta ** 2 * sigma_b ** 2 * (sigma ** 2 + c.l0 ** 2))
    assert C.check_variance(ctx, bound=corrected).verdict == "holds"


def test_slope_fit_recovers_a_known_slope_from_noisy_data():
    rng = np.random.default_rng(0)
    T = np.geomspace(100, 10000, 7)
    y = 3.0 * T ** -0.7 * np.exp(0.05 * rng.standard_normal((6, 7)))
    fit = fit_loglog_slope(T, y)
    assert fit.low <= -0.7 <= fit.high
    assert fit.high < -0.6   # and it is not mistaken for -1/2
    single = fit_loglog_slope(T, y[0])
    assert single.low <= -0.7 <= single.high


def test_batched_sweep_equals_the_plain_autograd_loop():
    spec = SweepSpec(family="tanh", horizons=(7, 12), seeds=2, variants=("maml", "sharp-both"),
                     schedules=("theorem", "constant"))
    batched = run_sweep(spec).avg_sq_grad.reshape(-1)
    for run in (0, 3, 6, 13):
        assert abs(batched[run] - run_sweep_reference(spec, run)) <= 1e-12 * max(1.0, batched[run])


def test_interrupted_verify_keeps_the_finished_claims(tmp_path, monkeypatch):
    from experiments.claims import registry

    first, second = select(["eq30"])[0], select(["lemma2"])[0]

    def interrupt(ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(registry.REGISTRY, second.id, registry.Claim(second.id, second.reference,
                                                                     second.statement, interrupt))
    with pytest.raises(KeyboardInterrupt):
        verify(tmp_path, only=[first.id, second.id], progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["complete"] is False and list(report["claims"]) == [first.id]


def test_verdicts_carry_what_they_need():
    with pytest.raises(ValueError, match="counterexample"):
        ClaimResult("fails", {}, "tol", "s")
    with pytest.raises(ValueError, match="condition"):
        ClaimResult("holds only under", {}, "tol", "s")
    with pytest.raises(ValueError, match="could not separate"):
        ClaimResult("inconclusive", {}, "tol", "s")
    with pytest.raises(ValueError, match="verdict"):
        ClaimResult("maybe", {}, "tol", "s")


def test_cli_lists_claims_and_rejects_unknown_ids(capsys):
    assert main(["verify", "--list", "--only", "lemma1"]) == 0
    assert "lemma1.a.dw1d" in capsys.readouterr().out
    assert main(["verify", "--only", "lemma99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lemma99" in err[0]


def test_proof_steps_are_registry_entries_and_the_false_ones_fail(quick_run):
    from proofs_check import all_steps
    _, report = quick_run
    transcribable = [s.id for s in all_steps() if s.not_transcribable is None]
    assert set(transcribable) <= set(report["claims"])
    assert report["claims"]["proof.d1.step8"]["verdict"] == "fails"
    assert report["claims"]["proof.d1.step8"]["counterexample"]["lhs"]
    assert report["claims"]["proof.lemma3.step10"]["verdict"] == "holds"


def test_prefetched_proof_steps_equal_inline_ones():
    from experiments.claims import proofs
    from experiments.claims.registry import finish, start
    ids = ["proof.d1.step8", "proof.lemma2.step1"]
    inline = [proofs.check_proof_step(Context(quick=True), i) for i in ids]
    ctx = Context(quick=True)
    start([REGISTRY[i] for i in ids], ctx)
    try:
        assert "proof_results" in ctx.memo
        fetched = [proofs.check_proof_step(ctx, i) for i in ids]
    finally:
        finish(ctx)
    assert [(r.verdict, r.summary) for r in inline] == [(r.verdict, r.summary) for r in fetched]
