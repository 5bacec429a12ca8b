"""Tracking: fit the morphable face model to per-frame landmarks of a whole clip.

One identity, one depth scale and one focal length for the clip; per frame an
expression (ARKit weights in [0, 1]) and a head pose (R, t: canonical head -> OpenCV
camera).  The objective: a robust (Cauchy) pixel loss with the contour landmarks
(which slide along the silhouette) down-weighted, a unit-variance prior on identity,
weak priors on the focal and the depth scale, a small sparsity prior on expressions,
temporal smoothness that is strong on the pose (removes jitter) and weak on the
expression (fast mouth motion is not lagged), and in the all-frames solve an L2 prior
pulling every expression towards the clip's neutral (see below).  Solved in two Gauss-Newton stages
(:mod:`data_prep.track_solver`): the clip-wide unknowns on keyframes that span the head
poses, then every frame with those fixed.  Blink per eye is read from the eyelid
landmarks directly.

Why the depth prior: from 2D landmarks a face's depth and its rotation amplitude trade
off almost exactly, and MediaPipe reads faces flatter than they are, so the unregularised
optimum is too flat (depth scale ~0.6 on the synthetic subjects whose effective value is
~0.7) and rotations too large; a weak pull towards the face model's own depth fixes most
of it.  The focal length is nearly unobservable (a far narrow camera and a near wide one
differ by a little perspective), hence its prior towards ``focal_init``.

Why the neutral prior: the 39 expression channels are far from independent on 468 2D
landmarks (mouthLeft/Right against jawLeft/Right, funnel against pucker, upper-lip-up
against lower-lip-down are exactly collinear there; brows and cheeks move a landmark by a
fraction of MediaPipe's noise), so with only a weak L1 prior most channels wandered with
landmark noise and pose-dependent detector bias (on the synthetic subject: only jawOpen
correlated with the truth, constant channels read std 0.08-0.17).  The neutral is each
channel's low quantile over the keyframes, not zero: the face model cannot reproduce every
subject's rest face from identity alone, and a pull to zero fights that offset.  The
all-frames solve also uses a wider robust scale than the keyframes: with the Cauchy
weights ~1/(s^2 + r^2) that makes the data term weaker against the pose smoothness, and it
stops frames from re-weighting their landmarks from one frame to the next (jitter).  The
settings were chosen on synthetic subjects (tools/bench/prep.py); real faces may differ.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
from tqdm import tqdm

from avatar3d.errors import Avatar3DError
from avatar3d.face import landmark_sets as rg
from avatar3d.face.model import MorphableModel
from data_prep.track_solver import (Problem, State, project, rodrigues, rotations, solve_keyframes, solve_sequence,
                                    translations)


@dataclass(frozen=True)
class TrackConfig:
    """Weights and schedule of the clip-wide fit."""

    iterations: int = 6
    """Most Levenberg-Marquardt steps of the all-frames solve (identity, focal, depth fixed); stops earlier once converged."""
    keyframes: int = 64
    """Frames (spanning the head poses) on which identity, focal and depth scale are fitted."""
    keyframe_iterations: int = 30
    """Most Levenberg-Marquardt steps of the keyframe solve."""
    focal_init: float = 1.0
    """Initial focal length in units of the image width (refined by the fit)."""
    cauchy_scale_px: float = 2.0
    """Keyframe solve: residuals well beyond this many pixels count less (robust loss)."""
    sequence_cauchy_scale_px: float = 6.0
    """The same for the all-frames solve: wider, so the per-landmark weights do not flicker from frame to
    frame (jitter) and the pose smoothness weighs more against the data (2.0: the tracker before 2026-11-26)."""
    contour_weight: float = 0.2
    """Weight of the 36 face-oval landmarks, which slide with the silhouette."""
    identity_prior: float = 1e-3
    """Weight of the unit-variance prior on identity coefficients."""
    depth_prior: float = 0.015
    """Weight (per frame) pulling log(depth scale) to 0, i.e. towards the face model's own depth: MediaPipe
    reads faces flatter than they are, and a landmark-only fit trades that depth for rotation amplitude."""
    focal_prior: float = 0.1
    """Weight (per frame) pulling log(focal / focal_init) to 0: landmarks barely constrain the focal
    length (a far, narrow camera and a near, wide one differ by a little perspective)."""
    expression_prior: float = 1e-3
    """L1 weight pulling unused expressions to zero."""
    expression_neutral_prior: float = 30.0
    """All-frames solve: L2 weight (per frame, shared by the channels) pulling each expression towards the clip's
    neutral; settles the channels the landmarks cannot tell apart (0: off, as before 2026-11-26)."""
    neutral_quantile: float = 0.1
    """The clip's neutral expression: this quantile of each channel over the keyframe fit."""
    pose_smoothness: float = 20.0
    """Weight on the second difference of rotation (rad) and translation over frames (translation as
    (x/z, y/z, log z) times the clip's median distance: ~cm near the median, and straight along the focal valley)."""
    expression_smoothness: float = 0.5
    """Weight on the first difference of expression weights over frames."""


