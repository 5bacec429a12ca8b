"""Head-pose refinement for the Gaussian avatar: learned corrections on training frames, re-tracking of held-out ones.

Why: the landmark tracker's pose error (~1 degree, smooth in time) blurs what an avatar learns
and misplaces the frames it did not see; on real clips it is the larger share of the held-out
error.  The NeRF avatar corrects both (nerf.pose_correction during training, train.pose_fit
after it).  The rasterizer is differentiable in the head pose, so the Gaussian avatar uses the
same smooth correction curve (six numbers per knot, :class:`PoseCorrection`): learned with the
Gaussians on the training frames, then fitted to the held-out frames with the avatar frozen
(analysis by synthesis on the pixels around the head, where a pose error shows).
"""
from __future__ import annotations

import numpy as np
import torch

from avatar3d.dataset.reader import SubjectData
from avatar3d.errors import Avatar3DError
from avatar3d.gaussians.avatar_model import GaussianAvatarModel
from avatar3d.nerf.pose_correction import PoseCorrection
from avatar3d.train.pose_fit import PoseFitConfig, frozen

HEAD_BOX_PAD_PX = 6  # the fit scores every pixel within this of the head label's box


def corrected_pose(correction: PoseCorrection, i: int, R: torch.Tensor,
                   t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Frame ``i``'s head -> camera pose (R [3, 3], t [3]) with its correction (differentiable in the knots).

    Same convention as :meth:`PoseCorrection.corrected_poses`: R' = R exp(w), t' = t + R v.
    """
    rot, shift = correction(torch.tensor([int(i)], device=correction.knots.device))
    return R @ rot[0], t + R @ shift[0]


def head_box_pixels(labels: np.ndarray, pad: int = HEAD_BOX_PAD_PX) -> np.ndarray:
    """Flat indices of the pixels within ``pad`` of the box around the head label (face 1, hair 3); none: empty."""
    ys, xs = np.nonzero((labels == 1) | (labels == 3))
    if not len(ys):
        return np.zeros(0, np.int64)
    r = labels.shape[0]
    box = np.zeros(labels.shape, bool)
    box[max(0, ys.min() - pad): ys.max() + pad + 1, max(0, xs.min() - pad): xs.max() + pad + 1] = True
    return np.flatnonzero(box.reshape(r * r))


def fit_gaussian_poses(model: GaussianAvatarModel, data: SubjectData, ids: np.ndarray, config: PoseFitConfig,
                       cache: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Corrected head -> camera poses (R [len(ids), 3, 3], t [len(ids), 3]) of frames ``ids``, the avatar frozen.

    ``cache``: the trainer's ``K`` [3, 3], ``uv`` [H*W, 2] and ``bg`` [H*W, 3] tensors.  Of
    ``config`` this fit uses steps, frames_per_step, knot_frames, lr and seed (the ray counts and
    shares are the NeRF fit's; here every pixel of the head's box is scored).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        raise Avatar3DError("fit_gaussian_poses: no frames to fit")
    r = data.resolution
    pixels = {int(i): torch.from_numpy(head_box_pixels(np.asarray(data.labels[int(i)]))) for i in ids}
    targets = {i: torch.from_numpy(np.asarray(data.frames[i]).reshape(-1, 3)[idx.numpy()].astype(np.float32) / 255.0)
               for i, idx in pixels.items()}  # fmt: skip
    fit_ids = np.array([i for i in ids if len(pixels[int(i)])], dtype=np.int64)
    correction = PoseCorrection(data.n_frames, config.knot_frames)
    correction.gauge.zero_()  # the avatar fixes the frame already: no mean to remove
    if len(fit_ids):
        opt = torch.optim.Adam([correction.knots], lr=config.lr, betas=(0.9, 0.99))
        rng = np.random.default_rng(config.seed)
        with frozen(model):
            motions = {int(i): torch.from_numpy(data.motion([int(i)])[0]) for i in fit_ids}
            gaussians = {i: model.head(m) for i, m in motions.items()}  # frozen: one head per frame, reused
            for step in range(config.steps):
                for g in opt.param_groups:
                    g["lr"] = config.lr * 0.1 ** (step / max(config.steps - 1, 1))
                frames = rng.choice(fit_ids, min(config.frames_per_step, len(fit_ids)), replace=False)
                opt.zero_grad(set_to_none=True)
                for f in frames:
                    i = int(f)
                    R, t = corrected_pose(correction, i, torch.from_numpy(data.R[i]).float(),
                                          torch.from_numpy(data.t[i]).float())  # fmt: skip
                    raster = model.splat(gaussians[i], cache["K"], R, t, r)
                    rgb = model.composite_pixels(raster, cache["K"], R, t, cache["uv"], pixels[i], cache["bg"])[0]
                    (torch.mean((rgb - targets[i]) ** 2) / len(frames)).backward()
                opt.step()
    R, t = correction.corrected_poses(data.R, data.t)
    return R[ids], t[ids]
