"""`avatar3d.dataset.reader`: the subject's training view, its memory-mapped cache and its errors.

Every test loads from a copy of the shared prepared subject: load_subject writes its cache
into the subject folder, and the session fixture must stay pristine.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar3d.dataset.reader import LIP_IDS, SubjectData, load_subject, mouth_boxes
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import save_npz_atomic
from avatar3d.io.video import read_video

R = 64


def _copy(prepared_subject, dest: Path) -> Path:
    shutil.copytree(prepared_subject[0], dest, ignore=shutil.ignore_patterns("cache"))
    return dest


def _is_memmap(a: np.ndarray) -> bool:
    return isinstance(a, np.memmap) or isinstance(a.base, np.memmap)


@pytest.fixture(scope="module")
def loaded(prepared_subject, tmp_path_factory) -> tuple[SubjectData, dict]:
    folder = _copy(prepared_subject, tmp_path_factory.mktemp("train-data") / "subject")
    return load_subject(folder, R, progress=False), prepared_subject[2]


def test_shapes_dtypes_and_memmaps(loaded):
    data, manifest = loaded
    n, ke = manifest["n_frames"], data.expression.shape[1]
    assert data.n_frames == n == 400 and data.size == 512 and data.resolution == R
    assert data.frames.shape == (n, R, R, 3) and data.frames.dtype == np.uint8 and _is_memmap(data.frames)
    assert data.labels.shape == (n, R, R) and data.labels.dtype == np.uint8 and _is_memmap(data.labels)
    assert set(np.unique(data.labels[::20])) <= {0, 1, 2, 3}
    assert data.background.shape == (R, R, 3) and data.background.dtype == np.float32
    assert 0.0 <= data.background.min() and data.background.max() <= 1.0 and data.background.std() > 0.01
    assert data.R.shape == (n, 3, 3) and data.R.dtype == np.float64 and data.t.shape == (n, 3)
    assert np.allclose(data.R[0] @ data.R[0].T, np.eye(3), atol=1e-6)
    assert data.expression.dtype == np.float32 and len(data.expression_names) == ke > 0
    assert data.blink.shape == (n, 2) and data.blink.dtype == np.float32
    assert data.landmarks.shape == (n, 478, 2) and data.landmarks.dtype == np.float32
    assert data.mouth_boxes.shape == (n, 4) and data.mouth_boxes.dtype == np.int32
    motion = data.motion([3, 7])
    assert motion.shape == (2, ke + 2) and motion.dtype == np.float32
    assert np.array_equal(motion[1], np.concatenate([data.expression[7], data.blink[7]]))
    assert data.fps == 25.0 and data.audio_path.name == "audio.wav" and data.audio_path.is_file()


def test_cached_frames_are_area_downsampled_decoded_frames(loaded):
    data, _ = loaded
    picks = {0, 137, 399}
    for i, frame in enumerate(read_video(data.root / "frames.mp4")):
        if i in picks:
            expected = cv2.resize(frame, (R, R), interpolation=cv2.INTER_AREA).astype(np.float64)
            assert abs(data.frames[i].mean() - expected.mean()) <= 1.0
            assert np.abs(data.frames[i] - expected).max() <= 1.0
    image = data.image(137)
    assert image.dtype == np.float32 and image.shape == (R, R, 3)
    assert np.allclose(image * 255.0, data.frames[137], atol=1e-3)


def test_intrinsics_and_split_follow_the_manifest(loaded):
    data, manifest = loaded
    s = R / manifest["width"]
    intr = manifest["intrinsics"]
    assert np.allclose(data.K, [[intr["fx"] * s, 0, intr["cx"] * s], [0, intr["fy"] * s, intr["cy"] * s], [0, 0, 1]])
    assert data.K[0, 2] == pytest.approx(R / 2)
    (a, b), (c, d) = manifest["split"]["train"], manifest["split"]["val"]
    flags = np.load(data.root / "landmark_flags.npy")
    assert np.array_equal(data.train_ids, [i for i in range(a, b) if flags[i] != 0])
    assert np.array_equal(data.val_ids, [i for i in range(c, d) if flags[i] != 0])
    assert data.train_ids.dtype == np.int64 and len(data.train_ids) == 364 and len(data.val_ids) == 36


def test_mouth_boxes_hold_the_lips(loaded):
    data, _ = loaded
    for i in range(0, data.n_frames, 10):
        x0, y0, x1, y1 = data.mouth_boxes[i]
        lips = data.landmarks[i, LIP_IDS]
        width, height = np.ptp(lips, axis=0)
        assert np.all((lips[:, 0] >= x0) & (lips[:, 0] < x1) & (lips[:, 1] >= y0) & (lips[:, 1] < y1))
        assert 1.4 * width - 1 <= x1 - x0 <= 0.4 * R and 1.4 * height - 1 <= y1 - y0
    no_face = np.full((2, 478, 2), np.nan, np.float32)
    no_face[1] = data.landmarks[0]
    boxes = mouth_boxes(no_face, R)
    assert np.array_equal(boxes[0], [0, 0, 0, 0]) and np.array_equal(boxes[1], data.mouth_boxes[0])


def test_head_labels_cover_the_face(loaded):
    data, _ = loaded
    centre = np.floor(data.landmarks.mean(axis=1)).astype(int)  # [N, 2] x, y at R
    label = data.labels[np.arange(data.n_frames), centre[:, 1], centre[:, 0]]
    assert np.isin(label, (1, 3)).mean() >= 0.95


def test_second_load_reuses_the_cache(prepared_subject, tmp_path):
    folder = _copy(prepared_subject, tmp_path / "subject")
    load_subject(folder, R, progress=False)
    cache = folder / "cache" / f"r{R}"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.suffix == ".json" else None)
              for p in cache.iterdir()}
    assert set(before) == {"frames.npy", "labels.npy", "cache.json"}
    record = json.loads((cache / "cache.json").read_text())
    assert record["resolution"] == R and len(record["frames_sha256"]) == 64 and len(record["parsing_sha256"]) == 64
    again = load_subject(folder, R, progress=False)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.suffix == ".json" else None)
            for p in cache.iterdir()} == before
    assert again.frames.shape == (400, R, R, 3)


def test_stale_cache_is_rebuilt(prepared_subject, tmp_path):
    folder = _copy(prepared_subject, tmp_path / "subject")
    first = np.array(load_subject(folder, R, progress=False).frames[5])
    cache = folder / "cache" / f"r{R}"
    good = (cache / "cache.json").read_text()
    frames = np.load(cache / "frames.npy", mmap_mode="r+")
    frames[:] = 0  # a cache from other frames
    frames.flush()
    del frames
    (cache / "cache.json").write_text(good.replace(json.loads(good)["frames_sha256"], "0" * 64))
    data = load_subject(folder, R, progress=False)
    assert (cache / "cache.json").read_text() == good
    assert np.array_equal(data.frames[5], first) and data.frames[5].mean() > 10


def test_leftovers_of_a_killed_build_are_ignored(prepared_subject, tmp_path):
    folder = _copy(prepared_subject, tmp_path / "subject")
    cache = folder / "cache" / f"r{R}"
    cache.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = cache / f".frames.tmp-{int(dead.stdout)}-deadbeef.npy"
    leftover.write_bytes(b"\x93NUMPY half written")
    (cache / "frames.npy").write_bytes(b"\x93NUMPY truncated")  # renamed, but killed before cache.json
    data = load_subject(folder, R, progress=False)
    assert data.frames.shape == (400, R, R, 3) and data.frames[0].mean() > 10
    assert not leftover.exists() and (cache / "cache.json").is_file()


def test_missing_tracking_names_the_file(prepared_subject, tmp_path):
    folder = _copy(prepared_subject, tmp_path / "subject")
    (folder / "tracking.npz").unlink()
    with pytest.raises(Avatar3DError, match=r"tracking\.npz.*avatar3d prep") as info:
        load_subject(folder, R, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(Avatar3DError, match="not found"):
        load_subject(tmp_path / "nowhere", R)


def test_resolution_out_of_range_is_refused(prepared_subject, tmp_path):
    folder = _copy(prepared_subject, tmp_path / "subject")
    for bad in (600, 8):
        with pytest.raises(Avatar3DError, match=rf"resolution {bad} is outside 16\.\.512"):
            load_subject(folder, bad, progress=False)
    assert not (folder / "cache").exists()


def test_frame_count_mismatch_asks_to_rerun_prep(prepared_subject, tmp_path):
    folder = _copy(prepared_subject, tmp_path / "subject")
    with np.load(folder / "tracking.npz") as z:
        arrays = {k: z[k] for k in z.files}
    short = {k: (v[:399] if v.ndim and len(v) == 400 else v) for k, v in arrays.items()}
    save_npz_atomic(folder / "tracking.npz", **short)
    with pytest.raises(Avatar3DError, match=r"tracking\.npz has 399 frames.*re-run `avatar3d prep"):
        load_subject(folder, R, progress=False)
    save_npz_atomic(folder / "tracking.npz", **arrays)
    from avatar3d.dataset.contract import iter_labels

    labels = np.stack([label for i, label in zip(range(399), iter_labels(folder / "parsing.npz"))])
    save_npz_atomic(folder / "parsing.npz", labels=labels)
    with pytest.raises(Avatar3DError, match=r"parsing\.npz has 399 frames.*re-run `avatar3d prep"):
        load_subject(folder, R, progress=False)
    assert not (folder / "cache" / f"r{R}" / "cache.json").exists()
    assert not list((folder / "cache" / f"r{R}").glob(".*tmp*"))
