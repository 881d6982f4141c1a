"""Loss landscapes: Li et al. (2018) filter normalisation and the plots."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.fewshot.config import TrainConfig
from experiments.fewshot.landscape import LandscapeConfig, normalize_filters, plot, random_direction, run
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
