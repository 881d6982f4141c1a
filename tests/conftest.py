"""Shared test settings: hypothesis profiles and float64 by default for theory tests."""

import os

import pytest
from hypothesis import HealthCheck, settings

# default: the fast tier (CI).  thorough: many more examples, for a local hunt.
settings.register_profile(
    "default", max_examples=30, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after: tiny models gain nothing from threads,
    and OpenMP spinning on a busy machine costs 10x (few-shot tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def eager_capture(fn, device):
    """A stand-in for CUDA graph capture with a graph's contract: the function runs once at
    capture, and a replay runs it again writing into the *same* output tensors."""
    from testbed import meta

    out = fn()

    def replay():
        new = fn()
        for s, n in zip(meta._leaves(out), meta._leaves(new)):
            s.copy_(n)
    return out, replay, None


@pytest.fixture
def cuda_graph_stand_in(monkeypatch):
    """``cuda_graph=True`` on the CPU, through :func:`eager_capture` (tests of the plumbing
    around the capture; the capture itself is tested on a GPU, tests/test_gpu.py)."""
    from testbed import cudagraph

    monkeypatch.setattr(cudagraph, "_DEVICE_TYPE", "cpu")
    monkeypatch.setattr(cudagraph, "_capture", eager_capture)
    cudagraph.clear()
    yield cudagraph
    cudagraph.clear()


@pytest.fixture
def capture_stream_spy(monkeypatch):
    """Replaces ``cudagraph.capture_stream`` (a no-op off CUDA) with one that records the devices
    it was entered for and whether a block is inside it now (``spy.inside``)."""
    import contextlib
    import types

    from testbed import cudagraph

    spy = types.SimpleNamespace(entered=[], inside=False)

    @contextlib.contextmanager
    def capture_stream(device):
        spy.entered.append(str(device))
        spy.inside = True
        try:
            yield None
        finally:
            spy.inside = False
    monkeypatch.setattr(cudagraph, "capture_stream", capture_stream)
    return spy
