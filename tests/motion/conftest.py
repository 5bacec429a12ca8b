"""Fixtures of the motion tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Short clips: one torch thread is far cheaper than two fighting a loaded CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
