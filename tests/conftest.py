"""Shared fixtures: one synthetic clip per test session, generated with a fixed seed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Calibration caches go to a per-session folder unless the caller set one."""
    os.environ.setdefault("AVATAR3D_CACHE", str(tmp_path_factory.mktemp("avatar3d-cache")))


@pytest.fixture(scope="session")
def synth_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 s, 512² synthetic clip (seed 7) with its ground truth; generated once."""
    from avatar3d.synth.generate import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth-clip")
    generate(SynthConfig(duration_s=16.0, seed=7), out, progress=False)
    return out
