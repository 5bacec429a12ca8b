"""The NeRF backend of the avatar API: a motion-conditioned hash-grid head over a head-aware torso layer.

Why here and not in ``train/``: rendering a trained avatar (render, eval, export, a live
server) needs the model and its bundle, never the training loop.
"""
from __future__ import annotations

import numpy as np
import torch

from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.layers import LayerPlanes, apply_homography, plane_homography
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
        dev = K.device
        K = K.float()
        pix = image_pixels(size, dev)
        K_head = K.clone()
        K_head[0, 0] *= focal_scale
        K_head[1, 1] *= focal_scale
        eye = torch.tensor([eye_offset_m, 0.0, 0.0], device=dev)
        state = model.render_head(K_head, head_R, head_t - eye, motion, pix)
        # The camera move, training camera -> this view: X_view = Rc X_train + tc.
        R0, t0 = torso_R.double().cpu().numpy(), torso_t.double().cpu().numpy()
        R1, t1 = head_R.double().cpu().numpy(), (head_t - eye).double().cpu().numpy()
        Rc = R1 @ R0.T
        tc = t1 - Rc @ t0
        if focal_scale == 1.0 and eye_offset_m == 0.0 and torch.equal(head_R, torso_R) and torch.equal(head_t, torso_t):
            Rc, tc = np.eye(3), np.zeros(3)  # the training camera itself (float32 R R^T is only ~1e-7 from I)
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
        bg = bg.reshape(-1, 3)
        under = torso_alpha[:, None] * torso_rgb
        rgb = state.color + (1 - state.opacity[:, None]) * (under + (1 - torso_alpha[:, None]) * bg)
        premult = state.color + (1 - state.opacity[:, None]) * under
        alpha = state.opacity + (1 - state.opacity) * torso_alpha
        dist = state.depth / state.opacity.clamp_min(1e-6)
        depth_z = torch.where(state.opacity > 1e-4, dist * pixel_dirs(K_head, pix)[:, 2], torch.zeros_like(dist))
        shape = (size, size)
        return {"rgb": rgb.clamp(0, 1).view(*shape, 3), "premult": premult.clamp(0, 1).view(*shape, 3),
                "alpha": alpha.clamp(0, 1).view(shape), "head_alpha": state.opacity.view(shape),
                "depth_z": depth_z.view(shape)}  # fmt: skip
