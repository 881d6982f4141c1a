"""Shared test settings: hypothesis profiles and float64 by default for theory tests."""

import os

from hypothesis import HealthCheck, settings

# default: the fast tier (CI).  thorough: many more examples, for a local hunt.
settings.register_profile(
    "default", max_examples=30, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
