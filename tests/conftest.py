"""Shared fixtures: one synthetic clip per test session, generated with a fixed seed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.real_clips import REAL_PREP_SIZE


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Calibration caches go to a per-session folder unless the caller set one."""
    os.environ.setdefault("AVATAR3D_CACHE", str(tmp_path_factory.mktemp("avatar3d-cache")))


def _fixture_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, bool]:
    """(folder for a session fixture, whether it is already built).

    With AVATAR3D_TEST_REUSE=DIR the expensive fixtures (clip, prepared subject, tiny avatar) are
    kept in DIR/NAME and reused by later runs -- for development only; CI leaves it unset and
    builds everything fresh.
    """
    reuse = os.environ.get("AVATAR3D_TEST_REUSE")
    if not reuse:
        return tmp_path_factory.mktemp(name), False
    folder = Path(reuse) / name
    done = folder / ".complete"
    folder.mkdir(parents=True, exist_ok=True)
    return folder, done.is_file()


def _mark_built(folder: Path) -> None:
    if os.environ.get("AVATAR3D_TEST_REUSE"):
        (folder / ".complete").touch()


@pytest.fixture(scope="session")
def synth_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 s, 512² synthetic clip (seed 7) with its ground truth; generated once."""
    from avatar3d.synth.generate import SynthConfig, generate

    out, built = _fixture_dir(tmp_path_factory, "synth-clip")
    if not built:
        generate(SynthConfig(duration_s=16.0, seed=7), out, progress=False)
        _mark_built(out)
    return out


@pytest.fixture(scope="session")
def prepared_subject(synth_clip: Path, tmp_path_factory: pytest.TempPathFactory):
    """``synth_clip`` through `avatar3d prep` once (solver steps until converged, at most 100): (folder, config, manifest, log).

    Shared read-only by the data-prep tests; a test that changes the folder must leave it complete.
    """
    from data_prep.pipeline import PrepConfig, prepare
    from data_prep.track import TrackConfig

    out, _ = _fixture_dir(tmp_path_factory, "subject")
    config = PrepConfig(track=TrackConfig(iterations=100))
    log: list[str] = []
    manifest = prepare(synth_clip / "video.mp4", out, config, progress=False, log=log.append)  # re-runs skip stages
    return out, config, manifest, log


TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def avatar_subject(prepared_subject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the prepared subject for avatar work (training writes a frame cache into it)."""
    parent, built = _fixture_dir(tmp_path_factory, "avatar-subject")
    folder = parent / "subject"
    if not built:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(prepared_subject[0], folder, ignore=shutil.ignore_patterns("cache"))
        _mark_built(parent)
    return folder


@pytest.fixture(scope="session")
def tiny_avatar_run(avatar_subject: Path, tmp_path_factory: pytest.TempPathFactory):
    """One avatar trained with configs/tiny.yaml (64², 400 steps) on ``avatar_subject``: (folder, train result).

    Shared read-only by every test that needs a trained avatar (render, eval, export).
    """
    from avatar3d.config import load_config
    from avatar3d.train.config import TrainConfig
    from avatar3d.train.trainer import train

    parent, built = _fixture_dir(tmp_path_factory, "avatar")
    out = parent / "run"
    if built:
        return out, json.loads((parent / "result.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    result = train(avatar_subject, out, load_config(TrainConfig, TINY_CONFIG), progress=False, log=lambda s: None)
    (parent / "result.json").write_text(json.dumps(result))
    _mark_built(parent)
    return out, result


@pytest.fixture(scope="session")
def real_subject(tmp_path_factory: pytest.TempPathFactory):
    """``real_subject(clip)``: a shared real clip prepared at 256² with at least its last second held out, once
    per session, on first use (~6 s for a 5 s clip, ~25 s for the 22.5 s one: most of it tracking and parsing)."""
    from avatar3d.io.video import probe_video
    from data_prep.decode import DecodeConfig
    from data_prep.pipeline import PrepConfig, evaluation_hold_out, prepare

    out = tmp_path_factory.mktemp("real_subjects")
    done: dict[str, Path] = {}

    def get(clip: Path) -> Path:
        if clip.name not in done:
            hold_out = evaluation_hold_out(float(probe_video(clip).duration))  # >= 1 s held out, as tools/bench/real.py
            prepare(clip, out / clip.stem, PrepConfig(decode=DecodeConfig(size=REAL_PREP_SIZE), val_fraction=hold_out),
                    progress=False, log=lambda _: None)  # fmt: skip
            done[clip.name] = out / clip.stem
        return done[clip.name]

    return get
