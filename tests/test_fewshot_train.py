"""Meta-training: every algorithm runs, exact resume after kill -9, NaN stops the run, files."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.fewshot.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from experiments.fewshot.config import TrainConfig, default_batching
from experiments.fewshot.model import cross_entropy_loss
from experiments.fewshot.toy import write_toy_folder
from experiments.fewshot.train import (LOG_NAME, RESULTS_NAME, NonFiniteError, TrainingInterrupted,
                                       _Signalled, _Signals, run)
from testbed.algorithms import NAMES
from testbed.meta import _leaves as meta_leaves

KILL_POLL_S = 0.005
"""How often the kill test looks for the first checkpoint."""
STARTUP_TIMEOUT_S = 120
"""Longest wait for the first checkpoint of the subprocess (interpreter start included)."""


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> str:
    return "folder:" + str(write_toy_folder(tmp_path_factory.mktemp("toy"), classes=6, per_class=5, size=16))


def _tiny(toy: str, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(source=toy, ways=3, shots=1, queries=2, hidden=4, meta_batch=2, iterations=2,
                       inner_steps=1, eval_episodes=4, eval_inner_steps=2, checkpoint_every=1,
                       log_every=1, threads=1, task_batching="vmap", out=str(out))
    return replace(base, **changes)


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_trains_two_iterations_on_a_tiny_folder(name, toy, tmp_path):
    result = run(_tiny(toy, tmp_path, algorithm=name), progress=None)
    assert result.iterations == 2 and result.test is not None
    assert 0.0 <= result.test.accuracy <= 1.0 and torch.isfinite(torch.tensor(result.final_loss))
    payload = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert payload["iteration"] == 2 and payload["config"]["algorithm"] == name
    assert all(v.dtype == torch.float32 for v in payload["params"].values())


def test_files_of_a_run(toy, tmp_path):
    config = _tiny(toy, tmp_path, iterations=4, log_every=2, checkpoint_every=3)
    run(config, progress=None)
    lines = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [2, 4]
    assert {"loss", "train_accuracy", "it_per_s"} <= set(lines[0])
    results = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert results["config"] == config.to_dict() and results["iterations"] == 4
    assert {"device", "torch", "git_commit"} <= set(results["environment"])
    payload = load_checkpoint(tmp_path)
    assert payload["iteration"] == 4 and payload["image_shape"] == [1, 16, 16]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_second_run_into_the_same_directory_needs_resume(toy, tmp_path):
    run(_tiny(toy, tmp_path), progress=None)
    with pytest.raises(ValueError, match="exists: pass resume"):
        run(_tiny(toy, tmp_path), progress=None)


def test_resume_refuses_changed_training_settings(toy, tmp_path):
    run(_tiny(toy, tmp_path), progress=None)
    with pytest.raises(ValueError, match=r"meta_lr: 0.001 -> 0.01"):
        run(_tiny(toy, tmp_path, iterations=3, meta_lr=0.01), resume=True, progress=None)


def test_resume_in_process_extends_a_finished_run_exactly(toy, tmp_path):
    whole = run(_tiny(toy, tmp_path / "whole", iterations=6, eval_episodes=0), progress=None)
    run(_tiny(toy, tmp_path / "parts", iterations=3, eval_episodes=0), progress=None)
    run(_tiny(toy, tmp_path / "parts", iterations=6, eval_episodes=0), resume=True, progress=None)
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert whole.iterations == 6
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])


def _argv(toy: str, out: Path, iterations: int, *extra: str) -> list[str]:
    """``testbed train`` arguments of the kill/resume runs (esharp: SWP masks need re-deriving)."""
    return ["train", "--source", toy, "--ways", "3", "--shots", "1", "--queries", "2", "--hidden", "4",
            "--meta-batch", "2", "--iterations", str(iterations), "--checkpoint-every", "10",
            "--log-every", "5", "--algorithm", "esharp", "--eval-episodes", "0", "--threads", "1",
            "--task-batching", "vmap", "--out", str(out), "--quiet", *extra]


SIGNAL_RUN_ITERATIONS = 60
"""Length of the runs the kill and signal tests interrupt (a tiny esharp model: about 1 s)."""


@pytest.fixture(scope="module")
def whole(toy, tmp_path_factory) -> Path:
    """The uninterrupted run the kill and signal tests compare with."""
    out = tmp_path_factory.mktemp("whole") / "run"
    torch.set_num_threads(1)
    assert main(_argv(toy, out, SIGNAL_RUN_ITERATIONS)) == 0
    return out


def _assert_same_run(a_dir: Path, b_dir: Path, iterations: int) -> None:
    """Bit-identical parameters and Adam moments, the same log lines (none lost or repeated)."""
    a, b = load_checkpoint(a_dir), load_checkpoint(b_dir)
    assert b["iteration"] == iterations
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
    assert all(torch.equal(a["optimizer"]["state"][i]["exp_avg"], b["optimizer"]["state"][i]["exp_avg"])
               for i in a["optimizer"]["state"])
    logged = [json.loads(line)["iteration"] for line in (b_dir / LOG_NAME).read_text().splitlines()]
    assert logged == list(range(5, iterations + 1, 5))


def _strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_kill_9_after_a_checkpoint_then_resume_gives_bit_identical_parameters(toy, whole, tmp_path):
    """Uninterrupted run vs. a subprocess killed with SIGKILL after its first checkpoint, resumed.

    esharp draws SWP masks: resume must re-derive them from (seed, iteration).
    """
    iterations = SIGNAL_RUN_ITERATIONS
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *_argv(toy, killed, iterations)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not (killed / CHECKPOINT_NAME).exists():
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(KILL_POLL_S)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    stopped_at = load_checkpoint(killed)["iteration"]
    assert 0 < stopped_at < iterations, "the kill must land mid-run"

    assert main(_argv(toy, killed, iterations, "--resume")) == 0
    _assert_same_run(whole, killed, iterations)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_between_checkpoints_saves_the_last_finished_iteration_and_resume_is_exact(
        signum, toy, whole, tmp_path):
    """SIGINT (Ctrl-C) or SIGTERM long before the next periodic checkpoint: the subprocess
    writes the checkpoint of its last finished iteration, says so in one line, exits 128 +
    the signal, and the resumed run equals the uninterrupted one bit for bit (results too)."""
    iterations = SIGNAL_RUN_ITERATIONS
    stopped = tmp_path / "stopped"
    argv = _argv(toy, stopped, iterations, "--checkpoint-every", "1000")
    # a test run in the background may inherit an ignored SIGINT; Ctrl-C at a terminal is not ignored
    proc = subprocess.Popen([sys.executable, "-m", "experiments.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ((stopped / LOG_NAME).exists() and (stopped / LOG_NAME).read_text().endswith("\n")):
        assert proc.poll() is None, "the run ended before its first log line"
        assert time.monotonic() < deadline, "no log line within the time limit"
        time.sleep(KILL_POLL_S)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=STARTUP_TIMEOUT_S)
    assert proc.returncode == 128 + signum, err
    stopped_at = load_checkpoint(stopped)["iteration"]
    assert 5 <= stopped_at < iterations, "the signal must land mid-run"
    assert err.strip().splitlines() == [
        f"testbed train: interrupted at iteration {stopped_at}/{iterations}; checkpoint saved to "
        f"{stopped / CHECKPOINT_NAME}, resume with --resume"]

    assert main(_argv(toy, stopped, iterations, "--resume")) == 0
    _assert_same_run(whole, stopped, iterations)
    assert _strict_json(stopped / RESULTS_NAME)["final_loss"] == _strict_json(whole / RESULTS_NAME)["final_loss"]


def test_an_interrupt_inside_an_iteration_keeps_the_iterations_before_it(toy, tmp_path):
    """Ctrl-C during the meta-gradient of iteration 3 (in process, exactly there): the checkpoint
    holds iterations 1-3, not half of the 4th, and resuming gives the uninterrupted numbers."""
    calls = {"n": 0}

    def interrupted(params, batch):
        calls["n"] += 1
        if calls["n"] == 3 * 4 + 1:  # maml with the loop: 4 loss calls per iteration
            raise KeyboardInterrupt
        return cross_entropy_loss(params, batch)

    common = dict(iterations=6, checkpoint_every=100, algorithm="maml", task_batching="loop", eval_episodes=0)
    run(_tiny(toy, tmp_path / "whole", **common), progress=None)
    with pytest.raises(TrainingInterrupted) as stop:
        run(_tiny(toy, tmp_path / "parts", **common), progress=None, loss_fn=interrupted)
    assert stop.value.exit_status == 130 and stop.value.saved == 3
    assert "interrupted at iteration 3/6; checkpoint saved" in str(stop.value)
    assert load_checkpoint(tmp_path / "parts")["iteration"] == 3
    resumed = run(_tiny(toy, tmp_path / "parts", **common), resume=True, progress=None)
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "parts")
    assert all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])
    assert resumed.final_loss == _strict_json(tmp_path / "whole" / RESULTS_NAME)["final_loss"]


def test_sigterm_stops_the_run_with_status_143_and_the_handler_is_restored(toy, tmp_path):
    calls = {"n": 0}

    def terminated(params, batch):
        calls["n"] += 1
        if calls["n"] == 2 * 4 + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return cross_entropy_loss(params, batch)

    def unhandled(signum, frame):  # stands in for the default action, which would end pytest
        raise RuntimeError("run() left SIGTERM to the handler it found")

    outer = signal.signal(signal.SIGTERM, unhandled)
    try:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        config = _tiny(toy, tmp_path, iterations=6, checkpoint_every=100, algorithm="maml", task_batching="loop")
        with pytest.raises(TrainingInterrupted) as stop:
            run(config, progress=None, loss_fn=terminated)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    finally:
        signal.signal(signal.SIGTERM, outer)
    assert stop.value.exit_status == 143 and load_checkpoint(tmp_path)["iteration"] == 2
    assert pickle.loads(pickle.dumps(stop.value)).exit_status == 143  # crosses a process pool


def test_a_signal_during_the_update_is_held_until_the_update_is_whole():
    """What keeps a checkpoint from holding half a meta-update (Adam changes tensors one by one)."""
    with _Signals() as signals:
        finished = False
        with pytest.raises(_Signalled):
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # the handler has run by now, and must not have raised
                finished = True
        assert finished


def test_a_second_signal_while_the_first_unwinds_is_held_not_raised():
    """Two signals in quick succession: the second must not land in a ``finally`` of the
    first's unwinding (a study's Ctrl-C plus SIGTERM once left torch.func's vmap level behind)."""
    with _Signals() as signals:
        cleaned = False
        with pytest.raises(_Signalled) as first:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)   # arrives while the first unwinds
                time.sleep(0.01)
                cleaned = True
        assert cleaned and first.value.signum == signal.SIGINT
        assert signals.pending == signal.SIGTERM


