"""One-task loss landscapes along filter-normalised random directions (Li et al. 2018).

As in Abbas et al. 2022, Figures 1 and 4: the value plotted at ``(a, b)`` is the query loss of
one task after fine-tuning from the moved meta-parameters,

    f(a, b) = L( adapt(theta + a d1 + b d2; D_m); D'_m ),

with ``adapt`` the checkpoint's algorithm's own inner loop (``Algorithm.adapt``) and ``d1``,
``d2`` independent Gaussian directions, *filter-normalised* (Li et al. 2018, Sec. 4): for
every weight with two or more dimensions, filter ``j`` (output channel ``j`` of a conv
weight, row ``j`` of a linear weight) of the direction is rescaled to the norm of filter
``j`` of ``theta``; batch-norm parameters and biases (one-dimensional) are zero in the
directions (Li et al.'s ``ignore='biasbn'``).  The 1-D landscape is ``f(a, 0)``.

``run(config) -> LandscapeResult`` computes (reporting grid points done / total on stderr);
``plot(result, path)`` draws the image (Agg).  ``plot_path(out)`` checks an output name before
any work: its extension must be one matplotlib writes (``.png`` when it has none).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from experiments.data import resolve_source, sample_episode
from experiments.fewshot.checkpoint import load_checkpoint
from experiments.fewshot.common import (STREAM_LANDSCAPE, derived_generator, episode_metrics,
                                        evaluation_episode_seed, split_episode)
from experiments.fewshot.config import device_problem
from experiments.fewshot.evaluate import checkpoint_config


def normalize_filters(direction: Mapping[str, torch.Tensor],
                      params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Li et al. 2018 filter normalisation of ``direction`` against ``params``.

    For a tensor with ``ndim >= 2`` each slice ``[j]`` along dim 0 becomes
    ``d[j] / ||d[j]|| * ||theta[j]||`` (a zero ``d[j]`` stays zero); tensors with
    ``ndim <= 1`` (biases, batch-norm weights) become zero.  Inputs are not modified.
    """
    if set(direction) != set(params):
        raise ValueError(f"direction and params differ in names: {sorted(set(direction) ^ set(params))}")
    out = {}
    for name, theta in params.items():
        d = direction[name]
        if d.shape != theta.shape:
            raise ValueError(f"direction[{name!r}] has shape {tuple(d.shape)}, params {tuple(theta.shape)}")
        if theta.dim() <= 1:
            out[name] = torch.zeros_like(theta)
            continue
        d_norm = d.flatten(1).norm(dim=1)
        t_norm = theta.flatten(1).norm(dim=1)
        factor = torch.where(d_norm > 0, t_norm / torch.where(d_norm > 0, d_norm, 1.0), 0.0)
        out[name] = d * factor.reshape(-1, *([1] * (theta.dim() - 1)))
    return out


