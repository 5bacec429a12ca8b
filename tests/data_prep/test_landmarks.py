"""Landmark stage on real frames: accuracy against the synthetic ground truth, gap filling /
exclusion, identity jumps, and the outputs on disk.  No mocks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatar3d.errors import Avatar3DError
from avatar3d.face import landmark_sets as rg
from avatar3d.io.video import VideoWriter, read_video
from data_prep.decode import DecodeConfig, DecodeResult, decode
from data_prep.landmarks import DETECTED, EXCLUDED, INTERPOLATED, detect_landmarks, fill_gaps


@pytest.fixture(scope="module")
def decoded(synth_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DecodeResult]:
    out = tmp_path_factory.mktemp("landmarks-decoded")
    return out, decode(synth_clip / "video.mp4", out, DecodeConfig(fps=25, size=512), progress=False)


def _non_contour() -> np.ndarray:
    keep = np.ones(468, bool)
    keep[rg.FACE_OVAL] = False
    return keep


def test_accuracy_on_decoded_synthetic_clip(decoded: tuple[Path, DecodeResult], synth_clip: Path) -> None:
    out, dec = decoded
    res = detect_landmarks(out, progress=False)
    lm = np.load(out / "landmarks.npy")
    flags = np.load(out / "landmark_flags.npy")
    assert lm.shape == (dec.n_frames, 478, 3) and lm.dtype == np.float32
    assert flags.shape == (dec.n_frames,) and flags.dtype == np.uint8
    assert res.n_detected >= 0.98 * dec.n_frames and res.rejected_jumps == []
    report = json.loads((out / "landmarks.json").read_text())
    assert report["n_frames"] == dec.n_frames and report["excluded_gaps"] == []
    truth = dec.map_points(np.load(synth_clip / "groundtruth.npz")["landmarks"])[..., :2]
    ok = flags == DETECTED
    err = np.linalg.norm(lm[ok, :468, :2] - truth[ok], axis=-1)[:, _non_contour()]
    print(f"landmark error vs ground truth: mean {err.mean():.2f} px, p95 {np.percentile(err, 95):.2f} px, "
          f"{res.frames_per_s:.0f} frames/s")
    assert err.mean() <= 2.0


@pytest.fixture(scope="module")
def gappy(decoded: tuple[Path, DecodeResult], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 3 s of the decoded clip with frames 20-24 (0.2 s) and 40-59 (0.8 s) blanked grey,
    and frames 66-67 showing the face moved 150 px sideways (a jump to 'another face')."""
    out, _ = decoded
    folder = tmp_path_factory.mktemp("gappy")
    with VideoWriter(folder / "frames.mp4", 25) as w:
        for i, frame in zip(range(75), read_video(out / "frames.mp4")):
            if 20 <= i <= 24 or 40 <= i <= 59:
                frame = np.full_like(frame, 128)
            elif i in (66, 67):
                frame = np.roll(frame, -150, axis=1)
            w.write(frame)
    return folder


def test_short_gap_interpolated_long_gap_excluded(gappy: Path, decoded: tuple[Path, DecodeResult],
                                                 synth_clip: Path) -> None:
    res = detect_landmarks(gappy, progress=False)
    flags = np.load(gappy / "landmark_flags.npy")
    lm = np.load(gappy / "landmarks.npy")
    assert res.excluded_gaps == [(40, 59)]
    assert (20, 24) in res.interpolated_gaps
    assert (flags[20:25] == INTERPOLATED).all() and (flags[40:60] == EXCLUDED).all()
    assert np.isnan(lm[40:60]).all() and not np.isnan(lm[:40]).any() and not np.isnan(lm[60:]).any()
    report = json.loads((gappy / "landmarks.json").read_text())
    assert report["excluded_gaps"] == [[40, 59]] and report["n_excluded"] == 20
    # the interpolated frames are still close to the truth (the head moves slowly)
    truth = decoded[1].map_points(np.load(synth_clip / "groundtruth.npz")["landmarks"][:75])[..., :2]
    err = np.linalg.norm(lm[20:25, :468, :2] - truth[20:25], axis=-1)[:, _non_contour()]
    assert err.mean() < 4.0, err.mean()


def test_jump_to_another_face_is_a_loss(gappy: Path) -> None:
    res = detect_landmarks(gappy, progress=False)
    flags = np.load(gappy / "landmark_flags.npy")
    # MediaPipe's tracker first loses the moved face (66: no face), then re-detects it 150 px away (67: jump)
    assert res.rejected_jumps and set(res.rejected_jumps) <= {66, 67}
    assert (flags[66:68] == INTERPOLATED).all() and (66, 67) in res.interpolated_gaps
    assert (flags[68:] == DETECTED).all()  # re-acquired where the subject really is


def test_fill_gaps_edges_and_threshold() -> None:
    raw = np.zeros((30, 478, 3), np.float32)
    raw[:, :, 0] = np.arange(30)[:, None]
    raw[0:2] = np.nan  # leading gap: nothing before -> excluded
    raw[10:22] = np.nan  # 12 frames = 0.48 s -> interpolated
    raw[25:30] = np.nan  # trailing gap -> excluded
    lm, flags, filled, excluded = fill_gaps(raw, fps=25, max_gap_s=0.5)
    assert filled == [(10, 21)] and excluded == [(0, 1), (25, 29)]
    np.testing.assert_allclose(lm[10:22, 0, 0], np.arange(10, 22), atol=1e-4)  # linear per coordinate
    assert (flags[10:22] == INTERPOLATED).all() and (flags[[0, 1, 25]] == EXCLUDED).all()
    _, _, filled13, excluded13 = fill_gaps(np.concatenate([raw[2:10], np.full((13, 478, 3), np.nan, np.float32),
                                                           raw[22:25]]), fps=25)
    assert filled13 == [] and excluded13 == [(8, 20)]  # 13 frames = 0.52 s > 0.5 s


def test_missing_frames_file(tmp_path: Path) -> None:
    with pytest.raises(Avatar3DError) as err:
        detect_landmarks(tmp_path, progress=False)
    assert "frames.mp4" in str(err.value) and "decode" in str(err.value)
