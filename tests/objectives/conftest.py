import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The objective tests run thousands of tiny ops: one thread is several times faster than many
    (and is not disturbed by other processes on a small machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
