"""``preview.mp4``: the prep results drawn over the first seconds of the clip, for a quick look.

Why: when an avatar comes out wrong, the cause is usually upstream - a head mask that
eats the hair, landmarks that slid onto a cheek, or a fitted face that does not sit on
the face.  One short video shows all three at once, per frame:

* the parsing labels as translucent colours (head, neck/torso, mouth interior);
* MediaPipe's landmarks as dots (yellow detected, orange interpolated over a gap);
* the fitted face model as a wireframe: the clip's identity and the frame's expression,
  depth-scaled, posed with the frame's R, t and projected with the fitted focal length
  (:mod:`data_prep.fitted`, the same projection the tracker fitted).  Where it and the
  dots disagree, tracking went wrong;
* the frame index and the fit residual (px); excluded frames are marked and have no mesh.

Frames, labels and audio are streamed: nothing proportional to the clip is held in memory.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from avatar3d.dataset.contract import (AUDIO, FRAMES, LANDMARK_FLAGS, LANDMARKS, MANIFEST, PARSING, PREVIEW, TRACKING,
                                       iter_labels)
from avatar3d.errors import Avatar3DError
from avatar3d.face.default_model import load_face_model
from avatar3d.face.model import MorphableModel
from avatar3d.io.audio import read_wav
from avatar3d.io.video import VideoWriter, read_video
from data_prep.fitted import fitted_projection, load_tracking
from data_prep.segment import HEAD, MOUTH, TORSO

PathLike = Union[str, Path]

__all__ = ["PREVIEW_NAME", "write_preview", "draw_frame", "mesh_edges"]

PREVIEW_NAME = PREVIEW
_LABEL_RGB = {HEAD: (70, 110, 255), TORSO: (255, 150, 40), MOUTH: (255, 40, 200)}
_LABEL_ALPHA = 0.35
_MESH_RGB = (0, 230, 255)
_DETECTED_RGB, _INTERPOLATED_RGB = (255, 240, 0), (255, 110, 0)
_EXCLUDED_RGB = (255, 50, 50)
_SHIFT = 4  # sub-pixel bits for cv2 drawing


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """[E,2] unique undirected edges of a triangle list (each drawn once)."""
    pairs = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


def _fixed(points_px: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates (pixel i spans [i, i+1)) -> cv2 fixed-point (pixel centres at integers)."""
    return np.round((points_px - 0.5) * (1 << _SHIFT)).astype(np.int32)


