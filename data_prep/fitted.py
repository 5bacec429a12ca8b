"""The tracked face model, posed and projected: one definition for the preview, the transforms and the bench.

``tracking.npz`` stores coefficients and a pose, not geometry; every reader that needs
the fitted face in the image (the preview's wireframe, reprojection error against
ground truth or MediaPipe) rebuilds it here exactly as the tracker does inside its fit:
model vertices from the clip's identity and the frame's expression, the model's z scaled
by the clip's ``depth_scale``, posed by ``R, t`` into the OpenCV camera, and projected
with the one focal length and the image centre.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from avatar3d.dataset.contract import TRACKING
from avatar3d.errors import Avatar3DError
from avatar3d.face.model import MorphableModel

PathLike = Union[str, Path]

__all__ = ["Tracking", "load_tracking", "fitted_vertices", "project_points", "fitted_projection"]

TRACKING_NAME = TRACKING


@dataclass(frozen=True)
class Tracking:
    """The arrays of ``tracking.npz`` that geometry needs."""

    R: np.ndarray  # [N,3,3] canonical head -> OpenCV camera
    t: np.ndarray  # [N,3] metres
    identity: np.ndarray  # [Ki]
    expression: np.ndarray  # [N,Ke]
    focal: float  # pixels
    depth_scale: float

    @property
    def n_frames(self) -> int:
        return int(len(self.R))


def load_tracking(subject_dir: PathLike) -> Tracking:
    """Read ``tracking.npz`` of a subject folder (one-line error naming the fix when absent)."""
    path = Path(subject_dir) / TRACKING_NAME
    if not path.is_file():
        raise Avatar3DError(f"{path}: not found; run the track stage (`avatar3d prep`) on the clip first")
    try:
        with np.load(path, allow_pickle=False) as z:
            return Tracking(R=z["R"].astype(np.float64), t=z["t"].astype(np.float64),
                            identity=z["identity"].astype(np.float64),
                            expression=z["expression"].astype(np.float64), focal=float(z["focal"]),
                            depth_scale=float(z["depth_scale"]) if "depth_scale" in z.files else 1.0)
    except (KeyError, ValueError, OSError) as exc:
        raise Avatar3DError(f"{path}: not a complete tracking file ({exc}); re-run the track stage") from exc


def _frames(tracking: Tracking, frames: Optional[Sequence[int]]) -> np.ndarray:
    return np.arange(tracking.n_frames) if frames is None else np.asarray(frames, dtype=np.int64).reshape(-1)


def fitted_vertices(tracking: Tracking, model: MorphableModel,
                    frames: Optional[Sequence[int]] = None) -> np.ndarray:
    """[n,V,3] fitted model vertices in the camera frame (metres), depth-scaled then posed."""
    idx = _frames(tracking, frames)
    if tracking.identity.shape[0] != model.n_identity or tracking.expression.shape[1] != model.n_expression:
        raise Avatar3DError(
            f"tracking has {tracking.identity.shape[0]} identity / {tracking.expression.shape[1]} expression "
            f"coefficients but face model {model.name!r} has {model.n_identity} / {model.n_expression}; "
            "pass the face model the clip was tracked with (face_model: in the prep --config YAML)")
    base = model.mean.astype(np.float64) + np.tensordot(tracking.identity, model.identity_basis, axes=1)
    shapes = base[None] + np.tensordot(tracking.expression[idx], model.expression_basis, axes=1)  # [n,V,3]
    shapes[..., 2] *= tracking.depth_scale
    return np.einsum("nij,nvj->nvi", tracking.R[idx], shapes) + tracking.t[idx, None, :]


def project_points(camera_points: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    """[...,3] OpenCV camera points -> [...,2] pixels (continuous convention, as the landmarks)."""
    z = np.maximum(camera_points[..., 2], 1e-3)
    return np.stack([focal * camera_points[..., 0] / z + cx, focal * camera_points[..., 1] / z + cy], -1)


def fitted_projection(tracking: Tracking, model: MorphableModel, cx: float, cy: float,
                      frames: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(vertices_px [n,V,2], landmarks_px [n,468,2]) of the fitted model in the image.

    Landmarks go through the model's barycentric landmark embedding, as in the fit, so a
    model whose vertices are not MediaPipe's (BFM, FLAME) still yields comparable points.
    """
    cam = fitted_vertices(tracking, model, frames)
    landmarks = model.landmarks_from_vertices(cam)[:, :468]
    return project_points(cam, tracking.focal, cx, cy), project_points(landmarks, tracking.focal, cx, cy)
