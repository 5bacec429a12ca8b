"""A prepared subject folder as arrays (train, eval and replay read it): cached frames and labels, poses, motion, splits.

Why the cache: NeRF training samples random pixels of random frames, so every frame
must be at hand at once.  At 512² a 5-minute clip is 5.9 GB as uint8 and four times
that as float, so frames (and parsing labels) are decoded once into uint8 ``.npy``
files at the training resolution under ``SUBJECT/cache/r{resolution}/`` and
memory-mapped; they are never held as float.  The cache is streamed to a temporary
name and renamed, and ``cache.json`` (hashes of its inputs) is written last, so a
killed build never leaves a cache that looks valid.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence, Union

import cv2
import numpy as np
from tqdm import tqdm

from avatar3d.dataset.contract import (AUDIO, CACHE_DIR, FRAMES, LANDMARK_FLAGS, LANDMARKS, MANIFEST, PARSING, PLATE,
                                       TRACKING, iter_labels, read_array, read_arrays, read_manifest, require_files)
from avatar3d.errors import Avatar3DError
from avatar3d.face.landmark_sets import LIPS
from avatar3d.io.atomic import atomic_path, sweep_stale_temps, write_json_atomic
from avatar3d.io.hashing import file_sha256
from avatar3d.io.video import read_video

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["SubjectData", "load_subject", "mouth_boxes", "LIP_IDS", "CACHE_VERSION"]

CACHE_VERSION = 1
LIP_IDS = np.array(LIPS)
MOUTH_PAD = 0.2  # of the lip box's width / height, on each side


@dataclass
class SubjectData:
    """Everything training reads from one subject, at training resolution ``r``."""

    root: Path
    resolution: int  # square training image side r
    frames: np.ndarray  # uint8 [N, r, r, 3], memory-mapped
    labels: np.ndarray  # uint8 [N, r, r], memory-mapped; 0 bg, 1 head, 2 neck/torso, 3 mouth interior
    background: np.ndarray  # float32 [r, r, 3] in [0, 1]
    K: np.ndarray  # float64 [3, 3] intrinsics at r
    R: np.ndarray  # float64 [N, 3, 3] head -> OpenCV camera
    t: np.ndarray  # float64 [N, 3] metres
    expression: np.ndarray  # float32 [N, Ke]
    expression_names: list[str]
    blink: np.ndarray  # float32 [N, 2]
    landmarks: np.ndarray  # float32 [N, 478, 2] pixels at r, NaN where no face
    mouth_boxes: np.ndarray  # int32 [N, 4] x0, y0, x1, y1 (exclusive) at r; zeros where no face
    train_ids: np.ndarray  # int64, train range minus excluded frames
    val_ids: np.ndarray  # int64, val range minus excluded frames
    fps: float
    audio_path: Path
    size: int  # the subject's original frame side

    @property
    def n_frames(self) -> int:
        return int(len(self.frames))

    def motion(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 [len(ids), Ke + 2]: expression then blink, the avatar's motion vector."""
        idx = np.asarray(ids, dtype=np.int64).reshape(-1)
        return np.concatenate([self.expression[idx], self.blink[idx]], axis=1).astype(np.float32)

    def image(self, i: int) -> np.ndarray:
        """float32 [r, r, 3] in [0, 1]: one frame as float, for evaluation only."""
        return np.asarray(self.frames[int(i)], dtype=np.float32) / 255.0


