"""The few-shot benchmark's references compute the core's meta-gradient; its FLOP counts are right."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.bench import fewshot
from experiments.cli import main

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
