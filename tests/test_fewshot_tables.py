"""The paper's tables at smoke scale: every file written, the paper's numbers beside ours."""

from __future__ import annotations

import json

import pytest

from experiments.fewshot.tables import PAPER, RADII, SCALES, TABLES, main, markdown


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_the_paper_numbers_are_stated_with_their_table():
    assert PAPER["table4"]["ours"] == {"maml": 91.77, "sharp-low": 92.89, "sharp-up": 92.96, "sharp-both": 93.47}
    assert PAPER["table1"]["ours"]["sharp-both"] == 50.28 and PAPER["table2"]["ours"]["maml"] == 62.20
    assert PAPER["table3"]["time"]["esharp-anil"] == 1.20
    assert all("Table" in PAPER[k]["reference"] or "Figure" in PAPER[k]["reference"] for k in TABLES if k != "family")
    assert PAPER["family"]["ours"] == {}  # no paper table to compare with
    assert RADII == (0.05, 0.005, 0.0005, 0.00005)


def test_smoke_scale_writes_json_and_markdown_with_intervals(tmp_path, capsys):
    assert main(["--scale", "smoke", "--out", str(tmp_path), "--tables", "table3", "table5", "radius",
                 "--quiet", "--threads", "1"]) == 0
    table3 = json.loads((tmp_path / "smoke" / "table3.json").read_text())
    assert [r["algorithm"] for r in table3["rows"]] == ["maml", "sharp-low", "sharp-up", "sharp-both",
                                                        "sharp-anil", "esharp", "esharp-anil"]
    assert all(r["ci95"] is not None and 0 <= r["accuracy"] <= 100 for r in table3["rows"])
    assert table3["rows"][0]["time_vs_maml"] == 1.0 and table3["rows"][1]["paper"] == 49.72
    text = (tmp_path / "smoke" / "table5.md").read_text()
    assert "| maml |" in text and "96.16" in text and "+-" in text
    radius = json.loads((tmp_path / "smoke" / "radius.json").read_text())
    assert [r["label"] for r in radius["rows"]] == ["maml", "sharp-low a=0.05", "sharp-up a=0.05",
                                                    "sharp-both a=0.05"]
    # the radius rows at 0.05 are the same runs as table 3's rows (shared run directories)
    assert radius["rows"][1]["runs"] == table3["rows"][1]["runs"]


def test_without_mini_imagenet_its_tables_are_skipped_and_say_so(tmp_path):
    from experiments.fewshot.tables import build_table
    report = build_table("table1", SCALES["cpu"], tmp_path)
    assert report["rows"] == [] and "skipped" in report["data"]
    assert "No runs" in markdown(report)


def test_bad_arguments_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--scale", "huge"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale" in err[0]


def test_the_family_table_has_every_algorithm_with_its_time():
    from testbed.algorithms import NAMES
    family = TABLES["family"]
    assert [r.algorithm for r in family.rows] == list(NAMES) and family.timing
    report = {"title": "t", "scale": "smoke", "reference": "r", "data": "d", "ci": "c", "paper_others": {},
              "rows": [{"label": a, "accuracy": 50.0, "ci95": 1.0, "paper": None, "paper_time": None,
                        "s_per_it": s, "time_vs_maml": s / 0.5, "seeds": 1, "episodes": 3, "settings": {}}
                       for a, s in (("maml", 0.5), ("imaml", 2.0))]}
    text = markdown(report)
    assert "| imaml | 50.00 +- 1.00 | - | 2.000 | x4.00 | - |" in text


def test_parallel_runs_give_the_numbers_of_sequential_runs(tmp_path):
    """--jobs trains in fresh processes; seeded runs must not notice."""
    common = ["--scale", "smoke", "--tables", "table4", "--quiet", "--threads", "1", "--iterations", "1"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--jobs", "2"]) == 0
    a, b = (json.loads((tmp_path / d / "smoke" / "table4.json").read_text())["rows"] for d in "ab")
    assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
    assert all(r["settings"]["iterations"] == 1 for r in a)


@pytest.mark.parametrize("option", ["--data-root", "--miniimagenet"])
def test_smoke_scale_refuses_data_options_it_would_ignore(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--scale", "smoke", "--tables", "table4", "--iterations", "1", "--quiet", "--threads", "1",
              "--out", str(tmp_path), option, "/nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and "/nope" in err[0] and "smoke" in err[0]
    assert not (tmp_path / "smoke").exists()   # refused before any work


@pytest.mark.parametrize("interruption, status", [(KeyboardInterrupt(), 130), ("sigterm", 143)])
def test_an_interrupt_is_one_line_and_the_signal_status(interruption, status, tmp_path, capsys, monkeypatch):
    import experiments.fewshot.tables as tables
    from experiments.fewshot.train import TrainingInterrupted

    if interruption == "sigterm":   # what a run stopped by SIGTERM raises
        interruption = TrainingInterrupted("stopped at iteration 3; checkpoint saved", 143, 3)

    def interrupted(*args, **kwargs):
        raise interruption

    monkeypatch.setattr(tables, "build_table", interrupted)
    try:
        code = main(["--scale", "smoke", "--tables", "table4", "--quiet", "--out", str(tmp_path)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == status
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tables: interrupted; finished runs are kept, rerun the same command to resume"]


def test_ctrl_c_with_jobs_stops_every_worker_quietly_and_keeps_their_checkpoints(tmp_path):
    """Ctrl-C reaches the whole process group: busy workers save their runs, workers that are
    starting or idle must not die with a traceback, and the parent says one line, status 130."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.fewshot.tables", "--scale", "smoke", "--tables", "family",
         "--jobs", "2", "--iterations", "150", "--threads", "1", "--out", str(tmp_path)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # not ignored in a background job
    lines = []
    try:
        for line in proc.stderr:            # wait for one finished run: the next ones are under way
            lines.append(line)
            if line.startswith("[1/"):
                break
        os.killpg(proc.pid, signal.SIGINT)
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = "".join(lines)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("tables: interrupted")
    runs = list((tmp_path / "smoke" / "runs").glob("seed*/*"))
    unfinished = [r for r in runs if not (r / "results.json").is_file()]
    assert unfinished and all((r / "checkpoint.pt").is_file() for r in unfinished if (r / "log.jsonl").is_file())
