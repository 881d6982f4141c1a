"""Every hyper-parameter is checked where it enters, and the message names the bad value."""

import pytest
import torch

from testbed import SharpMAMLConfig, Tasks, algorithms, meta_gradient, sam_gradient
from testbed.optim import MetaOptimizer, sgd_update


@pytest.mark.parametrize("kwargs, fragment", [
    ({"beta_low": 0.0}, "beta_low must be > 0, got 0.0"),
    ({"beta_low": float("nan")}, "beta_low must be finite"),
    ({"beta_low": 0.1, "inner_steps": 0}, "inner_steps must be >= 1, got 0"),
    ({"beta_low": 0.1, "inner_steps": 1.5}, "inner_steps must be an integer, got 1.5"),
    ({"beta_low": 0.1, "alpha_low": -0.01}, "alpha_low must be >= 0, got -0.01"),
    ({"beta_low": 0.1, "alpha_up": -1}, "alpha_up must be >= 0, got -1"),
    ({"beta_low": 0.1, "alpha_low": 0.1, "sds_fraction": 0.0}, "sds_fraction must lie in (0.0, 1.0], got 0.0"),
    ({"beta_low": 0.1, "alpha_low": 0.1, "sds_fraction": 1.5}, "sds_fraction must lie in (0.0, 1.0], got 1.5"),
    ({"beta_low": 0.1, "alpha_low": 0.1, "swp_keep": -0.5}, "swp_keep must lie in (0.0, 1.0], got -0.5"),
    ({"beta_low": 0.1, "swp_keep": 0.5}, "need alpha_low > 0"),
    ({"beta_low": 0.1, "task_batching": "threads"}, "task_batching must be one of vmap, loop; got 'threads'"),
    ({"beta_low": 0.1, "adapt_names": "head"}, "adapt_names must be a non-empty tuple"),
])
def test_config_rejects_bad_hyper_parameters_with_the_value_named(kwargs, fragment):
    with pytest.raises(ValueError) as exc:
        SharpMAMLConfig(**kwargs)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("name, kwargs, fragment", [
    ("sharp-low", {"alpha_up": 0.1}, "sharp-low has alpha_up = 0 by definition, got alpha_up=0.1"),
    ("sharp-up", {"alpha_low": 0.1}, "sharp-up has alpha_low = 0 by definition"),
    ("maml", {"alpha_low": 0.1}, "maml has alpha_low = 0 by definition"),
    ("sharp-both", {"alpha_low": 0.0}, "sharp-both needs alpha_low > 0, got alpha_low=0.0"),
    ("anil", {}, "pass head_names"),
    ("maml", {"swp_keep": 0.5}, "apply to esharp and esharp-anil only"),
    ("maml", {"sam_alpha": 0.1}, "sam_alpha=0.1 applies to sam only, not maml"),
    ("maml", {"fd_delta": 1e-3}, "fd_delta=0.001 applies to hf-maml only, not maml"),
    ("hf-maml", {"fd_delta": -1e-3}, "fd_delta must be > 0, got -0.001"),
    ("imaml", {"cg_steps": 0}, "cg_steps must be >= 1, got 0"),
    ("imaml", {"imaml_lambda": 0.0}, "imaml_lambda must be > 0, got 0.0"),
    ("sharp-low", {"rho1": 0.1}, "rho1=0.1 applies to agnostic-sam only"),
    ("protonet", {}, "algorithm must be one of"),
    ("sam", {"sam_alpha": -1.0}, "sam_alpha must be >= 0, got -1.0"),
])
def test_named_algorithms_reject_contradictory_settings(name, kwargs, fragment):
    with pytest.raises(ValueError) as exc:
        algorithms.make(name, beta_low=0.1, **kwargs)
    assert fragment in str(exc.value)


def test_mismatched_task_batches_are_rejected():
    loss = lambda p, b: (p["w"] * b["x"]).sum(-1)  # noqa: E731
    tasks = Tasks({"x": torch.ones(3, 2, 2)}, {"x": torch.ones(4, 2, 2)})
    with pytest.raises(ValueError, match="same leading task dimension"):
        meta_gradient(loss, {"w": torch.ones(2)}, tasks, SharpMAMLConfig(beta_low=0.1))


def test_optimizers_reject_bad_values():
    with pytest.raises(ValueError, match="beta_up must be > 0, got -0.1"):
        sgd_update({"w": torch.ones(1)}, {"w": torch.ones(1)}, -0.1)
    with pytest.raises(ValueError, match="unknown torch.optim optimizer 'adamm'"):
        MetaOptimizer({"w": torch.ones(1)}, "adamm", lr=0.1)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        MetaOptimizer({"w": torch.ones(1)}, "adam", lr=0)
    with pytest.raises(ValueError, match="alpha must be >= 0, got -0.5"):
        sam_gradient(lambda p, b: p["w"], {"w": torch.ones(1)}, Tasks({"x": torch.ones(1, 1)},
                                                                     {"x": torch.ones(1, 1)}), -0.5)
