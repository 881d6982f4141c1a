"""Loss landscapes: Li et al. (2018) filter normalisation and the plots."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.fewshot.config import TrainConfig
from experiments.fewshot.landscape import (LandscapeConfig, normalize_filters, plot, plot_path,
                                          random_direction, run)
from experiments.fewshot.toy import write_toy_folder
from experiments.fewshot.train import run as train

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _toy_params() -> dict:
    return {
        "conv.weight": torch.tensor([[[[1.0, 2.0], [2.0, 4.0]]], [[[0.0, 3.0], [4.0, 0.0]]]], dtype=F64),  # norms 5, 5
        "conv.bias": torch.tensor([1.0, -1.0], dtype=F64),
        "bn.weight": torch.tensor([1.0, 2.0], dtype=F64),
        "lin.weight": torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], dtype=F64),  # row norms 5, 2, 1
    }


def test_filter_normalisation_on_a_toy_dict():
    params = _toy_params()
    direction = {
        "conv.weight": torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]], dtype=F64),
        "conv.bias": torch.tensor([7.0, 7.0], dtype=F64),
        "bn.weight": torch.tensor([-3.0, 3.0], dtype=F64),
        "lin.weight": torch.tensor([[0.0, 10.0], [6.0, 8.0], [0.0, 0.0]], dtype=F64),
    }
    before = {k: v.clone() for k, v in direction.items()}
    out = normalize_filters(direction, params)
    # conv filter 0: (2,0,0,0) scaled to norm 5; filter 1: (1,1,1,1) (norm 2) scaled to norm 5
    assert torch.equal(out["conv.weight"][0], torch.tensor([[[5.0, 0.0], [0.0, 0.0]]], dtype=F64))
    assert torch.allclose(out["conv.weight"][1], torch.full((1, 2, 2), 2.5, dtype=F64))
    # linear rows: (0,10) -> norm 5; (6,8) -> norm 2; a zero row stays zero (no NaN)
    assert torch.allclose(out["lin.weight"], torch.tensor([[0.0, 5.0], [1.2, 1.6], [0.0, 0.0]], dtype=F64))
    # biases and batch-norm parameters are not moved
    assert torch.equal(out["conv.bias"], torch.zeros(2, dtype=F64))
    assert torch.equal(out["bn.weight"], torch.zeros(2, dtype=F64))
    assert all(torch.equal(direction[k], before[k]) for k in direction)


def test_random_directions_have_the_filter_norms_of_the_weights():
    params = _toy_params()
    d = random_direction(params, torch.Generator().manual_seed(0))
    for name in ("conv.weight", "lin.weight"):
        assert torch.allclose(d[name].flatten(1).norm(dim=1), params[name].flatten(1).norm(dim=1), atol=1e-12)


def test_normalisation_refuses_mismatched_names_and_shapes():
    params = _toy_params()
    with pytest.raises(ValueError, match="differ in names"):
        normalize_filters({"conv.weight": params["conv.weight"]}, params)
    bad = {**params, "lin.weight": torch.zeros(2, 3, dtype=F64)}
    with pytest.raises(ValueError, match="lin.weight"):
        normalize_filters(bad, params)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape")
    toy = "folder:" + str(write_toy_folder(root / "toy", classes=5, per_class=5, size=16))
    train(TrainConfig(source=toy, ways=3, shots=1, queries=2, hidden=4, meta_batch=2, iterations=2,
                      eval_episodes=0, eval_inner_steps=2, threads=1, out=str(root / "run")), progress=None)
    return str(root / "run")


@pytest.mark.parametrize("two_d", [False, True])
def test_landscape_pngs_and_numbers(checkpoint, tmp_path, two_d):
    result = run(LandscapeConfig(checkpoint=checkpoint, points=3, two_d=two_d))
    path = plot(result, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(path.with_suffix(".json").read_text())
    assert saved["coords"] == [-1.0, 0.0, 1.0]
    if two_d:
        assert len(saved["losses"]) == 3 and all(len(row) == 3 for row in saved["losses"])
    else:
        assert len(saved["losses"]) == 3


def test_the_centre_of_the_landscape_is_the_evaluated_loss(checkpoint):
    """At (0, 0) the landscape is the query loss of evaluation episode 0: the same code path."""
    from experiments.fewshot.evaluate import evaluate_checkpoint
    result = run(LandscapeConfig(checkpoint=checkpoint, points=3))
    assert result.losses[1] == pytest.approx(evaluate_checkpoint(checkpoint, episodes=1).loss, abs=1e-12)


@pytest.mark.parametrize("out, written", [("l4", "l4.png"), ("dir/l4", "dir/l4.png"), ("l1.png", "l1.png"),
                                          ("l2.PDF", "l2.PDF"), ("l5.svg", "l5.svg")])
def test_the_output_name_is_the_file_written_and_png_when_it_has_no_extension(out, written):
    assert str(plot_path(out)) == written


@pytest.mark.parametrize("out", ["l3.txt", "l3.json", "run.v2", ""])
def test_an_output_name_plot_cannot_write_is_refused_naming_it(out):
    with pytest.raises(ValueError, match="--out") as error:
        plot_path(out)
    assert repr(out) in str(error.value) and "\n" not in str(error.value)


def test_plot_returns_the_file_it_wrote_for_a_name_without_extension(checkpoint, tmp_path, capsys):
    result = run(LandscapeConfig(checkpoint=checkpoint, points=2))
    path = plot(result, tmp_path / "l4")
    assert path == tmp_path / "l4.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "l4.json").is_file() and not (tmp_path / "l4").exists()
    with pytest.raises(ValueError, match="l3.txt"):
        plot(result, tmp_path / "l3.txt")
    assert not (tmp_path / "l3.json").exists()


def test_landscape_reports_grid_points_done_on_stderr(checkpoint, capsys):
    run(LandscapeConfig(checkpoint=checkpoint, points=2, two_d=True))
    lines = capsys.readouterr().err.strip().splitlines()
    # stderr is not a terminal here: a line every 10 s and one at the end
    assert lines and lines[-1].startswith("landscape: 4/4 grid points (")
    run(LandscapeConfig(checkpoint=checkpoint, points=2), progress=False)
    assert capsys.readouterr().err == ""


def test_the_command_prints_the_files_it_wrote(checkpoint, tmp_path, capsys):
    from experiments.cli import main
    assert main(["landscape", checkpoint, "--points", "2", "--out", str(tmp_path / "l4")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'l4.png'} and {tmp_path / 'l4.json'}" in out
    assert (tmp_path / "l4.png").is_file()


def test_the_command_refuses_a_bad_extension_before_computing(checkpoint, tmp_path, capsys, monkeypatch):
    import experiments.fewshot.landscape as landscape
    from experiments.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("the landscape was computed before --out was checked")

    monkeypatch.setattr(landscape, "run", no_work)
    assert main(["landscape", checkpoint, "--out", str(tmp_path / "l3.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "l3.txt" in err[0]