def test_resuming_a_finished_run_keeps_its_statistics_and_writes_strict_json(toy, tmp_path):
    first = run(_tiny(toy, tmp_path, eval_episodes=1), progress=None)
    saved = load_checkpoint(tmp_path)
    again = run(_tiny(toy, tmp_path, eval_episodes=1), resume=True, progress=None)
    results = _strict_json(tmp_path / RESULTS_NAME)
    assert again.final_loss == first.final_loss == results["final_loss"]
    assert results["train_wall_s"] == saved["train_wall_s"] > 0
    assert results["it_per_s"] == pytest.approx(2 / saved["train_wall_s"])
    assert results["resumed_from"] == 2 and results["test"]["ci95"] is None  # one test episode
    # a checkpoint from before the statistics were saved: they come from results.json
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {k: v for k, v in saved.items()
                                                 if k not in ("train_wall_s", "final_loss", "loss_window",
                                                              "timed_from", "format", "rng")})
    run(_tiny(toy, tmp_path, eval_episodes=0), resume=True, progress=None)
    assert _strict_json(tmp_path / RESULTS_NAME)["final_loss"] == first.final_loss


def test_the_final_test_shows_its_progress(toy, tmp_path):
    stream = io.StringIO()
    run(_tiny(toy, tmp_path, eval_episodes=4), progress=stream)
    assert "test episode 4/4" in stream.getvalue()


