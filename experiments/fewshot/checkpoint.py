"""Checkpoint files: written atomically, read with ``weights_only=True``.

A checkpoint is one ``torch.save`` dict:

    format        CHECKPOINT_FORMAT
    iteration     meta-iterations completed (the next one to run is this index)
    params        the meta-parameters theta (float32 tensors)
    optimizer     ``MetaOptimizer.state_dict()`` (Adam's moments and step counts)
    config        the :class:`~experiments.fewshot.config.TrainConfig` as a dict
    image_shape   (C, H, W) of the training images
    environment   device, torch version, threads, git commit at the time of writing
    rng           how randomness is obtained: every draw (episodes, SWP masks) is derived
                  from ``(seed, iteration)``, so there is no generator state to save

    train_wall_s  training wall time of the run up to this checkpoint, summed over the
                  processes that ran it (absent in older checkpoints)
    timed_from    the iteration ``train_wall_s`` counts from (0 unless resumed from an
                  older checkpoint without it)
    loss_window   meta-losses of the iterations since the last logged one, so that a resumed
                  run logs the same means (absent in older checkpoints)
    final_loss    the last logged mean meta-loss, or None (absent in older checkpoints)

Writing goes to a temporary file in the same directory, then ``os.replace``: a run killed
at any moment leaves the previous checkpoint or the new one, never a torn file.

Reading checks the structure: parameter names and shapes against a fresh
:func:`~experiments.fewshot.model.init_conv4` of the saved config and image shape, and the
optimizer state's layout against the parameters; a mismatch is a ValueError naming the file
and the first difference.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
RNG_NOTE = "none saved: episodes come from (seed, iteration, task), SWP masks from (seed, iteration)"


def write_atomically(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, sync it, then rename it over
    ``path``: a reader (or a run killed half-way) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make results unreadable to others
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (:func:`write_atomically`)."""
    return write_atomically(
        path, lambda stream: torch.save({"format": CHECKPOINT_FORMAT, "rng": RNG_NOTE, **payload}, stream))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint; ValueError naming the file if it is missing or not one of ours."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a format-{CHECKPOINT_FORMAT} few-shot checkpoint")
    missing = {"iteration", "params", "optimizer", "config", "image_shape"} - set(payload)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)}")
    problem = _structure_problem(payload)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is inconsistent: {problem}")
    return payload


def _is_int(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _structure_problem(payload: dict[str, Any]) -> str | None:
    """The first way ``payload`` departs from what training writes, or None."""
    from experiments.fewshot.model import init_conv4

    iteration, params, config = payload["iteration"], payload["params"], payload["config"]
    if not _is_int(iteration, 0):
        return f"iteration must be an integer >= 0, got {iteration!r}"
    if not isinstance(config, dict):
        return f"config must be a dict, got {type(config).__name__}"
    shape = payload["image_shape"]
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(_is_int(v, 1) for v in shape)):
        return f"image_shape must be [C, H, W], got {shape!r}"
    for name in ("ways", "hidden"):
        if not _is_int(config.get(name), 1):
            return f"config {name} must be an integer >= 1, got {config.get(name)!r}"
    if not isinstance(params, dict) or not all(isinstance(v, torch.Tensor) for v in params.values()):
        return "params must be a dict of tensors"
    channels, height, width = shape
    if height != width:
        return f"image_shape {list(shape)} is not square"
    try:
        expected = init_conv4(config["ways"], channels, height, config["hidden"])
    except ValueError as error:
        return str(error)
    if list(params) != list(expected):
        extra, lacking = sorted(set(params) - set(expected)), sorted(set(expected) - set(params))
        return (f"parameter names differ from Conv-4's for ways={config['ways']}, hidden={config['hidden']}: "
                f"unexpected {extra}, missing {lacking}" if extra or lacking else
                f"parameters are out of order: {list(params)}")
    for name, tensor in params.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            return (f"params[{name!r}] has shape {list(tensor.shape)}, Conv-4 for ways={config['ways']}, "
                    f"hidden={config['hidden']}, images {list(shape)} has {list(expected[name].shape)}")
        if not tensor.is_floating_point():
            return f"params[{name!r}] has dtype {tensor.dtype}, not a floating type"
    return _statistics_problem(payload) or _optimizer_problem(payload["optimizer"], list(params.values()))


def _statistics_problem(payload: dict[str, Any]) -> str | None:
    """How the optional training statistics depart from their types, or None."""
    import math

    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    wall, loss, window = payload.get("train_wall_s", 0.0), payload.get("final_loss"), payload.get("loss_window", [])
    if not (number(wall) and wall >= 0):
        return f"train_wall_s must be a finite number >= 0, got {wall!r}"
    timed_from = payload.get("timed_from", 0)
    if not (_is_int(timed_from, 0) and timed_from <= payload["iteration"]):
        return f"timed_from must be an integer from 0 to the iteration, got {timed_from!r}"
    if loss is not None and not number(loss):
        return f"final_loss must be a finite number or None, got {loss!r}"
    if not (isinstance(window, list) and all(number(v) for v in window)):
        return "loss_window must be a list of finite numbers"
    return None


def _optimizer_problem(optimizer: object, params: list[torch.Tensor]) -> str | None:
    """How ``optimizer`` departs from a ``torch.optim`` state dict over ``params``, or None."""
    if not isinstance(optimizer, dict) or set(optimizer) != {"state", "param_groups"}:
        keys = sorted(optimizer) if isinstance(optimizer, dict) else type(optimizer).__name__
        return f"optimizer must be a dict with keys ['param_groups', 'state'], got {keys}"
    groups, state = optimizer["param_groups"], optimizer["state"]
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups)):
        return "optimizer param_groups must be a non-empty list of dicts"
    indices = [i for g in groups for i in g.get("params", [])]
    if sorted(indices) != list(range(len(params))):
        return f"optimizer param_groups cover parameters {indices}, expected 0 to {len(params) - 1}"
    if not isinstance(state, dict):
        return f"optimizer state must be a dict, got {type(state).__name__}"
    for index, entry in state.items():
        if not (_is_int(index, 0) and index < len(params)):
            return f"optimizer state has an entry for parameter {index!r}, expected 0 to {len(params) - 1}"
        if not isinstance(entry, dict):
            return f"optimizer state[{index}] must be a dict, got {type(entry).__name__}"
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                return (f"optimizer state[{index}][{key!r}] has shape {list(value.shape)}, "
                        f"its parameter {list(params[index].shape)}")
    return None
