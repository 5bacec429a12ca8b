"""`avatar3d train`'s config for the Gaussian backend (``backend: gaussians`` in the YAML).

Why its own dataclass: the Gaussian avatar learns other things (per-Gaussian positions, scales,
opacities, colours) at other rates than the NeRF fields, and has density control; what both
share (resolution, steps, time budget, held-out checks, device) keeps the same names, so the CLI's
``--steps`` / ``--minutes`` and the run folder work the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avatar3d.config import from_dict, load_config, to_dict
from avatar3d.errors import Avatar3DError
from avatar3d.gaussians.avatar_model import GaussianAvatarConfig
from avatar3d.resources import resolve_config
from avatar3d.train.config import TrainConfig, TrainEvalConfig, plain

GAUSSIANS = "gaussians"
NERF = "nerf"


@dataclass
class GaussianOptimConfig:
    """Adam learning rates (per step; positions in metres) and their exponential decay."""

    lr_position: float = 3e-4
    lr_scale: float = 1e-2  # log-scale
    lr_rotation: float = 5e-3
    lr_opacity: float = 5e-2  # logit
    lr_sh: float = 1e-2
    lr_grid: float = 1e-2  # the torso field's hash grid
    lr_net: float = 2e-3  # the torso field's MLPs
    lr_pose: float = 5e-4  # the pose-correction knots (pose_knot_frames > 0), rad and 0.1 m units
    lr_gain: float = 3e-3  # the motion gain (avatar.head.motion_gain)
    pose_refine_start: int = 500  # poses are corrected only once the Gaussians have a shape to align
    lr_final_factor: float = 0.1


@dataclass
class GaussianLossConfig:
    """Photometric L1 (weighted towards head and mouth) plus mask and shape terms."""

    head_weight: float = 2.0  # extra L1 weight on head-label pixels
    mouth_weight: float = 4.0  # extra L1 weight inside the mouth box
    other_pixel_fraction: float = 0.3
    """Share of the pixels away from the head's box that a step scores (the torso field runs per pixel)."""
    head_mask_weight: float = 0.05  # BCE of the head's coverage against the head label
    torso_mask_weight: float = 0.02  # BCE of the torso alpha against the neck/torso label, off the head
    offset_weight: float = 1e-2  # on the torso field's deformation
    max_scale_m: float = 0.015  # Gaussians larger than this along an axis are pushed back
    scale_weight: float = 10.0
    surface_m: float = 0.004  # face Gaussians farther than this from their triangle are pulled back
    surface_weight: float = 100.0
    residual_weight: float = 0.01
    """On the residual field's mean squared change (in units of its bounds): the blendshapes do the bulk of the motion."""
    gain_weight: float = 1e-3
    """On the motion gain's mean squared distance from 1: channels the images say nothing about stay as tracked."""


@dataclass
class DensityConfig:
    """Adaptive density control: prune faint Gaussians, clone / split those with the largest 2D-mean gradients."""

    every: int = 100  # steps between two rounds (0: off)
    start: int = 200
    stop_fraction: float = 0.7  # no rounds after this share of the steps (or of the time budget)
    clone_fraction: float = 0.05  # share of the visible Gaussians with the largest mean |dL/d mean2d| duplicated per round
    split_scale_m: float = 0.004  # of those, Gaussians larger than this split in two smaller ones; smaller ones clone
    prune_opacity: float = 0.01
    max_gaussians: int = 30000  # hard cap on the count (memory and render time scale with it)


@dataclass
class GaussianTrainConfig:
    """Schedule of `avatar3d train` for a Gaussian avatar; the model's shape is ``avatar``."""

    backend: str = GAUSSIANS
    avatar: GaussianAvatarConfig = field(default_factory=GaussianAvatarConfig)
    optim: GaussianOptimConfig = field(default_factory=GaussianOptimConfig)
    loss: GaussianLossConfig = field(default_factory=GaussianLossConfig)
    density: DensityConfig = field(default_factory=DensityConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    resolution: int = 128
    steps: int = 3000
    time_budget_s: float = 0.0  # stop when this much training time has passed (0: run all steps)
    frames_per_step: int = 1
    neck_band_px: int = 0  # neck pixels this near the head label are the head's to cover (hull and masks)
    pose_knot_frames: int = 0
    """> 0: learn smooth corrections of the tracked head poses (a knot every this many frames, from
    ``optim.pose_refine_start``); with ``eval.held_out_pose_fit`` the held-out frames are then re-tracked."""
    checkpoint_every: int = 250
    seed: int = 0
    threads: int = 0
    device: str = "cpu"  # "cpu" or "auto" / "cuda" (the rasterizer's CUDA build)

    def __post_init__(self) -> None:
        if self.backend != GAUSSIANS:
            raise Avatar3DError(f"train config: backend {self.backend!r} in a Gaussian config; use backend: gaussians")
        if self.resolution < 16 or self.steps < 1 or self.frames_per_step < 1:
            raise Avatar3DError("train config: need resolution >= 16, steps >= 1 and frames_per_step >= 1")
        if self.pose_knot_frames < 0:
            raise Avatar3DError("train config: pose_knot_frames must be >= 0 (0: no pose refinement)")


AnyTrainConfig = TrainConfig | GaussianTrainConfig


def config_backend(values: dict[str, Any]) -> str:
    """The backend a config mapping asks for (none: the NeRF avatar)."""
    backend = values.get("backend", NERF) if isinstance(values, dict) else NERF
    if backend not in (NERF, GAUSSIANS):
        raise Avatar3DError(f"train config: unknown backend {backend!r}; use {NERF} or {GAUSSIANS}")
    return str(backend)


def load_train_config(path: str | Path) -> AnyTrainConfig:
    """A preset name or YAML file -> the config of the backend it names (``backend:``; default nerf)."""
    file = resolve_config(path)
    try:
        values = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise Avatar3DError(f"config file {file} is not valid YAML ({str(exc).splitlines()[0]}): fix the syntax") from None
    if config_backend(values) == GAUSSIANS:
        return load_config(GaussianTrainConfig, file)
    if "backend" in values:  # "backend: nerf" is the default spelled out: TrainConfig has no such field
        values.pop("backend")
        return from_dict(TrainConfig, values, source=str(file))
    return load_config(TrainConfig, file)


def gaussian_config_to_yaml(config: GaussianTrainConfig) -> str:
    return yaml.safe_dump(plain(to_dict(config)), sort_keys=False)


def gaussian_config_from_yaml(text: str, source: str) -> GaussianTrainConfig:
    return from_dict(GaussianTrainConfig, yaml.safe_load(text) or {}, source=source)
