"""Pose metrics as defined once in METRICS.md, shared by tests, benchmarks and the demo.

Rotation: geodesic angle.  The tracker's canonical frame (its face model) and the
ground truth's (the generator's rig) differ by one fixed rotation, so errors are
reported after removing the best constant rotation (as well as raw).  Translation:
after the one global similarity (rotation, translation, scale) that monocular scale
ambiguity allows, fitted between the two trajectories (Umeyama).
"""
from __future__ import annotations

import numpy as np

from avatar3d.synth.camera import rotation_angle_deg


def constant_rotation_offset(r_true: np.ndarray, r_est: np.ndarray) -> np.ndarray:
    """The rotation O minimising sum ||R_true O - R_est||: R_est ≈ R_true @ O."""
    mean = np.einsum("nji,njk->nik", r_true, r_est).mean(axis=0)
    u, _, vt = np.linalg.svd(mean)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    return u @ d @ vt


def rotation_errors_deg(r_true: np.ndarray, r_est: np.ndarray, align: bool = True) -> np.ndarray:
    """[N] geodesic errors (degrees), after the constant frame offset when ``align``."""
    offset = constant_rotation_offset(r_true, r_est) if align else np.eye(3)
    return rotation_angle_deg(r_true @ offset, r_est)


def similarity_aligned(target: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """``moving`` [N,3] mapped onto ``target`` by the best similarity (Umeyama)."""
    mt, mm = target.mean(0), moving.mean(0)
    u, s, vt = np.linalg.svd((moving - mm).T @ (target - mt))
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ d @ u.T
    scale = np.trace(np.diag(s) @ d) / max(((moving - mm) ** 2).sum(), 1e-12)
    return scale * (moving - mm) @ rot.T + mt


def translation_errors_mm(t_true: np.ndarray, t_est: np.ndarray) -> np.ndarray:
    """[N] distances in mm after the global similarity."""
    return 1000.0 * np.linalg.norm(similarity_aligned(t_true, t_est) - t_true, axis=1)


def still_jitter_deg(r_est: np.ndarray, still: np.ndarray) -> float:
    """Mean frame-to-frame rotation change (degrees) over pairs of frames where the true head is still."""
    pairs = still[1:] & still[:-1]
    if not pairs.any():
        return float("nan")
    return float(rotation_angle_deg(r_est[1:], r_est[:-1])[pairs].mean())
