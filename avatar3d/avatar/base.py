"""``Avatar``: what render, eval and export (and later a live server) call to get images.

Why an interface: those callers must not import ``train/`` nor know which backend made the
avatar.  A backend implements :meth:`Avatar.render_frame` (the training camera) and
:meth:`Avatar.render_view` (a moved or stereo camera); the rest is shared here.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.errors import Avatar3DError

if TYPE_CHECKING:  # typing only: the reader is not needed to render from a bundle
    from avatar3d.dataset.reader import SubjectData


class Avatar(ABC):
    """A trained avatar on a device: the bundle it came from plus a backend that renders it."""

    backend: ClassVar[str]

    def __init__(self, bundle: AvatarBundle | None, device: torch.device) -> None:
        """``bundle`` is None only for a model still in training (nothing saved yet)."""
        self.bundle = bundle
        self.device = torch.device(device)

    # ------------------------------------------------------------ per backend

    @abstractmethod
    def render_frame(self, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, motion: torch.Tensor,
                     background: torch.Tensor, size: int) -> dict[str, torch.Tensor]:  # fmt: skip
        """One frame [size, size] from the training camera: ``rgb`` [H, W, 3] over ``background``,
        ``head_alpha`` [H, W], ``torso_alpha`` [H, W], ``depth`` [H, W] (metres along the ray).

        K [3, 3] is for this image size; R [3, 3], t [3] the head pose; motion [motion_dim].
        """

    @abstractmethod
    def render_view(self, K: torch.Tensor, head_R: torch.Tensor, head_t: torch.Tensor, motion: torch.Tensor,
                    background: torch.Tensor, size: int, *, torso_R: torch.Tensor, torso_t: torch.Tensor,
                    focal_scale: float = 1.0, eye_offset_m: float = 0.0) -> dict[str, torch.Tensor]:  # fmt: skip
        """One view [size, size] from a moved camera (``head_R``/``head_t``: the head in that view;
        ``torso_R``/``torso_t``: the training-view pose; an eye offset along x for stereo).

        Returns ``rgb`` [H, W, 3] over the plate, ``premult`` [H, W, 3] (colour times coverage, no
        plate), ``alpha`` [H, W], ``head_alpha`` [H, W] and ``depth_z`` [H, W] (metres along the
        optical axis, 0 where the head is transparent).  With the training camera it equals
        :meth:`render_frame`.
        """

    def require_backend(self, name: str, what: str) -> None:
        """``what`` exists for one backend only: a one-line error for the others."""
        if self.backend != name:
            raise Avatar3DError(f"{what} needs a {name} avatar; this one is a {self.backend} avatar")

    # ------------------------------------------------------------ shared

    def saved_bundle(self) -> AvatarBundle:
        """The bundle (an avatar in training has none yet: asking for one is a programming error)."""
        if self.bundle is None:
            raise RuntimeError("this avatar is still training: it has no saved bundle yet")
        return self.bundle

    def intrinsics(self, size: int | None = None) -> torch.Tensor:
        """float32 [3, 3] training intrinsics scaled to ``size`` (default: the training resolution)."""
        b = self.saved_bundle()
        return scaled_intrinsics(b.K, int(b.resolution), size).to(self.device)

    def background(self, size: int | None = None) -> torch.Tensor:
        """float32 [size, size, 3] in [0, 1]: the subject's plate at ``size``."""
        return plate_at(np.asarray(self.saved_bundle().background, np.float32) / 255.0, size).to(self.device)

    def render_subject_frame(self, data: SubjectData, i: int, size: int | None = None) -> dict[str, torch.Tensor]:
        """Frame ``i`` of a loaded subject with its own pose and motion (at ``size``, default its resolution), on the CPU."""
        r = data.resolution
        size = size or r
        K = scaled_intrinsics(data.K, r, size).to(self.device)
        bg = plate_at(data.background, size).to(self.device)
        motion = torch.from_numpy(data.motion(np.array([i]))[0]).float().to(self.device)
        out = self.render_frame(K, torch.from_numpy(data.R[i]).float().to(self.device),
                                torch.from_numpy(data.t[i]).float().to(self.device), motion, bg, size)
        return {k: v.cpu() for k, v in out.items()}

    def use_refined_poses(self, data: SubjectData) -> int:
        """Swaps the avatar's refined poses into ``data`` when it is the subject the avatar was trained on.

        Returns the number of frames whose pose changed (0: nothing swapped, e.g. another subject).
        """
        b = self.saved_bundle()
        if not b.is_trained_on(data.R, data.t):
            return 0
        changed = int((np.abs(np.asarray(b.R) - data.R).max(axis=(1, 2)) > 0).sum())
        data.R, data.t = np.asarray(b.R, np.float64).copy(), np.asarray(b.t, np.float64).copy()
        return changed


def scaled_intrinsics(K: np.ndarray, resolution: int, size: int | None) -> torch.Tensor:
    """float32 [3, 3]: intrinsics for ``resolution``² scaled to ``size``² (default: unchanged)."""
    size = int(size or resolution)
    scale = torch.tensor([[size / resolution], [size / resolution], [1.0]])
    return torch.as_tensor(np.asarray(K), dtype=torch.float32) * scale


def plate_at(plate: np.ndarray, size: int | None) -> torch.Tensor:
    """float32 [size, size, 3] from a float plate [r, r, 3] (bilinear when the size differs)."""
    bg = torch.from_numpy(np.asarray(plate, np.float32))
    if size is not None and size != bg.shape[0]:
        bg = torch.nn.functional.interpolate(bg.permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                                             align_corners=False)[0].permute(1, 2, 0)  # fmt: skip
    return bg
