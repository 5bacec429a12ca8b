"""Segment and background stages on the decoded synthetic clip, measured against its ground truth
(true head masks and the true static plate).  No mocks.

What is compared, and why:

* The dataset contract splits the person into head (1, + mouth 3) and neck/torso (2)
  along the jaw line, whereas the generator's true head mask is face + hair + ears
  + neck.  So the head IoU is taken *above the neck line* built from the TRUE
  landmarks with the same geometric rule (jaw contour continued outward, then
  up), where both masks mean "face, hair, ears"; below that line the true mask
  is the neck, which must come out as person (label 2), not background.
* The generator's plate holds the wall *and* the static shoulders, so "frame equals
  the plate and not head" marks the wall and the suit alike; the background-label
  accuracy is therefore checked in the head band (above the neck line), where
  the proxy holds only wall; on the whole frame it is printed, not asserted.
* The plate error is taken on pixels that the true head uncovers in some frame and
  that our segmentation saw as background; H.264 twice (synth + decode) puts a
  floor of ~3 levels under any estimate, measured here on one frame for reference.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar3d.dataset.contract import iter_labels, load_labels
from avatar3d.errors import Avatar3DError
from avatar3d.io.video import read_video
from data_prep.background import BackgroundResult, estimate_background, push_pull_fill, robust_plate
from data_prep.decode import DecodeConfig, DecodeResult, decode
from data_prep.landmarks import detect_landmarks
from data_prep.segment import (BACKGROUND, HEAD, MOUTH, TORSO, SegmentConfig, SegmentResult, head_region, parse_frame,
                               segment)

PROXY_TOL = 12  # intensity levels: codec noise on the static plate stays below this


@pytest.fixture(scope="module")
def prepared(synth_clip: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, DecodeResult, SegmentResult, BackgroundResult]:
    out = tmp_path_factory.mktemp("segment")
    dec = decode(synth_clip / "video.mp4", out, DecodeConfig(fps=25, size=512), progress=False)
    detect_landmarks(out, progress=False)
    seg = segment(out, progress=False)
    bg = estimate_background(out, progress=False)
    return out, dec, seg, bg


@pytest.fixture(scope="module")
def truth(synth_clip: Path, prepared: tuple) -> dict[str, np.ndarray]:
    _, dec, _, _ = prepared
    m = np.load(synth_clip / "masks.npz")
    h, w = (int(v) for v in m["shape"])
    head = np.unpackbits(m["head_packed"], axis=1)[:, : h * w].reshape(-1, h, w).astype(bool)
    landmarks = dec.map_points(np.load(synth_clip / "groundtruth.npz")["landmarks"])
    return {"head": head, "plate": m["plate"], "landmarks": landmarks}


def test_outputs_on_disk(prepared: tuple) -> None:
    out, dec, seg, _ = prepared
    with np.load(out / "parsing.npz") as z:
        labels, has_face = z["labels"], z["has_face"]
        assert list(z["label_names"]) == ["background", "head", "neck_torso", "mouth"]
    assert labels.shape == (dec.n_frames, 512, 512) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {BACKGROUND, HEAD, TORSO, MOUTH} and has_face.all()
    assert (labels == MOUTH).any(axis=(1, 2)).mean() > 0.1  # the subject speaks
    streamed = list(iter_labels(out / "parsing.npz"))
    assert len(streamed) == dec.n_frames and np.array_equal(streamed[7], labels[7])
    assert np.array_equal(load_labels(out / "parsing.npz", np.array([9, 3])), labels[[9, 3]])
    report = json.loads((out / "parsing.json").read_text())
    assert report["n_frames"] == dec.n_frames and report["n_without_face"] == 0
    assert (out / "parsing.npz").stat().st_size < 4_000_000  # ~1 MB for 400 frames
    plate = cv2.imread(str(out / "background.png"))
    unseen = cv2.imread(str(out / "background_unseen.png"), cv2.IMREAD_GRAYSCALE)
    assert plate.shape == (512, 512, 3) and unseen.shape == (512, 512) and set(np.unique(unseen)) <= {0, 255}
    assert json.loads((out / "background.json").read_text())["n_sampled"] > 50
    print(f"segment: {seg.frames_per_s:.0f} frames/s, label fractions {seg.label_fractions}")


def test_head_mask_against_truth(prepared: tuple, truth: dict[str, np.ndarray]) -> None:
    out, _, _, _ = prepared
    cfg = SegmentConfig()
    ious, neck_person, neck_torso, leak = [], [], [], []
    for i, labels in enumerate(iter_labels(out / "parsing.npz")):
        band = head_region(truth["landmarks"][i], labels.shape, cfg)
        mine = ((labels == HEAD) | (labels == MOUTH)) & band
        true = truth["head"][i] & band
        ious.append((mine & true).sum() / max((mine | true).sum(), 1))
        neck = truth["head"][i] & ~band
        neck_person.append((labels[neck] != BACKGROUND).mean())
        neck_torso.append((labels[neck] == TORSO).mean())
        leak.append((labels[truth["head"][i]] == BACKGROUND).mean())
    ious = np.array(ious)
    print(f"head IoU above the neck line: mean {ious.mean():.4f}, min {ious.min():.4f}; true neck labelled person "
          f"{np.mean(neck_person):.4f} (as 2: {np.mean(neck_torso):.4f}); true head labelled background "
          f"{np.mean(leak):.4f}")
    assert ious.mean() >= 0.95 and ious.min() >= 0.90  # measured 0.990 / 0.988
    assert np.mean(neck_person) >= 0.95 and np.mean(neck_torso) >= 0.90  # measured 0.987
    assert np.mean(leak) <= 0.03  # measured 0.009


def test_background_labels_against_truth(prepared: tuple, truth: dict[str, np.ndarray]) -> None:
    out, _, _, _ = prepared
    plate = truth["plate"].astype(np.int16)
    cfg = SegmentConfig()
    band_acc, frame_acc = [], []
    kernel = np.ones((5, 5), np.uint8)
    for i, (rgb, labels) in enumerate(zip(read_video(out / "frames.mp4"), iter_labels(out / "parsing.npz"))):
        if i % 4:
            continue
        near_head = cv2.dilate(truth["head"][i].astype(np.uint8), kernel) > 0
        proxy = (np.abs(rgb.astype(np.int16) - plate).max(axis=-1) <= PROXY_TOL) & ~near_head
        band = proxy & head_region(truth["landmarks"][i], labels.shape, cfg)
        band_acc.append((labels[band] == BACKGROUND).mean())
        frame_acc.append((labels[proxy] == BACKGROUND).mean())
    print(f"background label accuracy: head band {np.mean(band_acc):.4f} (min {np.min(band_acc):.4f}); "
          f"whole frame {np.mean(frame_acc):.4f} (the rest is the static suit, labelled 2 by design)")
    assert np.mean(band_acc) >= 0.99 and np.min(band_acc) >= 0.97


def test_plate_against_truth(prepared: tuple, truth: dict[str, np.ndarray]) -> None:
    out, _, _, bg = prepared
    plate = cv2.imread(str(out / "background.png"))[..., ::-1].astype(np.float32)
    assert np.array_equal(plate, bg.plate.astype(np.float32))
    true = truth["plate"].astype(np.float32)
    err = np.abs(plate - true).mean(axis=-1)
    seen = cv2.imread(str(out / "background_unseen.png"), cv2.IMREAD_GRAYSCALE) == 0
    uncovered = (~truth["head"]).any(axis=0)
    scored = seen & uncovered
    first = next(iter(read_video(out / "frames.mp4"))).astype(np.float32)
    never_head = cv2.erode((~truth["head"].any(axis=0)).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    floor = np.abs(first - true).mean(axis=-1)[never_head].mean()
    print(f"plate MAE on uncovered+seen pixels ({scored.mean():.3f} of the frame): {err[scored].mean():.2f} "
          f"(single-frame codec floor {floor:.2f}); on never-seen pixels ({(~seen).mean():.3f}): "
          f"{err[~seen].mean():.1f} (the true plate has the suit there); on pixels the true head always "
          f"covers: {err[~uncovered].mean():.1f}")
    assert scored.mean() >= 0.4
    assert err[scored].mean() <= 4.0  # measured 3.02, floor ~3.1
    assert err[scored].mean() <= floor + 0.5


def test_parse_frame_rules() -> None:
    person = np.zeros((64, 64), np.float32)
    person[20:64, 10:50] = 0.9
    labels = parse_frame(person, None, SegmentConfig())  # no face: the whole person is torso
    assert set(np.unique(labels)) == {BACKGROUND, TORSO} and (labels == TORSO).sum() == 44 * 40
    nan_face = np.full((478, 3), np.nan, np.float32)
    assert np.array_equal(parse_frame(person, nan_face, SegmentConfig()), labels)


def test_robust_plate_and_fill() -> None:
    rng = np.random.default_rng(0)
    frames = np.full((7, 8, 8, 3), 100, np.uint8)
    frames[:1] = 250  # an occluder the segmentation missed (unmasked): the median ignores it
    frames[:, :, :4][2:5] = 0  # three more occluded frames on the left half, masked out
    valid = np.ones((7, 8, 8), bool)
    valid[2:5, :, :4] = False
    valid[:, 0, 0] = False  # never seen
    plate, count = robust_plate(frames, valid, chunk_rows=3)
    assert count[0, 0] == 0 and count[0, 1] == 4 and count[5, 5] == 7
    assert (plate[1:] == 100).all() and (plate[0, 1:] == 100).all()
    image = rng.integers(50, 60, (40, 40, 3)).astype(np.uint8)
    known = np.ones((40, 40), bool)
    known[10:30, 10:30] = False
    filled = push_pull_fill(image, known)
    assert np.array_equal(filled[known], image[known])
    assert filled[~known].min() >= 50 and filled[~known].max() <= 60


def test_bad_inputs(tmp_path: Path, prepared: tuple) -> None:
    out, _, _, _ = prepared
    with pytest.raises(Avatar3DError, match="frames.mp4: not found") as err:
        segment(tmp_path, progress=False)
    assert "\n" not in str(err.value)
    (tmp_path / "frames.mp4").write_bytes(b"not a video")
    with pytest.raises(Avatar3DError, match="landmarks.npy: not found"):
        segment(tmp_path, progress=False)
    with pytest.raises(Avatar3DError, match="parsing.npz: not found"):
        estimate_background(tmp_path, progress=False)
    bad = tmp_path / "landmarks.npy"
    np.save(bad, np.zeros((5, 10), np.float32))
    with pytest.raises(Avatar3DError, match="expected landmarks"):
        segment(tmp_path, progress=False)
    # fewer landmark frames than video frames: refused, and no partial parsing.npz is left behind
    short = tmp_path / "short.npy"
    np.save(short, np.load(out / "landmarks.npy")[:10])
    with pytest.raises(Avatar3DError, match="more frames than"):
        segment(tmp_path, frames_path=out / "frames.mp4", landmarks_path=short, progress=False)
    assert not (tmp_path / "parsing.npz").exists()
    assert not list(tmp_path.glob(".parsing*"))
