"""Meta-test accuracy: the 95% interval by hand, reproducibility, the algorithm's own inner loop."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

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
