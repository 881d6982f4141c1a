"""``run_all(out_dir=...)`` keeps what it finished: the report is rewritten after every step,
``"complete": false`` until the end, and a step's verdict is announced on stderr as it lands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import proofs_check.report as report
from proofs_check import Budget, run_all, validate_report

SMOKE = Budget("smoke", hypothesis_examples=15, sweep_points=400, optimizer_starts=1, optimizer_evals=40,
               mp_fallback_points=8, array_points=30, confirmations=16)
LEMMA2 = ["proof.lemma2"]  # five steps, about a second in all
ROOT = Path(__file__).resolve().parents[1]


def _count_on_disk(out: Path) -> int | None:
    path = out / "proofs.json"
    return len(json.loads(path.read_text())["results"]) if path.exists() else None


def test_the_report_on_disk_grows_by_one_step_at_a_time(tmp_path, monkeypatch):
    seen = []
    real = report.check_step

    def watching(step, budget):
        seen.append(_count_on_disk(tmp_path))
        return real(step, budget)

    monkeypatch.setattr(report, "check_step", watching)
    results = run_all(SMOKE, only=LEMMA2, out_dir=tmp_path, progress=False)
    assert seen == [None, 1, 2, 3, 4]   # before step k, the k - 1 finished steps are on disk
    document = json.loads((tmp_path / "proofs.json").read_text())
    assert document["complete"] is True and len(document["results"]) == len(results) == 5
    assert validate_report(document) == []
    assert "Partial report" not in (tmp_path / "proofs.md").read_text()


def test_an_interrupted_run_keeps_the_steps_it_finished(tmp_path, monkeypatch):
    real = report.check_step
    calls = []

    def interrupted_at_the_third(step, budget):
        calls.append(step.id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(step, budget)

    monkeypatch.setattr(report, "check_step", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_all(SMOKE, only=LEMMA2, out_dir=tmp_path, progress=False)
    document = json.loads((tmp_path / "proofs.json").read_text())
    assert document["complete"] is False
    assert [r["step_id"] for r in document["results"]] == calls[:2]
    assert validate_report(document) == []
    markdown = (tmp_path / "proofs.md").read_text()
    assert "Partial report" in markdown and calls[0] in markdown and calls[2] not in markdown
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporary file left


def test_the_report_schema_requires_the_complete_flag(tmp_path):
    results = run_all(SMOKE, only=["proof.lemma2.step1"], progress=False)
    document = report.report_document(results, SMOKE)
    assert document["complete"] is True and validate_report(document) == []
    del document["complete"]
    assert any("complete" in e for e in validate_report(document))


def test_each_finished_step_prints_its_verdict_and_time_on_stderr(capsys):
    results = run_all(SMOKE, only=LEMMA2, progress=True)
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    # stderr is not a terminal here: only the finished lines, no "running" line to rewrite
    assert lines == [f"[{i}/5] {r.step_id}: {r.verdict} ({line.split('(')[-1]}"
                     for i, (r, line) in enumerate(zip(results, lines), 1)]
    assert all(line.endswith(" s)") for line in lines)
    assert not any(line.endswith("...") for line in lines)


def test_forked_workers_report_progress_and_keep_the_order(tmp_path, capsys):
    serial = run_all(SMOKE, only=LEMMA2, progress=False)
    forked = run_all(SMOKE, only=LEMMA2, workers=2, out_dir=tmp_path, progress=True)
    assert forked == serial
    err = capsys.readouterr().err
    assert sorted(line.split("]")[1].split(":")[0].strip() for line in err.replace("\r", "\n").splitlines()
                  if line.startswith("[")) == sorted(r.step_id for r in serial)
    document = json.loads((tmp_path / "proofs.json").read_text())
    assert [r["step_id"] for r in document["results"]] == [r.step_id for r in serial]


def test_ctrl_c_on_the_command_keeps_the_finished_steps_and_exits_130(tmp_path):
    """``python -m proofs_check``, full budget, two forked workers, SIGINT once a step is in."""
    out = tmp_path / "proofs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "proofs_check", "--budget", "full", "--only", "proof.thm3",
                                "--workers", "2", "--out", str(out)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a suite run in the background inherits an ignored SIGINT;
                               # Ctrl-C at a terminal is not ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while _count_on_disk(out) is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert [line for line in err.splitlines() if "interrupted" in line] == [
        f"python -m proofs_check: interrupted; the finished steps are kept in {out / 'proofs.json'} "
        '("complete": false)']
    document = json.loads((out / "proofs.json").read_text())
    assert document["complete"] is False and 1 <= len(document["results"]) < 35
    assert validate_report(document) == []
