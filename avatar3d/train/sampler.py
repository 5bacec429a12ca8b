"""Which pixels of which frames one training step sees, as ray batches in canonical head space.

Why its own module: the trainer and the per-clip pose fit draw rays the same way (head, mouth
and torso shares; labels trusted away from their edges; the neck band the head may own).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from avatar3d.dataset.reader import SubjectData
from avatar3d.errors import Avatar3DError
from avatar3d.nerf.model import AvatarModel, RayBatch, pixel_dirs, to_head_space
from avatar3d.train.hull import neck_band, within_px


@dataclass
class SamplerConfig:
    """Rays per step and where they are drawn."""

    rays_per_step: int = 2048
    frames_per_step: int = 4
    head_fraction: float = 0.4  # share of rays drawn inside the head label
    mouth_fraction: float = 0.2  # share drawn inside the mouth box
    torso_fraction: float = 0.2  # share drawn inside the neck/torso label (its detail moves with the head)
    motion_noise: float = 0.0
    """Training only: Gaussian noise added to the motion vector, in units of each channel's spread over
    the training frames -- a frame's exact (noisy) tracked code cannot then serve as its identity."""
    torso_clearance_px: int = 0
    """> 0: head-labelled pixels farther than this many pixels (at training resolution) from the neck/torso
    label supervise the torso alpha to 0 -- the torso layer may not paint behind the head, where it can
    only hide head-silhouette errors per training pose (and fails on held-out poses). 0: unsupervised there."""
    neck_band_px: int = 0
    """Neck/torso pixels within this many pixels (at training resolution) of the head label are neither
    carved from the head's hull nor forced to zero head opacity, so the head field may own the neck where
    it moves with the head (train/hull.py: neck_band)."""

    def __post_init__(self) -> None:
        if self.rays_per_step < self.frames_per_step or self.frames_per_step < 1:
            raise Avatar3DError("sampler: need frames_per_step >= 1 and rays_per_step >= frames_per_step")
        if not 0 <= self.head_fraction + self.mouth_fraction + self.torso_fraction <= 1:
            raise Avatar3DError("sampler: head_fraction + mouth_fraction + torso_fraction must be in [0, 1]")


class RaySampler:
    """Draws the pixels of one step: a few frames, head/mouth-weighted pixels, everything as tensors."""

    def __init__(self, data: SubjectData, config: SamplerConfig):
        self.data, self.config = data, config
        self.K = torch.from_numpy(data.K).float()
        self.R = torch.from_numpy(data.R).float()
        self.t = torch.from_numpy(data.t).float()
        self.background = torch.from_numpy(data.background.reshape(-1, 3)).float()
        spread = data.motion(data.train_ids).std(axis=0) if len(data.train_ids) > 1 else 0.0
        self.motion_spread = np.asarray(spread, np.float32)

    def pixels(self, frame: int, lab: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n flat pixel indices of ``frame`` (label map ``lab`` [r*r]): mouth box, head, torso, then uniform."""
        r = self.data.resolution
        n_mouth = int(n * self.config.mouth_fraction)
        n_head = int(n * self.config.head_fraction)
        parts = []
        x0, y0, x1, y1 = (int(v) for v in self.data.mouth_boxes[frame])
        if n_mouth and x1 > x0 and y1 > y0:
            parts.append(rng.integers(y0, y1, n_mouth) * r + rng.integers(x0, x1, n_mouth))
        else:
            n_head += n_mouth
        for count, where in ((n_head, (lab == 1) | (lab == 3)), (int(n * self.config.torso_fraction), lab == 2)):
            if count:
                pool = np.flatnonzero(where)
                parts.append(rng.choice(pool, count) if pool.size else rng.integers(0, r * r, count))
        rest = n - sum(len(p) for p in parts)
        parts.append(rng.integers(0, r * r, rest))
        return np.concatenate(parts)

    def sample(self, model: AvatarModel, rng: np.random.Generator) -> tuple[RayBatch, dict[str, torch.Tensor]]:
        """Rays are built on the CPU (cheap) and moved to the model's device once."""
        cfg, data, r = self.config, self.data, self.data.resolution
        dev = model.hull.device
        frames = rng.choice(data.train_ids, cfg.frames_per_step)
        per = cfg.rays_per_step // cfg.frames_per_step
        maps = [np.asarray(data.labels[int(f)]) for f in frames]  # each label map read once per step
        idx = np.stack([self.pixels(int(f), m.reshape(-1), per, rng) for f, m in zip(frames, maps)])  # [F, per]
        rgb = np.stack([np.asarray(data.frames[int(f)]).reshape(-1, 3)[i] for f, i in zip(frames, idx)])
        lab = np.stack([m.reshape(-1)[i] for m, i in zip(maps, idx)])
        edge = np.stack([label_edges(m).reshape(-1)[i] for m, i in zip(maps, idx)])
        band = np.stack([neck_band(m, cfg.neck_band_px, at=i) for m, i in zip(maps, idx)])
        clear = np.stack([behind_head(m, cfg.torso_clearance_px, at=i) for m, i in zip(maps, idx)])
        idx_t = torch.from_numpy(idx.reshape(-1))
        local = torch.arange(len(frames)).repeat_interleave(per)
        fr = torch.from_numpy(frames.astype(np.int64))
        pix = torch.stack([idx_t % r, idx_t // r], -1).float() + 0.5
        origins, dirs = to_head_space(self.R[fr][local], self.t[fr][local], pixel_dirs(self.K, pix))
        motion_np = data.motion(frames)
        if cfg.motion_noise > 0:
            motion_np = motion_np + cfg.motion_noise * self.motion_spread * rng.standard_normal(motion_np.shape)
        motion = torch.from_numpy(motion_np).float().to(dev)
        local_d = local.to(dev)
        head_code = model.head.motion_code(motion)[local_d]
        torso_code = model.torso.pose_code(self.R[fr].to(dev), self.t[fr].to(dev), self.K.to(dev), r)[local_d]
        batch = RayBatch(origins.to(dev), dirs.to(dev), (pix / r).to(dev), head_code, torso_code,
                         self.background[idx_t].to(dev), fr[local].to(dev))  # fmt: skip
        labels = torch.from_numpy(lab.reshape(-1).astype(np.int64)).to(dev)
        target = {"rgb": (torch.from_numpy(rgb.reshape(-1, 3)).float() / 255.0).to(dev), "labels": labels,
                  "mask_ok": torch.from_numpy(~edge.reshape(-1)).to(dev),
                  "head_free": torch.from_numpy(band.reshape(-1)).to(dev),
                  "torso_clear": torch.from_numpy(clear.reshape(-1)).to(dev)}  # fmt: skip
        return batch, target


def label_edges(labels: np.ndarray, radius: int = 1) -> np.ndarray:
    """Bool [H, W]: pixels within ``radius`` of a change of parsing label."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)


def behind_head(labels: np.ndarray, px: int, at: np.ndarray | None = None) -> np.ndarray:
    """Bool [H, W] (or [len(at)] at flat pixel indices ``at``): head pixels farther than ``px`` from the
    neck/torso label (nothing of the torso shows there); none if px=0."""
    if px <= 0:
        return np.zeros(labels.shape if at is None else len(at), bool)
    head = (labels == 1) | (labels == 3)
    return (head if at is None else head.reshape(-1)[at]) & ~within_px(labels == 2, px, at)
