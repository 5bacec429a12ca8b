"""Photometric re-tracking: fit the head poses of frames the avatar was not trained on.

Why: the landmark tracker's pose error (~1° per axis, smooth in time) is the main reason
held-out frames render worse than training frames (tools/bench/pose_sensitivity.py), and
training corrects only the training frames' poses (nerf.pose_correction).  With the
trained avatar frozen, the same smooth correction curve is fitted to other frames by
rendering them and comparing with the pictures: analysis by synthesis, the way
photometric face trackers refine a landmark fit.  Only the six pose numbers per knot are
fitted (expression, appearance and the field stay as they are), and the result is checked
against the generator's true poses on the synthetic subjects (tools/bench/train.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from avatar3d.dataset.reader import SubjectData
from avatar3d.errors import Avatar3DError
from avatar3d.nerf.model import AvatarModel
from avatar3d.nerf.pose_correction import PoseCorrection
from avatar3d.train.sampler import RaySampler, SamplerConfig


@dataclass
class PoseFitConfig:
    """Schedule of the per-clip pose fit (defaults: ~1 minute for 150 frames at 128² on 2 cores)."""

    steps: int = 300
    rays_per_step: int = 2048
    frames_per_step: int = 8
    head_fraction: float = 0.6  # ray shares: the head (and its outline) is where a pose error shows;
    mouth_fraction: float = 0.2  # the plate and torso do not depend on the head pose
    torso_fraction: float = 0.1
    knot_frames: int = 4  # one correction knot every this many frames (the error is smooth in time)
    lr: float = 2e-3  # rad and 0.1 m units, decayed 10x over the fit
    seed: int = 0


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode with no parameter learning, restored afterwards: a fit of the poses alone."""
    was_training = model.training
    learning = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in learning:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in learning:
            p.requires_grad_(True)
        model.train(was_training)


def fit_poses(model: AvatarModel, data: SubjectData, ids: np.ndarray, sampler_config: SamplerConfig,
              config: PoseFitConfig | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Corrected head -> camera poses (R [len(ids), 3, 3], t [len(ids), 3]) of frames ``ids``.

    ``sampler_config`` is the avatar's training sampler (its label handling), with this fit's ray counts and shares.
    """
    config = config or PoseFitConfig()
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        raise Avatar3DError("fit_poses: no frames to fit")
    sampler_cfg = dataclasses.replace(sampler_config, rays_per_step=config.rays_per_step,
                                      frames_per_step=config.frames_per_step, motion_noise=0.0,
                                      head_fraction=config.head_fraction, mouth_fraction=config.mouth_fraction,
                                      torso_fraction=config.torso_fraction)  # fmt: skip
    sampler = RaySampler(dataclasses.replace(data, train_ids=ids), sampler_cfg)
    dev = model.hull.device
    correction = PoseCorrection(data.n_frames, config.knot_frames).to(dev)
    correction.gauge.zero_()  # the avatar fixes the frame already: no mean to remove
    opt = torch.optim.Adam([correction.knots], lr=config.lr, betas=(0.9, 0.99))
    rng = np.random.default_rng(config.seed)
    with frozen(model):
        for step in range(config.steps):
            for g in opt.param_groups:
                g["lr"] = config.lr * 0.1 ** (step / max(config.steps - 1, 1))
            batch, target = sampler.sample(model, rng)
            origins, dirs = correction.correct_rays(batch.origins, batch.dirs, batch.frame_ids)
            batch = dataclasses.replace(batch, origins=origins, dirs=dirs, frame_ids=None)
            loss = torch.mean((model.render_rays(batch)["rgb"] - target["rgb"]) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    R, t = correction.corrected_poses(data.R, data.t)
    return R[ids], t[ids]
