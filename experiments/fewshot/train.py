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
at the end), ``log.jsonl`` (one JSON object per logged iteration), ``results.json`` (strict
JSON: an undefined number is ``null``, never NaN).
Progress goes to stderr: one ``\\r``-rewritten line on a terminal, a line per logged
iteration otherwise; the final test shows its own progress line.

Interruption.  SIGINT (Ctrl-C) and, for the duration of :func:`run`, SIGTERM stop the run
with :class:`TrainingInterrupted` after writing the checkpoint of the last finished iteration
(if newer than the last one written): nothing finished is lost, and ``resume`` continues
bit for bit.  The meta-update and its log line are one step that a signal waits for, so the
checkpoint never holds half an update.  ``testbed train`` exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from experiments.data import FewShotSource, episode_batch, resolve_source
from experiments.fewshot.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, write_atomically
from experiments.fewshot.common import (STREAM_INIT, STREAM_LOG_SWP, STREAM_SWP, as_tasks,
                                        derived_generator, environment, episode_metrics,
                                        precision_context)
from experiments.fewshot.config import TrainConfig, training_differences
from experiments.fewshot.evaluate import PROGRESS_INTERVAL_S, EvalResult, evaluate_params, finite_or_none
from experiments.fewshot.model import cross_entropy_loss, init_conv4
from testbed import MetaOptimizer, cudagraph
from testbed.meta import task

__all__ = ["LOG_NAME", "RESULTS_NAME", "NonFiniteError", "TrainConfig", "TrainResult",
           "TrainingInterrupted", "run"]

LOG_NAME = "log.jsonl"
RESULTS_NAME = "results.json"


class NonFiniteError(ValueError):
    """The meta-loss or meta-gradient stopped being finite; the message names the iteration."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped :func:`run`; the message says what was saved.

    exit_status: 128 + the signal number (130 for SIGINT, 143 for SIGTERM), the status
                 ``testbed`` exits with.
    saved:       the iteration of the checkpoint on disk, or None when there is none.
    """

    def __init__(self, message: str, exit_status: int = 128 + signal.SIGINT, saved: int | None = None) -> None:
        super().__init__(message)
        self.exit_status, self.saved = exit_status, saved

    def __reduce__(self):  # picklable across multiprocessing (tables' parallel runs)
        return type(self), (str(self), self.exit_status, self.saved)


