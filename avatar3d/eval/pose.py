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


def gt_poses_in_tracked_frame(R_gt: np.ndarray, t_gt: np.ndarray, R_tr: np.ndarray, t_tr: np.ndarray):
    """Ground-truth poses re-expressed in the tracker's canonical head frame (one constant similarity).

    Rotation: R_gt @ O with the constant offset O. Translation: t = R_gt u + s t_gt, with (u, s)
    the least-squares fit to the tracked translations (u = s * the tracked origin in the true
    head frame; s the monocular scale, which rescales the scene and leaves the images unchanged).
    """
    O = constant_rotation_offset(R_gt, R_tr)
    A = np.concatenate([R_gt, t_gt[:, :, None]], axis=2).reshape(-1, 4)  # rows: [R_gt_i | t_gt_i]
    sol, *_ = np.linalg.lstsq(A, t_tr.reshape(-1), rcond=None)
    u, s = sol[:3], sol[3]
    return R_gt @ O, np.einsum("nij,j->ni", R_gt, u) + s * t_gt, float(s)


def true_intrinsics(gt_K: np.ndarray, decode: dict, resolution: int) -> np.ndarray:
    """The generator's camera matrix mapped through prep's square crop and resize to ``resolution``.

    Why: the tracker's focal is only weakly observed (553 px against the true 614 on the 60 s
    subject) and its poses compensate; true poses are only meaningful with the true focal.
    """
    crop = decode["crop"]
    s = crop["scale"] * resolution / decode["size"]
    K = gt_K.astype(np.float64).copy()
    K[0, 2] -= crop["x0"]
    K[1, 2] -= crop["y0"]
    K[:2] *= s
    return K


def median_rotation_errors(r_true: np.ndarray, r_est: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, float]:
    """``{"rot_<split>_deg": median error}`` (degrees, after the constant frame offset) per frame-id split."""
    return {f"rot_{name}_deg": round(float(np.median(rotation_errors_deg(r_true[ids], r_est[ids]))), 3)
            for name, ids in splits.items()}


def true_camera(truth: dict, R_tr: np.ndarray, t_tr: np.ndarray, decode: dict, resolution: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(R, t, K, scale): the generator's poses in the tracked frame and its camera at ``resolution``.

    ``truth`` holds the generator's ``rotation``, ``translation`` and ``intrinsics``; ``decode`` is prep's
    decode.json (its crop). Why one function: benchmarks train on true poses only together with the true focal.
    """
    R, t, scale = gt_poses_in_tracked_frame(truth["rotation"], truth["translation"], R_tr, t_tr)
    return R, t, true_intrinsics(truth["intrinsics"], decode, resolution), scale
