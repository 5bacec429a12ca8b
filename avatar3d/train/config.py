"""`avatar3d train`'s config: the model's shape plus sampler / optimiser / loss / eval parts.

Why split: each part has one reader (the sampler, the optimiser set-up, the loss, the held-out
checks), so a preset reads as what it changes, and the pose fit reuses the sampler part alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from avatar3d.config import from_dict, to_dict
from avatar3d.errors import Avatar3DError
from avatar3d.nerf.model import AvatarConfig
from avatar3d.train.losses import LossConfig
from avatar3d.train.pose_fit import PoseFitConfig
from avatar3d.train.sampler import SamplerConfig


@dataclass
class OptimConfig:
    """Adam learning rates and their schedule."""

    lr_grid: float = 1e-2
    lr_net: float = 2e-3
    lr_final_factor: float = 0.1  # exponential decay to this factor at the last step
    lr_pose: float = 5e-4  # the pose-correction knots (avatar.pose_knot_frames > 0), rad and 0.1 m units
    pose_refine_start: int = 500  # poses are corrected only once the field has a shape to align


@dataclass
class TrainEvalConfig:
    """Held-out checks during and after training."""

    every: int = 250  # held-out PSNR and TensorBoard images every this many steps (0: only at the end)
    frames: int = 2  # frames of those periodic checks (history.json, TensorBoard): a cheap trend, not the score
    final_frames: int = 40
    """Held-out frames (evenly spaced; 0 = all) scored once training ends: the figure the log and the result
    report.  Two frames read 39.2 dB where 40 read 39.0, and 35.4 where 40 read 33.8."""
    held_out_pose_fit: PoseFitConfig | None = None
    """Set: after training, the held-out frames' head poses are re-tracked photometrically with the
    trained avatar frozen (train.pose_fit; 6 numbers per knot, nothing else) and saved in the avatar;
    the final metrics report them ("val") next to the landmark-tracked poses ("val_tracked")."""


@dataclass
class TrainConfig:
    """Schedule of `avatar3d train`; the model's shape is ``avatar``."""

    avatar: AvatarConfig = field(default_factory=AvatarConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    resolution: int = 128  # square training image side (frames are downsampled once into a cache)
    steps: int = 4000
    time_budget_s: float = 0.0  # stop when this much training time has passed (0: run all steps)
    motion_channels: tuple[str, ...] = ()
    """Expression channels the head field is conditioned on (the tracker's names; "blink" = both eyelid
    channels); empty = all.  Why: most tracked channels are landmark noise on a short clip (on the 60 s
    synthetic subject only jawOpen correlates > 0.5 with the truth) and a noisy per-frame code lets the
    field memorise training frames instead of learning motion."""
    motion_std_floor: float = 0.05
    """> 0: the head field sees each motion channel standardised by the training frames' mean and std
    (std floored here, so a channel the tracker holds still is not blown up into noise); 0: the raw vector."""
    grid_update_every: int = 16
    grid_warmup_steps: int = 64
    grid_threshold: float = 5.0  # occupancy: density (1/m) above min(mean, this); 5/m = 5% opacity per cm
    checkpoint_every: int = 250
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    device: str = "auto"  # "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.resolution < 16 or self.steps < 1:
            raise Avatar3DError("train config: need resolution >= 16 and steps >= 1")


def plain(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML-safe)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(plain(to_dict(config)), sort_keys=False)


def config_from_yaml(text: str, source: str) -> TrainConfig:
    return from_dict(TrainConfig, yaml.safe_load(text) or {}, source=source)
