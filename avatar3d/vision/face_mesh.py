"""MediaPipe face mesh and selfie segmentation behind a small interface.

MediaPipe 0.10.21 is the last release that ships its models inside the wheel, so
these run offline.  Landmarks come back in pixels with the continuous convention
(pixel column j spans [j, j+1)), i.e. MediaPipe's normalised x times the width.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

N_LANDMARKS = 468
N_LANDMARKS_WITH_IRISES = 478


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence the C++ log lines MediaPipe prints while it builds its graph (not errors raised in Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class FaceMeshDetector:
    """Face-mesh landmarks for one face per frame.

    ``video=True`` uses MediaPipe's tracking mode (frames must be given in order);
    ``video=False`` detects every image independently.
    """

    def __init__(self, *, video: bool = False, refine_landmarks: bool = True, min_confidence: float = 0.5):
        from mediapipe.python.solutions import face_mesh  # lazy: heavy (~1-2 s); only a detector needs it

        with quiet_native_stderr():
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=not video,
                max_num_faces=1,
                refine_landmarks=refine_landmarks,
                min_detection_confidence=min_confidence,
                min_tracking_confidence=min_confidence,
            )
        self._warm = False

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """[478 or 468, 3] float32 (x, y in pixels; z in pixel units, smaller = nearer) or None."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image [H,W,3], got {rgb.dtype} {rgb.shape}")
        height, width = rgb.shape[:2]
        if self._warm:
            result = self._mesh.process(np.ascontiguousarray(rgb))
        else:  # the first call still prints graph-setup log lines
            with quiet_native_stderr():
                result = self._mesh.process(np.ascontiguousarray(rgb))
            self._warm = True
        if not result.multi_face_landmarks:
            return None
        points = result.multi_face_landmarks[0].landmark
        out = np.array([(p.x * width, p.y * height, p.z * width) for p in points], dtype=np.float32)
        return out

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> "FaceMeshDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PersonSegmenter:
    """One MediaPipe selfie-segmentation graph reused for every frame (building one costs ~50 ms)."""

    def __init__(self, model_selection: int = 0) -> None:
        from mediapipe.python.solutions import selfie_segmentation  # lazy: heavy (~1-2 s) import

        with quiet_native_stderr():
            self._seg = selfie_segmentation.SelfieSegmentation(model_selection=model_selection)
        self._warm = False

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Soft person probability [H, W] float32 in [0, 1]."""
        if self._warm:
            result = self._seg.process(np.ascontiguousarray(rgb))
        else:  # the first call still prints graph-setup log lines
            with quiet_native_stderr():
                result = self._seg.process(np.ascontiguousarray(rgb))
            self._warm = True
        return np.clip(result.segmentation_mask.astype(np.float32, copy=False), 0.0, 1.0)

    def close(self) -> None:
        self._seg.close()

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def person_mask(rgb: np.ndarray) -> np.ndarray:
    """Soft person mask [H,W] float32 in [0,1] of a single image."""
    with PersonSegmenter() as segment:
        return segment(rgb)