def random_direction(params: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A filter-normalised Gaussian direction shaped like ``params``."""
    raw = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in params.items()}
    return normalize_filters(raw, params)


@dataclass(frozen=True)
class LandscapeConfig:
    """A landscape plot.

    checkpoint:  a ``checkpoint.pt`` (or the run directory holding it).
    source:      data spec of the task; None: the checkpoint's.
    part:        split part the task is drawn from ("test").
    episode:     which evaluation episode (index ``i`` of ``testbed eval``'s episodes).
    seed:        seed of the episode and of the directions.
    points:      grid points per axis.
    span:        the grid covers ``[-span, span]`` on each axis (1.0 as in Li et al.).
    two_d:       a 2-D contour plot instead of the 1-D curve.
    inner_steps: fine-tuning steps; None: the checkpoint's ``eval_inner_steps``.
    data_root:   Omniglot root; None: the checkpoint's.
    device:      torch device of the computation; None: the checkpoint's if usable here,
                 else cpu.  The directions are drawn on the CPU, so they do not depend on it.
    """

    checkpoint: str
    source: str | None = None
    part: str = "test"
    episode: int = 0
    seed: int = 0
    points: int = 21
    span: float = 1.0
    two_d: bool = False
    inner_steps: int | None = None
    data_root: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.points, bool) or not isinstance(self.points, int) or self.points < 2:
            raise ValueError(f"points must be an integer >= 2, got {self.points!r}")
        if not (isinstance(self.span, (int, float)) and np.isfinite(self.span) and self.span > 0):
            raise ValueError(f"span must be a finite number > 0, got {self.span!r}")
        for name in ("episode", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.device is not None and device_problem(self.device) is not None:
            raise ValueError(device_problem(self.device))


@dataclass(frozen=True)
class LandscapeResult:
    """``losses[i]`` (1-D) or ``losses[i][j]`` (2-D, ``i`` along ``d1``) at ``coords``."""

    config: LandscapeConfig
    coords: tuple[float, ...]
    losses: tuple
    algorithm: str
    inner_steps: int

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "coords": list(self.coords),
                "losses": [list(row) if isinstance(row, tuple) else row for row in self.losses],
                "algorithm": self.algorithm, "inner_steps": self.inner_steps}


IMAGE_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")
"""Extensions ``plot`` writes (those of matplotlib's Agg, PDF, SVG and PS backends)."""


def plot_path(out: str | os.PathLike[str]) -> Path:
    """The image file ``plot`` writes for ``--out out``: ``out`` itself, or ``out.png`` when it has
    no extension; an extension matplotlib cannot write is a ``ValueError`` naming ``out``.
    The numbers go beside it: ``plot_path(out).with_suffix(".json")``."""
    path = Path(out)
    if str(out) == "" or path.name in ("", ".", ".."):
        raise ValueError(f"--out must name a file, got {str(out)!r}")
    suffix = path.suffix[1:].lower()
    if not suffix:
        return path.with_name(path.name + ".png")
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"--out {str(out)!r}: the extension '.{suffix}' is not an image format plot "
                         f"can write; use one of {', '.join('.' + f for f in IMAGE_FORMATS)} "
                         "(no extension: .png)")
    return path


def _progress(done: int, total: int, seconds: float, final: bool = False) -> None:
    """``landscape: k/n grid points (s)`` on stderr, rewritten in place on a terminal."""
    text = f"landscape: {done}/{total} grid points ({seconds:.0f} s)"
    if sys.stderr.isatty():
        print(f"\r{text}".ljust(78), end="\n" if final else "", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def run(config: LandscapeConfig, progress: bool = True, notes: TextIO | None = None) -> LandscapeResult:
    """Evaluate ``f`` on the grid (see the module docstring).

    ``progress``: grid points done / total on stderr (on a terminal after every point,
    rewritten in place; elsewhere a line every 10 s and one at the end).  ``notes``: stream
    for notices (the checkpoint's device unusable here, so cpu is used)."""
    payload = load_checkpoint(config.checkpoint)
    train_config = checkpoint_config(payload["config"], config.device, notes)
    device = train_config.device
    spec = config.source or train_config.source
    root = config.data_root if config.data_root is not None else train_config.data_root
    source = resolve_source(spec, config.part, root, train_config.image_size)
    steps = train_config.eval_inner_steps if config.inner_steps is None else config.inner_steps
    algorithm = train_config.build_algorithm(inner_steps=steps)
    episode = sample_episode(source, train_config.ways, train_config.shots,
                             train_config.eval_queries or train_config.queries,
                             evaluation_episode_seed(config.seed, config.episode))
    support, query = split_episode(episode, device)
    theta = {k: v.float() for k, v in payload["params"].items()}
    generator = derived_generator(config.seed, STREAM_LANDSCAPE)
    d1 = random_direction(theta, generator)
    d2 = random_direction(theta, generator) if config.two_d else None
    theta, d1 = ({k: v.to(device) for k, v in d.items()} for d in (theta, d1))
    d2 = None if d2 is None else {k: v.to(device) for k, v in d2.items()}
    coords = tuple(float(c) for c in np.linspace(-config.span, config.span, config.points))
    needs_masks = algorithm.config.swp_keep is not None

    total = config.points ** (2 if config.two_d else 1)
    start = time.perf_counter()
    counter = {"done": 0, "shown": start}

    def f(a: float, b: float) -> float:
        value = loss_at(a, b)
        counter["done"] += 1
        now = time.perf_counter()
        last = counter["done"] == total
        if progress and (last or sys.stderr.isatty() or now - counter["shown"] >= 10.0):
            counter["shown"] = now
            _progress(counter["done"], total, now - start, last)
        return value

    def loss_at(a: float, b: float) -> float:
        moved = {k: theta[k] + a * d1[k] + (0.0 if d2 is None else b * d2[k]) for k in theta}
        # ESAM: the same SWP masks at every grid point, so the surface is one function
        masks = derived_generator(config.seed, STREAM_LANDSCAPE, 1, device) if needs_masks else None
        return episode_metrics(algorithm, moved, support, query, masks)[0]

    if config.two_d:
        losses = tuple(tuple(f(a, b) for b in coords) for a in coords)
    else:
        losses = tuple(f(a, 0.0) for a in coords)
    return LandscapeResult(config, coords, losses, train_config.algorithm, steps)


def plot(result: LandscapeResult, path: str | os.PathLike[str]) -> Path:
    """Write the image at :func:`plot_path` ``(path)`` and the numbers beside it (same name,
    ``.json``); return the image's path (the file written, e.g. ``l4.png`` for ``l4``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = plot_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    coords = np.asarray(result.coords)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    title = f"{result.algorithm}: query loss after {result.inner_steps} fine-tuning steps"
    if result.config.two_d:
        grid = np.asarray(result.losses)
        shown = ax.contourf(coords, coords, grid.T, levels=30, cmap="viridis")
        ax.contour(coords, coords, grid.T, levels=15, colors="white", linewidths=0.4)
        fig.colorbar(shown, ax=ax, label="cross-entropy")
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    else:
        ax.plot(coords, np.asarray(result.losses), marker="o", markersize=3)
        ax.set_xlabel("step along a filter-normalised direction")
        ax.set_ylabel("query cross-entropy")
        ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path
