"""Meta-training of Conv-4 on few-shot episodes: ``run(config) -> TrainResult``.

One meta-iteration ``t`` (Abbas et al. 2022, Algorithm 1 with Adam as the base optimizer,
Section 5.1):

1. the meta-batch is ``episode_batch(source, ways, shots, queries, meta_batch, seed, index=t)``
   (task ``j`` from ``numpy.random.default_rng([seed, t, j])``);
2. ``g = algorithm.meta_gradient(cross_entropy_loss, theta, tasks, generator=G_t)`` with
   ``G_t`` derived from ``(seed, t)`` alone (ESAM's SWP masks; unused otherwise);
3. a non-finite loss or gradient stops the run (:class:`NonFiniteError`, naming ``t`` and the
   last good checkpoint);
4. ``theta = Adam(meta_lr).step(g)``.

Nothing random depends on earlier draws, so a run resumed from a checkpoint (parameters,
Adam state, iteration) continues bit for bit as if it had never stopped (on CPU, with the
same number of threads).

Files in ``config.out``: ``checkpoint.pt`` (atomic, every ``checkpoint_every`` iterations and
at the end), ``log.jsonl`` (one JSON object per logged iteration), ``results.json``.
Progress goes to stderr: one ``\\r``-rewritten line on a terminal, a line per logged
iteration otherwise.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from experiments.data import FewShotSource, episode_batch, resolve_source
from experiments.data.resolve import require_part_present
from experiments.fewshot.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from experiments.fewshot.common import (STREAM_INIT, STREAM_LOG_SWP, STREAM_SWP, as_tasks,
                                        derived_generator, environment, episode_metrics,
                                        precision_context)
from experiments.fewshot.config import TrainConfig, training_differences
from experiments.fewshot.evaluate import EvalResult, evaluate_params
from experiments.fewshot.model import cross_entropy_loss, init_conv4
from testbed import MetaOptimizer
from testbed.meta import task

__all__ = ["LOG_NAME", "RESULTS_NAME", "NonFiniteError", "TrainConfig", "TrainResult", "run"]

LOG_NAME = "log.jsonl"
RESULTS_NAME = "results.json"
PROGRESS_INTERVAL_S = 0.25
"""Shortest time between two redraws of the progress line."""


class NonFiniteError(ValueError):
    """The meta-loss or meta-gradient stopped being finite; the message names the iteration."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run` returns (and writes to ``results.json``).

    iterations:   meta-iterations completed.
    resumed_from: the iteration the run was resumed at (0 for a fresh run).
    final_loss:   mean meta-loss over the last ``log_every`` iterations run in this process
                  (NaN if none ran).
    train_wall_s: wall time of the training loop in this process (periodic validation
                  included, the final test not).
    it_per_s:     iterations per second in this process.
    test:         the final evaluation, or None when ``eval_episodes = 0``.
    test_wall_s:  wall time of the final evaluation.
    """

    config: TrainConfig
    iterations: int
    resumed_from: int
    final_loss: float
    train_wall_s: float
    it_per_s: float
    test: EvalResult | None
    checkpoint: str
    test_wall_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "iterations": self.iterations,
                "resumed_from": self.resumed_from, "final_loss": self.final_loss,
                "train_wall_s": self.train_wall_s, "it_per_s": self.it_per_s,
                "test": None if self.test is None else self.test.to_dict(per_episode=True),
                "test_wall_s": self.test_wall_s,
                "checkpoint": self.checkpoint, "environment": self.environment}


class _Progress:
    """The progress line on ``stream``.

    On a terminal: one line, ``\\r``-rewritten at most every PROGRESS_INTERVAL_S seconds.
    Otherwise (a log file): one line per logged iteration, so the file stays short.
    """

    def __init__(self, stream: TextIO | None, total: int) -> None:
        self.stream, self.total, self.last = stream, total, 0.0
        self.width = len(str(total))
        self.terminal = stream is not None and stream.isatty()

    def update(self, done: int, loss: float, accuracy: float | None, rate: float, force: bool = False) -> None:
        now = time.perf_counter()
        if self.stream is None or not (force or (self.terminal and now - self.last >= PROGRESS_INTERVAL_S)):
            return
        self.last = now
        acc = "  -  " if accuracy is None else f"{accuracy:.3f}"
        text = f"iter {done:>{self.width}}/{self.total}  loss {loss:.4f}  acc {acc}  {rate:.2f} it/s"
        self.stream.write(f"\r{text} " if self.terminal else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.terminal:
            self.stream.write("\n")
            self.stream.flush()


def _all_finite(loss: torch.Tensor, grads: dict[str, torch.Tensor]) -> bool:
    return bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads.values())


def _batch_accuracy(config: TrainConfig, params: dict, tasks, iteration: int) -> float:
    """Post-adaptation query accuracy on the meta-batch, for the log (same code as evaluation)."""
    algorithm = config.build_algorithm()
    needs = config.needs_generator
    accuracies = []
    for m in range(config.meta_batch):
        generator = derived_generator(config.seed, STREAM_LOG_SWP, iteration * config.meta_batch + m,
                                      config.device) if needs else None
        _, accuracy = episode_metrics(algorithm, params, task(tasks.support, m), task(tasks.query, m), generator)
        accuracies.append(accuracy)
    return sum(accuracies) / len(accuracies)


def _truncate_log(path: Path, iteration: int) -> None:
    """Keep the log lines of iterations <= ``iteration``: a killed run may have logged beyond
    its last checkpoint, and its last line may be cut short."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if entry.get("iteration", math.inf) <= iteration:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def _start(config: TrainConfig, checkpoint: Path, resume: bool, image_shape: tuple[int, int, int]):
    """Initial (params, optimizer, iteration): fresh, or from the checkpoint when resuming."""
    if checkpoint.exists() and not resume:
        raise ValueError(f"{checkpoint} exists: pass resume (--resume) to continue it, or another out directory")
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"Conv-4 here takes square images, the source gives {height}x{width}")
    params = init_conv4(config.ways, channels, height, config.hidden,
                        generator=derived_generator(config.seed, STREAM_INIT), dtype=torch.float32)
    params = {k: v.to(config.device) for k, v in params.items()}
    optimizer = MetaOptimizer(params, "adam", lr=config.meta_lr)
    if not (resume and checkpoint.exists()):
        return params, optimizer, 0
    payload = load_checkpoint(checkpoint)
    saved = TrainConfig.from_dict(payload["config"])
    changed = training_differences(saved, config)
    if changed:
        described = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"cannot resume {checkpoint} with different training settings ({described})")
    if tuple(payload["image_shape"]) != tuple(image_shape):
        raise ValueError(f"{checkpoint} was trained on images {tuple(payload['image_shape'])}, "
                         f"the source now gives {tuple(image_shape)}")
    iteration = int(payload["iteration"])
    if iteration > config.iterations:
        raise ValueError(f"{checkpoint} is at iteration {iteration}, beyond iterations={config.iterations}")
    optimizer.load_state_dict({"params": payload["params"], "optimizer": payload["optimizer"]})
    return optimizer.params, optimizer, iteration


