"""Driving tracks from new speech: poses only from training frames without jumps, blinks like the subject's."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.errors import Avatar3DError
from avatar3d.face.default_model import load_face_model
from avatar3d.face.lip_gap import lip_gap_weights
from avatar3d.render.drive import AMPLITUDE_GAIN_RANGE, DriveConfig, blink_events, build_tracks, sample_blinks, spread
from avatar3d.render.frame_order import ping_pong

FPS = 25.0


def _subject(n: int = 400, seed: int = 0):
    """A clip-like subject: smooth yaw wander, blinks every ~3 s, 39 named channels."""
    rng = np.random.default_rng(seed)
    yaw = 0.2 * np.sin(np.arange(n) / 40.0)
    R = np.stack([[[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]] for a in yaw])
    t = np.stack([np.zeros(n), np.zeros(n), 0.5 + 0.01 * np.sin(np.arange(n) / 30.0)], axis=1)
    blink = np.full((n, 2), 0.05, np.float32)
    peaks = np.arange(30, n - 5, 75)
    for p in peaks:
        for k, v in zip(range(-2, 3), (0.3, 0.7, 0.95, 0.7, 0.3)):
            blink[p + k] = v
    names = ["jawOpen", "mouthClose", "browInnerUp", "eyeWideLeft", "cheekPuff", "mouthLeft"]
    expression = rng.normal(0.3, 0.05, (n, len(names))).astype(np.float32)
    return dict(R=R, t=t, blink=blink, expression=expression, expression_names=names), peaks


def test_ping_pong_turns_without_jumps() -> None:
    ids = np.array([3, 4, 5, 6])
    seq = ping_pong(ids, 20)
    assert list(seq[:8]) == [3, 4, 5, 6, 5, 4, 3, 4]
    pos = np.searchsorted(ids, seq)
    assert np.abs(np.diff(pos)).max() == 1


def test_subject_pose_comes_from_training_frames_and_static_is_still() -> None:
    subj, _ = _subject()
    train_ids = np.arange(0, 360)
    mouth = {"jawOpen": np.linspace(0, 1, 500).astype(np.float32)}
    tracks = build_tracks(mouth, 500, FPS, train_ids=train_ids, **subj)
    assert set(tracks.source_frames) <= set(train_ids)
    assert np.allclose(tracks.R, subj["R"][tracks.source_frames]) and tracks.motion.shape == (500, 8)
    step = np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", tracks.R[1:], tracks.R[:-1]) - 1) / 2, -1, 1)))
    assert step.max() < 1.0, "the looped pose jumps"
    static = build_tracks(mouth, 50, FPS, train_ids=train_ids, config=DriveConfig(pose="static"), **subj)
    assert np.ptp(static.R, axis=0).max() == 0 and np.ptp(static.expression[:, 2]) == 0


def test_mouth_channels_follow_the_model_scaled_around_rest() -> None:
    subj, _ = _subject()
    curve = np.concatenate([np.zeros(50), np.full(50, 0.6)]).astype(np.float32)
    tracks = build_tracks({"jawOpen": curve}, 100, FPS, train_ids=np.arange(300),
                          config=DriveConfig(mouth_amplitude="predicted"), **subj)  # fmt: skip
    half = build_tracks({"jawOpen": curve}, 100, FPS, train_ids=np.arange(300),
                        config=DriveConfig(mouth_scale=0.5, mouth_amplitude="predicted"), **subj)  # fmt: skip
    j = subj["expression_names"].index("jawOpen")
    assert np.allclose(tracks.expression[:, j], curve)
    assert np.allclose(half.expression[:, j], curve * 0.5)
    other = subj["expression_names"].index("mouthLeft")  # not predicted: held at its median
    assert np.ptp(tracks.expression[:, other]) == 0


def _talking_subject(n: int = 300) -> dict:
    """A subject whose tracked jaw swings 0.05 .. 0.45 with a closed-lip channel at rest: a 0.4 jaw range."""
    subj, _ = _subject(n)
    j = subj["expression_names"].index("jawOpen")
    subj["expression"][:, j] = 0.25 + 0.2 * np.sin(np.arange(n) / 3.0)
    subj["expression"][:, subj["expression_names"].index("mouthClose")] = 0.0
    return subj


def test_mouth_amplitude_gives_new_speech_the_subjects_lip_range_within_what_it_showed() -> None:
    subj = _talking_subject()
    names, j = subj["expression_names"], subj["expression_names"].index("jawOpen")
    gap = lip_gap_weights(load_face_model(), names)
    assert gap[j] > 0.01 and gap[names.index("mouthClose")] == pytest.approx(-gap[j]), \
        "the shipped model: jawOpen parts the lips, mouthClose shuts them by as much"
    curve = (0.05 + 0.1 * (1 + np.sin(np.arange(200) / 2.0))).astype(np.float32)  # 8 s, half the subject's range
    logs: list[str] = []
    tracks = build_tracks({"jawOpen": curve}, 200, FPS, train_ids=np.arange(300), log=logs.append, **subj)
    subject_range = spread(subj["expression"][:, j])
    assert tracks.mouth_gain == pytest.approx(subject_range / spread(curve), rel=0.05)
    assert spread(tracks.expression[:, j]) == pytest.approx(subject_range, rel=0.05)
    assert tracks.expression[:, j].max() <= subj["expression"][:, j].max() + 1e-6, "a jaw wider than the clip showed"
    assert any("mouth amplitude matched" in line for line in logs)
    kept = build_tracks({"jawOpen": curve}, 200, FPS, train_ids=np.arange(300),
                        config=DriveConfig(mouth_amplitude="predicted"), **subj)  # fmt: skip
    assert kept.mouth_gain == 1.0 and np.allclose(kept.expression[:, j], curve)
    huge = build_tracks({"jawOpen": curve * 0.01}, 200, FPS, train_ids=np.arange(300), **subj)
    assert huge.mouth_gain == AMPLITUDE_GAIN_RANGE[1], "the gain is bounded"


def test_mouth_amplitude_reads_the_lip_gap_and_leaves_short_speech_alone() -> None:
    subj = _talking_subject()
    names = subj["expression_names"]
    swing = (0.05 + 0.1 * (1 + np.sin(np.arange(200) / 2.0))).astype(np.float32)
    shut = build_tracks({"jawOpen": swing, "mouthClose": swing}, 200, FPS, train_ids=np.arange(300), **subj)
    assert shut.mouth_gain == 1.0, "a jaw that swings with the lips held shut opens no mouth to rescale"
    short = build_tracks({"jawOpen": swing[:40]}, 40, FPS, train_ids=np.arange(300), **subj)
    assert short.mouth_gain == 1.0 and np.allclose(short.expression[:, names.index("jawOpen")], swing[:40])
    with pytest.raises(Avatar3DError, match="mouth-amplitude"):
        DriveConfig(mouth_amplitude="loud")


def test_auto_blinks_match_the_subjects_rate_and_off_never_blinks() -> None:
    subj, peaks = _subject()
    rate_subject = len(peaks) / (400 / FPS)
    track = sample_blinks(3000, FPS, subj["blink"], np.random.default_rng(1))
    rate = len(blink_events(track.mean(axis=1))) / (3000 / FPS)
    assert 0.7 * rate_subject < rate < 1.3 * rate_subject, (rate, rate_subject)
    assert track.max() > 0.8, "blinks must close the eyes as the subject's do"
    off = build_tracks({}, 300, FPS, train_ids=np.arange(300), config=DriveConfig(blink="off"), **subj)
    assert np.ptp(off.blink) == 0
    src = build_tracks({}, 300, FPS, train_ids=np.arange(300), config=DriveConfig(blink="from-pose-source"), **subj)
    assert np.allclose(src.blink, subj["blink"][src.source_frames])


@pytest.mark.parametrize("change", [dict(pose="orbit"), dict(blink="sometimes"), dict(mouth_scale=-1.0)])
def test_bad_drive_options_are_refused(change) -> None:
    with pytest.raises(Avatar3DError):
        DriveConfig(**change)


def test_a_model_channel_the_avatar_lacks_is_refused() -> None:
    subj, _ = _subject()
    with pytest.raises(Avatar3DError, match="tongueOut"):
        build_tracks({"tongueOut": np.zeros(10, np.float32)}, 10, FPS, train_ids=np.arange(100), **subj)


def test_a_subject_that_never_blinks_keeps_its_eyes_open_and_a_blink_at_the_clip_end_still_counts() -> None:
    """Real clips: a short or small-faced clip may show no blink (or one cut by the clip's end)."""
    subj, _ = _subject()
    rest = np.full((300, 2), 0.05)
    logged: list[str] = []
    tracks = build_tracks({}, 200, FPS, train_ids=np.arange(300), config=DriveConfig(blink="auto"), log=logged.append,
                          **{**subj, "blink": rest})  # fmt: skip
    assert tracks.blink.shape == (200, 2) and np.allclose(tracks.blink, 0.05)
    assert any("eyes stay open" in line for line in logged)
    edge = rest.copy()
    edge[-2:] = 0.9  # one blink, cut by the end of the clip: no full window around its peak
    track = sample_blinks(600, FPS, edge, np.random.default_rng(0))
    assert track.shape == (600, 2) and track.max() > 0.8 and len(blink_events(track.mean(axis=1))) >= 2
