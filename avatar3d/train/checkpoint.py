"""Checkpoints that survive a kill mid-write and resume a run exactly.

Why: a CPU run lasts tens of minutes and a GPU run hours; losing it to a crash, a full disk
or a killed job is the commonest complaint about research trainers. A checkpoint is written
to a temp name, fsynced and renamed (avatar3d.io.atomic), so the previous one stays loadable
until the new one is complete. It holds everything the next step depends on: weights
(occupancy grid included), optimizer moments, the step, and the state of every random
generator the loop draws from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar3d import __version__
from avatar3d.errors import InputError
from avatar3d.io.atomic import atomic_path

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    torch_gen: torch.Generator, np_gen: np.random.Generator, extra: dict[str, Any]) -> None:  # fmt: skip
    """Atomically writes the full training state to ``path``."""
    state = {
        "format_version": FORMAT_VERSION, "avatar3d_version": __version__, "step": step, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "torch_gen": torch_gen.get_state(),
        "np_gen": np_gen.bit_generator.state, **extra,
    }  # fmt: skip
    if hasattr(model, "grid"):  # the NeRF avatar's occupancy threshold (the Gaussian avatar has no grid)
        state["grid_threshold"] = model.grid.threshold
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict[str, Any]:
    """The dict saved by :func:`save_checkpoint` / the avatar bundle, with a clear error when unreadable."""
    if not Path(path).is_file():
        raise InputError(f"{path} not found: train an avatar first (`avatar3d train SUBJECT -o AVATAR`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated / not a torch file
        raise InputError(f"{path} is not a readable checkpoint ({type(exc).__name__}): retrain or restore it") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version", "none") if isinstance(state, dict) else "none"
        by = state.get("avatar3d_version", "an unknown version") if isinstance(state, dict) else "an unknown version"
        raise InputError(f"{path}: written by avatar3d {by} in file format {found}; this is avatar3d {__version__}, "
                            f"which reads format {FORMAT_VERSION}: retrain it with `avatar3d train` or use that version")
    return state


def restore(state: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            torch_gen: torch.Generator, np_gen: np.random.Generator) -> int:  # fmt: skip
    """Loads a checkpoint into live objects; returns the step to continue from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch_gen.set_state(state["torch_gen"])
    np_gen.bit_generator.state = state["np_gen"]
    if hasattr(model, "grid"):
        model.grid.threshold = float(state.get("grid_threshold", 0.0))
    return int(state["step"])
