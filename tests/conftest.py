import os

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HVAESEG_NO_PROGRESS", "1")

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same torch / pyro random state (tests never share global state)."""
    import pyro
    import torch

    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (small tensors: thread start-up costs more than it gains)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