class _Signalled(KeyboardInterrupt):
    """Raised by :class:`_Signals`' handler with the signal number; re-raised by the training
    loop with the message saying what it saved."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        super().__init__(signum, message)
        self.signum, self.message = signum, message


class _Signals:
    """SIGINT and SIGTERM as :class:`_Signalled` for the duration of a ``with`` block.

    Installed only in the main thread, and not over a signal that is ignored (``nohup``,
    background jobs); the previous handlers come back on exit.  Inside :meth:`deferred` a
    signal is held until the block ends, so the block runs whole or not at all.
    """

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.deferring = False
        self.pending: int | None = None

    def _handle(self, signum: int, frame) -> None:
        if self.deferring:
            self.pending = signum
            return
        # from here on a second signal is held: raised while the first unwinds, it could land in
        # a ``finally`` (torch.func's vmap leaving its level, seen as "random operation while in
        # randomness error mode" in the checkpoint save) and skip it
        self.deferring = True
        raise _Signalled(signum)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                before = signal.getsignal(signum)
                if before is not signal.SIG_IGN:
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, before in self.previous.items():
            signal.signal(signum, before if before is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending is not None:
            self.deferring = True      # as in _handle: the signal being raised is the last one
            raise _Signalled(self.pending)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`run` returns (and writes to ``results.json``).

    iterations:   meta-iterations completed.
    resumed_from: the iteration the run was resumed at (0 for a fresh run).
    final_loss:   mean meta-loss over the last ``log_every`` iterations of the run (kept
                  across resumes; None if unknown: an old checkpoint resumed with nothing to run).
    train_wall_s: wall time of the training loop (periodic validation included, the final
                  test not), summed over every process that trained the run: each adds its
                  time up to its last checkpoint, so work redone after a kill is counted once.
    it_per_s:     ``iterations / train_wall_s`` (None if ``train_wall_s`` is 0); for a run
                  resumed from a checkpoint older than these statistics, the iterations and
                  time since that resume.
    test:         the final evaluation, or None when ``eval_episodes = 0``.
    test_wall_s:  wall time of the final evaluation.
    """

    config: TrainConfig
    iterations: int
    resumed_from: int
    final_loss: float | None
    train_wall_s: float
    it_per_s: float | None
    test: EvalResult | None
    checkpoint: str
    test_wall_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: non-finite numbers become None."""
        return finite_or_none({
            "config": self.config.to_dict(), "iterations": self.iterations,
            "resumed_from": self.resumed_from, "final_loss": self.final_loss,
            "train_wall_s": self.train_wall_s, "it_per_s": self.it_per_s,
            "test": None if self.test is None else self.test.to_dict(per_episode=True),
            "test_wall_s": self.test_wall_s,
            "checkpoint": self.checkpoint, "environment": self.environment})


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


def _validated(path: Path, iteration: int) -> bool:
    """Whether the log holds the validation line of ``iteration``."""
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("iteration") == iteration and "val_accuracy" in entry:
            return True
    return False


def _evaluation_source(config: TrainConfig, part: str, image_shape: tuple[int, ...]) -> FewShotSource:
    """Part ``part`` of the source, checked now for what evaluating on it will need (classes,
    images per class, image shape), so that a bad setting fails before training, not after."""
    source = resolve_source(config.source, part, config.data_root, config.image_size)
    if tuple(source.image_shape) != tuple(image_shape):
        raise ValueError(f"part {part!r} of {config.source!r} has images {tuple(source.image_shape)}, "
                         f"part 'train' {tuple(image_shape)}")
    if source.num_classes < config.ways:
        raise ValueError(f"part {part!r} of {config.source!r} has {source.num_classes} classes, "
                         f"fewer than ways={config.ways}")
    per_class = config.eval_queries or config.queries
    smallest = int(min(source.class_sizes))
    if smallest < config.shots + per_class:
        name = "eval_queries" if config.eval_queries else "queries (eval_queries unset)"
        raise ValueError(f"{name}={per_class} is too many for part {part!r} of {config.source!r}: its "
                         f"smallest class has {smallest} images, fewer than shots + {per_class} = "
                         f"{config.shots + per_class}")
    return source


def _previous_results(out: Path, iteration: int) -> dict[str, Any]:
    """Statistics of an older run (checkpoint without them) from its results.json, if it
    describes the same iteration."""
    try:
        previous = json.loads((out / RESULTS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(previous, dict) or previous.get("iterations") != iteration:
        return {}
    wall, loss = previous.get("train_wall_s"), previous.get("final_loss")
    if not isinstance(wall, (int, float)) or not math.isfinite(wall) or wall <= 0:
        return {}
    return {"train_wall_s": float(wall), "timed_from": 0,
            "final_loss": loss if isinstance(loss, (int, float)) and math.isfinite(loss) else None}


def _start(config: TrainConfig, checkpoint: Path, resume: bool, image_shape: tuple[int, int, int]):
    """Initial (params, optimizer, iteration, statistics): fresh, or from the checkpoint when
    resuming.  ``statistics``: ``train_wall_s``, ``final_loss``, ``loss_window`` so far."""
    if checkpoint.exists() and not resume:
        raise ValueError(f"{checkpoint} exists: pass resume (--resume) to continue it, or another out directory")
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"Conv-4 here takes square images, the source gives {height}x{width}")
    params = init_conv4(config.ways, channels, height, config.hidden,
                        generator=derived_generator(config.seed, STREAM_INIT), dtype=torch.float32)
    params = {k: v.to(config.device) for k, v in params.items()}
    optimizer = MetaOptimizer(params, "adam", lr=config.meta_lr)
    fresh = {"train_wall_s": 0.0, "timed_from": 0, "final_loss": None, "loss_window": []}
    if not (resume and checkpoint.exists()):
        return params, optimizer, 0, fresh
    payload = load_checkpoint(checkpoint)
    saved = TrainConfig.from_dict({**payload["config"], "device": config.device})
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
    try:
        optimizer.load_state_dict({"params": payload["params"], "optimizer": payload["optimizer"]})
    except (KeyError, ValueError, RuntimeError, TypeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot load the optimizer state of {checkpoint}: {first}") from None
    if "train_wall_s" in payload:
        stats = {k: payload.get(k, fresh[k]) for k in fresh}
    else:  # written before the statistics were saved: time counted from here, unless
        # the run's results.json still describes this checkpoint
        stats = {**fresh, "timed_from": iteration, **_previous_results(checkpoint.parent, iteration)}
    return optimizer.params, optimizer, iteration, stats


def run(config: TrainConfig, *, resume: bool = False, progress: TextIO | None = sys.stderr,
        source: FewShotSource | None = None,
        loss_fn: Callable = cross_entropy_loss) -> TrainResult:
    """Meta-train as configured; see the module docstring.

    Args:
        config: the run.
        resume: continue from ``config.out/checkpoint.pt`` (an error if its training
            settings differ from ``config``'s); without it an existing checkpoint is an error.
            A finished run is not trained again; its test is run again.
        progress: stream for the progress line (None: silent).
        source: the meta-training source, if already loaded (default: ``config.source``,
            part ``train``).
        loss_fn: the per-sample loss (tests replace it to inject a NaN).

    Raises:
        NonFiniteError: a non-finite meta-loss or meta-gradient; the message names the
            iteration and the last good checkpoint.
        TrainingInterrupted: SIGINT or SIGTERM; the checkpoint of the last finished
            iteration has been written, the message says so.
        ValueError: bad settings, unreadable data or checkpoint (DataError is one).
    """
    # --cuda-graph: the eager work (evaluation, optimiser) on the graph's stream, so that cuBLAS
    # keeps one workspace, not one for the default stream and one for the graph's
    stream = cudagraph.capture_stream(config.device) if config.cuda_graph else contextlib.nullcontext()
    with _Signals() as signals, stream:
        try:
            return _run(config, resume, progress, source, loss_fn, signals)
        except KeyboardInterrupt as interrupt:  # _Signalled, or a KeyboardInterrupt raised otherwise
            signals.deferring = True   # a second signal must not escape while this one is reported
            saved = _saved_iteration(Path(config.out) / CHECKPOINT_NAME)
            message = getattr(interrupt, "message", None) or (
                "interrupted before training started; nothing to save" if saved is None else
                f"interrupted; the last checkpoint on disk is iteration {saved}, resume with --resume")
            raise TrainingInterrupted(message, 128 + _signum(interrupt), saved) from None


def _signum(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "signum", signal.SIGINT)


def _saved_iteration(checkpoint: Path) -> int | None:
    try:
        return int(load_checkpoint(checkpoint)["iteration"]) if checkpoint.is_file() else None
    except ValueError:
        return None


def _run(config: TrainConfig, resume: bool, progress: TextIO | None, source: FewShotSource | None,
         loss_fn: Callable, signals: _Signals) -> TrainResult:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    train_source = source or resolve_source(config.source, "train", config.data_root, config.image_size)
    image_shape = tuple(train_source.image_shape)
    # the parts needed after hours of training must be there, and fit the settings, before
    # the first iteration
    val_source = _evaluation_source(config, "val", image_shape) if config.val_every else None
    test_source = _evaluation_source(config, "test", image_shape) if config.eval_episodes else None
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_NAME
    log_path = out / LOG_NAME
    params, optimizer, start, stats = _start(config, checkpoint, resume, image_shape)
    if start == 0:
        log_path.unlink(missing_ok=True)
    else:
        _truncate_log(log_path, start)
    algorithm = config.build_algorithm()
    env = environment(config.device)
    last_saved = start if start > 0 else None
    graph = None   # --cuda-graph: the cudagraph.MetaGradientGraph, made on the first iteration
    bar = _Progress(progress, config.iterations)
    window: list[float] = list(stats["loss_window"])
    final_loss, accuracy = stats["final_loss"], None
    prior_wall, timed_from = float(stats["train_wall_s"]), int(stats["timed_from"])
    completed, completed_wall = start, 0.0   # last finished iteration, this process's time to it
    began = time.perf_counter()

    def save(done: int, wall: float) -> None:
        nonlocal last_saved
        save_checkpoint(checkpoint, {
            "iteration": done, "params": optimizer.params, "optimizer": optimizer.state_dict()["optimizer"],
            "config": config.to_dict(), "image_shape": list(image_shape), "environment": env,
            "train_wall_s": prior_wall + wall, "timed_from": timed_from, "final_loss": final_loss,
            "loss_window": list(window)})
        last_saved = done

    def validate(done: int) -> None:
        val = evaluate_params(params, config, val_source, part="val", episodes=config.val_episodes,
                              seed=config.eval_seed, source_name=config.source)
        log.write(json.dumps(finite_or_none({"iteration": done, "val_accuracy": val.accuracy,
                                             "val_ci95": val.ci95}), allow_nan=False) + "\n")
        log.flush()

    try:
        with log_path.open("a") as log:
            if (config.val_every and start and start % config.val_every == 0
                    and not _validated(log_path, start)):
                validate(start)  # owed by a run interrupted during this validation
            for t in range(start, config.iterations):
                episode = episode_batch(train_source, config.ways, config.shots, config.queries,
                                        config.meta_batch, config.seed, t)
                generator = (derived_generator(config.seed, STREAM_SWP, t, config.device)
                             if config.needs_generator else None)
                if config.cuda_graph:
                    # one graph reading the optimiser's parameters in place (its steps are in
                    # place) and the episode copied from the host into its own tensors: no
                    # second copy of either on the device
                    if graph is None:
                        graph = cudagraph.MetaGradientGraph(
                            loss_fn, optimizer.params, as_tasks(episode, config.device),
                            algorithm.config)
                    else:
                        graph.load(params, as_tasks(episode))
                    tasks = graph.tasks
                    with precision_context(config.precision, config.device):
                        step = graph(generator)
                else:
                    tasks = as_tasks(episode, config.device)
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
                logged = done % config.log_every == 0 or done == config.iterations
                if logged:
                    with precision_context(config.precision, config.device):
                        accuracy = _batch_accuracy(config, params, tasks, t)
                with signals.deferred():  # the update and its log line, whole or not at all
                    params = optimizer.step(step.grad)
                    window.append(float(step.loss))
                    elapsed = time.perf_counter() - began
                    rate = (done - start) / elapsed if elapsed > 0 else math.inf
                    if logged:
                        final_loss = sum(window) / len(window)
                        log.write(json.dumps(finite_or_none({
                            "iteration": done, "loss": final_loss, "train_accuracy": accuracy,
                            "elapsed_s": round(elapsed, 3), "it_per_s": rate}), allow_nan=False) + "\n")
                        log.flush()
                        window = []
                    completed, completed_wall = done, elapsed
                bar.update(done, float(step.loss), accuracy, rate, force=logged)
                if config.val_every and done % config.val_every == 0:
                    validate(done)
                if done % config.checkpoint_every == 0 or done == config.iterations:
                    save(done, time.perf_counter() - began)
    except KeyboardInterrupt as interrupt:
        signals.deferring = True  # a second signal must not tear the save below
        bar.close()
        total = f"{completed}/{config.iterations}"
        if completed == 0:
            message = "interrupted before iteration 1 finished; nothing to save"
        elif last_saved != completed:
            save(completed, completed_wall)
            message = f"interrupted at iteration {total}; checkpoint saved to {checkpoint}, resume with --resume"
        elif completed == config.iterations:
            message = (f"interrupted after training finished (iteration {total}, saved in {checkpoint}); "
                       f"resume with --resume to run the final test")
        else:
            message = (f"interrupted at iteration {total}; checkpoint {checkpoint} was already up to date, "
                       f"resume with --resume")
        raise _Signalled(_signum(interrupt), message) from None
    train_wall = prior_wall + time.perf_counter() - began if completed > start else prior_wall
    with signals.deferred():
        bar.close()
    test = None
    graph = None   # its memory pool (about the eager peak) is not needed by the test
    tested = time.perf_counter()
    if test_source is not None:
        try:
            test = evaluate_params(params, config, test_source, part="test", episodes=config.eval_episodes,
                                   seed=config.eval_seed, source_name=config.source, progress=progress)
        except KeyboardInterrupt as interrupt:
            raise _Signalled(_signum(interrupt), (
                f"interrupted during the final test; training finished (iteration {config.iterations}, "
                f"saved in {checkpoint}); resume with --resume to run the test")) from None
    with signals.deferred():   # a signal now waits until results.json is whole on disk
        result = TrainResult(config=config, iterations=config.iterations, resumed_from=start,
                             final_loss=final_loss, train_wall_s=train_wall,
                             it_per_s=(config.iterations - timed_from) / train_wall if train_wall > 0 else None,
                             test=test, checkpoint=str(checkpoint),
                             test_wall_s=time.perf_counter() - tested, environment=env)
        text = json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
        write_atomically(out / RESULTS_NAME, lambda stream: stream.write(text.encode()))
    return result
