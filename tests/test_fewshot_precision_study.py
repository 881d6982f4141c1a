"""The precision study: float32 and bf16 side by side, the verdict rule, resume, Ctrl-C, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.fewshot import precision_study as S
from experiments.fewshot.checkpoint import CHECKPOINT_NAME, load_checkpoint
from experiments.fewshot.toy import write_toy_folder
from experiments.fewshot.train import RESULTS_NAME

REPO = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 120
"""Longest wait for the runs of the interrupted study to start training (interpreters included)."""
TRAINING_S = 2.0
"""Time the interrupted runs train before SIGTERM: tens of toy iterations (about 50 ms each)."""
STOP_TIMEOUT_S = 60
"""Longest wait for the interrupted study to stop its runs and exit."""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return "folder:" + str(write_toy_folder(tmp_path_factory.mktemp("toy"), classes=6, per_class=5, size=16))


def _tiny(toy: str, out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--source", toy, "--hidden", "4", "--queries", "2", "--eval-queries", "2",
            "--meta-batch", "2", "--iterations", "2", "--eval-episodes", "4", *extra]


@pytest.fixture(scope="module")
def study(toy, tmp_path_factory) -> tuple[Path, list[str], str, str]:
    """A finished float32 / bf16 study: (its directory, its argv, stdout, stderr)."""
    out = tmp_path_factory.mktemp("study")
    argv = _tiny(toy, out)
    with pytest.MonkeyPatch.context() as mp:   # capsys is function-scoped: capture by hand
        stdout, stderr = out.parent / "stdout.txt", out.parent / "stderr.txt"
        with stdout.open("w") as o, stderr.open("w") as e:
            mp.setattr(sys, "stdout", o)
            mp.setattr(sys, "stderr", e)
            code = S.main(argv)
    assert code == 0, stderr.read_text()
    return out, argv, stdout.read_text(), stderr.read_text()


def test_verdict_is_unchanged_exactly_when_the_intervals_overlap():
    assert S.verdict(0.8880, 0.0064, 0.8913, 0.0061) == S.UNCHANGED   # the README's bf16 run
    assert S.verdict(0.75, 0.0625, 0.625, 0.0625) == S.UNCHANGED       # the boundary counts (exact binary)
    assert S.verdict(0.85, 0.01, 0.88, 0.01) == S.DIFFERS              # negative control: 3 > 1 + 1 points
    assert S.verdict(0.91, 0.01, 0.88, 0.01) == S.DIFFERS              # better by more than the intervals
    with pytest.raises(ValueError, match="ci95 must be >= 0, got -0.01"):
        S.verdict(0.9, -0.01, 0.9, 0.01)


def test_study_writes_both_rows_with_float32_as_reference(study):
    out, _, stdout, stderr = study
    md = (out / "precision.md").read_text()
    assert md == stdout
    rows = [line for line in md.splitlines() if line.startswith(("| float32 ", "| bf16 "))]
    assert [r.split("|")[1].strip() for r in rows] == ["float32", "bf16"]
    assert rows[0].rstrip().endswith("| reference |")
    for text in ("python -m experiments.fewshot.precision_study --out", "commit `", "torch ", "device cpu"):
        assert text in md
    assert "float32: started" in stderr and "bf16: finished in" in stderr
    report = json.loads((out / "precision.json").read_text())
    assert [r["precision"] for r in report["rows"]] == ["float32", "bf16"]
    assert {"command", "git_commit", "torch", "device", "study"} <= set(report)
    for row in report["rows"]:
        run = json.loads((out / "runs" / row["precision"] / RESULTS_NAME).read_text())
        assert row["config"] == run["config"] and run["config"]["precision"] == row["precision"]
        assert row["accuracy_pct"] == pytest.approx(100 * run["test"]["accuracy"])
        assert 0 <= row["accuracy_pct"] <= 100 and 0 <= row["ci95_pct"] <= 100
        assert row["train_wall_s"] > 0 and row["it_per_s"] > 0 and row["test_wall_s"] > 0
        assert f"{row['accuracy_pct']:.2f} ± {row['ci95_pct']:.2f}" in md
    f32, bf16 = report["rows"]
    assert f32["verdict"] == "reference" and f32["diff_points"] == 0
    assert bf16["diff_points"] == pytest.approx(bf16["accuracy_pct"] - f32["accuracy_pct"])
    assert bf16["verdict"] == S.verdict(bf16["accuracy_pct"], bf16["ci95_pct"],
                                        f32["accuracy_pct"], f32["ci95_pct"])
    assert f"{bf16['diff_points']:+.2f} | {bf16['verdict']} |" in md


def test_rerunning_reuses_finished_runs_and_resumes_unfinished_ones(study, tmp_path, capsys):
    out, argv, _, _ = study
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    argv = _tiny(argv[argv.index("--source") + 1], copy)
    before = json.loads((copy / "precision.json").read_text())["rows"]
    assert S.main(argv) == 0
    err = capsys.readouterr().err
    assert "float32: finished earlier, reusing" in err and "bf16: finished earlier, reusing" in err
    assert json.loads((copy / "precision.json").read_text())["rows"] == before
    # one more iteration: both runs continue from their checkpoints at iteration 2
    argv[argv.index("--iterations") + 1] = "3"
    assert S.main(argv) == 0
    err = capsys.readouterr().err
    assert "float32: resumed from its checkpoint" in err and "bf16: resumed from its checkpoint" in err
    for precision in ("float32", "bf16"):
        run = json.loads((copy / "runs" / precision / RESULTS_NAME).read_text())
        assert run["resumed_from"] == 2 and run["iterations"] == 3


def test_sigterm_stops_every_run_with_its_checkpoint_and_exits_143(toy, tmp_path):
    argv = _tiny(toy, tmp_path)
    argv[argv.index("--iterations") + 1] = "1000000"
    study = subprocess.Popen([sys.executable, "-m", "experiments.fewshot.precision_study", *argv],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [tmp_path / "runs" / p / "log.jsonl" for p in ("float32", "bf16")]
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while not all(log.exists() for log in logs):
            assert study.poll() is None and time.monotonic() < deadline, study.stderr.read()
            time.sleep(0.05)
        time.sleep(TRAINING_S)
        study.send_signal(signal.SIGTERM)
        _, err = study.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if study.poll() is None:
            study.kill()
    assert study.returncode == 143, err     # 128 + SIGTERM, as testbed train
    last = err.strip().splitlines()[-1]
    assert "interrupted" in last and "rerun the same command to resume" in last
    for precision in ("float32", "bf16"):
        assert load_checkpoint(tmp_path / "runs" / precision / CHECKPOINT_NAME)["iteration"] >= 1
        assert "checkpoint saved" in (tmp_path / "runs" / precision / S.STDERR_NAME).read_text()
    assert not (tmp_path / "precision.md").exists()


def test_a_failed_run_is_reported_with_its_status_and_stderr(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert S.main(_tiny(f"folder:{missing}", tmp_path / "study", "--precisions", "float32")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    start = next(i for i, line in enumerate(err) if "error:" in line)
    assert "the float32 run" in err[start] and "exit status 2" in err[start]
    assert str(missing) in "\n".join(err[start + 1:])


@pytest.mark.parametrize("argv, named", [
    (["--precisions", "float32,tf32"], "tf32"),                # tf32 is a CUDA mode
    (["--precisions", "bf16"], "float32"),                     # the reference is missing
    (["--precisions", "float32,fp8"], "--precisions"),
    (["--precisions", "float32,bf16,bf16"], "bf16"),
    (["--eval-episodes", "1"], "eval_episodes"),
    (["--cuda-graph"], "cuda_graph"),
    (["--hidden", "0"], "--hidden"),
])
def test_bad_input_is_one_line_and_exit_2(argv, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        S.main(["--out", str(tmp_path / "study"), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and named in err
    assert not (tmp_path / "study").exists()


def test_defaults_reproduce_the_readme_cpu_comparison():
    config = S.PrecisionStudyConfig(out="OUT")
    assert config.precisions == ("float32", "bf16")
    for precision in config.precisions:
        readme = json.loads((REPO / "results" / "fewshot" / "precision_5w1s_cpu" / precision /
                             RESULTS_NAME).read_text())["config"]
        ours = config.train_config(precision).to_dict()
        assert {k: v for k, v in ours.items() if k in readme and k != "out"} == \
               {k: v for k, v in readme.items() if k != "out"}


def test_train_argv_builds_the_config_the_study_compares_with(tmp_path):
    """What ``testbed train`` parses from :meth:`train_argv` is :meth:`train_config`."""
    from experiments.cli import build_parser
    from experiments.fewshot.commands import _train_config

    config = S.PrecisionStudyConfig(out=str(tmp_path), data_root=str(tmp_path))
    for precision in config.precisions:
        argv = config.train_argv(precision, resume=False)
        assert argv[:4] == [sys.executable, "-m", "experiments.cli", "train"]
        parsed = _train_config(build_parser().parse_args(argv[3:]))
        assert parsed == config.train_config(precision)
    assert config.train_argv("bf16", resume=True)[-1] == "--resume"
    assert str(REPO) in S._child_env()["PYTHONPATH"].split(os.pathsep)


@pytest.mark.parametrize(("interrupt", "status"), [(KeyboardInterrupt, 130), (S._Terminated, 143)])
def test_an_interrupt_exits_128_plus_its_signal_with_one_line(interrupt, status, tmp_path, monkeypatch, capsys):
    """Ctrl-C exits 130 and SIGTERM 143, as testbed train does, each with the one-line message."""
    def interrupted(config, progress=None):
        raise interrupt
    monkeypatch.setattr(S, "run", interrupted)
    assert S.main(["--out", str(tmp_path / "study")]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]
