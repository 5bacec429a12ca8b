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


@pytest.fixture(scope="session")
def prepared_subject(synth_clip: Path, tmp_path_factory: pytest.TempPathFactory):
    """``synth_clip`` through `avatar3d prep` once (a fast tracking schedule): (folder, config, manifest, log).

    Shared read-only by the data-prep tests; a test that changes the folder must leave it complete.
    """
    from data_prep.pipeline import PrepConfig, prepare
    from data_prep.track import TrackConfig

    out = tmp_path_factory.mktemp("subject")
    config = PrepConfig(track=TrackConfig(iterations=100, lbfgs_iterations=60))
    log: list[str] = []
    manifest = prepare(synth_clip / "video.mp4", out, config, progress=False, log=log.append)
    return out, config, manifest, log
