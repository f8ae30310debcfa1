"""Guards for the whole suite."""

import os

import pytest
import torch


def pytest_configure(config):
    # under pytest-xdist (`make test` runs one worker per core) each worker is a process of its
    # own: torch's default of one thread per core would put cores x cores threads on the machine
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _grad_mode_is_left_alone():
    """A test that switches autograd off (or on) for everyone after it fails here, not elsewhere."""
    before = torch.is_grad_enabled()
    yield
    assert torch.is_grad_enabled() == before, "this test changed torch's global grad mode and did not restore it"