def run(config: TrainConfig, *, resume: bool = False, progress: TextIO | None = sys.stderr,
        source: FewShotSource | None = None,
        loss_fn: Callable = cross_entropy_loss) -> TrainResult:
    """Meta-train as configured; see the module docstring.

    Args:
        config: the run.
        resume: continue from ``config.out/checkpoint.pt`` (an error if its training
            settings differ from ``config``'s); without it an existing checkpoint is an error.
        progress: stream for the progress line (None: silent).
        source: the meta-training source, if already loaded (default: ``config.source``,
            part ``train``).
        loss_fn: the per-sample loss (tests replace it to inject a NaN).

    Raises:
        NonFiniteError: a non-finite meta-loss or meta-gradient; the message names the
            iteration and the last good checkpoint.
        ValueError: bad settings, unreadable data or checkpoint (DataError is one).
    """
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    train_source = source or resolve_source(config.source, "train", config.data_root, config.image_size)
    # the parts needed after hours of training must be there before the first iteration
    for part, needed in (("val", config.val_every), ("test", config.eval_episodes)):
        if needed:
            require_part_present(config.source, part, config.data_root)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    log_path = out / LOG_NAME
    image_shape = tuple(train_source.image_shape)
    params, optimizer, start = _start(config, checkpoint, resume, image_shape)
    if start == 0:
        log_path.unlink(missing_ok=True)
    else:
        _truncate_log(log_path, start)
    algorithm = config.build_algorithm()
    env = environment(config.device)
    last_saved = start if start > 0 else None
    bar = _Progress(progress, config.iterations)
    window: list[float] = []
    val_source: FewShotSource | None = None
    final_loss, accuracy = math.nan, None
    began = time.perf_counter()

    def save(done: int) -> None:
        nonlocal last_saved
        save_checkpoint(checkpoint, {
            "iteration": done, "params": optimizer.params, "optimizer": optimizer.state_dict()["optimizer"],
            "config": config.to_dict(), "image_shape": list(image_shape), "environment": env})
        last_saved = done

    with log_path.open("a") as log:
        for t in range(start, config.iterations):
            episode = episode_batch(train_source, config.ways, config.shots, config.queries,
                                    config.meta_batch, config.seed, t)
            tasks = as_tasks(episode, config.device)
            generator = derived_generator(config.seed, STREAM_SWP, t, config.device) if config.needs_generator else None
            with precision_context(config.precision, config.device):
                step = algorithm.meta_gradient(loss_fn, params, tasks, generator=generator)
            if not _all_finite(step.loss, step.grad):
                bar.close()
                where = (f"{checkpoint} (iteration {last_saved})" if last_saved is not None
                         else "none written yet")
                raise NonFiniteError(
                    f"non-finite meta-loss or meta-gradient at iteration {t} (loss={float(step.loss)!r}); "
                    f"last good checkpoint: {where}")
            done = t + 1
            window.append(float(step.loss))
            logged = done % config.log_every == 0 or done == config.iterations
            if logged:
                with precision_context(config.precision, config.device):
                    accuracy = _batch_accuracy(config, params, tasks, t)
            params = optimizer.step(step.grad)
            elapsed = time.perf_counter() - began
            rate = (done - start) / elapsed if elapsed > 0 else math.inf
            bar.update(done, window[-1], accuracy, rate, force=logged)
            if logged:
                final_loss = sum(window) / len(window)
                log.write(json.dumps({"iteration": done, "loss": final_loss, "train_accuracy": accuracy,
                                      "elapsed_s": round(elapsed, 3), "it_per_s": rate}) + "\n")
                log.flush()
                window = []
            if config.val_every and done % config.val_every == 0:
                val_source = val_source or resolve_source(config.source, "val", config.data_root,
                                                          config.image_size)
                val = evaluate_params(params, config, val_source, part="val",
                                      episodes=config.val_episodes, seed=config.eval_seed,
                                      source_name=config.source)
                log.write(json.dumps({"iteration": done, "val_accuracy": val.accuracy, "val_ci95": val.ci95}) + "\n")
                log.flush()
            if done % config.checkpoint_every == 0 or done == config.iterations:
                save(done)
    train_wall = time.perf_counter() - began
    bar.close()
    ran = config.iterations - start
    test = None
    tested = time.perf_counter()
    if config.eval_episodes:
        test_source = resolve_source(config.source, "test", config.data_root, config.image_size)
        test = evaluate_params(params, config, test_source, part="test", episodes=config.eval_episodes,
                               seed=config.eval_seed, source_name=config.source)
    result = TrainResult(config=config, iterations=config.iterations, resumed_from=start,
                         final_loss=final_loss, train_wall_s=train_wall,
                         it_per_s=ran / train_wall if train_wall > 0 and ran else math.nan,
                         test=test, checkpoint=str(checkpoint),
                         test_wall_s=time.perf_counter() - tested, environment=env)
    (out / RESULTS_NAME).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
