"""Stage 2 of ``avatar3d prep``: MediaPipe face mesh on every decoded frame, with failures handled.

Outputs in ``out_dir`` (atomic writes):

* ``landmarks.npy`` - [N, 478, 3] float32, x/y in output pixels (continuous
  convention), z in pixel units (smaller = nearer); NaN on excluded frames.
* ``landmark_flags.npy`` - [N] uint8 per frame: ``DETECTED`` (1), ``INTERPOLATED``
  (2) or ``EXCLUDED`` (0, keep out of training).
* ``landmarks.json`` - counts, the (start, end) frame ranges (inclusive) that
  were interpolated or excluded, rejected identity jumps, speed.

Gaps: a run of frames without an accepted face that is at most ``max_gap_s``
long *and* has detections on both sides is filled by linear interpolation of
every coordinate between its two neighbours (blinks or motion blur drop a few
frames; a straight line is within a pixel or two over 0.5 s).  Longer runs, and
runs at the start or end of the clip (nothing to interpolate towards), are
excluded and reported.

Following one person: MediaPipe runs in tracking mode with one face, so it
normally sticks to the face it found first - that face is the subject.  If a
detection's landmark centroid lands further than ``jump_fraction`` x face size
from the subject's last accepted centroid, or its size changes by more than
``scale_change`` x, the detector has jumped to someone else (or to a false
face): the frame counts as a loss, and the detector is restarted (at most every
0.5 s) so that it searches the frame again instead of tracking the wrong face.
While the subject stays lost, the tolerance grows by ``reacquire_speed`` face
sizes per second, so after a long absence the subject is re-acquired wherever
it reappears.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from tqdm import tqdm

from avatar3d.dataset.contract import DETECTED, EXCLUDED, FRAMES, INTERPOLATED, LANDMARK_FLAGS, LANDMARKS
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import atomic_path, write_json_atomic
from avatar3d.io.video import probe_video, read_video
from avatar3d.vision.face_mesh import N_LANDMARKS_WITH_IRISES, FaceMeshDetector

PathLike = Union[str, Path]

__all__ = [
    "EXCLUDED", "DETECTED", "INTERPOLATED",
    "LandmarkConfig", "LandmarkResult", "track_subject", "fill_gaps", "detect_landmarks",
]

LANDMARKS_NAME = LANDMARKS
FLAGS_NAME = LANDMARK_FLAGS
REPORT_NAME = "landmarks.json"


@dataclass
class LandmarkConfig:
    """Gap filling and identity-jump rules."""

    max_gap_s: float = 0.5
    """Longest run of missing frames that is interpolated (longer ones are excluded)."""
    jump_fraction: float = 0.5
    """A centroid move above this x face size between accepted frames is a jump to another face."""
    scale_change: float = 1.5
    """A face-size ratio above this (or below its inverse) is also a jump."""
    reacquire_speed: float = 1.0
    """Face sizes per second the lost subject may have moved (tolerance growth while lost)."""
    min_confidence: float = 0.5
    """MediaPipe detection / tracking confidence."""


@dataclass
class LandmarkResult:
    """Per-frame landmarks, flags and the summary saved as ``landmarks.json``."""

    landmarks: np.ndarray = field(repr=False)
    flags: np.ndarray = field(repr=False)
    fps: float
    n_frames: int
    n_detected: int
    n_interpolated: int
    n_excluded: int
    interpolated_gaps: list[tuple[int, int]]
    excluded_gaps: list[tuple[int, int]]
    rejected_jumps: list[int]
    wall_s: float
    frames_per_s: float

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("landmarks", "flags")}
        d["interpolated_gaps"] = [list(g) for g in self.interpolated_gaps]
        d["excluded_gaps"] = [list(g) for g in self.excluded_gaps]
        return d


def _centre_size(points: np.ndarray) -> tuple[np.ndarray, float]:
    xy = points[:, :2]
    extent = xy.max(axis=0) - xy.min(axis=0)
    return xy.mean(axis=0), float(max(extent.max(), 1e-6))


def track_subject(
    frames: Iterable[np.ndarray],
    fps: float,
    config: Optional[LandmarkConfig] = None,
    progress: bool = False,
    total: Optional[int] = None,
) -> tuple[np.ndarray, list[int]]:
    """Raw landmarks [N, 478, 3] (NaN where no face or a rejected jump) and the rejected frame indices."""
    config = config or LandmarkConfig()
    out: list[np.ndarray] = []
    rejected: list[int] = []
    missing = np.full((N_LANDMARKS_WITH_IRISES, 3), np.nan, np.float32)
    ref_centre: Optional[np.ndarray] = None
    ref_size = 1.0
    ref_index = 0
    last_reset = -math.inf
    detector = FaceMeshDetector(video=True, min_confidence=config.min_confidence)
    try:
        for i, frame in enumerate(tqdm(frames, total=total, desc="landmarks", unit="frame", disable=not progress)):
            points = detector(frame)
            if points is None or points.shape[0] != N_LANDMARKS_WITH_IRISES:
                out.append(missing)
                continue
            centre, size = _centre_size(points)
            if ref_centre is not None:
                lost_s = max(i - ref_index - 1, 0) / fps
                tolerance = ref_size * (config.jump_fraction + config.reacquire_speed * lost_s)
                ratio = size / ref_size
                max_ratio = config.scale_change + config.reacquire_speed * lost_s
                if np.linalg.norm(centre - ref_centre) > tolerance or not 1 / max_ratio <= ratio <= max_ratio:
                    rejected.append(i)
                    out.append(missing)
                    if (i - last_reset) / fps >= 0.5:  # stop tracking the wrong face; search again
                        detector.close()
                        detector = FaceMeshDetector(video=True, min_confidence=config.min_confidence)
                        last_reset = i
                    continue
            ref_centre, ref_size, ref_index = centre, size, i
            out.append(points.astype(np.float32, copy=False))
    finally:
        detector.close()
    if not out:
        return np.zeros((0, N_LANDMARKS_WITH_IRISES, 3), np.float32), rejected
    return np.stack(out), rejected


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e) - 1) for s, e in zip(edges[::2], edges[1::2])]


def fill_gaps(
    raw: np.ndarray, fps: float, max_gap_s: float = 0.5
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """Interpolate short interior gaps linearly; exclude long and edge gaps.

    Returns (landmarks with NaN only on excluded frames, flags, interpolated
    runs, excluded runs); runs are inclusive (start, end) frame indices.
    """
    landmarks = np.array(raw, dtype=np.float32, copy=True)
    n = landmarks.shape[0]
    flags = np.full(n, DETECTED, np.uint8)
    missing = np.isnan(landmarks.reshape(n, -1)).any(axis=1) if n else np.zeros(0, bool)
    landmarks[missing] = np.nan
    max_gap = int(math.floor(max_gap_s * fps + 1e-6))
    filled: list[tuple[int, int]] = []
    excluded: list[tuple[int, int]] = []
    for start, end in _runs(missing):
        length = end - start + 1
        if start > 0 and end < n - 1 and length <= max_gap:
            before, after = landmarks[start - 1], landmarks[end + 1]
            w = (np.arange(1, length + 1, dtype=np.float32) / (length + 1))[:, None, None]
            landmarks[start:end + 1] = (1 - w) * before + w * after
            flags[start:end + 1] = INTERPOLATED
            filled.append((start, end))
        else:
            flags[start:end + 1] = EXCLUDED
            excluded.append((start, end))
    return landmarks, flags, filled, excluded


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


def detect_landmarks(
    out_dir: PathLike,
    config: Optional[LandmarkConfig] = None,
    frames_path: Optional[PathLike] = None,
    progress: bool = True,
) -> LandmarkResult:
    """Run the stage on ``out_dir/frames.mp4`` (or ``frames_path``) and write the outputs to ``out_dir``."""
    config = config or LandmarkConfig()
    out = Path(out_dir)
    frames_path = Path(frames_path) if frames_path is not None else out / FRAMES
    if not frames_path.exists():
        raise Avatar3DError(f"{frames_path}: not found; run the decode stage (avatar3d prep) first")
    info = probe_video(frames_path)
    fps = float(info.fps)
    (out / REPORT_NAME).unlink(missing_ok=True)  # completion marker goes first
    started = time.perf_counter()
    raw, rejected = track_subject(read_video(frames_path), fps, config, progress, total=info.n_frames)
    elapsed = time.perf_counter() - started
    if raw.shape[0] == 0:
        raise Avatar3DError(f"{frames_path}: contains no frames; re-run the decode stage")
    landmarks, flags, filled, excluded = fill_gaps(raw, fps, config.max_gap_s)
    if not (flags == DETECTED).any():
        raise Avatar3DError(
            f"{frames_path}: no face found in any of {raw.shape[0]} frames; check the crop in decode.json "
            f"or film the person facing the camera"
        )
    result = LandmarkResult(
        landmarks=landmarks,
        flags=flags,
        fps=fps,
        n_frames=int(raw.shape[0]),
        n_detected=int((flags == DETECTED).sum()),
        n_interpolated=int((flags == INTERPOLATED).sum()),
        n_excluded=int((flags == EXCLUDED).sum()),
        interpolated_gaps=filled,
        excluded_gaps=excluded,
        rejected_jumps=rejected,
        wall_s=elapsed,
        frames_per_s=raw.shape[0] / max(elapsed, 1e-9),
    )
    _save_npy(out / LANDMARKS_NAME, landmarks)
    _save_npy(out / FLAGS_NAME, flags)
    write_json_atomic(out / REPORT_NAME, result.summary())
    return result