def draw_frame(frame: np.ndarray, labels: Optional[np.ndarray], landmarks: Optional[np.ndarray], flag: int,
               mesh_px: Optional[np.ndarray], edges: np.ndarray, caption: str) -> np.ndarray:
    """One preview frame (RGB uint8): labels, then mesh wireframe, then landmark dots, then the caption."""
    out = frame.copy()
    if labels is not None:
        lut = np.zeros((256, 3), np.float32)
        for label, rgb in _LABEL_RGB.items():
            lut[label] = rgb
        person = labels != 0
        out[person] = np.round((1.0 - _LABEL_ALPHA) * out[person] + _LABEL_ALPHA * lut[labels[person]]).astype(np.uint8)
    if mesh_px is not None and np.isfinite(mesh_px).all():
        segments = _fixed(mesh_px)[edges]  # [E,2,2]
        cv2.polylines(out, list(segments), False, _MESH_RGB, 1, cv2.LINE_AA, shift=_SHIFT)
    if landmarks is not None:
        colour = _INTERPOLATED_RGB if flag == 2 else _DETECTED_RGB
        for x, y in _fixed(landmarks[np.isfinite(landmarks[:, :2]).all(axis=1), :2]):
            cv2.circle(out, (int(x), int(y)), 1 << _SHIFT, colour, -1, cv2.LINE_AA, shift=_SHIFT)
    scale = max(0.35, out.shape[0] / 1200.0)
    line = int(18 * scale / 0.43)
    cv2.putText(out, caption, (6, line), cv2.FONT_HERSHEY_SIMPLEX, scale,
                _EXCLUDED_RGB if flag == 0 else (255, 255, 255), 1, cv2.LINE_AA)
    x = 6
    for text, rgb in (("head", _LABEL_RGB[HEAD]), ("torso", _LABEL_RGB[TORSO]), ("mouth", _LABEL_RGB[MOUTH]),
                      ("mediapipe", _DETECTED_RGB), ("fitted mesh", _MESH_RGB)):  # legend
        cv2.putText(out, text, (x, 2 * line), cv2.FONT_HERSHEY_SIMPLEX, scale, rgb, 1, cv2.LINE_AA)
        x += cv2.getTextSize(text + " ", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    return out


def _read_manifest(subject: Path) -> dict:
    path = subject / MANIFEST
    if not path.is_file():
        raise Avatar3DError(f"{path}: not found; run `avatar3d prep` on the clip first")
    return json.loads(path.read_text())


def _fps(subject: Path, manifest: dict) -> Fraction:
    record = subject / "decode.json"
    if record.is_file():
        return Fraction(json.loads(record.read_text())["fps_fraction"])
    return Fraction(manifest["fps"]).limit_denominator(1001)


def _require(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise Avatar3DError(f"{path}: not found; run the {stage} stage (`avatar3d prep`) first")
    return path


def write_preview(subject_dir: PathLike, out_path: PathLike, max_seconds: float = 10.0,
                  model: Optional[MorphableModel] = None) -> Path:
    """Write the diagnostic preview of the first ``max_seconds`` of a prepared subject to ``out_path``.

    ``model`` is the face model the clip was tracked with (default: the built-in open model).
    The mp4 appears atomically; returns its path.
    """
    subject = Path(subject_dir)
    manifest = _read_manifest(subject)
    fps = _fps(subject, manifest)
    frames_path = _require(subject / FRAMES, "decode")
    landmarks = np.load(_require(subject / LANDMARKS, "landmarks"), mmap_mode="r")
    flags = np.load(_require(subject / LANDMARK_FLAGS, "landmarks"))
    tracking = load_tracking(subject)
    if model is None:
        model = load_face_model()
    residual = _residuals(subject)
    n = max(1, min(len(flags), int(round(max_seconds * float(fps)))))
    intr = manifest.get("intrinsics", {})
    cx = float(intr.get("cx", manifest.get("width", 0) / 2.0))
    cy = float(intr.get("cy", manifest.get("height", 0) / 2.0))
    edges = mesh_edges(model.triangles)

    audio, rate = None, None
    if (subject / AUDIO).is_file():
        audio, rate = read_wav(subject / AUDIO)
        audio = audio[: int(round(n / fps * rate))]
    label_iter: Iterator[Optional[np.ndarray]] = (
        iter_labels(subject / PARSING) if (subject / PARSING).is_file() else _nones())
    frame_iter = read_video(frames_path)
    try:
        with VideoWriter(out_path, fps, audio=audio, sample_rate=rate) as writer:
            for i, (frame, labels) in enumerate(zip(frame_iter, label_iter)):
                if i >= n:
                    break
                flag = int(flags[i])
                mesh = None
                if flag != 0 and i < tracking.n_frames:
                    mesh = fitted_projection(tracking, model, cx, cy, frames=[i])[0][0]
                caption = f"frame {i}  " + ("EXCLUDED (no face)" if flag == 0 else f"fit {residual[i]:.1f} px")
                writer.write(draw_frame(frame, labels, None if flag == 0 else np.asarray(landmarks[i]), flag,
                                        mesh, edges, caption))
    finally:
        frame_iter.close()  # type: ignore[attr-defined]
        close = getattr(label_iter, "close", None)
        if close is not None:
            close()
    return Path(out_path)


def _residuals(subject: Path) -> np.ndarray:
    with np.load(subject / TRACKING) as z:
        return z["residual_px"] if "residual_px" in z.files else np.full(len(z["R"]), np.nan)


def _nones() -> Iterator[None]:
    while True:
        yield None
