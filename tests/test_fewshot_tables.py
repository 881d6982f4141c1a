"""The paper's tables at smoke scale: every file written, the paper's numbers beside ours."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.fewshot.tables import PAPER, RADII, SCALES, TABLES, main, markdown


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_paper_numbers_are_stated_with_their_table():
    assert PAPER["table4"]["ours"] == {"maml": 91.77, "sharp-low": 92.89, "sharp-up": 92.96, "sharp-both": 93.47}
    assert PAPER["table1"]["ours"]["sharp-both"] == 50.28 and PAPER["table2"]["ours"]["maml"] == 62.20
    assert PAPER["table3"]["time"]["esharp-anil"] == 1.20
    assert all("Table" in PAPER[k]["reference"] or "Figure" in PAPER[k]["reference"] for k in TABLES)
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
