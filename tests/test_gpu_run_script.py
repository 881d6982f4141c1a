"""The prepared GPU run's plumbing, rehearsed on the CPU: the device tool brings back at most
8 files, so everything must arrive as ``summary.md`` and one archive."""

import os
import re
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_one_phase_leaves_a_summary_and_an_archive_only(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "DEVICE": "cpu", "SCALE": "small", "PHASES": "gpu_tests",
           "OUT": str(out), "WORK": str(work), "OMP_NUM_THREADS": "1",
           "WHEELS": str(tmp_path / "no-wheels")}      # install nothing into this environment
    done = subprocess.run(["bash", "experiments/bench/gpu_run.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-results.tar.gz", "summary.md"]
    summary = (out / "summary.md").read_text()
    # PHASES chose one ("fewshot" alone would also match git status of an edited fewshot.py)
    assert "- gpu_tests: exit 0" in summary and "- fewshot:" not in summary
    with tarfile.open(out / "gpu-results.tar.gz") as archive:
        names = {Path(n).name for n in archive.getnames()}
    assert {"env.txt", "phases.md", "gpu_tests.log"} <= names


def test_graphs_phases_skip_themselves_off_cuda_and_say_why(tmp_path):
    """The CPU rehearsal (DEVICE=cpu) must not fail on the CUDA-only ``--cuda-graph`` and
    graph memory phases."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "DEVICE": "cpu", "SCALE": "small", "PHASES": "graphs,graph_memory",
           "OUT": str(out), "WORK": str(work), "WHEELS": str(tmp_path / "no-wheels")}
    done = subprocess.run(["bash", "experiments/bench/gpu_run.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "== graphs: skipped" in done.stdout
    summary = (out / "summary.md").read_text()
    assert "- graphs: skipped, bench fewshot --cuda-graph needs a CUDA device, DEVICE is cpu" in summary
    assert ("- graph_memory: skipped, python -m experiments.bench.graph_memory measures CUDA memory, "
            "DEVICE is cpu") in summary
    assert not (work / "graphs").exists() and not (work / "graph_memory").exists()


def test_default_phases_are_every_phase_in_the_order_they_run():
    script = (ROOT / "experiments/bench/gpu_run.sh").read_text()
    default = re.search(r"^PHASES=\$\{PHASES:-([\w,]+)\}", script, re.M).group(1).split(",")
    ran = re.findall(r"^\s*(?:cuda\*\) )?phase \S+ (\w+) ", script, re.M)
    assert default == ran == ["gpu_tests", "graphs", "graph_memory", "precision", "fewshot",
                              "memory", "compile"]
    limits = re.search(r"^GRAPHS_LIMIT=\$\{GRAPHS_LIMIT:-(\d+)\}", script, re.M)
    assert limits is not None and "--cuda-graph --out \"$WORK/graphs\"" in script
