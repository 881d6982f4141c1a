"""Meta-test accuracy: the 95% interval by hand, reproducibility, the algorithm's own inner loop."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest
import torch

from experiments.cli import main
from experiments.fewshot.checkpoint import load_checkpoint, save_checkpoint
from experiments.fewshot.config import TrainConfig
from experiments.fewshot.evaluate import Z_95, confidence_interval, evaluate_checkpoint
from experiments.fewshot.toy import write_toy_folder
from experiments.fewshot.train import run


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sharp-low run on a toy folder: (checkpoint directory, its config)."""
    root = tmp_path_factory.mktemp("eval")
    toy = "folder:" + str(write_toy_folder(root / "toy", classes=6, per_class=6, size=16))
    config = TrainConfig(algorithm="sharp-low", source=toy, ways=3, shots=1, queries=3, hidden=4,
                         meta_batch=2, iterations=3, eval_episodes=0, eval_inner_steps=3,
                         checkpoint_every=3, threads=1, task_batching="vmap", out=str(root / "run"))
    run(config, progress=None)
    return root / "run", config


def test_confidence_interval_equals_the_hand_computation():
    accuracies = [0.6, 0.8, 1.0, 0.8, 0.4]
    mean = sum(accuracies) / 5                                            # 0.72
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (5 - 1))  # ddof = 1: sqrt(0.052)
    got_mean, got_std, got_ci = confidence_interval(accuracies)
    assert got_mean == pytest.approx(0.72, abs=1e-15)
    assert got_std == pytest.approx(math.sqrt(0.052), abs=1e-15) == pytest.approx(std, abs=1e-15)
    assert got_ci == pytest.approx(1.96 * math.sqrt(0.052) / math.sqrt(5), abs=1e-15)
    assert Z_95 == 1.96


def test_confidence_interval_of_identical_values_is_zero_and_of_one_value_undefined():
    assert confidence_interval([0.9] * 4)[1:] == (0.0, 0.0)
    mean, std, ci = confidence_interval([0.5])
    assert mean == 0.5 and math.isnan(std) and math.isnan(ci)
    with pytest.raises(ValueError, match="non-empty"):
        confidence_interval([])


def test_the_reported_interval_is_computed_from_the_per_episode_accuracies(trained):
    result = evaluate_checkpoint(trained[0], episodes=7)
    assert len(result.accuracies) == 7
    assert (result.accuracy, result.std, result.ci95) == confidence_interval(result.accuracies)


def test_the_same_seed_gives_the_same_number_and_another_seed_other_episodes(trained):
    first = evaluate_checkpoint(trained[0], episodes=6, seed=3)
    again = evaluate_checkpoint(trained[0], episodes=6, seed=3)
    other = evaluate_checkpoint(trained[0], episodes=6, seed=4)
    assert first == again
    assert first.accuracies != other.accuracies


def test_meta_test_uses_the_algorithms_inner_loop_with_the_requested_steps(trained):
    one = evaluate_checkpoint(trained[0], episodes=4, inner_steps=1)
    default = evaluate_checkpoint(trained[0], episodes=4)
    assert default.inner_steps == trained[1].eval_inner_steps == 3
    assert one.inner_steps == 1 and one.loss != default.loss


def test_evaluation_refuses_a_source_with_other_image_sizes(trained, tmp_path):
    other = "folder:" + str(write_toy_folder(tmp_path / "big", classes=4, per_class=3, size=20))
    with pytest.raises(ValueError, match=r"images \(1, 20, 20\).*\(1, 16, 16\)"):
        evaluate_checkpoint(trained[0], source=other, episodes=2)


def test_a_config_round_trips_through_its_dict(trained):
    config = trained[1]
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="ways must be an integer >= 2, got 1"):
        replace(config, ways=1)


def _edited_copy(trained_dir, path, **changes):
    """A copy of the trained checkpoint with top-level entries (or config fields, given as
    ``config=dict``) replaced."""
    payload = load_checkpoint(trained_dir)
    config = {**payload["config"], **changes.pop("config", {})}
    payload = {k: v for k, v in payload.items() if k not in ("format", "rng")}
    save_checkpoint(path, {**payload, "config": config, **changes})
    return str(path)


