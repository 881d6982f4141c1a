"""``testbed bench memory``: every mode measured in its own process; a mode that does not fit
is reported as such instead of killing the bench."""

import json

import pytest

from experiments.bench import memory
from experiments.cli import main


def test_memory_bench_measures_every_mode_and_checkpointing_stays_flat(monkeypatch):
    """Each mode at N = 2 and 12 inner steps, in fresh processes.  The graph path's peak grows
    with N (it keeps every step's graph); the checkpointed sweep's does not (measured at this
    scale: about 10 MiB per step against 0.1)."""
    result = memory.run("miniimagenet-5w1s", scale="small", steps=(2, 12), threads=1)
    assert set(result.peak_mib) == set(memory.MODES)
    growth = {m: result.peak_mib[m][12] - result.peak_mib[m][2] for m in memory.MODES}
    assert growth["graph, loop"] > 40
    assert growth["checkpoint, loop"] < growth["graph, loop"] / 4
    assert growth["first-order, loop"] < growth["graph, loop"] / 4
    for mode in memory.MODES:
        assert set(result.peak_mib[mode]) == {2, 12}
        assert all(v is not None and v >= 0 for v in result.peak_mib[mode].values())
        assert all(v is not None and v > 0 for v in result.seconds[mode].values())
    assert result.cap_gib is not None and result.cap_gib > 0
    table = memory.format_table(result)
    assert "checkpoint, loop" in table and "MiB" in table
    json.dumps(result.to_dict())


def test_a_mode_over_the_address_space_cap_reads_does_not_fit(monkeypatch):
    # 1.5 GiB of address space: enough to import torch, not for a 64-filter
    # mini-ImageNet meta-batch's graph
    monkeypatch.setattr(memory, "_address_space_cap", lambda: int(1.5 * 2 ** 30))
    result = memory.run("miniimagenet-5w1s", scale="paper", steps=(5,), modes=("graph, vmap",),
                        threads=1)
    assert result.peak_mib["graph, vmap"][5] is None
    assert "does not fit" in memory.format_table(result)


def test_in_process_cells_spawn_no_child_and_report_out_of_memory(monkeypatch, one_thread):
    """``isolate=False`` (the CUDA default: CUDA's start costs seconds a process) measures
    every cell here; an allocation error in one cell reads "does not fit" and the others run."""
    def no_child(*args, **kwargs):
        raise AssertionError("isolate=False started a child process")

    monkeypatch.setattr(memory.subprocess, "run", no_child)
    result = memory.run("omniglot-20w1s", scale="small", steps=(1, 3),
                        modes=("graph, loop", "checkpoint, loop"), isolate=False)
    assert result.cap_gib is None
    for mode in ("graph, loop", "checkpoint, loop"):
        assert all(v is not None and v >= 0 for v in result.peak_mib[mode].values())
        assert all(v is not None and v > 0 for v in result.seconds[mode].values())

    real = memory.measure

    def oom_at_three(setting, mode, steps, device="cpu"):
        if steps == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(setting, mode, steps, device)

    monkeypatch.setattr(memory, "measure", oom_at_three)
    result = memory.run("omniglot-20w1s", scale="small", steps=(1, 3), modes=("graph, loop",),
                        isolate=False)
    assert result.peak_mib["graph, loop"][3] is None and result.peak_mib["graph, loop"][1] >= 0
    assert "does not fit" in memory.format_table(result)


def test_memory_bench_rejects_bad_input(capsys):
    with pytest.raises(ValueError, match="mode"):
        memory.run("omniglot-20w1s", modes=("nonsense",))
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "memory", "--steps", "0,2"])
    assert exit_.value.code == 2
    assert "--steps" in capsys.readouterr().err
