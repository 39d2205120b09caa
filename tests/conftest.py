"""Shared test settings: few threads (CI has 2 cores), float64 where exactness matters, and a
hypothesis profile that keeps the whole suite under a few minutes."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("FLOWKIT_TEST_THREADS", "2")))

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("FLOWKIT_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("FLOWKIT_HYPOTHESIS_PROFILE", "ci"))
