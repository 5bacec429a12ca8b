"""The NeRF backend of the avatar API: a motion-conditioned hash-grid head over a head-aware torso layer.

Why here and not in ``train/``: rendering a trained avatar (render, eval, export, a live
server) needs the model and its bundle, never the training loop.
"""
from __future__ import annotations

import torch

from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.layers import LayerPlanes, ViewCamera, view_layers
from avatar3d.config import from_dict
from avatar3d.nerf.model import AvatarConfig, AvatarModel, image_pixels, pixel_dirs


class NerfAvatar(Avatar):
    """``Avatar`` over an :class:`avatar3d.nerf.model.AvatarModel` (in eval mode)."""

    backend = "nerf"

    def __init__(self, model: AvatarModel, bundle: AvatarBundle | None) -> None:
        super().__init__(bundle, model.hull.device)
        self.model = model

    @classmethod
    def from_bundle(cls, bundle: AvatarBundle, source: str, device: torch.device | str = "cpu") -> "NerfAvatar":
        """Builds the model the bundle describes and loads its weights."""
        config = from_dict(AvatarConfig, bundle.config, source=source)
        model = AvatarModel(config, int(bundle.motion_dim), int(bundle.n_frames),
                            motion_regions=bundle.state["head.regions"].tolist())  # as trained: no face model needed
        model.load_state_dict(bundle.state)
        model.eval()
        return cls(model.to(device), bundle)

    def to(self, device: torch.device | str) -> "NerfAvatar":
        self.model.to(device)
        self.device = torch.device(device)
        return self

    @torch.no_grad()
    def render_frame(self, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, motion: torch.Tensor,
                     background: torch.Tensor, size: int) -> dict[str, torch.Tensor]:  # fmt: skip
        return self.model.render_image(K, R, t, motion, background, size)

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, head_R: torch.Tensor, head_t: torch.Tensor, motion: torch.Tensor,
                    background: torch.Tensor, size: int, *, torso_R: torch.Tensor, torso_t: torch.Tensor,
                    focal_scale: float = 1.0, eye_offset_m: float = 0.0,
                    planes: LayerPlanes = LayerPlanes()) -> dict[str, torch.Tensor]:  # fmt: skip
        """The head from the moved camera over the torso and plate seen as planes (:class:`LayerPlanes`).

        The head is rendered with its focal times ``focal_scale`` (minus ``eye_offset_m`` along x for
        a stereo eye); the torso's pose code stays the training view's (how the neck bends is a
        property of the head pose, not of the camera); the camera move (training camera -> this
        view) warps the torso layer and the plate as planes.
        """
        model = self.model
        pix = image_pixels(size, K.device)
        view = ViewCamera.of(K, head_R, head_t, torso_R, torso_t, focal_scale, eye_offset_m)
        state = model.render_head(view.K_head, head_R, view.head_t, motion, pix)
        out = view_layers(model.torso, K, view, torso_R, torso_t, background, pix, size, planes).under(state.color,
                                                                                                     state.opacity)  # fmt: skip
        dist = state.depth / state.opacity.clamp_min(1e-6)
        depth_z = torch.where(state.opacity > 1e-4, dist * pixel_dirs(view.K_head, pix)[:, 2], torch.zeros_like(dist))
        shape = (size, size)
        return {"rgb": out["rgb"].view(*shape, 3), "premult": out["premult"].view(*shape, 3),
                "alpha": out["alpha"].view(shape), "head_alpha": state.opacity.view(shape),
                "depth_z": depth_z.view(shape)}  # fmt: skip
