"""Pinhole camera and head-pose helpers shared by the generator and its checks.

Conventions (ARCHITECTURE.md): canonical head space is metric, +y up, +z out of the
face; the camera frame is OpenCV's (+x right, +y down, +z forward).  A head pose
``(R, t)`` maps canonical points into the camera: ``X_cam = R @ X + t``.  A head
looking straight into the camera has ``R = FLIP`` (180° about x).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLIP = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels; (cx, cy) in the continuous pixel convention."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """[..., 3] camera points -> [..., 3] (x px, y px, depth m)."""
        z = points_cam[..., 2]
        x = self.fx * points_cam[..., 0] / z + self.cx
        y = self.fy * points_cam[..., 1] / z + self.cy
        return np.stack([x, y, z], axis=-1)


def euler_to_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation in canonical head space: yaw about +y, pitch about +x, roll about +z (degrees).

    Applied as R = Ry(yaw) @ Rx(pitch) @ Rz(roll).  +x is the subject's left, so a
    positive pitch tips the face down (the nose moves towards -y) and a positive yaw
    turns the face towards the subject's left.
    """
    y, p, r = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def head_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Canonical -> camera rotation of a head turned by (yaw, pitch, roll) from frontal."""
    return FLIP @ euler_to_matrix(yaw_deg, pitch_deg, roll_deg)


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations (degrees); broadcasts over leading axes."""
    rel = np.einsum("...ji,...jk->...ik", r_a, r_b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def matrix_to_euler(rotation_can: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`euler_to_matrix` (yaw, pitch, roll in degrees)."""
    m = rotation_can
    # For R = Ry Rx Rz: m[1,2] = -sin(p); m[0,2] = sy*cp; m[2,2] = cy*cp; m[1,0] = cp*sr; m[1,1] = cp*cr
    pitch = np.arcsin(np.clip(-m[1, 2], -1.0, 1.0))
    yaw = np.arctan2(m[0, 2], m[2, 2])
    roll = np.arctan2(m[1, 0], m[1, 1])
    return float(np.rad2deg(yaw)), float(np.rad2deg(pitch)), float(np.rad2deg(roll))
