"""The prepared GPU run's plumbing, rehearsed on the CPU: the device tool brings back at most
8 files, so everything must arrive as ``summary.md`` and one archive."""

import os
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
    assert "- gpu_tests: exit 0" in summary and "fewshot" not in summary   # PHASES chose one
    with tarfile.open(out / "gpu-results.tar.gz") as archive:
        names = {Path(n).name for n in archive.getnames()}
    assert {"env.txt", "phases.md", "gpu_tests.log"} <= names
