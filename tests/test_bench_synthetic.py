"""The synthetic benchmark compares implementations that agree, and refuses to time ones that don't."""

import pytest

from experiments.bench import synthetic
from experiments.claims.sweeps import SweepSpec
from experiments.cli import main

TINY = SweepSpec(horizons=(3, 6), seeds=1, variants=("maml", "sharp-both"), schedules=("theorem",))


def test_bench_reports_all_three_implementations_and_their_agreement():
    b = synthetic.run(TINY)
    assert set(b.seconds) == {"batched", "loop, closed form", "loop, autograd"}
    assert b.runs == 4 and b.iterations == 18
    assert b.max_relative_difference <= synthetic.AGREEMENT
    assert "loop, autograd" in synthetic.format_table(b)


def test_bench_refuses_to_time_implementations_that_disagree(monkeypatch):
    monkeypatch.setattr(synthetic, "run_sweep_reference", lambda spec, i: 123.0)
    with pytest.raises(RuntimeError, match="disagree"):
        synthetic.run(TINY)


def test_bench_cli_writes_its_files(tmp_path, capsys):
    assert main(["bench", "synthetic", "--max-horizon", "8", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench_synthetic.json").is_file()
    assert main(["bench", "synthetic", "--max-horizon", "2"]) == 2
    assert "--max-horizon" in capsys.readouterr().err
