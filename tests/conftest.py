"""Shared test settings: a hypothesis profile that keeps the whole suite under a few minutes
(the thread count is set in the root conftest.py, for the docstring examples too)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FLOWKIT_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FLOWKIT_HYPOTHESIS_PROFILE", "ci"))
