"""Conv-4: shapes, batch norm with batch statistics, and vmap/loop/finite-difference agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from experiments.data import FewShotSource, episode_batch
from experiments.fewshot.common import as_tasks, build_algorithm, derived_generator
from experiments.fewshot.model import (HEAD_NAMES, MIN_IMAGE_SIZE, batch_norm, conv4_forward,
                                       cross_entropy_loss, feature_size, init_conv4)
from tolerances import FD_STEP, FINITE_DIFFERENCE, VMAP_VS_LOOP

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _source(classes: int = 6, per_class: int = 4, size: int = 16, seed: int = 0) -> FewShotSource:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(classes * per_class, 1, size, size), dtype=np.uint8)
    return FewShotSource.from_counts(images, [per_class] * classes, [f"c{i}" for i in range(classes)])


def _params(hidden: int = 4, ways: int = 3, size: int = 16, dtype=F64, seed: int = 0) -> dict:
    return init_conv4(ways, 1, size, hidden, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("ways, channels, size, hidden", [(5, 1, 28, 64), (3, 3, 16, 8), (20, 1, 28, 4)])
def test_parameter_and_logit_shapes(ways, channels, size, hidden):
    params = init_conv4(ways, channels, size, hidden, generator=torch.Generator().manual_seed(0))
    assert params["conv1.weight"].shape == (hidden, channels, 3, 3)
    for i in (2, 3, 4):
        assert params[f"conv{i}.weight"].shape == (hidden, hidden, 3, 3)
    for i in (1, 2, 3, 4):
        assert params[f"bn{i}.weight"].shape == params[f"bn{i}.bias"].shape == (hidden,)
    assert params["head.weight"].shape == (ways, hidden * feature_size(size) ** 2)
    assert set(HEAD_NAMES) <= set(params) and all(v.dtype == torch.float32 for v in params.values())
    logits = conv4_forward(params, torch.rand(7, channels, size, size))
    assert logits.shape == (7, ways)


def test_omniglot_images_reduce_to_one_pixel_and_small_images_are_refused():
    assert feature_size(28) == 1 and feature_size(84) == 5
    with pytest.raises(ValueError, match=r"image_size must be >= 16 .*got 14"):
        init_conv4(5, 1, MIN_IMAGE_SIZE - 2, 8)


def test_init_is_reproducible_from_the_generator():
    a, b, c = _params(seed=1), _params(seed=1), _params(seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_batch_norm_matches_torch_batch_norm_with_batch_statistics():
    x = torch.randn(6, 4, 5, 5, dtype=F64) * 3 + 1
    w, b = torch.rand(4, dtype=F64) + 0.5, torch.randn(4, dtype=F64)
    expected = F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    assert torch.allclose(batch_norm(x, w, b), expected, atol=1e-12, rtol=0)
    unit = batch_norm(x, torch.ones(4, dtype=F64), torch.zeros(4, dtype=F64))
    assert torch.allclose(unit.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=F64), atol=1e-12)
    assert torch.allclose(unit.var(dim=(0, 2, 3), unbiased=False), torch.ones(4, dtype=F64), atol=1e-4)


def test_a_query_prediction_depends_on_the_other_query_images():
    """Batch statistics: transductive over the batch (as MAML); no running statistics."""
    params = _params()
    x = torch.rand(5, 1, 16, 16, dtype=F64)
    changed = x.clone()
    changed[1:] = torch.rand(4, 1, 16, 16, dtype=F64)
    alone, with_others = conv4_forward(params, x)[0], conv4_forward(params, changed)[0]
    assert not torch.allclose(alone, with_others, atol=1e-6)
    # ...but not on their order: the statistics are a mean over the batch
    order = torch.tensor([0, 3, 1, 4, 2])
    assert torch.allclose(conv4_forward(params, x[order]), conv4_forward(params, x)[order], atol=1e-12)


def test_forward_keeps_no_state_and_leaves_its_inputs_alone():
    params = _params()
    before = {k: v.clone() for k, v in params.items()}
    x = torch.rand(4, 1, 16, 16, dtype=F64)
    x_before = x.clone()
    first = conv4_forward(params, x)
    conv4_forward(params, torch.rand(9, 1, 16, 16, dtype=F64))  # another batch in between
    assert torch.equal(conv4_forward(params, x), first)
    assert all(torch.equal(params[k], before[k]) for k in params) and torch.equal(x, x_before)


def test_cross_entropy_is_per_sample():
    params = _params()
    batch = {"x": torch.rand(6, 1, 16, 16, dtype=F64), "y": torch.tensor([0, 1, 2, 0, 1, 2])}
    losses = cross_entropy_loss(params, batch)
    expected = F.cross_entropy(conv4_forward(params, batch["x"]), batch["y"], reduction="none")
    assert losses.shape == (6,) and torch.equal(losses, expected)


def _tasks(meta_batch: int = 3):
    return as_tasks(episode_batch(_source(), 3, 1, 2, meta_batch, seed=0, index=0, dtype=F64))


@pytest.mark.parametrize("name", ["maml", "fomaml", "sharp-low", "sharp-up", "sharp-both", "anil",
                                  "sharp-anil", "esharp", "esharp-anil"])
def test_vmap_and_loop_meta_gradients_agree_on_conv4(name):
    params, tasks = _params(), _tasks()
    grads = {}
    for batching in ("loop", "vmap"):
        algorithm = build_algorithm(name, beta_low=0.4, inner_steps=2, task_batching=batching)
        step = algorithm.meta_gradient(cross_entropy_loss, params, tasks, generator=derived_generator(0, 1, 0))
        grads[batching] = step
    scale = max(g.abs().max().item() for g in grads["loop"].grad.values())
    assert scale > 1e-3  # a gradient that is not trivially zero
    for k in params:
        err = (grads["loop"].grad[k] - grads["vmap"].grad[k]).abs().max().item()
        assert err <= VMAP_VS_LOOP[F64], (k, err)
    assert abs(grads["loop"].loss - grads["vmap"].loss) <= VMAP_VS_LOOP[F64]


def test_maml_meta_gradient_of_conv4_matches_finite_differences():
    params, tasks = _params(), _tasks(meta_batch=2)
    algorithm = build_algorithm("maml", beta_low=0.4, inner_steps=1, task_batching="vmap")
    g = algorithm.meta_gradient(cross_entropy_loss, params, tasks).grad
    loop = build_algorithm("maml", beta_low=0.4, inner_steps=1, task_batching="loop")

    def objective(p):
        return loop.meta_gradient(cross_entropy_loss, p, tasks).loss.item()

    for name in ("conv1.weight", "bn2.weight", "bn4.bias", "head.weight"):
        for index in (0, 3):
            e = torch.zeros_like(params[name]).flatten()
            e[index] = FD_STEP
            e = e.view_as(params[name])
            up, down = dict(params), dict(params)
            up[name], down[name] = params[name] + e, params[name] - e
            fd = (objective(up) - objective(down)) / (2 * FD_STEP)
            assert abs(fd - g[name].flatten()[index].item()) <= FINITE_DIFFERENCE, (name, index)


def _one_block_meta_gradient(norm, batched: bool) -> dict:
    """Meta-gradient of a one-block conv net, inner gradient under vmap (or a loop)."""
    torch.manual_seed(0)
    xs, ys = torch.randn(3, 3, 2, 8, 8, dtype=F64), torch.randint(0, 3, (3, 3))
    xq, yq = torch.randn(3, 4, 2, 8, 8, dtype=F64), torch.randint(0, 3, (3, 4))
    p = {"w": torch.randn(4, 2, 3, 3, dtype=F64) * 0.5, "g": torch.rand(4, dtype=F64) + 0.5,
         "b": torch.randn(4, dtype=F64) * 0.1, "h": torch.randn(3, 64, dtype=F64) * 0.3}

    def loss(q, x, y):
        h = F.max_pool2d(F.relu(norm(F.conv2d(x, q["w"], padding=1), q["g"], q["b"])), 2)
        return F.cross_entropy(h.flatten(1) @ q["h"].T, y)

    def task_value(q, a, b, c, d):
        g = grad(loss)(q, a, b)
        return loss({k: q[k] - 0.4 * g[k] for k in q}, c, d)

    if batched:
        return grad(lambda q: vmap(task_value, in_dims=(None, 0, 0, 0, 0))(q, xs, ys, xq, yq).mean())(p)
    return grad(lambda q: torch.stack([task_value(q, xs[m], ys[m], xq[m], yq[m]) for m in range(3)]).mean())(p)


def test_torch_batch_norm_second_derivative_under_vmap_is_wrong_which_is_why_we_write_it_out():
    """Negative control for the vmap/loop test: F.batch_norm (torch 2.13) disagrees there.

    If this starts failing, torch has fixed its batch-norm double backward under vmap (compare
    pytorch/functorch#534) and ``model.batch_norm`` could call ``F.batch_norm`` again.
    """
    def native(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)

    ours = max((_one_block_meta_gradient(batch_norm, True)[k] - _one_block_meta_gradient(batch_norm, False)[k])
               .abs().max().item() for k in ("w", "g", "b", "h"))
    theirs = max((_one_block_meta_gradient(native, True)[k] - _one_block_meta_gradient(native, False)[k])
                 .abs().max().item() for k in ("w", "g", "b", "h"))
    assert ours <= VMAP_VS_LOOP[F64]
    assert theirs > 1e-3
