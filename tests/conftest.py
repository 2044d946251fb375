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


@pytest.fixture(scope="module")
def symmetric_run(tmp_path_factory) -> str:
    """A symmetric HVAE trained for 2 steps on synthetic:tiny (predicts, and inpaints by its posterior); one per
    test module."""
    from hvaeseg.cli import main

    out = tmp_path_factory.mktemp("symmetric") / "run"
    args = ["train", "--method", "symmetric", "--data", "synthetic:tiny", "--labels", "2", "--steps", "2",
            "--patch-size", "32", "--block", "64", "--unlabelled-patches", "16", "--batch-size", "4",
            "--val-every", "2", "--checkpoint-every", "2", "--out", str(out)]
    assert main(args) == 0
    return str(out)
