"""A proof step past its wall-clock limit is stopped and reported ``timed out``; the run goes on.

The slow steps are synthetic: the engine's per-step check is replaced, for two step ids, by a
sleep (a blocking call) and by a pure-Python loop (what a sympy factorisation is), each lasting
``SLOW_SECONDS``.  Without the limit those steps come back with their normal verdict after
``SLOW_SECONDS``, and the tests fail on the verdict and the elapsed time; they never hang.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from dataclasses import replace

import jsonschema
import pytest

import proofs_check.engine as engine
from proofs_check import FULL, QUICK, TIMED_OUT, Budget, all_steps, check_step, run_all, validate_report
from proofs_check.report import main as proofs_main

SMOKE = Budget("smoke", hypothesis_examples=15, sweep_points=400, optimizer_starts=1, optimizer_evals=40,
               mp_fallback_points=8, array_points=30, confirmations=16)
LIMIT = 0.5           # seconds; lemma2's other steps take under 0.1 s each under SMOKE
SLOW_SECONDS = 8.0    # how long a slow step would run without the limit
LIMITED = replace(SMOKE, step_seconds=LIMIT)
LEMMA2 = ["proof.lemma2"]   # five steps
SLEEPS, LOOPS = "proof.lemma2.step2", "proof.lemma2.repair1"
STOPPED = re.compile(r"^no verdict: still running after (\d+\.\d) s, past the per-step limit of 0\.5 s "
                     r"\(smoke budget\); at the limit it was in ")


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


@pytest.fixture
def slow_steps(monkeypatch):
    """Make two lemma2 steps slow: SLEEPS sleeps, LOOPS loops in Python; the others are real."""
    real = engine._check

    def check(step, budget):
        if step.id == SLEEPS:
            time.sleep(SLOW_SECONDS)
        elif step.id == LOOPS:
            _busy(SLOW_SECONDS)
        return real(step, budget)

    monkeypatch.setattr(engine, "_check", check)


@pytest.fixture(scope="module")
def unlimited():
    """lemma2 under the same search budget, no slow step, no limit: the reference verdicts."""
    return {r.step_id: r for r in run_all(replace(SMOKE, step_seconds=None), only=LEMMA2, progress=False)}


def _assert_two_stopped_and_the_rest_as_without_a_limit(results, unlimited, elapsed):
    assert [r.step_id for r in results] == list(unlimited)
    stopped = {r.step_id: r for r in results if r.verdict == TIMED_OUT}
    assert set(stopped) == {SLEEPS, LOOPS}
    for r in stopped.values():
        match = STOPPED.match(r.detail)
        assert match, r.detail
        assert LIMIT <= float(match.group(1)) < SLOW_SECONDS / 2
        assert r.method == "stopped at the per-step time limit"
        assert r.worst is None and r.counterexample is None
    assert "_busy" in stopped[LOOPS].detail   # where the loop was stopped
    assert [r for r in results if r.step_id not in stopped] == [
        unlimited[i] for i in unlimited if i not in stopped]
    assert elapsed < SLOW_SECONDS


@pytest.mark.parametrize("workers", [1, 2], ids=["serial", "forked"])
def test_a_step_past_the_limit_is_reported_timed_out_and_the_others_still_run(workers, slow_steps, unlimited,
                                                                              tmp_path):
    start = time.monotonic()
    results = run_all(LIMITED, only=LEMMA2, workers=workers, out_dir=tmp_path, progress=False)
    _assert_two_stopped_and_the_rest_as_without_a_limit(results, unlimited, time.monotonic() - start)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL   # nothing left behind in this process
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)

    document = json.loads((tmp_path / "proofs.json").read_text())
    assert validate_report(document) == [] and document["complete"] is True
    assert document["counts"][TIMED_OUT] == 2
    assert "step limit 0.5 s" in document["budget"]["description"]
    rows = {r["step_id"]: r for r in document["results"]}
    assert rows[SLEEPS]["verdict"] == TIMED_OUT and STOPPED.match(rows[SLEEPS]["detail"])
    markdown = (tmp_path / "proofs.md").read_text()
    assert "**2 step(s) timed out**" in markdown
    assert re.search(rf"\| {re.escape(SLEEPS)} \|.*\| timed out \| no verdict: still running after", markdown)


def test_ctrl_c_inside_a_limited_step_still_stops_the_run_and_disarms_the_timer(monkeypatch, tmp_path):
    real, calls = engine._check, []

    def interrupted_at_the_third(step, budget):
        calls.append(step.id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(step, budget)

    monkeypatch.setattr(engine, "_check", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_all(LIMITED, only=LEMMA2, out_dir=tmp_path, progress=False)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    document = json.loads((tmp_path / "proofs.json").read_text())
    assert document["complete"] is False and [r["step_id"] for r in document["results"]] == calls[:2]


def test_a_callers_alarm_handler_and_timer_are_restored_after_each_step(slow_steps):
    fired = []

    def callers_handler(signum, frame):
        fired.append(signum)

    before = signal.signal(signal.SIGALRM, callers_handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert check_step(_step("proof.lemma2.step1"), LIMITED).verdict != TIMED_OUT
        assert check_step(_step(LOOPS), LIMITED).verdict == TIMED_OUT
        assert signal.getsignal(signal.SIGALRM) is callers_handler
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < remaining < 30.0 and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def _step(step_id):
    return next(s for s in all_steps() if s.id == step_id)


def test_a_library_that_swallows_the_first_alarm_is_stopped_by_the_next(monkeypatch):
    def swallowing(step, budget):
        try:
            time.sleep(SLOW_SECONDS)
        except BaseException:   # what a bare ``except:`` in library code does
            pass
        _busy(SLOW_SECONDS)

    monkeypatch.setattr(engine, "_check", swallowing)
    start = time.monotonic()
    result = check_step(_step(SLEEPS), LIMITED)
    assert result.verdict == TIMED_OUT and time.monotonic() - start < LIMIT + 2 * engine._REFIRE_SECONDS
    assert result.detail.endswith("<locals>.swallowing)")   # where it was when the limit passed


def test_an_error_raised_while_handling_the_alarm_counts_as_stopped_and_other_errors_propagate(monkeypatch):
    """hypothesis re-raises an exception from the middle of a draw as its own error (with ours as
    its context); an error that has nothing to do with the limit is not hidden as a timeout."""
    def rewrapping(step, budget):
        if step.id == SLEEPS:
            try:
                time.sleep(SLOW_SECONDS)
            except BaseException:
                raise RuntimeError("the library's own error")
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(engine, "_check", rewrapping)
    assert check_step(_step(SLEEPS), LIMITED).verdict == TIMED_OUT
    with pytest.raises(RuntimeError, match="a genuine bug"):
        check_step(_step("proof.lemma2.step1"), LIMITED)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_limit_passing_while_ctrl_c_unwinds_does_not_hide_the_interrupt(monkeypatch):
    """A KeyboardInterrupt whose clean-up outlasts the limit: the alarm's exception then has the
    interrupt as its context, and the run must stop, not report a timed-out step."""
    def interrupted(step, budget):
        try:
            raise KeyboardInterrupt
        finally:
            _busy(SLOW_SECONDS)

    monkeypatch.setattr(engine, "_check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        check_step(_step(SLEEPS), LIMITED)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_outside_the_main_thread_a_step_runs_without_the_limit(monkeypatch):
    """SIGALRM is delivered to the main thread only: elsewhere the limit is not applied (documented)."""
    real = engine._check
    monkeypatch.setattr(engine, "_check", lambda step, budget: (time.sleep(0.3), real(step, budget))[1])
    step = _step("proof.lemma2.step1")
    results = []
    worker = threading.Thread(target=lambda: results.append(check_step(step, replace(SMOKE, step_seconds=0.05))))
    worker.start()
    worker.join()
    assert results and results[0].verdict != TIMED_OUT


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "60", 1e300])
def test_budget_rejects_a_bad_step_limit_naming_it(bad):
    with pytest.raises(ValueError, match=re.escape(f"got {bad!r}")):
        replace(SMOKE, step_seconds=bad)


def test_quick_and_full_budgets_carry_a_step_limit():
    assert QUICK.step_seconds == 60 and FULL.step_seconds == 300
    assert QUICK.describe().endswith("step limit 60 s")
    assert replace(QUICK, step_seconds=None).describe().endswith("no step limit")


# ---------------------------------------------------------------------------
# the command lines


@pytest.mark.parametrize("bad", ["-1", "abc", "nan", "inf", "", "1e300"])
def test_python_m_proofs_check_rejects_a_bad_step_timeout_with_exit_2(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        proofs_main(["--step-timeout", bad, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert ("argument --step-timeout: must be a number of seconds from 0 to 1e+06 (0: no limit), "
            f"got {bad!r}") in err
    assert not (tmp_path / "proofs.json").exists()


@pytest.mark.parametrize("bad", ["-1", "abc", "nan"])
def test_testbed_proofs_rejects_a_bad_step_timeout_with_exit_2(bad, tmp_path, capsys):
    from experiments.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["proofs", "--step-timeout", bad, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--step-timeout" in err[0] and repr(bad) in err[0]


@pytest.mark.parametrize("argv, description", [([], "step limit 60 s"), (["--step-timeout", "2.5"], "step limit 2.5 s"),
                                               (["--step-timeout", "0"], "no step limit")])
def test_step_timeout_sets_the_budgets_limit_and_0_lifts_it(argv, description, tmp_path, capsys):
    assert proofs_main(["--only", "proof.lemma2.step1", "--workers", "1", "--out", str(tmp_path), *argv]) == 0
    document = json.loads((tmp_path / "proofs.json").read_text())
    assert document["budget"]["description"].endswith(description)


def test_testbed_proofs_step_timeout_runs_and_lists_the_timed_out_steps(slow_steps, tmp_path, capsys):
    from experiments.cli import main
    assert main(["proofs", "--only", *LEMMA2, "--workers", "2", "--step-timeout", str(LIMIT),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 timed out" in out
    assert [line.split(" (")[0].strip() for line in out.splitlines() if ": timed out, no verdict" in line] == [
        SLEEPS, LOOPS]


def test_testbed_proofs_help_states_the_budgets_limits(capsys):
    """commands.py writes the defaults into --help without importing proofs_check (--help stays fast)."""
    from experiments.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["proofs", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--step-timeout SECONDS wall-clock limit on one step" in text
    assert f"quick {QUICK.step_seconds:g} s, full {FULL.step_seconds:g} s" in text


# ---------------------------------------------------------------------------
# the claim registry: a timed-out step is inconclusive, never "holds"


@pytest.fixture
def claims_with_a_limit(monkeypatch, slow_steps):
    from experiments.claims import proofs
    monkeypatch.setattr(proofs, "_budget", lambda quick: replace(QUICK, step_seconds=LIMIT))
    return proofs


def test_a_timed_out_proof_step_is_an_inconclusive_claim(claims_with_a_limit):
    from experiments.claims.registry import Context
    result = claims_with_a_limit.check_proof_step(Context(quick=True), SLEEPS)
    assert result.verdict == "inconclusive"
    assert result.measured["proofs_check_verdict"] == TIMED_OUT
    assert "time limit" in result.condition and "neither proved nor refuted" in result.condition
    assert "past the per-step limit of 0.5 s" in result.summary


def test_the_prefetch_worker_goes_on_past_a_timed_out_step_and_the_report_says_so(claims_with_a_limit, tmp_path):
    from experiments.claims import verify
    from experiments.claims.report import SCHEMA_PATH
    start = time.monotonic()
    report = verify(tmp_path, only=[SLEEPS, "proof.lemma2.step1", LOOPS], progress=False)
    assert time.monotonic() - start < SLOW_SECONDS
    verdicts = {cid: e["verdict"] for cid, e in report["claims"].items()}
    assert verdicts == {SLEEPS: "inconclusive", "proof.lemma2.step1": "holds", LOOPS: "inconclusive"}
    assert report["counts"]["inconclusive"] == 2 and report["counts"]["holds"] == 1
    jsonschema.validate(json.loads((tmp_path / "report.json").read_text()), json.loads(SCHEMA_PATH.read_text()))
    assert "inconclusive: the check was stopped at the per-step time limit" in (tmp_path / "report.md").read_text()


def test_the_readme_states_the_budgets_limits():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"limit ({QUICK.step_seconds:g} s quick, {FULL.step_seconds:g} s full;" in " ".join(readme.split())
