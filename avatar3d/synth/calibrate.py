"""Calibrate the ground-truth landmarks of the synthetic head against MediaPipe.

A landmark is not a fixed surface point: MediaPipe's contour points slide with the
silhouette and it reads photo-textured renders as a flatter face.  So each of the
468 ground-truth landmarks is the rig's vertex plus a small offset in canonical
space, fitted once per photo over a set of rendered calibration views (varied pose
and jaw) and carried by the rig like the vertex.  The offsets are reported and
validated on held-out views; the render itself does not change.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar3d.synth.camera import head_rotation
from avatar3d.synth.head_mesh import JAW_MAX_DEG
from avatar3d.synth.rig import deform, to_camera
from avatar3d.synth.scene import Scene, render_frame
from avatar3d.vision.face_mesh import FaceMeshDetector

N_LANDMARKS = 468


@dataclass
class View:
    """One calibration / validation view: pose, expression, and what MediaPipe saw."""

    rotation: np.ndarray
    translation: np.ndarray
    weights: dict[str, float]
    detected: np.ndarray | None  # [468,2] or None when MediaPipe found no face


@dataclass
class Calibration:
    offsets: np.ndarray  # [468,3] canonical metres
    train_error_px: float  # mean over points and calibration views, after fitting
    val_error_px: float  # same on held-out views
    val_error_before_px: float  # held-out error with zero offsets
    n_train: int
    n_val: int


def sample_views(rng: np.random.Generator, n: int, scene: Scene, yaw: float = 15.0, pitch: float = 10.0,
                 roll: float = 5.0) -> list[View]:
    """Random poses within the wander ranges, with speech-range mouth shapes."""
    views = []
    for _ in range(n):
        angles = rng.uniform(-1, 1, size=3) * [yaw, pitch, roll]
        shift = rng.uniform(-1, 1, size=3) * [0.015, 0.01, 0.02]
        weights = {"jawOpen": float(rng.choice([0.0, 0.15, 0.3, 0.45]) * rng.uniform(0.8, 1.0))}
        if rng.random() < 0.3:
            weights[str(rng.choice(["mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthSmileRight"]))] = float(rng.uniform(0.2, 0.7))
        views.append(View(head_rotation(*angles), scene.rest_translation + shift, weights, None))
    return views


def detect_views(scene: Scene, views: list[View]) -> None:
    """Render each view and store MediaPipe's 468 landmarks (static-image mode)."""
    with FaceMeshDetector(video=False) as detect:
        for view in views:
            frame = render_frame(scene, view.weights, view.rotation, view.translation)
            found = detect(frame)
            view.detected = None if found is None else found[:N_LANDMARKS, :2].astype(np.float64)


def landmark_points(scene: Scene, weights: dict[str, float], offsets: np.ndarray | None) -> np.ndarray:
    """Canonical [468,3] ground-truth landmark points for an expression."""
    full = None
    if offsets is not None:
        full = np.zeros_like(scene.mesh.rest)
        full[:N_LANDMARKS] = offsets
    return deform(scene.mesh, weights, full)[:N_LANDMARKS]


def project_landmarks(scene: Scene, weights: dict[str, float], rotation: np.ndarray, translation: np.ndarray,
                      offsets: np.ndarray | None) -> np.ndarray:
    """[468,3] (x px, y px, depth m) of the ground-truth landmarks at a pose."""
    cam = to_camera(landmark_points(scene, weights, offsets), rotation, translation)
    return scene.intrinsics.project(cam)


def _rig_jacobian(scene: Scene, weights: dict[str, float]) -> np.ndarray:
    """[468,3,3] d(rigged point)/d(rest point): identity, except where the jaw rotates."""
    mesh = scene.mesh
    theta = np.deg2rad(JAW_MAX_DEG * float(weights.get("jawOpen", 0.0)))
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    w = mesh.jaw_weight * (1.0 - float(weights.get("mouthClose", 0.0)) * mesh.lip_weight)
    w = w[:N_LANDMARKS, None, None]
    return (1.0 - w) * np.eye(3)[None] + w * rot[None]


def fit_offsets(scene: Scene, views: list[View], regularisation_px2_per_mm2: float = 0.5,
                iterations: int = 4) -> np.ndarray:
    """Per-landmark canonical offsets minimising reprojection error to MediaPipe (Gauss-Newton)."""
    usable = [v for v in views if v.detected is not None]
    offsets = np.zeros((N_LANDMARKS, 3))
    lam = regularisation_px2_per_mm2 * 1e6  # per m^2
    intr = scene.intrinsics
    for _ in range(iterations):
        h = np.tile(lam * np.eye(3), (N_LANDMARKS, 1, 1))
        g = -lam * offsets
        for v in usable:
            pts = to_camera(landmark_points(scene, v.weights, offsets), v.rotation, v.translation)
            proj = intr.project(pts)[:, :2]
            resid = v.detected - proj  # [468,2]
            x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
            jp = np.zeros((N_LANDMARKS, 2, 3))
            jp[:, 0, 0] = intr.fx / z
            jp[:, 0, 2] = -intr.fx * x / z**2
            jp[:, 1, 1] = intr.fy / z
            jp[:, 1, 2] = -intr.fy * y / z**2
            m = jp @ v.rotation[None] @ _rig_jacobian(scene, v.weights)  # [468,2,3]
            h += np.einsum("nki,nkj->nij", m, m)
            g += np.einsum("nki,nk->ni", m, resid)
        offsets = offsets + np.linalg.solve(h, g[..., None])[..., 0]
    return offsets


def view_errors(scene: Scene, views: list[View], offsets: np.ndarray | None) -> np.ndarray:
    """[n_detected_views, 468] pixel distances between MediaPipe and ground truth."""
    errs = []
    for v in views:
        if v.detected is None:
            continue
        proj = project_landmarks(scene, v.weights, v.rotation, v.translation, offsets)[:, :2]
        errs.append(np.linalg.norm(proj - v.detected, axis=1))
    return np.array(errs)


def calibrate(scene: Scene, n_train: int = 48, n_val: int = 16, seed: int = 0) -> Calibration:
    """Fit landmark offsets on ``n_train`` random views and measure them on ``n_val`` others."""
    rng = np.random.default_rng(seed)
    train = sample_views(rng, n_train, scene)
    val = sample_views(rng, n_val, scene)
    detect_views(scene, train + val)
    offsets = fit_offsets(scene, train)
    return Calibration(
        offsets=offsets,
        train_error_px=float(view_errors(scene, train, offsets).mean()),
        val_error_px=float(view_errors(scene, val, offsets).mean()),
        val_error_before_px=float(view_errors(scene, val, None).mean()),
        n_train=sum(v.detected is not None for v in train),
        n_val=sum(v.detected is not None for v in val),
    )
