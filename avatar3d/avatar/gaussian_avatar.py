"""The Gaussian backend of the avatar API: the Gaussian head splatted over the head-aware torso field.

Why here and not in ``train/``: rendering a trained avatar needs the model and its bundle only.
Moved and stereo views treat the torso layer and the plate as planes, exactly as the NeRF
backend does (avatar/layers.py); only the head differs (splatted, not ray-marched).
"""
from __future__ import annotations

import torch

from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.layers import LayerPlanes, ViewCamera, view_layers
from avatar3d.config import from_dict
from avatar3d.gaussians.avatar_model import GaussianAvatarConfig, GaussianAvatarModel
from avatar3d.gaussians.head import GaussianHead
from avatar3d.nerf.model import image_pixels


class GaussianAvatar(Avatar):
    """``Avatar`` over a :class:`avatar3d.gaussians.avatar_model.GaussianAvatarModel` (in eval mode)."""

    backend = "gaussians"

    def __init__(self, model: GaussianAvatarModel, bundle: AvatarBundle | None) -> None:
        super().__init__(bundle, model.head.base_vertices.device)
        self.model = model

    @classmethod
    def from_bundle(cls, bundle: AvatarBundle, source: str, device: torch.device | str = "cpu") -> "GaussianAvatar":
        """Builds the model the bundle describes (sizes from its weights) and loads them."""
        config = from_dict(GaussianAvatarConfig, bundle.config, source=source)
        head_state = {k[len("head."):]: v for k, v in bundle.state.items() if k.startswith("head.")}
        model = GaussianAvatarModel(config, GaussianHead.sized_like(config.head, head_state))
        model.load_state_dict(bundle.state)
        model.eval()
        return cls(model.to(device), bundle)

    def _trained_size(self) -> int | None:
        """The resolution the Gaussians were fitted at (None while training scores itself: no bundle yet)."""
        return int(self.bundle.resolution) if self.bundle is not None else None

    def to(self, device: torch.device | str) -> "GaussianAvatar":
        self.model.to(device)
        self.device = torch.device(device)
        return self

    @torch.no_grad()
    def render_frame(self, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, motion: torch.Tensor,
                     background: torch.Tensor, size: int) -> dict[str, torch.Tensor]:  # fmt: skip
        out = self.model.render(K.float(), R.float(), t.float(), motion.float(), background, size, self._trained_size())
        return {"rgb": out["rgb"].clamp(0, 1), "head_alpha": out["head_alpha"], "torso_alpha": out["torso_alpha"],
                "depth": out["depth"]}  # fmt: skip

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, head_R: torch.Tensor, head_t: torch.Tensor, motion: torch.Tensor,
                    background: torch.Tensor, size: int, *, torso_R: torch.Tensor, torso_t: torch.Tensor,
                    focal_scale: float = 1.0, eye_offset_m: float = 0.0,
                    planes: LayerPlanes = LayerPlanes()) -> dict[str, torch.Tensor]:  # fmt: skip
        """The head splatted from the moved camera over the torso and plate seen as planes (:class:`LayerPlanes`)."""
        model = self.model
        pix = image_pixels(size, K.device)
        view = ViewCamera.of(K, head_R, head_t, torso_R, torso_t, focal_scale, eye_offset_m)
        raster = model.splat(model.head(motion.float()), view.K_head, head_R.float(), view.head_t.float(), size,
                             self._trained_size())  # fmt: skip
        head_c, head_a = raster.color.reshape(-1, 3), raster.alpha.reshape(-1)
        out = view_layers(model.torso, K, view, torso_R, torso_t, background, pix, size, planes).under(head_c, head_a)
        shape = (size, size)
        head_alpha = raster.alpha
        depth_z = torch.where(head_alpha > 1e-4, raster.depth / head_alpha.clamp_min(1e-6), torch.zeros_like(head_alpha))
        return {"rgb": out["rgb"].view(*shape, 3), "premult": out["premult"].view(*shape, 3),
                "alpha": out["alpha"].view(shape), "head_alpha": head_alpha, "depth_z": depth_z}  # fmt: skip
