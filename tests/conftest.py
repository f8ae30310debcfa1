"""Guards for the whole suite."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _grad_mode_is_left_alone():
    """A test that switches autograd off (or on) for everyone after it fails here, not elsewhere."""
    before = torch.is_grad_enabled()
    yield
    assert torch.is_grad_enabled() == before, "this test changed torch's global grad mode and did not restore it"
