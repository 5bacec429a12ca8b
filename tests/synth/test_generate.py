"""The synthetic subject: does it look like a face to MediaPipe, and is its ground truth right?"""
from __future__ import annotations

import json

import numpy as np
import pytest

from avatar3d.io.video import probe_video, read_audio
from avatar3d.synth.camera import matrix_to_euler, FLIP
from avatar3d.synth.check import check_clip, load_groundtruth

BILABIALS = {"P", "B", "M"}


@pytest.fixture(scope="module")
def truth(synth_clip):
    return load_groundtruth(synth_clip / "groundtruth.npz")


def test_mediapipe_agrees_with_ground_truth_landmarks(synth_clip):
    stats = check_clip(synth_clip)
    print(json.dumps(stats))
    assert stats["detection_rate"] >= 0.99
    assert stats["mean_px"] <= 2.0, stats
    assert stats["p95_px"] <= 5.0, stats
    assert stats["lips_mean_px"] <= 2.0, stats
    assert stats["contour_mean_px"] <= 6.0, stats  # reported separately; contour points slide


def test_audio_and_video_have_the_same_duration(synth_clip, truth):
    info = probe_video(synth_clip / "video.mp4")
    assert info.n_frames == len(truth["rotation"])
    assert info.width == info.height == 512 and float(info.fps) == 25.0
    audio = read_audio(synth_clip / "video.mp4", sample_rate=16000)
    assert abs(len(audio) / 16000 - info.n_frames / 25.0) <= 1.0 / 25.0
    assert np.abs(audio).max() > 0.05  # speech is there


def _frames_in(start: float, end: float, fps: int, margin: float = 0.0) -> np.ndarray:
    return np.arange(int(np.ceil((start + margin) * fps)), int(np.floor((end - margin) * fps)) + 1)


def test_mouth_opens_with_speech_and_closes_in_silence_and_on_bilabials(truth):
    fps = int(truth["fps"])
    opening = truth["mouth_opening_mm"]
    labels, starts, ends = truth["phone_label"], truth["phone_start"], truth["phone_end"]
    n = len(opening)
    silent = np.zeros(n, bool)
    for lab, s, e in zip(labels, starts, ends):
        if lab == "SIL" and e - s >= 0.3:
            idx = _frames_in(s, e, fps, margin=0.08)
            silent[idx[idx < n]] = True
    vowel = np.zeros(n, bool)
    for lab, s, e in zip(labels, starts, ends):
        if lab in {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "EY", "OW"}:
            idx = _frames_in(s, e, fps)
            vowel[idx[idx < n]] = True
    assert silent.sum() > 10 and vowel.sum() > 10
    assert opening[silent].max() < 1.0, "mouth must be closed in silences >= 300 ms"
    assert opening[vowel].mean() > 4.0 * max(opening[silent].mean(), 0.5)
    centres = [0.5 * (s + e) for lab, s, e in zip(labels, starts, ends) if lab in BILABIALS]
    assert len(centres) >= 3
    closed = [opening[min(n - 1, int(round(c * fps)))] for c in centres]
    assert np.median(closed) < 1.5 and np.max(closed) < 3.0, closed


def test_head_pose_stays_in_its_ranges_and_holds_still(truth):
    angles = np.array([matrix_to_euler(FLIP.T @ r) for r in truth["rotation"]])
    assert np.all(np.abs(angles) <= np.array([15.0, 10.0, 5.0]) + 1e-6)
    assert angles[:, 0].max() - angles[:, 0].min() > 5.0  # it does move
    still = truth["head_still"]
    assert still.sum() >= 25
    dr = np.abs(np.diff(angles, axis=0)).max(axis=1)
    assert dr[still[1:] & still[:-1]].max() < 1e-6


def test_eyes_blink_every_two_to_six_seconds(truth):
    blink = truth["blink"][:, 0]
    onsets = np.flatnonzero((blink[1:] > 0.5) & (blink[:-1] <= 0.5))
    gaps = np.diff(onsets) / float(truth["fps"])
    assert len(onsets) >= 2
    assert np.all(gaps >= 2.0) and np.all(gaps <= 6.6)


