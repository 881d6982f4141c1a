"""Long commands are never silent: ``testbed demo`` reports each algorithm and ``testbed bench
synthetic`` each implementation on stderr, leaving stdout to the table or the JSON."""

from __future__ import annotations

import io
import json

from experiments.bench import synthetic
from experiments.claims.sweeps import SweepSpec
from experiments.cli import main
from experiments.demo import ALGORITHMS, DemoConfig, run

TINY = SweepSpec(horizons=(3, 6), seeds=1, variants=("maml", "sharp-both"), schedules=("theorem",))
IMPLEMENTATIONS = ("batched", "loop, closed form", "loop, autograd")


def _lines(err: str) -> list[str]:
    return [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]


def test_demo_reports_every_algorithm_as_it_finishes(capsys):
    rows = run(DemoConfig(dim=2, tasks=2, iterations=3))
    lines = _lines(capsys.readouterr().err)
    # stderr is not a terminal here: one finished line per algorithm, nothing to rewrite
    assert len(lines) == len(ALGORITHMS)
    for i, (name, row, line) in enumerate(zip(ALGORITHMS, rows, lines), 1):
        assert line.startswith(f"[{i}/{len(ALGORITHMS)}] {name}: F(theta_T) = ") and line.endswith(" s)")
        assert f"{row.final_objective:.6g}" in line
    run(DemoConfig(dim=2, tasks=2, iterations=1), progress=False)
    assert capsys.readouterr().err == ""


def test_demo_json_stays_machine_readable_with_progress_on_stderr(capsys):
    assert main(["demo", "--dim", "2", "--tasks", "2", "--iterations", "2", "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["algorithm"] for r in json.loads(captured.out)["rows"]] == list(ALGORITHMS)
    assert len(_lines(captured.err)) == len(ALGORITHMS)


def test_bench_synthetic_says_which_implementation_runs():
    stream = io.StringIO()
    b = synthetic.run(TINY, progress=stream)
    lines = _lines(stream.getvalue())
    # a start line and a finished line (with its time) per implementation, in the order they run
    assert [line.split(":")[0] for line in lines] == [f"[bench synthetic] {name}" for name in IMPLEMENTATIONS
                                                      for _ in range(2)]
    assert all(lines[k].endswith("...") and lines[k + 1].endswith(f"{b.runs} runs in "
               f"{b.seconds[IMPLEMENTATIONS[k // 2]]:.1f} s") for k in range(0, 6, 2))


def test_bench_synthetic_counts_runs_in_place_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    synthetic.run(TINY, progress=stream)
    assert "\r[bench synthetic] loop, autograd: run 4/4" in stream.getvalue()


def test_bench_synthetic_command_reports_progress_on_stderr(capsys):
    assert main(["bench", "synthetic", "--max-horizon", "4", "--seeds", "1"]) == 0
    captured = capsys.readouterr()
    assert all(f"[bench synthetic] {name}:" in captured.err for name in IMPLEMENTATIONS)
    assert "[bench synthetic]" not in captured.out and "loop, autograd |" in captured.out