def load_subject(subject_dir: PathLike, resolution: int, *, progress: bool = True) -> SubjectData:
    """Load a prepared subject at ``resolution``, building its frame/label cache if missing or stale."""
    root = Path(subject_dir)
    require_files(root)
    manifest = _square_manifest(root)
    size = int(manifest["width"])
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise Avatar3DError(f"resolution must be an integer number of pixels, got {resolution!r}")
    resolution = int(resolution)
    if not 16 <= resolution <= size:
        raise Avatar3DError(f"resolution {resolution} is outside 16..{size} (the size of {root / FRAMES}); "
                            f"pick a training resolution no larger than the prepared frames")
    scale = resolution / size

    n = int(manifest["n_frames"])
    tracking = read_arrays(root / TRACKING, ("R", "t", "expression", "blink", "expression_names"))
    landmarks = read_array(root / LANDMARKS)[..., :2].astype(np.float32) * np.float32(scale)
    flags = read_array(root / LANDMARK_FLAGS)
    for name, count in ((TRACKING, len(tracking["R"])), (LANDMARKS, len(landmarks)),
                        (LANDMARK_FLAGS, len(flags))):
        if count != n:
            raise _mismatch(root / name, count, n, root)

    frames, labels = _cached_arrays(root, resolution, size, n, progress)

    intr = manifest["intrinsics"]
    K = np.array([[intr["fx"] * scale, 0.0, intr["cx"] * scale],
                  [0.0, intr["fy"] * scale, intr["cy"] * scale],
                  [0.0, 0.0, 1.0]], dtype=np.float64)
    keep = flags != 0

    def split(name: str) -> np.ndarray:
        a, b = (int(v) for v in manifest["split"][name])
        ids = np.arange(max(a, 0), min(b, n), dtype=np.int64)
        return ids[keep[ids]]

    return SubjectData(
        root=root, resolution=resolution, frames=frames, labels=labels,
        background=_read_background(root / PLATE, resolution),
        K=K, R=tracking["R"].astype(np.float64), t=tracking["t"].astype(np.float64),
        expression=tracking["expression"].astype(np.float32),
        expression_names=[str(s) for s in tracking["expression_names"]],
        blink=tracking["blink"].astype(np.float32).reshape(n, -1),
        landmarks=landmarks, mouth_boxes=mouth_boxes(landmarks, resolution),
        train_ids=split("train"), val_ids=split("val"),
        fps=float(manifest["fps"]), audio_path=root / AUDIO, size=size)


def mouth_boxes(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """int32 [N, 4] lip-landmark boxes padded by MOUTH_PAD per side, clipped; zeros where no face.

    Exclusive upper bounds: ``floor(max) + 1`` keeps the pixel holding the last landmark.
    """
    lips = landmarks[:, LIP_IDS, :]  # [N, L, 2]
    ok = np.isfinite(lips).all(axis=(1, 2))
    boxes = np.zeros((len(landmarks), 4), dtype=np.int32)
    if not ok.any():
        return boxes
    lo, hi = lips[ok].min(axis=1), lips[ok].max(axis=1)  # [M, 2]
    pad = MOUTH_PAD * (hi - lo)
    x0y0 = np.clip(np.floor(lo - pad), 0, resolution)
    x1y1 = np.clip(np.floor(hi + pad) + 1, 0, resolution)
    box = np.concatenate([x0y0, x1y1], axis=1).astype(np.int32)
    empty = (box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1])  # lips entirely off-image
    box[empty] = 0
    boxes[ok] = box
    return boxes


def _square_manifest(root: Path) -> dict[str, Any]:
    """The manifest of a subject whose frames are square (the avatar's image model needs that)."""
    manifest = read_manifest(root)
    path = root / MANIFEST
    if manifest["width"] != manifest["height"]:
        raise Avatar3DError(f"{path}: frames are {manifest['width']}x{manifest['height']}, training needs square "
                            f"frames; re-run `avatar3d prep` with the default square crop")
    return manifest


def _mismatch(path: Path, count: int, n: int, root: Path) -> Avatar3DError:
    return Avatar3DError(f"{path} has {count} frames but the subject has {n}: the prep outputs are out of step; "
                         f"re-run `avatar3d prep CLIP -o {root}`")


def _read_background(path: Path, resolution: int) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise Avatar3DError(f"{path} is not a readable PNG: re-run `avatar3d prep` to rebuild it")
    rgb = cv2.resize(bgr[..., ::-1], (resolution, resolution), interpolation=cv2.INTER_AREA)
    return rgb.astype(np.float32) / 255.0


