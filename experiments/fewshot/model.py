"""Conv-4 (Vinyals et al. 2016; MAML, Finn et al. 2017; Abbas et al. 2022, Section 5.1) as pure functions.

Architecture: 4 blocks of ``3x3 conv (hidden filters, padding 1) -> batch norm (affine) ->
ReLU -> 2x2 max-pool``, flatten, linear head ``head.weight``/``head.bias`` onto ``ways``
logits.  The parameter dict is what :func:`conv4_forward` takes; nothing is stored anywhere
else, so the model is a pure function of ``(params, x)`` and works under ``torch.func``
transforms (``grad``, ``vmap`` over tasks, second-order derivatives).

Convolutions have no bias: batch norm subtracts the per-channel batch mean right after the
convolution, so a conv bias would cancel exactly (zero gradient, a dead parameter).

Batch norm (the decision, as in the original MAML code): **batch statistics always**.  Every
call normalises each channel with the mean and (biased) variance of the batch it is given,
over (batch, height, width); there are no running statistics and no train/eval mode.  So:

* adaptation normalises the support set with the support set's own statistics, the query
  loss normalises the query set with the query set's own statistics, and meta-test does the
  same (transductive over the query set: one query image's prediction depends on the other
  query images of its episode);
* no call changes any state: evaluating the same episode twice gives identical numbers.

The statistics are computed by hand (no buffers, nothing updated in place), which vmaps over
tasks and, unlike ``F.batch_norm``, differentiates twice correctly under ``vmap`` (see
:func:`batch_norm`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

BLOCKS = 4
"""Number of conv blocks."""
BN_EPS = 1e-5
"""Batch-norm epsilon: PyTorch's default (MAML's TF ``batch_norm`` used 1e-3)."""
HEAD_NAMES = ("head.weight", "head.bias")
"""The classifier's parameters: what ANIL fine-tunes (Raghu et al. 2020; eq. 19)."""
MIN_IMAGE_SIZE = 2 ** BLOCKS
"""Smallest image side that survives four 2x2 max-pools (16 -> 8 -> 4 -> 2 -> 1)."""


def feature_size(image_size: int) -> int:
    """Side of the last feature map: ``image_size`` halved (floor) four times."""
    side = image_size
    for _ in range(BLOCKS):
        side //= 2
    return side


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def init_conv4(ways: int, in_channels: int = 1, image_size: int = 28, hidden: int = 64, *,
               generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A fresh Conv-4 parameter dict.

    Conv weights: Xavier-uniform (as MAML's ``xavier_initializer_conv2d``); batch-norm weight 1
    and bias 0; head weight uniform on ``+-1/sqrt(fan_in)`` (PyTorch's ``nn.Linear``) and bias
    0.  ``generator`` makes the draw reproducible.

    Names: ``conv{i}.weight`` [hidden, c_in, 3, 3], ``bn{i}.weight``, ``bn{i}.bias`` [hidden]
    for i = 1..4, then ``head.weight`` [ways, hidden * s * s] and ``head.bias`` [ways] with
    ``s = feature_size(image_size)``.
    """
    _check_positive_int("ways", ways)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("hidden", hidden)
    _check_positive_int("image_size", image_size)
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be >= {MIN_IMAGE_SIZE} for {BLOCKS} 2x2 max-pools, got {image_size}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    params: dict[str, torch.Tensor] = {}
    c_in = in_channels
    for i in range(1, BLOCKS + 1):
        fan_in, fan_out = c_in * 9, hidden * 9
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = torch.empty(hidden, c_in, 3, 3, dtype=dtype).uniform_(-bound, bound, generator=generator)
        params[f"conv{i}.weight"] = w
        params[f"bn{i}.weight"] = torch.ones(hidden, dtype=dtype)
        params[f"bn{i}.bias"] = torch.zeros(hidden, dtype=dtype)
        c_in = hidden
    features = hidden * feature_size(image_size) ** 2
    bound = 1.0 / math.sqrt(features)
    params["head.weight"] = torch.empty(ways, features, dtype=dtype).uniform_(-bound, bound, generator=generator)
    params["head.bias"] = torch.zeros(ways, dtype=dtype)
    return params


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Batch norm with the statistics of ``x`` itself: ``w * (x - mean) / sqrt(var + eps) + b``.

    ``mean`` and ``var`` (biased, as in Ioffe & Szegedy 2015 at training time) are per
    channel over dims (0, 2, 3) of ``x`` [n, C, H, W].

    Written out rather than ``F.batch_norm(x, None, None, w, b, training=True)``: that gives
    the same values and first derivatives, but in torch 2.13 (CPU) its second derivative is
    wrong when the inner gradient is taken under ``vmap`` and the outer one outside it (the
    nesting of a vmapped MAML meta-gradient): off by 0.09 against finite differences on a
    one-block model, while this form agrees to 1e-9.  ``tests/test_fewshot_model.py`` keeps
    both facts under test.
    """
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
    scale = weight[None, :, None, None] * torch.rsqrt(var + BN_EPS)
    return torch.addcmul(bias[None, :, None, None], centred, scale)


def relu_max_pool(h: torch.Tensor) -> torch.Tensor:
    """Conv-4's nonlinearity and down-sampling: ReLU, then 2x2 max-pool."""
    return F.max_pool2d(F.relu(h), 2)


def conv4_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor,
                  squash=relu_max_pool) -> torch.Tensor:
    """Logits [n, ways] of images ``x`` [n, C, H, W] (batch statistics, see the module docstring).

    ``squash`` is each block's nonlinearity and 2x down-sampling (studies swap in a smooth one)."""
    h = x
    for i in range(1, BLOCKS + 1):
        h = F.conv2d(h, params[f"conv{i}.weight"], padding=1)
        h = batch_norm(h, params[f"bn{i}.weight"], params[f"bn{i}.bias"])
        h = squash(h)
    return F.linear(h.flatten(1), params["head.weight"], params["head.bias"])


def cross_entropy_loss(params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample cross-entropy [n] of ``batch = {"x": [n, C, H, W], "y": [n] int64}``.

    This is the ``loss_fn(params, batch)`` that :mod:`testbed` differentiates.
    """
    return F.cross_entropy(conv4_forward(params, batch["x"]), batch["y"], reduction="none")


def accuracy(params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Fraction of ``batch`` classified correctly (a 0-d tensor)."""
    logits = conv4_forward(params, batch["x"])
    return (logits.argmax(dim=-1) == batch["y"]).to(logits.dtype).mean()
