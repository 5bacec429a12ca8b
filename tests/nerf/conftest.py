"""Shared pieces of the kernel parity tests."""
from __future__ import annotations

import pytest

from avatar3d.nerf.backend import load_extension
from avatar3d.nerf.raymarch import RAYMARCH_SPEC


@pytest.fixture(scope="session")
def raymarch_ops():
    """The CPU build of the ray-marching extension (JIT-compiled once into build/torch_extensions, then cached)."""
    record = load_extension(RAYMARCH_SPEC, "cpu")
    if record.module is None:
        pytest.fail(f"CPU build failed: {record.error}")
    return record.module