def _cached_arrays(root: Path, resolution: int, size: int, n: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(frames, labels) memory-mapped from the cache; (re)built when cache.json does not match the inputs."""
    cache = root / CACHE_DIR / f"r{resolution}"
    record = {"format_version": CACHE_VERSION, "resolution": resolution, "n_frames": n,
              "frames_sha256": file_sha256(root / FRAMES),
              "parsing_sha256": file_sha256(root / PARSING)}
    arrays = _open_cache(cache, record)
    if arrays is None:
        (cache / "cache.json").unlink(missing_ok=True)  # the old record must not vouch for half-rebuilt files
        _build_cache(root, cache, resolution, size, n, progress)
        write_json_atomic(cache / "cache.json", record)
        arrays = _open_cache(cache, record)
        assert arrays is not None, f"{cache}: freshly built cache does not validate"
    return arrays


def _open_cache(cache: Path, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached memmaps if cache.json matches ``record`` and both arrays have the expected shape."""
    try:
        if json.loads((cache / "cache.json").read_text(encoding="utf-8")) != record:
            return None
        frames = np.load(cache / "frames.npy", mmap_mode="r")
        labels = np.load(cache / "labels.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    n, r = record["n_frames"], record["resolution"]
    if frames.shape != (n, r, r, 3) or labels.shape != (n, r, r) or frames.dtype != np.uint8 \
            or labels.dtype != np.uint8:
        return None
    return frames, labels


def _build_cache(root: Path, cache: Path, resolution: int, size: int, n: int, progress: bool) -> None:
    """Decode frames.mp4 and parsing.npz once, in step, into uint8 .npy files at ``resolution``."""
    cache.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(cache)  # temps of a killed build; a live build's are left alone
    r = resolution
    frames_in, labels_in = read_video(root / FRAMES), iter_labels(root / PARSING)
    with atomic_path(cache / "frames.npy") as frames_tmp, atomic_path(cache / "labels.npy") as labels_tmp, \
            tqdm(total=n, disable=not progress, desc=f"caching frames r{r}", unit="frame") as bar:
        with _npy_rows(frames_tmp, (n, r, r, 3)) as frames, _npy_rows(labels_tmp, (n, r, r)) as labels:
            for i, (image, label) in enumerate(_in_step(frames_in, labels_in, root, n)):
                if image.shape[:2] != (size, size) or label.shape != (size, size):
                    raise Avatar3DError(f"{root / FRAMES} frame {i} is {image.shape[1]}x{image.shape[0]} and "
                                        f"its labels {label.shape[1]}x{label.shape[0]}, manifest says {size}; re-run prep")
                frames.write(_u8(image if r == size else cv2.resize(image, (r, r), interpolation=cv2.INTER_AREA)))
                labels.write(_u8(label if r == size else cv2.resize(label, (r, r), interpolation=cv2.INTER_NEAREST)))
                bar.update()


@contextlib.contextmanager
def _npy_rows(path: Path, shape: tuple[int, ...]) -> Iterator[BinaryIO]:
    """A uint8 ``.npy`` file of ``shape`` written row by row (the caller writes exactly shape[0] rows).

    Why not a writable memmap: every page written through a map stays in the process's resident
    set until the file is closed, so building a 5-minute 512² cache (7.5 GB) peaked at 7.8 GB RSS.
    Plain writes go through the page cache, which the kernel flushes and drops on its own.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        start = f.tell()
        yield f
        expected = int(np.prod(shape))
        if f.tell() - start != expected:
            raise AssertionError(f"{path}: wrote {f.tell() - start} bytes of data, expected {expected}")


def _u8(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def _in_step(frames_in: Iterator[np.ndarray], labels_in: Iterator[np.ndarray], root: Path,
             n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame, label) pairs; a count differing from ``n`` in either file is an error."""
    sentinel = object()
    for i in range(n + 1):
        image, label = next(frames_in, sentinel), next(labels_in, sentinel)
        if i == n and image is sentinel and label is sentinel:
            return
        for name, item in ((FRAMES, image), (PARSING, label)):
            if (item is sentinel) != (i == n):
                what = f"{i} frames" if item is sentinel else f"more than {n} frames"
                raise Avatar3DError(f"{root / name} has {what} but {TRACKING} has {n}: the prep outputs are out "
                                    f"of step; re-run `avatar3d prep CLIP -o {root}`")
        yield image, label
