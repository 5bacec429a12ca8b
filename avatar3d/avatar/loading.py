"""``load_avatar``: an avatar file -> the implementation of its backend.

Why a registry: the bundle records which backend wrote it, so render / eval / export load any
avatar the same way and a new backend registers one constructor here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AvatarBundle, avatar_file
from avatar3d.avatar.gaussian_avatar import GaussianAvatar
from avatar3d.avatar.nerf_avatar import NerfAvatar
from avatar3d.errors import Avatar3DError

BACKENDS: dict[str, Callable[[AvatarBundle, str, torch.device | str], Avatar]] = {
    "nerf": NerfAvatar.from_bundle,
    "gaussians": GaussianAvatar.from_bundle,
}


def load_avatar(path: str | Path, device: torch.device | str = "cpu") -> Avatar:
    """The avatar in an avatar folder (or its ``avatar.pt``), ready to render on ``device``."""
    file = avatar_file(path)
    bundle = AvatarBundle.load(file)
    build = BACKENDS.get(bundle.backend)
    if build is None:
        raise Avatar3DError(f"{file}: avatar backend {bundle.backend!r} is not known to this avatar3d "
                            f"(knows {', '.join(sorted(BACKENDS))}): upgrade avatar3d")
    return build(bundle, str(file), device)