@dataclass
class TrackResult:
    rotation: np.ndarray  # [N,3,3]
    translation: np.ndarray  # [N,3] metres
    identity: np.ndarray  # [Ki]
    expression: np.ndarray  # [N,Ke]
    expression_names: tuple[str, ...]
    focal: float  # pixels
    depth_scale: float  # fitted scale of the model's depth (z) for this subject
    blink: np.ndarray  # [N,2] (left, right) in [0,1]
    residual_px: np.ndarray  # [N] mean reprojection error of the fitted model (non-contour landmarks)
    projected: np.ndarray  # [N,468,2] fitted model landmarks in pixels


def _initial_poses(shape: np.ndarray, points: np.ndarray, valid: np.ndarray, focal: float,
                   centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP of a rigid ``shape`` [468,3]: [N,3] axis-angle and [N,3] translation (metres)."""
    mean_lm = np.asarray(shape, np.float64)
    k = np.array([[focal, 0, centre[0]], [0, focal, centre[1]], [0, 0, 1]], np.float64)
    n = len(points)
    rvecs, tvecs = np.zeros((n, 3)), np.zeros((n, 3))
    last = None
    for i in range(n):
        if not valid[i]:
            continue
        ok, rvec, tvec = cv2.solvePnP(mean_lm, points[i].astype(np.float64), k, None,
                                      flags=cv2.SOLVEPNP_ITERATIVE if last is None else cv2.SOLVEPNP_ITERATIVE,
                                      useExtrinsicGuess=last is not None,
                                      rvec=None if last is None else last[0].copy(),
                                      tvec=None if last is None else last[1].copy())
        if not ok or tvec[2, 0] <= 0:
            ok, rvec, tvec = cv2.solvePnP(mean_lm, points[i].astype(np.float64), k, None, flags=cv2.SOLVEPNP_EPNP)
        rvecs[i], tvecs[i] = rvec[:, 0], tvec[:, 0]
        last = (rvec, tvec)
    # frames without a face borrow the nearest valid pose (they do not enter the loss)
    idx = np.flatnonzero(valid)
    nearest = idx[np.clip(np.searchsorted(idx, np.arange(n)), 0, len(idx) - 1)]
    return rvecs[nearest], tvecs[nearest]


def _landmark_bases(model: MorphableModel) -> dict[str, np.ndarray]:
    """The model restricted to its 468 landmarks: landmarks are linear in the coefficients,
    so mean and bases are embedded once and the fit never gathers vertices (slow backward)."""
    def embed(vertices: np.ndarray) -> np.ndarray:
        return model.landmarks_from_vertices(vertices)[:468].reshape(-1)

    return {
        "mean": embed(model.mean),
        "identity": np.stack([embed(b) for b in model.identity_basis]),
        "expression": np.stack([embed(b) for b in model.expression_basis]),
    }


def eyelid_blink(landmarks: np.ndarray) -> np.ndarray:
    """[N,2] eye closure from lid gap / eye width, normalised by the clip's open-eye ratio."""
    out = []
    for upper, lower, corners in ((386, 374, (263, 362)), (159, 145, (33, 133))):  # left, right
        gap = np.linalg.norm(landmarks[:, upper, :2] - landmarks[:, lower, :2], axis=-1)
        width = np.linalg.norm(landmarks[:, corners[0], :2] - landmarks[:, corners[1], :2], axis=-1)
        ratio = gap / np.maximum(width, 1e-6)
        open_ratio = np.nanpercentile(ratio, 90)
        out.append(np.clip(1.0 - ratio / max(open_ratio, 1e-6), 0.0, 1.0))
    return np.nan_to_num(np.stack(out, axis=1), nan=0.0).astype(np.float32)


def track(landmarks: np.ndarray, width: int, height: int, model: MorphableModel,
          config: TrackConfig = TrackConfig(), progress: bool = True) -> TrackResult:
    """Fit ``model`` to ``landmarks`` [N,>=468,2+] (pixels; NaN rows = no face)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads only add overhead (and collapse under load)
    try:
        return _track(landmarks, width, height, model, config, progress)
    finally:
        torch.set_num_threads(threads)


def _mean_rotation(rvecs: np.ndarray) -> np.ndarray:
    """Chordal mean of axis-angle rotations [n,3] -> [3,3] (the chart's centre: keeps every frame far from pi)."""
    mats = np.stack([cv2.Rodrigues(r)[0] for r in rvecs])
    u, _, vt = np.linalg.svd(mats.mean(0))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _pose_unknowns(rvecs: np.ndarray, tvecs: np.ndarray, base: np.ndarray, depth_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """PnP poses -> the solver's unknowns: rotation relative to ``base``, scaled (x/z, y/z, log z)."""
    omega = np.stack([cv2.Rodrigues(cv2.Rodrigues(r)[0] @ base.T)[0][:, 0] for r in rvecs])
    z = np.maximum(tvecs[:, 2], 1e-3)
    trans = np.stack([tvecs[:, 0] / z, tvecs[:, 1] / z, np.log(z)], 1) * 100.0 * depth_ref
    return omega, trans


def select_keyframes(rvecs: np.ndarray, valid: np.ndarray, count: int) -> np.ndarray:
    """Frames that span the clip's head poses (farthest-point in rotation) and its time (evenly spaced).

    The clip-wide unknowns (identity, depth scale, focal) are only observable through how
    the face changes with the pose, so the frames that fix them must cover the pose range;
    the evenly spaced half keeps expressions varied so identity does not absorb one of them.
    """
    idx = np.flatnonzero(valid)
    if len(idx) <= count:
        return idx
    chosen = list(idx[np.linspace(0, len(idx) - 1, count - count // 2).round().astype(int)])
    rot = rvecs[idx]
    dist = np.min(np.linalg.norm(rot[:, None] - rvecs[np.array(chosen)][None], axis=-1), axis=1)
    while len(chosen) < count:
        pick = int(np.argmax(dist))
        chosen.append(idx[pick])
        dist = np.minimum(dist, np.linalg.norm(rot - rot[pick], axis=-1))
    return np.unique(np.array(chosen))


def _track(landmarks: np.ndarray, width: int, height: int, model: MorphableModel,
           config: TrackConfig, progress: bool) -> TrackResult:
    if landmarks.ndim != 3 or landmarks.shape[1] < 468:
        raise Avatar3DError(f"landmarks have shape {landmarks.shape}: expected [frames, 468 or 478, 2 or 3]")
    points = landmarks[:, :468, :2].astype(np.float64)
    valid = ~np.isnan(points).any(axis=(1, 2))
    if valid.sum() < 2:
        raise Avatar3DError("fewer than 2 frames have a face: tracking needs a clip where the face is visible")
    n = len(points)
    centre = (width / 2.0, height / 2.0)
    focal0 = config.focal_init * width
    bar = tqdm(total=3, disable=not progress, desc="tracking", unit="stage")
    rvec0, tvec0 = _initial_poses(model.landmarks()[:468], points, valid, focal0, centre)
    bar.update(1)

    base = _mean_rotation(rvec0[valid])
    depth_ref = float(np.median(tvec0[valid, 2]))
    dtype = torch.float64
    basis = _landmark_bases(model)
    point_w = torch.ones(468, dtype=dtype)
    point_w[rg.FACE_OVAL] = config.contour_weight
    problem = Problem(
        target=torch.tensor(np.nan_to_num(points), dtype=dtype), frame_w=torch.tensor(valid, dtype=dtype),
        point_w=point_w / point_w.sum(), mean=torch.tensor(basis["mean"], dtype=dtype).reshape(468, 3),
        id_basis=torch.tensor(basis["identity"], dtype=dtype).reshape(-1, 468, 3),
        exp_basis=torch.tensor(basis["expression"], dtype=dtype).reshape(-1, 468, 3),
        centre=centre, focal0=focal0, cauchy2=config.cauchy_scale_px ** 2, identity_prior=config.identity_prior,
        focal_prior=config.focal_prior, depth_prior=config.depth_prior,
        expression_l1=config.expression_prior / model.n_expression, pose_smoothness=config.pose_smoothness,
        expression_smoothness=config.expression_smoothness, base_rotation=torch.tensor(base, dtype=dtype),
        depth_ref=depth_ref)
    omega0, trans0 = _pose_unknowns(rvec0, tvec0, base, depth_ref)
    state = State(omega=torch.tensor(omega0, dtype=dtype), trans=torch.tensor(trans0, dtype=dtype),
                  expression=torch.zeros(n, model.n_expression, dtype=dtype),
                  identity=torch.zeros(model.n_identity, dtype=dtype), log_focal=0.0, log_depth=0.0)
    keys = torch.from_numpy(select_keyframes(rvec0, valid, config.keyframes))
    fitted = solve_keyframes(problem, state.take(keys), keys, config.keyframe_iterations)
    bar.update(1)
    state.identity, state.log_focal, state.log_depth = fitted.identity, fitted.log_focal, fitted.log_depth
    problem = replace(problem, cauchy2=config.sequence_cauchy_scale_px ** 2,
                      expression_l2=config.expression_neutral_prior / model.n_expression,
                      expression_centre=torch.quantile(fitted.expression, config.neutral_quantile, dim=0))
    # the other frames start from a PnP of the fitted neutral face with the fitted focal
    focal = focal0 * float(np.exp(fitted.log_focal))
    shape = (problem.mean + torch.einsum("k,klc->lc", fitted.identity, problem.id_basis)).numpy().copy()
    shape[:, 2] *= float(np.exp(fitted.log_depth))
    rvec1, tvec1 = _initial_poses(shape, points, valid, focal, centre)
    omega1, trans1 = _pose_unknowns(rvec1, tvec1, base, depth_ref)
    state.omega, state.trans = torch.tensor(omega1, dtype=dtype), torch.tensor(trans1, dtype=dtype)
    state.omega[keys], state.trans[keys], state.expression[keys] = fitted.omega, fitted.trans, fitted.expression
    state = solve_sequence(problem, state, config.iterations)
    bar.update(1)
    bar.close()

    with torch.no_grad():
        proj = project(problem, state)
        err = torch.linalg.norm(proj - problem.target, dim=-1)  # [N,468]
        inner = torch.ones(468, dtype=torch.bool)
        inner[rg.FACE_OVAL] = False
        residual = err[:, inner].mean(-1).numpy()
        residual[~valid] = np.nan
    return TrackResult(rotation=rotations(problem, state.omega).numpy(),
                       translation=translations(problem, state.trans).numpy(),
                       identity=state.identity.numpy().copy(), expression=state.expression.numpy().astype(np.float32),
                       expression_names=tuple(model.expression_names), focal=focal0 * float(np.exp(state.log_focal)),
                       depth_scale=float(np.exp(state.log_depth)), blink=eyelid_blink(landmarks[:, :468]),
                       residual_px=residual, projected=proj.numpy().astype(np.float32))
