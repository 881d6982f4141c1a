"""The few-shot benchmark's references compute the core's meta-gradient; its FLOP counts are right."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench import fewshot
from experiments.cli import main
from testbed import meta

TINY = fewshot.Setting("tiny", ways=3, shots=1, queries=2, image_size=16, channels=1,
                       inner_steps=2, meta_batch=2, beta_low=0.3, hidden=4)


OPTIONAL = {"higher loop": "higher", "parallel-metalearn (vmap)": "metalearn"}
"""References from the optional extra ``bench``: name -> the module they need."""


@pytest.mark.parametrize("name", ["autograd loop", "higher loop", "parallel-metalearn (vmap)",
                                  "core, loop"])
def test_references_compute_the_cores_meta_gradient_in_float64(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name], reason=f"{OPTIONAL[name]} is not installed "
                                                   "(pip install '.[bench]')")
    impls = fewshot.implementations()
    assert name in impls
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    args = (params, tasks, TINY.beta_low, TINY.inner_steps)
    got, want = impls[name](*args), impls["core, vmap"](*args)
    assert fewshot.relative_error(got, want) <= 1e-10


def test_flop_counter_counts_a_known_graph():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    with FlopCounterMode(display=False) as counter:
        a @ b
    assert counter.get_total_flops() == 2 * 3 * 4 * 5
    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.conv2d(x, w, padding=1)
    assert counter.get_total_flops() == 2 * (8 * 8) * 3 * (2 * 3 * 3)


def test_bench_runs_and_refuses_disagreeing_references(monkeypatch):
    result = fewshot.run(TINY, repeats=1, variants=("maml", "sharp-low"))
    assert set(result.variant_seconds) == {"maml", "sharp-low"}
    assert result.variant_gflops["sharp-low"] > result.variant_gflops["maml"]
    assert "Table 3" in fewshot.format_table(result)
    # agreement is checked in float64; the float32 error of each implementation is reported
    assert max(result.maml_agreement.values()) <= fewshot.AGREEMENT
    assert set(result.maml_float32_error) == set(result.maml_agreement)
    assert all(0 <= e < 1e-2 for e in result.maml_float32_error.values())
    broken = dict(fewshot.implementations())
    broken["autograd loop"] = lambda p, t, b, s: {k: v + 1 for k, v in p.items()}
    monkeypatch.setattr(fewshot, "implementations", lambda *_: broken)
    with pytest.raises(RuntimeError, match="disagrees"):
        fewshot.run(TINY, repeats=1, variants=("maml",))


def test_bench_cli_rejects_a_missing_device(capsys):
    assert main(["bench", "fewshot", "--device", "tpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_compile_adds_the_compiled_core_and_nothing_otherwise():
    assert fewshot.COMPILED not in fewshot.implementations()
    assert fewshot.COMPILED in fewshot.implementations(compile=True)


@pytest.mark.slow
def test_compiled_core_computes_the_cores_meta_gradient_in_float64():
    """Compiling Conv-4's double backward takes a minute or two on a CPU: slow tier."""
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    args = (params, tasks, TINY.beta_low, TINY.inner_steps)
    impls = fewshot.implementations(compile=True)
    assert fewshot.relative_error(impls[fewshot.COMPILED](*args), impls["core, vmap"](*args)) <= 1e-10


