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

Writing goes to a temporary file in the same directory, then ``os.replace``: a run killed
at any moment leaves the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
RNG_NOTE = "none saved: episodes come from (seed, iteration, task), SWP masks from (seed, iteration)"


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"format": CHECKPOINT_FORMAT, "rng": RNG_NOTE, **payload}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make results unreadable to others
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


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
    return payload
