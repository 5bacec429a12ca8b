"""Tracking: fit the morphable face model to per-frame landmarks of a whole clip.

One identity, one depth scale and one focal length for the clip; per frame an
expression (ARKit weights in [0, 1]) and a head pose (R, t: canonical head -> OpenCV
camera).  All frames are fitted together in PyTorch (full batch: Adam, then L-BFGS,
because from 2D landmarks a face's depth and its rotation amplitude trade off
almost exactly and first-order steps crawl along that valley): a robust (Cauchy) pixel
loss, a unit-variance prior on identity, a small sparsity prior on expressions, and
temporal smoothness that is strong on the pose (removes jitter) and weak on the
expression (fast mouth motion is not lagged).  Contour landmarks slide along the
silhouette, so they get a low weight.  Blink per eye is read from the eyelid
landmarks directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from tqdm import tqdm

from avatar3d.errors import Avatar3DError
from avatar3d.face.model import MorphableModel
from avatar3d.synth import regions as rg


@dataclass(frozen=True)
class TrackConfig:
    """Weights and schedule of the clip-wide fit."""

    iterations: int = 200
    """Adam steps over all frames at once (first descent)."""
    lbfgs_iterations: int = 600
    """L-BFGS iterations after Adam (resolves the slow depth / rotation trade-off)."""
    lbfgs_history: int = 60
    """L-BFGS memory (curvature pairs kept)."""
    learning_rate: float = 0.02
    """Adam step size (parameters are scaled to be O(1))."""
    focal_init: float = 1.0
    """Initial focal length in units of the image width (refined by the fit)."""
    cauchy_scale_px: float = 2.0
    """Residuals well beyond this many pixels count less (robust loss)."""
    contour_weight: float = 0.2
    """Weight of the 36 face-oval landmarks, which slide with the silhouette."""
    identity_prior: float = 1e-3
    """Weight of the unit-variance prior on identity coefficients."""
    identity_step: float = 10.0
    """Identity coefficients are optimised in units of this many standard deviations (faster to move)."""
    expression_prior: float = 1e-3
    """L1 weight pulling unused expressions to zero."""
    pose_smoothness: float = 20.0
    """Weight on the second difference of rotation (rad) and translation (cm) over frames."""
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


def rodrigues(omega: torch.Tensor) -> torch.Tensor:
    """Axis-angle [...,3] -> rotation matrices [...,3,3] (safe near zero)."""
    theta2 = (omega * omega).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-12)
    k = omega / theta
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    skew = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], -1).reshape(*omega.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=omega.dtype).expand_as(skew)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    return eye + s * skew + (1.0 - c) * (skew @ skew)


def _initial_poses(model: MorphableModel, points: np.ndarray, valid: np.ndarray, focal: float,
                   centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP of the mean shape: [N,3] axis-angle and [N,3] translation."""
    mean_lm = model.landmarks().astype(np.float64)[:468]
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
    rvec0, tvec0 = _initial_poses(model, points, valid, focal0, centre)

    dtype = torch.float32
    basis = _landmark_bases(model)
    lm_mean = torch.tensor(basis["mean"], dtype=dtype)  # [468*3]
    lm_id = torch.tensor(basis["identity"], dtype=dtype)  # [Ki, 468*3]
    lm_exp = torch.tensor(basis["expression"], dtype=dtype)  # [Ke, 468*3]
    target = torch.tensor(np.nan_to_num(points), dtype=dtype)
    frame_w = torch.tensor(valid, dtype=dtype)
    point_w = torch.ones(468, dtype=dtype)
    point_w[rg.FACE_OVAL] = config.contour_weight
    r0 = torch.tensor(rvec0, dtype=dtype)
    t0 = torch.tensor(tvec0, dtype=dtype)
    d_rot = torch.zeros(n, 3, dtype=dtype, requires_grad=True)
    d_trans = torch.zeros(n, 3, dtype=dtype, requires_grad=True)  # centimetres
    identity = torch.zeros(1, model.n_identity, dtype=dtype, requires_grad=True)
    expression = torch.full((n, model.n_expression), 0.01, dtype=dtype, requires_grad=True)
    log_focal = torch.zeros(1, dtype=dtype, requires_grad=True)
    log_depth = torch.zeros(1, dtype=dtype, requires_grad=True)
    optim = torch.optim.Adam([d_rot, d_trans, identity, expression, log_focal, log_depth], lr=config.learning_rate)
    cx, cy = centre
    scale2 = config.cauchy_scale_px**2

    def project(expr: torch.Tensor) -> torch.Tensor:
        shape = lm_mean + (config.identity_step * identity) @ lm_id  # [1, 468*3]: one identity for the clip
        lm = (shape + expr @ lm_exp).reshape(n, 468, 3)
        lm = lm * torch.cat([torch.ones(2, dtype=dtype), torch.exp(log_depth)])  # the clip's depth scale
        rot = rodrigues(r0 + d_rot)
        cam = lm @ rot.transpose(1, 2) + (t0 + 0.01 * d_trans)[:, None, :]
        f = focal0 * torch.exp(log_focal)
        z = cam[..., 2].clamp_min(1e-3)
        return torch.stack([f * cam[..., 0] / z + cx, f * cam[..., 1] / z + cy], -1)

    params = [d_rot, d_trans, identity, expression, log_focal, log_depth]

    def objective() -> torch.Tensor:
        proj = project(expression)
        r2 = ((proj - target) ** 2).sum(-1)  # [N,468]
        data = (torch.log1p(r2 / scale2) * point_w).sum(-1) * frame_w
        loss = data.sum() / (frame_w.sum() * point_w.sum())
        loss = loss + config.identity_prior * ((config.identity_step * identity) ** 2).sum()
        loss = loss + config.expression_prior * expression.abs().mean()
        loss = loss + 100.0 * (torch.relu(-expression) ** 2 + torch.relu(expression - 1.0) ** 2).mean()
        rot_all, trans_all = r0 + d_rot, t0 / 0.01 + d_trans
        if n >= 3:
            acc = (rot_all[2:] - 2 * rot_all[1:-1] + rot_all[:-2]).pow(2).sum() \
                + (trans_all[2:] - 2 * trans_all[1:-1] + trans_all[:-2]).pow(2).sum()
            loss = loss + config.pose_smoothness * acc / n
            loss = loss + config.expression_smoothness * (expression[1:] - expression[:-1]).pow(2).sum() / n
        return loss

    bar = tqdm(total=config.iterations + config.lbfgs_iterations, disable=not progress, desc="tracking", unit="step")
    for _ in range(config.iterations):  # Adam: robust first descent from the PnP start
        optim.zero_grad()
        objective().backward()
        optim.step()
        with torch.no_grad():
            expression.clamp_(0.0, 1.0)
        bar.update(1)
    # L-BFGS: the depth/rotation trade-off is ill-conditioned; quasi-Newton steps resolve it.
    lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=config.lbfgs_iterations, history_size=config.lbfgs_history,
                              line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = objective()
        loss.backward()
        bar.update(1)
        return loss

    if config.lbfgs_iterations:
        lbfgs.step(closure)
    bar.close()
    with torch.no_grad():
        expression.clamp_(0.0, 1.0)

    with torch.no_grad():
        proj = project(expression)
        err = torch.linalg.norm(proj - target, dim=-1)  # [N,468]
        inner = torch.ones(468, dtype=torch.bool)
        inner[rg.FACE_OVAL] = False
        residual = err[:, inner].mean(-1).numpy()
        residual[~valid] = np.nan
        rot = rodrigues(r0 + d_rot).numpy().astype(np.float64)
        trans = (t0 + 0.01 * d_trans).numpy().astype(np.float64)
        focal = float(focal0 * torch.exp(log_focal))
        depth_scale = float(torch.exp(log_depth))
    return TrackResult(rotation=rot, translation=trans, identity=config.identity_step * identity.detach().numpy()[0],
                       expression=expression.detach().numpy(), expression_names=tuple(model.expression_names),
                       focal=focal, depth_scale=depth_scale, blink=eyelid_blink(landmarks[:, :468]), residual_px=residual,
                       projected=proj.numpy())
