"""Check a synthetic clip against its ground truth with MediaPipe (tracking mode).

This is the proof that the subject looks like a face to a real detector and that
the ground-truth landmarks are consistent with the pixels: MediaPipe's landmarks
on the decoded video versus the ground-truth projections, per region.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from avatar3d.errors import Avatar3DError
from avatar3d.face import landmark_sets as rg
from avatar3d.io.video import read_video
from avatar3d.vision.face_mesh import FaceMeshDetector


def load_groundtruth(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a ``groundtruth.npz`` (clear error if missing or not one)."""
    path = Path(path)
    if not path.is_file():
        raise Avatar3DError(f"ground truth {path} not found: run `avatar3d synth -o DIR` first")
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any decode failure means the same thing to the user
        raise Avatar3DError(f"ground truth {path} is unreadable ({type(exc).__name__}): regenerate it") from None


def detect_video(video: str | Path, progress: bool = False) -> np.ndarray:
    """[N,468,2] MediaPipe landmarks per frame in tracking mode, NaN where no face was found."""
    out = []
    with FaceMeshDetector(video=True) as detect:
        for frame in tqdm(read_video(video), disable=not progress, desc="mediapipe", unit="frame"):
            found = detect(frame)
            out.append(np.full((468, 2), np.nan, np.float32) if found is None else found[:468, :2])
    return np.array(out)


def landmark_agreement(detected: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Detection rate and pixel errors (mean, p95) overall without contour, on lips and on the contour."""
    n = min(len(detected), len(truth))
    detected, truth = detected[:n], truth[:n, :, :2]
    found = ~np.isnan(detected[:, 0, 0])
    err = np.linalg.norm(detected[found] - truth[found], axis=-1)  # [F,468]
    contour = np.zeros(468, bool)
    contour[rg.FACE_OVAL] = True
    lips = np.zeros(468, bool)
    lips[rg.LIPS] = True
    inner = err[:, ~contour]
    return {
        "frames": int(n),
        "detection_rate": float(found.mean()),
        "mean_px": float(inner.mean()),
        "p95_px": float(np.percentile(inner, 95)),
        "lips_mean_px": float(err[:, lips].mean()),
        "contour_mean_px": float(err[:, contour].mean()),
        "contour_p95_px": float(np.percentile(err[:, contour], 95)),
    }


def check_clip(directory: str | Path, progress: bool = False) -> dict[str, float]:
    """Run MediaPipe over ``directory/video.mp4`` and compare with ``groundtruth.npz``."""
    directory = Path(directory)
    truth = load_groundtruth(directory / "groundtruth.npz")
    detected = detect_video(directory / "video.mp4", progress=progress)
    return landmark_agreement(detected, truth["landmarks"])
