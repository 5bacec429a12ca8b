"""Before training starts: will this run fit in memory and on disk? Refuse with the numbers if not.

Why its own module: the trainer only trains; this reads the config and the subject's manifest (no
frames, no model) and asks :mod:`avatar3d.guards`, so a run that cannot fit fails in a second, not
after its frame cache is built or its first checkpoint is half written.
"""
from __future__ import annotations

import json
from pathlib import Path

from avatar3d.dataset.contract import CACHE_DIR, MANIFEST
from avatar3d.guards import (check_disk, check_gaussian_train_memory, check_train_memory, estimate_train_disk,
                             hash_grid_params)  # fmt: skip
from avatar3d.nerf.encoding import layout_from_config
from avatar3d.train.config import TrainConfig
from avatar3d.train.gaussian_config import GaussianTrainConfig

__all__ = ["model_parameters", "gaussian_model_parameters", "check_train_resources"]

MLP_PARAMS = 100_000  # the density, colour, deformation and attention nets together (< 60k in the presets)


def model_parameters(config: TrainConfig, n_frames: int) -> int:
    """Upper bound of the avatar's parameter count, from the config alone (no model is built)."""
    head, torso = config.avatar.head, config.avatar.torso
    grids = sum(hash_grid_params(g.n_dims, g.n_levels, g.features_per_level, g.log2_table_size)
                for g in (head.grid, torso.grid))  # fmt: skip
    per_frame = head.appearance_dim + (6 if config.avatar.pose_knot_frames > 0 else 0)
    return grids + MLP_PARAMS + per_frame * n_frames


def gaussian_model_parameters(config: GaussianTrainConfig, n_frames: int) -> int:
    """Upper bound of a Gaussian avatar's parameter count: the Gaussian cap, the torso field, the residual field,
    pose knots."""
    per_gaussian = 3 + 4 + 3 + 1 + 3 * (config.avatar.head.sh_degree + 1) ** 2  # position, rotation, scale, opacity, SH
    torso = config.avatar.torso.grid  # its exact size: a coarse 2D grid fills far less than its tables
    grid = layout_from_config(torso).n_rows * torso.features_per_level
    res = config.avatar.head.residual
    residual = hash_grid_params(3, res.n_levels, 2, res.log2_table_size) + MLP_PARAMS if res.enabled else 0
    knots = 6 * (n_frames // config.pose_knot_frames + 2) if config.pose_knot_frames > 0 else 0
    return config.density.max_gaussians * per_gaussian + grid + MLP_PARAMS + residual + knots


def check_train_resources(subject: Path, out: Path, config: TrainConfig | GaussianTrainConfig,
                          resumed: bool = False) -> None:  # fmt: skip
    """Exit 6 when the run cannot fit in the available memory, exit 5 when its outputs cannot fit on disk.

    A subject without a readable manifest is left to the loader, which names what is missing.
    """
    try:
        n_frames = int(json.loads((Path(subject) / MANIFEST).read_text(encoding="utf-8"))["n_frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(config, GaussianTrainConfig):
        n_params = gaussian_model_parameters(config, n_frames)
        check_gaussian_train_memory(config.resolution, n_frames, config.frames_per_step, n_params)
    else:
        n_params = model_parameters(config, n_frames)
        check_train_memory(config.resolution, n_frames, config.sampler.rays_per_step, config.avatar.max_samples,
                           n_params)  # fmt: skip
    cache = (Path(subject) / CACHE_DIR / f"r{config.resolution}").is_dir()
    need = estimate_train_disk(n_params, n_frames, config.resolution, cache_exists=cache)
    if cache or resumed:  # the cache lives in the subject folder, the checkpoint in the run folder
        check_disk(out, need, f"training checkpoints of {n_params / 1e6:.1f} M parameters")
    else:
        check_disk(out, need, f"the {config.resolution}x{config.resolution} frame cache of {n_frames} frames and "
                   f"checkpoints of {n_params / 1e6:.1f} M parameters")  # fmt: skip