def test_too_many_evaluation_queries_are_refused_before_training(toy, tmp_path, capsys):
    # the toy classes have 5 images: 1 shot + 100 queries cannot be drawn
    with pytest.raises(ValueError, match=r"eval_queries=100 is too many for part 'test'.*5 images"):
        run(_tiny(toy, tmp_path, eval_queries=100), progress=None)
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    with pytest.raises(ValueError, match=r"eval_queries=100 is too many for part 'val'"):
        run(_tiny(toy, tmp_path, eval_queries=100, eval_episodes=0, val_every=1), progress=None)
    assert main(_argv(toy, tmp_path / "cli", 2, "--eval-episodes", "2", "--eval-queries", "100")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "eval_queries=100" in lines[0]


def test_a_nan_loss_stops_the_run_naming_the_iteration_and_the_last_checkpoint(toy, tmp_path):
    calls = {"n": 0}

    def poisoned(params, batch):
        calls["n"] += 1
        losses = cross_entropy_loss(params, batch)
        return losses * float("nan") if calls["n"] > 8 else losses

    config = _tiny(toy, tmp_path, iterations=10, checkpoint_every=2, algorithm="maml", task_batching="loop")
    # maml with the loop calls the loss 2 * meta_batch = 4 times per iteration: iteration 2 is the first NaN
    with pytest.raises(NonFiniteError) as error:
        run(config, progress=None, loss_fn=poisoned)
    message = str(error.value)
    assert "at iteration 2" in message and f"{tmp_path / CHECKPOINT_NAME} (iteration 2)" in message
    assert load_checkpoint(tmp_path)["iteration"] == 2


def test_a_nan_before_any_checkpoint_says_none_was_written(toy, tmp_path):
    def nan_loss(params, batch):
        return cross_entropy_loss(params, batch) * float("nan")

    with pytest.raises(NonFiniteError, match="at iteration 0 .*none written yet"):
        run(_tiny(toy, tmp_path), progress=None, loss_fn=nan_loss)


def test_a_diverging_learning_rate_exits_2_from_the_command_line(toy, tmp_path, capsys):
    argv = _argv(toy, tmp_path, 20, "--beta-low", "1e30")
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "non-finite" in lines[0] and "iteration 0" in lines[0]


def test_bf16_autocast_takes_effect_and_leaves_accuracy_unchanged(toy, tmp_path):
    """Meta-gradients and evaluation under bfloat16 autocast: the run's numbers change (the
    option acts) but its test accuracy stays within the two runs' 95% intervals."""
    common = dict(iterations=20, hidden=8, meta_batch=4, queries=2, eval_episodes=60,
                  checkpoint_every=20, log_every=20)
    f32 = run(_tiny(toy, tmp_path / "f32", **common), progress=None)
    bf16 = run(_tiny(toy, tmp_path / "bf16", precision="bf16", **common), progress=None)
    p32 = load_checkpoint(tmp_path / "f32" / CHECKPOINT_NAME)["params"]
    p16 = load_checkpoint(tmp_path / "bf16" / CHECKPOINT_NAME)["params"]
    assert all(v.dtype == torch.float32 for v in p16.values())
    assert any(not torch.equal(p32[k], p16[k]) for k in p32)
    assert f32.test.accuracy > 0.5 and bf16.test.accuracy > 0.5       # 3-way: chance is 1/3
    assert abs(f32.test.accuracy - bf16.test.accuracy) <= f32.test.ci95 + bf16.test.ci95


def test_gradient_checkpointing_trains_the_same_parameters(toy, tmp_path):
    common = dict(iterations=3, inner_steps=3, task_batching="loop", eval_episodes=0)
    run(_tiny(toy, tmp_path / "graph", **common), progress=None)
    run(_tiny(toy, tmp_path / "ckpt", gradient_checkpointing=True, **common), progress=None)
    a = load_checkpoint(tmp_path / "graph" / CHECKPOINT_NAME)["params"]
    b = load_checkpoint(tmp_path / "ckpt" / CHECKPOINT_NAME)["params"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


@pytest.mark.parametrize("name", ["sharp-up", "esharp"])
def test_cuda_graph_trains_the_same_parameters(name, toy, tmp_path, request):
    """With the eager stand-in capture (tests/conftest.py): one capture, one replay per
    iteration (SWP masks copied in each time), and the eager run's parameters."""
    common = dict(algorithm=name, iterations=3, inner_steps=2, task_batching="loop", eval_episodes=0)
    run(_tiny(toy, tmp_path / "eager", **common), progress=None)
    cudagraph = request.getfixturevalue("cuda_graph_stand_in")
    before = cudagraph.counts()
    run(_tiny(toy, tmp_path / "graphed", cuda_graph=True, **common), progress=None)
    after = cudagraph.counts()
    assert (after["captures"] - before["captures"], after["replays"] - before["replays"]) == (1, 3)
    a = load_checkpoint(tmp_path / "eager" / CHECKPOINT_NAME)["params"]
    b = load_checkpoint(tmp_path / "graphed" / CHECKPOINT_NAME)["params"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_cuda_graph_reads_the_optimisers_parameters_in_place_and_loads_episodes_from_the_host(
        toy, tmp_path, cuda_graph_stand_in, monkeypatch):
    """The graph adopts the optimiser's parameters (updated in place by its steps), so no
    iteration copies them; each new episode is copied into the graph's task tensors."""
    copied = {"params": 0, "tasks": 0}
    real = cuda_graph_stand_in._copy_into

    def spy(static, new):
        kind = "params" if isinstance(static, dict) else "tasks"
        copied[kind] += sum(not cuda_graph_stand_in._same_memory(s, n) for s, n in zip(
            meta_leaves(static), meta_leaves(new)))
        real(static, new)
    monkeypatch.setattr(cuda_graph_stand_in, "_copy_into", spy)
    run(_tiny(toy, tmp_path, algorithm="maml", iterations=3, inner_steps=2, task_batching="loop",
              eval_episodes=0, cuda_graph=True), progress=None)
    assert copied["params"] == 0
    assert copied["tasks"] == 2 * 4      # iterations 2 and 3: support/query x and y


def test_cuda_graph_runs_the_whole_training_on_the_graphs_stream(
        toy, tmp_path, cuda_graph_stand_in, capture_stream_spy, monkeypatch):
    """The captures, the optimiser's steps and the final test all run inside
    ``cudagraph.capture_stream``, so that cuBLAS keeps one workspace; eager training does not
    enter it."""
    import experiments.fewshot.train as train
    from testbed import MetaOptimizer

    seen = []

    def spying(name, fn):
        def wrapped(*args, **kwargs):
            seen.append((name, capture_stream_spy.inside))
            return fn(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(cuda_graph_stand_in, "_capture", spying("capture", cuda_graph_stand_in._capture))
    monkeypatch.setattr(MetaOptimizer, "step", spying("step", MetaOptimizer.step))
    monkeypatch.setattr(train, "evaluate_params", spying("test", train.evaluate_params))
    common = dict(algorithm="maml", iterations=2, inner_steps=2, task_batching="loop", eval_episodes=2)
    run(_tiny(toy, tmp_path / "eager", **common), progress=None)
    assert capture_stream_spy.entered == [] and {n for n, _ in seen} == {"step", "test"}
    seen.clear()
    run(_tiny(toy, tmp_path / "graphed", cuda_graph=True, **common), progress=None)
    assert capture_stream_spy.entered == ["cpu"]
    assert seen == [("capture", True), ("step", True), ("step", True), ("test", True)]


def test_cuda_graph_needs_cuda_and_a_maml_type_algorithm(toy, tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="on device 'cpu'"):
        _tiny(toy, tmp_path, cuda_graph=True)
    assert main(["train", "--source", toy, "--cuda-graph", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--no-cuda-graph" in err[0] and "Traceback" not in err[0]
    from testbed import cudagraph
    monkeypatch.setattr(cudagraph, "_DEVICE_TYPE", "cpu")     # past the device check
    with pytest.raises(ValueError, match="'reptile' has its own update rule"):
        _tiny(toy, tmp_path, cuda_graph=True, algorithm="reptile")


def test_tf32_needs_cuda(toy, tmp_path):
    with pytest.raises(ValueError, match="tf32"):
        _tiny(toy, tmp_path, precision="tf32")
    assert main(["train", "--source", toy, "--precision", "tf32", "--out", str(tmp_path)]) == 2


def test_auto_task_batching_is_resolved_by_device_on_construction(toy, tmp_path):
    config = TrainConfig(source=toy, out=str(tmp_path))
    assert config.task_batching == "loop"            # the CPU measurement's choice
    assert default_batching("cuda:0") == "vmap" and default_batching("cpu") == "loop"
    assert replace(config, task_batching="vmap").task_batching == "vmap"
    with pytest.raises(ValueError, match="task_batching"):
        replace(config, task_batching="sometimes")


def test_a_missing_test_part_is_an_error_before_the_first_iteration(tmp_path, capsys):
    """mini-ImageNet's parts are separate user files: a root with the training part only
    must fail at the start, naming the missing part, not after the training it would waste."""
    import pickle

    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, size=(12, 84, 84, 3), dtype=np.uint8)
    classes = {f"n0{i}": list(range(3 * i, 3 * i + 3)) for i in range(4)}
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(
        pickle.dumps({"image_data": images, "class_dict": classes}))
    spec = f"miniimagenet:{tmp_path}"
    config = _tiny(spec, tmp_path / "run", image_size=16, task_batching="loop")
    with pytest.raises(ValueError, match=r"part 'test' not found"):
        run(config, progress=None)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()
    with pytest.raises(ValueError, match=r"part 'val' not found"):
        run(replace(config, val_every=1, eval_episodes=0), progress=None)
    result = run(replace(config, eval_episodes=0), progress=None)     # needs no other part
    assert result.test is None and (tmp_path / "run" / CHECKPOINT_NAME).exists()
    argv = ["train", "--source", spec, "--image-size", "16", "--ways", "3", "--queries", "2",
            "--hidden", "4", "--meta-batch", "2", "--iterations", "1", "--out", str(tmp_path / "cli")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'test' not found" in lines[0]


def test_a_signal_while_results_are_written_waits_for_a_whole_results_file(toy, tmp_path, monkeypatch):
    """SIGTERM after training and test, while results.json is built: the file is written
    whole first, and the message names the checkpoint instead of "before training started"."""
    import experiments.fewshot.train as T

    real = T.TrainResult.to_dict
    sent = []

    def to_dict_then_signal(self, *args, **kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(T.TrainResult, "to_dict", to_dict_then_signal)
    with pytest.raises(TrainingInterrupted) as stop:
        run(_tiny(toy, tmp_path / "run"), progress=None)
    assert stop.value.exit_status == 143 and stop.value.saved == 2
    assert "before training started" not in str(stop.value) and "iteration 2" in str(stop.value)
    results = json.loads((tmp_path / "run" / RESULTS_NAME).read_text())
    assert results["iterations"] == 2 and results["test"] is not None
