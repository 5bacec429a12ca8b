"""The Gaussian backend of the avatar API: the Gaussian head splatted over the head-aware torso field.

Why here and not in ``train/``: rendering a trained avatar needs the model and its bundle only.
Moved and stereo views treat the torso layer and the plate as planes, exactly as the NeRF
backend does (avatar/layers.py); only the head differs (splatted, not ray-marched).
"""
from __future__ import annotations

import numpy as np
import torch

from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.layers import LayerPlanes, apply_homography, plane_homography
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
        dev = K.device
        K = K.float()
        pix = image_pixels(size, dev)
        K_head = K.clone()
        K_head[0, 0] *= focal_scale
        K_head[1, 1] *= focal_scale
        eye = torch.tensor([eye_offset_m, 0.0, 0.0], device=dev)
        raster = model.splat(model.head(motion.float()), K_head, head_R.float(), (head_t - eye).float(), size,
                             self._trained_size())  # fmt: skip
        R0, t0 = torso_R.double().cpu().numpy(), torso_t.double().cpu().numpy()
        R1, t1 = head_R.double().cpu().numpy(), (head_t - eye).double().cpu().numpy()
        Rc = R1 @ R0.T
        tc = t1 - Rc @ t0
        if focal_scale == 1.0 and eye_offset_m == 0.0 and torch.equal(head_R, torso_R) and torch.equal(head_t, torso_t):
            Rc, tc = np.eye(3), np.zeros(3)  # the training camera itself
        K_train, K_view = K.double().cpu().numpy(), K_head.double().cpu().numpy()
        head_depth = float(t0[2])
        layer_pix = apply_homography(plane_homography(K_view, K_train, Rc, tc, head_depth + planes.torso_behind_head_m),
                                     pix)  # fmt: skip
        plate_H = plane_homography(K_view, K_train, Rc, tc, head_depth + planes.background_behind_head_m)
        torso_code = model.torso.pose_code(torso_R[None].float(), torso_t[None].float(), K, size)
        torso_rgb, torso_alpha, _ = model.torso(layer_pix / size, torso_code.expand(pix.shape[0], -1))
        bg = background.float()
        if plate_H is not None:
            grid = (apply_homography(plate_H, pix) / size * 2.0 - 1.0).view(1, size, size, 2)
            bg = torch.nn.functional.grid_sample(bg.permute(2, 0, 1)[None], grid, mode="bilinear",
                                                 padding_mode="border", align_corners=False)[0].permute(1, 2, 0)
        shape = (size, size)
        head_c, head_a = raster.color, raster.alpha
        under = (torso_alpha[:, None] * torso_rgb).view(*shape, 3)
        torso_a = torso_alpha.view(shape)
        rgb = head_c + (1 - head_a[..., None]) * (under + (1 - torso_a[..., None]) * bg.reshape(*shape, 3))
        premult = head_c + (1 - head_a[..., None]) * under
        alpha = head_a + (1 - head_a) * torso_a
        depth_z = torch.where(head_a > 1e-4, raster.depth / head_a.clamp_min(1e-6), torch.zeros_like(head_a))
        return {"rgb": rgb.clamp(0, 1), "premult": premult.clamp(0, 1), "alpha": alpha.clamp(0, 1),
                "head_alpha": head_a, "depth_z": depth_z}  # fmt: skip