def test_bench_without_a_suite_runs_fewshot_and_writes_its_files(tmp_path, capsys):
    assert main(["bench", "--setting", "omniglot-20w1s", "--scale", "small", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "core, loop" in out and "sharp-both" in out
    body = (tmp_path / "bench_fewshot.json").read_text()
    assert "omniglot-20w1s-small" in body and '"git_commit"' in body


def test_compile_modes_name_their_rows_and_bad_modes_exit_2(capsys):
    impls = fewshot.implementations(compile=True, compile_modes=("default", "reduce-overhead"))
    assert {fewshot.COMPILED, fewshot.compiled_name("reduce-overhead")} <= set(impls)
    with pytest.raises(ValueError, match="compile mode"):
        fewshot.implementations(compile=True, compile_modes=("fastest",))
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--compile", "--compile-mode", "default,fastest"])
    assert exit_.value.code == 2 and "--compile-mode" in capsys.readouterr().err


def test_cuda_graph_adds_the_graphed_core_and_nothing_otherwise():
    graphed = {fewshot.graphed_name("loop"), fewshot.graphed_name("vmap")}
    assert graphed == {"core, loop, CUDA graph", "core, vmap, CUDA graph"}
    assert not graphed & set(fewshot.implementations())
    assert graphed <= set(fewshot.implementations(cuda_graph=True))


def test_bench_with_cuda_graph_runs_every_row_on_the_graphs_stream(
        cuda_graph_stand_in, capture_stream_spy, monkeypatch, one_thread):
    """With CUDA graph rows, every row (eager ones too) is checked and timed inside
    ``cudagraph.capture_stream``, so that all hold the same one cuBLAS workspace; without them
    the bench does not enter it."""
    inside = []
    real = fewshot.interleaved_medians

    def spy(*args, **kwargs):
        inside.append(capture_stream_spy.inside)
        return real(*args, **kwargs)
    monkeypatch.setattr(fewshot, "interleaved_medians", spy)
    fewshot.run(TINY, repeats=1, variants=("maml",))
    assert capture_stream_spy.entered == [] and inside == [False, False]
    inside.clear()
    fewshot.run(TINY, repeats=1, variants=("maml",), cuda_graph=True)
    assert capture_stream_spy.entered == ["cpu"] and inside == [True, True]


def test_bench_with_cuda_graph_checks_its_rows_and_times_every_variant_graphed(
        cuda_graph_stand_in, one_thread):
    """On the CPU through the stand-in capture (tests/conftest.py): the graphed rows go through
    the float64 check, and each variant gets a graphed time beside its eager one."""
    before = cuda_graph_stand_in.counts()
    result = fewshot.run(TINY, repeats=1, variants=("maml", "sharp-up"), cuda_graph=True)
    after = cuda_graph_stand_in.counts()
    for batching in ("loop", "vmap"):
        name = fewshot.graphed_name(batching)
        assert result.maml_agreement[name] <= fewshot.AGREEMENT
        assert 0 <= result.maml_float32_error[name] < 1e-2 and result.maml_seconds[name] > 0
    assert set(result.variant_seconds_graphed) == set(result.variant_seconds) == {"maml", "sharp-up"}
    assert all(s > 0 for s in result.variant_seconds_graphed.values())
    # MAML rows: one graph per batching and dtype (TINY's float32 error and timing share a
    # layout), 4; the variants were graphed too: sharp-up's configuration is a fifth
    assert after["captures"] - before["captures"] >= 5
    assert after["replays"] - before["replays"] > after["captures"] - before["captures"]
    table = fewshot.format_table(result)
    assert "core, vmap, CUDA graph" in table
    header = next(line for line in table.splitlines() if line.startswith("variants"))
    assert "| graphed s | graphed time / graphed MAML |" in header and "| target" in header
    maml_row = next(line for line in table.splitlines() if line.startswith("maml |"))
    assert len(maml_row.split(" | ")) == len(header.split(" | "))
    assert result.to_dict()["variant_seconds_graphed"] == result.variant_seconds_graphed
    # on CUDA the MAML table's peak column gets a note on what the graphed rows' peak means
    on_cuda = replace(result, device="cuda", maml_peak_mb={n: 1.0 for n in result.maml_seconds},
                      variant_peak_mb={n: 1.0 for n in result.variant_seconds})
    assert "first call (eager warm-ups, then the capture)" in fewshot.format_table(on_cuda)
    assert "then the capture" not in fewshot.format_table(
        replace(on_cuda, maml_seconds={"core, vmap": 1.0}))


def test_bench_without_cuda_graph_has_no_graphed_columns():
    """Old results (no ``variant_seconds_graphed``) still format as before."""
    result = fewshot.FewshotBench(
        TINY, "cpu", 1, {"core, vmap": 1.0}, {"core, vmap": 0.0}, {"core, vmap": 0.0},
        {"maml": 1.0, "sharp-up": 2.0}, {"maml": 1.0, "sharp-up": 2.0}, {"maml": None, "sharp-up": None},
        "vmap")
    assert result.variant_seconds_graphed is None
    assert "graphed" not in fewshot.format_table(result)


def test_run_refuses_cuda_graph_off_cuda():
    with pytest.raises(ValueError, match="needs a CUDA device, got device 'cpu'"):
        fewshot.run(TINY, device="cpu", repeats=1, cuda_graph=True)


def test_bench_cli_refuses_cuda_graph_on_a_cpu_in_one_line(capsys):
    assert main(["bench", "fewshot", "--device", "cpu", "--cuda-graph"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "testbed bench: error: --cuda-graph needs --device cuda, got cpu"


def test_the_graphed_rows_read_the_benchs_own_tensors(cuda_graph_stand_in, one_thread):
    """No copy of the meta-batch beside the bench's: the graph adopts its tensors (on a GPU
    a copy would show in the row's peak memory)."""
    params, tasks = fewshot.make_problem(TINY, dtype=torch.float64)
    run = fewshot.core_maml("loop", cuda_graph=True)
    first = run(params, tasks, TINY.beta_low, TINY.inner_steps)
    (graph,) = fewshot._IN_PLACE.values()
    assert all(a is b for a, b in zip(meta._leaves(graph.tasks), meta._leaves(tasks)))
    assert all(graph.params[k] is params[k] for k in params)
    again = run(params, tasks, TINY.beta_low, TINY.inner_steps)
    assert len(fewshot._IN_PLACE) == 1 and cuda_graph_stand_in.counts()["replays"] >= 2
    assert all(torch.equal(first[k], again[k]) for k in first)
    fewshot.clear_graphs()
    assert not fewshot._IN_PLACE


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_graph_memory_without_cuda_exits_2_with_a_message(capsys):
    from experiments.bench import graph_memory

    assert graph_memory.main(["--setting", "all"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA device" in err and "Traceback" not in err


def test_interleaved_rounds_turn_the_order_and_warm_up_each_function_once(monkeypatch):
    """Warm-ups in the given order, then round r calls the functions turned by r places, so no
    function always follows the same one; each median is of that function's own calls (a fake
    clock that each function advances by its own duration)."""
    calls, now = [], [0.0]
    duration = {"a": 1.0, "b": 2.0, "c": 3.0}

    def make(name):
        def fn():
            calls.append(name)
            now[0] += duration[name]
        return fn
    monkeypatch.setattr(fewshot.time, "perf_counter", lambda: now[0])
    seconds, peak = fewshot.interleaved_medians({n: make(n) for n in "abc"}, repeats=4, device="cpu")
    assert calls == list("abc") + list("abc") + list("bca") + list("cab") + list("abc")
    assert seconds == duration and peak == dict.fromkeys("abc")