def test_ground_truth_landmarks_are_the_projection_of_the_pose(truth):
    """Landmarks, pose and intrinsics agree: re-project the canonical points solved from frame 0."""
    k = truth["intrinsics"]
    lm = truth["landmarks"]
    x = (lm[..., 0] - k[0, 2]) / k[0, 0] * lm[..., 2]
    y = (lm[..., 1] - k[1, 2]) / k[1, 1] * lm[..., 2]
    cam = np.stack([x, y, lm[..., 2]], -1)
    canonical = np.einsum("nji,nkj->nki", truth["rotation"], cam - truth["translation"][:, None, :])
    rigid = [6, 168, 197, 195, 10, 151]  # nasal bridge and forehead: no expression moves them
    spread = canonical[:, rigid].std(axis=0).max()
    assert spread < 3e-4, f"rigid landmarks move in canonical space by {spread * 1000:.2f} mm"


def test_same_seed_gives_the_same_clip(tmp_path):
    from avatar3d.io.video import read_video
    from avatar3d.synth.generate import SynthConfig, generate

    config = SynthConfig(duration_s=4.0, seed=3, workers=1)
    generate(config, tmp_path / "a", progress=False)
    generate(config, tmp_path / "b", progress=False)
    a = load_groundtruth(tmp_path / "a" / "groundtruth.npz")
    b = load_groundtruth(tmp_path / "b" / "groundtruth.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    frames_a = np.array(list(read_video(tmp_path / "a" / "video.mp4")))
    frames_b = np.array(list(read_video(tmp_path / "b" / "video.mp4")))
    assert frames_a.shape == frames_b.shape
    assert np.abs(frames_a.astype(int) - frames_b.astype(int)).max() <= 1
    from avatar3d.synth.motion import HeadMotionConfig, head_track

    track = [head_track(100, 25, HeadMotionConfig(), np.random.default_rng([seed, 3])).angles for seed in (3, 4)]
    np.testing.assert_allclose(track[0], a["euler_deg"][:100], atol=1e-5)
    assert not np.allclose(track[0], track[1])


def test_head_masks_and_plate_are_ground_truth_for_segmentation(synth_clip, truth):
    with np.load(synth_clip / "masks.npz") as data:
        size = tuple(data["shape"])
        masks = np.unpackbits(data["head_packed"], axis=1)[:, : size[0] * size[1]].reshape(-1, *size).astype(bool)
        plate = data["plate"]
    assert masks.shape[0] == len(truth["rotation"]) and plate.shape == size + (3,)
    lm = truth["landmarks"]
    inside = [masks[i, int(lm[i, k, 1]), int(lm[i, k, 0])] for i in range(0, len(lm), 10) for k in (1, 4, 10, 152)]
    assert np.mean(inside) > 0.99  # nose, forehead and chin landmarks lie on the head mask
    from avatar3d.io.video import read_video

    frame = next(iter(read_video(synth_clip / "video.mp4")))
    background = ~masks[0]
    assert np.abs(frame[background].astype(int) - plate[background].astype(int)).mean() < 4.0


def test_another_photo_and_size(tmp_path):
    """--photo: a different image (mirrored, rescaled, off-centre on a grey canvas) at 256²."""
    import cv2
    import skimage.data

    from avatar3d.synth.generate import SynthConfig, generate

    face = cv2.resize(skimage.data.astronaut()[:, ::-1], (410, 410), interpolation=cv2.INTER_AREA)
    canvas = np.full((560, 640, 3), 90, np.uint8)
    canvas[100:510, 200:610] = face
    photo = tmp_path / "other.png"
    cv2.imwrite(str(photo), canvas[:, :, ::-1])
    generate(SynthConfig(duration_s=4.0, seed=5, size=256, photo=str(photo), calibration_views=24),
             tmp_path / "clip", progress=False)
    stats = check_clip(tmp_path / "clip")
    assert stats["detection_rate"] >= 0.99
    assert stats["mean_px"] <= 2.0 and stats["lips_mean_px"] <= 2.0, stats
