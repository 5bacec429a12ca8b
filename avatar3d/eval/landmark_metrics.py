"""Landmark-based metrics: LMD (mouth / face) and blink rate, from MediaPipe on the frames.

Why landmarks from a detector rather than the avatar's own motion input: the question is
whether the *pixels* show the right mouth and eyes, so both generated and reference frames
go through the same independent detector (METRICS.md). Frames where the detector finds no
face are data, not errors: they are counted (detection rate) and left out of the means.

Conventions (METRICS.md): LMD is the mean Euclidean distance between corresponding
landmarks, in pixels **at 512²** whatever size the frames were rendered at (distances are
scaled by ``512 / frame size``); *mouth* LMD uses MediaPipe's ``FACEMESH_LIPS`` points (40),
*face* LMD all 468 mesh points. No alignment is applied before measuring.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Iterable

import cv2
import numpy as np

from avatar3d.face.landmark_sets import EYE_LEFT_LOWER, EYE_LEFT_UPPER, EYE_RIGHT_LOWER, EYE_RIGHT_UPPER, LIPS
from avatar3d.vision.face_mesh import FaceMeshDetector

__all__ = [
    "LMDResult",
    "BlinkResult",
    "detect_landmarks",
    "landmark_distance",
    "eye_aspect_ratio",
    "blink_rate",
    "LMD_SIZE",
    "MOUTH_IDS",
]

LMD_SIZE = 512  # LMD is reported in pixels of a 512² frame
MOUTH_IDS = np.array(LIPS)  # == the vertices of mediapipe FACEMESH_LIPS
N_MESH = 468


def detect_landmarks(frames: Iterable[np.ndarray], *, min_size: int = 256, video: bool = True) -> np.ndarray:
    """float32 [n, 468, 2]: MediaPipe face-mesh (x, y) in each frame's own pixels, NaN where no face.

    Frames smaller than ``min_size`` are upsampled (bicubic) before detection and the
    landmarks scaled back, because MediaPipe's face detector rarely fires below ~128 px.
    ``video=True``: tracking mode, frames must be consecutive.
    """
    out: list[np.ndarray] = []
    with FaceMeshDetector(video=video, refine_landmarks=False) as detect:
        for frame in frames:
            img = np.asarray(frame)
            if img.dtype != np.uint8:
                img = (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
            h, w = img.shape[:2]
            scale = 1.0
            if min(h, w) < min_size:
                scale = min_size / min(h, w)
                img = cv2.resize(img, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_CUBIC)
            found = detect(img)
            if found is None:
                out.append(np.full((N_MESH, 2), np.nan, np.float32))
            else:
                out.append(found[:N_MESH, :2] / np.float32(scale))
    if not out:
        return np.zeros((0, N_MESH, 2), np.float32)
    return np.stack(out).astype(np.float32)


@dataclass
class LMDResult:
    """Mouth and face LMD (px at 512²) over frames where both detections exist, and detection rates."""

    mouth: float
    face: float
    n_frames: int  # frames compared
    n_both: int  # frames with a face in both
    detection_rate_pred: float
    detection_rate_ref: float

    def to_dict(self) -> dict[str, float | int | None]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def _found(lm: np.ndarray) -> np.ndarray:
    return np.isfinite(lm).all(axis=(1, 2))


def landmark_distance(pred: np.ndarray, ref: np.ndarray, frame_size: int, *, mouth_ids: np.ndarray = MOUTH_IDS,
                      n_points: int = N_MESH) -> LMDResult:
    """LMD of ``pred`` vs ``ref`` landmarks ``[n, n_points, 2]`` detected on ``frame_size``² frames.

    Distances are scaled to 512² pixels. Frames missing a face on either side are skipped
    (their share is the detection rate); no common frame -> nan. The defaults are MediaPipe's
    468-point mesh and its lips; dlib's 68 points pass ``n_points=68`` and their mouth points 48-67.
    """
    p = np.asarray(pred, dtype=np.float64)[:, :n_points, :2]
    r = np.asarray(ref, dtype=np.float64)[:, :n_points, :2]
    if p.shape != r.shape:
        raise ValueError(f"pred and ref landmarks differ in shape: {p.shape} vs {r.shape}")
    n = len(p)
    fp, fr = _found(p), _found(r)
    both = fp & fr
    scale = LMD_SIZE / float(frame_size)
    if both.any():
        dist = np.linalg.norm(p[both] - r[both], axis=-1) * scale  # [m, 468]
        mouth, face = float(dist[:, mouth_ids].mean()), float(dist.mean())
    else:
        mouth = face = float("nan")
    rate = (lambda f: float(f.mean()) if n else float("nan"))
    return LMDResult(mouth, face, n, int(both.sum()), rate(fp), rate(fr))


# --------------------------------------------------------------------------- #
# blinks
# --------------------------------------------------------------------------- #
def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """float64 [n]: eye opening / eye width, averaged over both eyes (NaN where no face).

    Opening = mean distance between paired upper and lower lid points (the 7 inner pairs of
    each lid contour); width = corner-to-corner distance. A blink dips it towards 0.
    """
    xy = np.asarray(landmarks, dtype=np.float64)[:, :, :2]
    ratios = []
    for upper, lower in ((EYE_RIGHT_UPPER, EYE_RIGHT_LOWER), (EYE_LEFT_UPPER, EYE_LEFT_LOWER)):
        u, lo = xy[:, upper[1:-1]], xy[:, lower[1:-1]]
        opening = np.linalg.norm(u - lo, axis=-1).mean(axis=1)
        width = np.linalg.norm(xy[:, upper[0]] - xy[:, upper[-1]], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios.append(opening / width)
    ear = np.mean(ratios, axis=0)
    ear[~np.isfinite(ear)] = np.nan
    return ear


@dataclass
class BlinkResult:
    """Blinks found in an eye-aspect-ratio curve: count, rate per minute, frames where each starts."""

    count: int
    per_minute: float
    duration_s: float  # of the frames with a face
    starts: list[int]
    threshold: float  # EAR below this counts as closed

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["per_minute"] = None if not np.isfinite(self.per_minute) else self.per_minute
        d["threshold"] = None if not np.isfinite(self.threshold) else self.threshold
        return d


MIN_RATE_DURATION_S = 5.0  # people blink every 2-10 s: a per-minute rate from less than this is noise


def blink_rate(ear: np.ndarray, fps: float, *, closed_fraction: float = 0.6, min_gap_frames: int = 3,
               min_duration_s: float = MIN_RATE_DURATION_S) -> BlinkResult:
    """Blinks per minute from an EAR curve: a blink is a run of frames below ``closed_fraction``
    times the curve's median (the open-eye level of this face, so no absolute threshold tied to
    one eye shape); runs separated by fewer than ``min_gap_frames`` open frames are merged.
    NaN frames (no face) neither start nor end a blink and do not count towards the duration.
    With less than ``min_duration_s`` of frames with a face the count is kept but the rate is
    nan (unmeasurable), not an extrapolation from a fraction of a second.
    """
    e = np.asarray(ear, dtype=np.float64).reshape(-1)
    ok = np.isfinite(e)
    if ok.sum() < 2:
        return BlinkResult(0, float("nan"), float(ok.sum()) / fps, [], float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        threshold = float(np.nanmedian(e)) * closed_fraction
    closed = ok & (e < threshold)
    starts: list[int] = []
    last_closed = -10**9
    for i in np.flatnonzero(closed):
        if i - last_closed > min_gap_frames:
            starts.append(int(i))
        last_closed = int(i)
    duration = float(ok.sum()) / fps
    rate = len(starts) / duration * 60.0 if duration >= min_duration_s else float("nan")
    return BlinkResult(len(starts), rate, duration, starts, threshold)
