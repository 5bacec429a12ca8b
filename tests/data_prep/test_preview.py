"""preview.mp4 and the fitted-model projection it draws (shared with tools/bench/prep.py)."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.dataset.contract import iter_labels
from avatar3d.errors import Avatar3DError
from avatar3d.face import landmark_sets as rg
from avatar3d.face.default_model import load_face_model
from avatar3d.io.video import probe_video, read_video
from data_prep.fitted import fitted_projection, load_tracking
from data_prep.pipeline import prepare
from data_prep.preview import PREVIEW_NAME, write_preview


@pytest.fixture(scope="module")
def preview(prepared_subject, tmp_path_factory):
    out, _, _, _ = prepared_subject
    path = tmp_path_factory.mktemp("preview") / "preview.mp4"
    write_preview(out, path, max_seconds=2.0)
    return out, path


def test_preview_frames_audio_and_drawing(preview):
    out, path = preview
    info = probe_video(path)
    assert info.n_frames == 50 and info.has_audio and (info.width, info.height) == (512, 512)
    landmarks = np.load(out / "landmarks.npy")
    frames = zip(read_video(path), read_video(out / "frames.mp4"), iter_labels(out / "parsing.npz"))
    for i, (drawn, plain, labels) in enumerate(frames):
        if i == 10:
            break
        diff = np.abs(drawn.astype(np.int16) - plain.astype(np.int16)).sum(-1)
        x, y = np.floor(landmarks[i, :468, :2]).astype(int).T
        assert np.median(diff[y, x]) > 60  # dots (and mesh) over every landmark
        background = labels == 0
        background[:48] = False  # the caption and legend
        assert np.median(diff[background]) < 10  # background: untouched up to the codec


def test_fitted_mesh_lands_on_mediapipe_landmarks(prepared_subject):
    out, _, manifest, _ = prepared_subject
    intr = manifest["intrinsics"]
    vertices, projected = fitted_projection(load_tracking(out), load_face_model(), intr["cx"], intr["cy"])
    landmarks = np.load(out / "landmarks.npy")[:, :468, :2]
    flags = np.load(out / "landmark_flags.npy")
    err = np.linalg.norm(projected - landmarks, axis=-1)[flags != 0]
    inner = np.ones(468, bool)
    inner[rg.FACE_OVAL] = False
    assert vertices.shape == (len(flags), 468, 2)
    assert np.nanmean(err[:, inner]) < 1.5 and np.nanmean(err) < 2.5, (np.nanmean(err[:, inner]), np.nanmean(err))
    with np.load(out / "tracking.npz") as tracking:  # the same number the tracker reported: the same projection
        np.testing.assert_allclose(err[:, inner].mean(-1), tracking["residual_px"][flags != 0], atol=0.01)


def test_prepare_writes_the_preview_on_request(prepared_subject, synth_clip):
    import dataclasses

    out, config, _, _ = prepared_subject
    log: list[str] = []
    prepare(synth_clip / "video.mp4", out, dataclasses.replace(config, preview=True), progress=False,
            log=log.append)
    assert all("skipped" in line for line in log[:-1]) and log[-1].startswith("[preview]"), log
    assert probe_video(out / PREVIEW_NAME).n_frames == 250  # the first 10 s at 25 fps


def test_missing_subject_is_a_clear_error(tmp_path):
    with pytest.raises(Avatar3DError, match="manifest.json.*avatar3d prep"):
        write_preview(tmp_path, tmp_path / "p.mp4")
