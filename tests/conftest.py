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