def _strict(text):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_one_episode_reports_the_interval_as_undefined_never_nan(trained, capsys):
    checkpoint = str(trained[0])
    assert main(["eval", checkpoint, "--episodes", "1", "--json", "--quiet"]) == 0
    result = _strict(capsys.readouterr().out)
    assert result["ci95"] is None and result["std"] is None and result["episodes"] == 1
    assert main(["eval", checkpoint, "--episodes", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "+- n/a (95% CI, 1 3-way" in printed and "nan" not in printed


def test_evaluation_shows_episodes_done_on_stderr_unless_quiet(trained, capsys):
    checkpoint = str(trained[0])
    assert main(["eval", checkpoint, "--episodes", "20"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    # stderr is not a terminal here: a line per tenth of the episodes
    assert len(lines) == 10 and lines[-1].startswith("test episode 20/20") and "episodes/s" in lines[-1]
    assert main(["eval", checkpoint, "--episodes", "20", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_devices_are_checked_on_construction_naming_the_value(trained):
    for device in ("cudaXYZ", "cuda:99", "mps", "", None):
        with pytest.raises(ValueError, match=re.escape(repr(device))):
            replace(trained[1], device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda': CUDA is not available"):
            replace(trained[1], device="cuda")


@pytest.mark.parametrize("device", ["cuda", "cudaXYZ", "cuda:99"])
def test_train_with_an_unusable_device_exits_2_naming_it(device, trained, tmp_path, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    argv = ["train", "--source", trained[1].source, "--device", device, "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and repr(device) in lines[0]
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_from_an_unusable_device_is_evaluated_on_the_cpu_saying_so(trained, tmp_path, capsys):
    elsewhere = _edited_copy(trained[0], tmp_path / "gpu.pt", config={"device": "cuda:99", "precision": "tf32"})
    assert main(["eval", elsewhere, "--episodes", "3", "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    notes = captured.err.strip().splitlines()
    assert len(notes) == 2 and all(n.startswith("note: ") for n in notes)
    assert "'cuda:99'" in notes[0] and "using cpu" in notes[0] and "using float32" in notes[1]
    here = evaluate_checkpoint(trained[0], episodes=3)
    assert _strict(captured.out)["accuracy"] == here.accuracy
    assert main(["eval", elsewhere, "--episodes", "3", "--quiet", "--device", "cpu"]) == 0
    assert "cuda:99" not in capsys.readouterr().err           # asked for: no notice of the checkpoint's
    assert main(["eval", elsewhere, "--device", "cudaXYZ"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'cudaXYZ'" in lines[0]
    out = tmp_path / "l.png"
    assert main(["landscape", elsewhere, "--points", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["landscape", elsewhere, "--points", "2", "--device", "cuda:99", "--out", str(out)]) == 2
    assert "'cuda:99'" in capsys.readouterr().err


def test_a_cuda_graph_run_is_evaluated_and_plotted_on_the_cpu(trained, tmp_path, capsys):
    """``--cuda-graph`` changes the speed of training, not its numbers, and evaluation never
    replays a meta-gradient: its checkpoint evaluates anywhere, as the same run without it."""
    graphed = _edited_copy(trained[0], tmp_path / "graphed.pt", config={"device": "cuda:99", "cuda_graph": True})
    assert main(["eval", graphed, "--episodes", "3", "--quiet", "--json"]) == 0
    assert _strict(capsys.readouterr().out)["accuracy"] == evaluate_checkpoint(trained[0], episodes=3).accuracy
    out = tmp_path / "g.png"
    assert main(["landscape", graphed, "--points", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert out.is_file()


def test_a_checkpoint_whose_shapes_do_not_match_its_config_is_refused_naming_both(trained, tmp_path, capsys):
    wrong = _edited_copy(trained[0], tmp_path / "wrong.pt", config={"hidden": 8})
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {wrong} is inconsistent: params['conv1.weight'] "
                                                   "has shape [4, 1, 3, 3], Conv-4 for ways=3, hidden=8")):
        load_checkpoint(wrong)
    assert main(["eval", wrong, "--episodes", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "conv1.weight" in lines[0]
    payload = load_checkpoint(trained[0])
    renamed = {("conv9.weight" if k == "conv1.weight" else k): v for k, v in payload["params"].items()}
    with pytest.raises(ValueError, match=r"unexpected \['conv9.weight'\], missing \['conv1.weight'\]"):
        load_checkpoint(_edited_copy(trained[0], tmp_path / "renamed.pt", params=renamed))


@pytest.mark.parametrize("optimizer, named", [
    ({"param_groups": []}, "optimizer must be a dict with keys ['param_groups', 'state']"),
    ({"state": {}, "param_groups": [{"params": [0, 1]}]}, "param_groups cover parameters [0, 1]"),
    ({"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"params": list(range(14))}]},
     "optimizer state[0]['exp_avg'] has shape [2]"),
])
def test_a_malformed_optimizer_state_is_refused_naming_it(optimizer, named, trained, tmp_path, capsys):
    path = tmp_path / "run" / "checkpoint.pt"
    _edited_copy(trained[0], path, optimizer=optimizer)
    with pytest.raises(ValueError, match=re.escape(named)):
        load_checkpoint(path)
    argv = ["train", "--resume", "--out", str(path.parent), "--iterations", "4", "--quiet"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and named in lines[0]
