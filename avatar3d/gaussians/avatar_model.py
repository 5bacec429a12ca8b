"""The Gaussian avatar model: the Gaussian head splatted over the NeRF avatar's head-aware torso field.

Why the torso field: it is the torso the NeRF avatar already learns from the same masks (a 2D
image-plane field deformed by the head pose), so the output is a whole frame -- head over torso
over the plate, the same composite as the NeRF avatar,

    C = C_head + (1 - A_head) * (alpha_torso * C_torso + (1 - alpha_torso) * B)

-- never a head pasted on the ground-truth torso.  C_head, A_head come from the rasterizer
(premultiplied colour and coverage).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from avatar3d.gaussians.camera import PinholeCamera
from avatar3d.gaussians.head import GaussianHead, GaussianHeadConfig, GaussianSet
from avatar3d.gaussians.rasterize import RasterOutput, rasterize_gaussians
from avatar3d.nerf.fields import TorsoField, TorsoFieldConfig
from avatar3d.nerf.model import image_pixels, pixel_dirs

NEAR_M = 0.05  # Gaussians nearer the camera than this are culled


@dataclass
class GaussianAvatarConfig:
    """Shape of the Gaussian avatar (saved in the avatar file; the schedule lives in the train config)."""

    head: GaussianHeadConfig = field(default_factory=GaussianHeadConfig)
    torso: TorsoFieldConfig = field(default_factory=TorsoFieldConfig)


def camera_for(K: torch.Tensor, size: int) -> PinholeCamera:
    """The rasterizer's camera for intrinsics K [3, 3] of a square ``size``² image."""
    k = K.detach().double().cpu()
    return PinholeCamera(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), size, size, NEAR_M)


class GaussianAvatarModel(nn.Module):
    """Everything learned for one person with the Gaussian backend: the head and the torso field."""

    def __init__(self, config: GaussianAvatarConfig, head: GaussianHead) -> None:
        super().__init__()
        self.config = config
        self.head = head
        self.torso = TorsoField(config.torso)

    @property
    def motion_dim(self) -> int:
        return self.head.motion_dim

    def splat(self, gaussians: GaussianSet, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
              size: int) -> RasterOutput:  # fmt: skip
        """The head's Gaussians through K with head pose R [3, 3], t [3] (head -> OpenCV camera)."""
        return rasterize_gaussians(gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
                                   gaussians.sh, camera_for(K, size), R.float(), t.float(),
                                   sh_degree=self.head.config.sh_degree)  # fmt: skip

    def composite_pixels(self, raster: RasterOutput, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                         uv: torch.Tensor, idx: torch.Tensor,
                         background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """The head ``raster`` over the torso field over ``background`` [H*W, 3] at flat pixels ``idx`` only.

        Why a subset: training and pose fitting score the pixels near the head and a share of the
        rest, and the torso field runs per scored pixel.  ``uv`` [H*W, 2] are the pixel centres / size.
        Returns (rgb [P, 3], head alpha [P], torso alpha [P], the torso deformation for its regulariser).
        """
        size = raster.alpha.shape[-1]
        head_c, head_a = raster.color.reshape(-1, 3)[idx], raster.alpha.reshape(-1)[idx]
        code = self.torso.pose_code(R[None].float(), t[None].float(), K.float(), size)
        torso_rgb, torso_a, offset = self.torso(uv[idx], code.expand(len(idx), -1))
        under = torso_a[:, None] * torso_rgb + (1 - torso_a[:, None]) * background[idx]
        return head_c + (1 - head_a[:, None]) * under, head_a, torso_a, offset

    def render(self, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, motion: torch.Tensor,
               background: torch.Tensor, size: int) -> dict[str, torch.Tensor]:  # fmt: skip
        """One differentiable frame [size, size] from the training camera.

        Returns ``rgb`` [H, W, 3] (head over torso over ``background``), ``head_rgb`` (premultiplied),
        ``head_alpha``, ``torso_alpha``, ``depth`` (metres along the ray, 0 where no head), ``offset``
        (the torso deformation, for its regulariser) and the raster output ``raster`` (2D means, radii).
        """
        raster = self.splat(self.head(motion), K, R, t, size)
        pix = image_pixels(size, K.device)
        code = self.torso.pose_code(R[None].float(), t[None].float(), K.float(), size)
        torso_rgb, torso_alpha, offset = self.torso(pix / size, code.expand(pix.shape[0], -1))
        shape = (size, size)
        torso_rgb, torso_alpha = torso_rgb.view(*shape, 3), torso_alpha.view(shape)
        under = torso_alpha[..., None] * torso_rgb + (1 - torso_alpha[..., None]) * background.float()
        rgb = raster.color + (1 - raster.alpha[..., None]) * under
        z = raster.depth / raster.alpha.clamp_min(1e-6)
        ray_len = z / pixel_dirs(K.float(), pix)[:, 2].view(shape)
        depth = torch.where(raster.alpha > 1e-4, ray_len, torch.zeros_like(z))
        return {"rgb": rgb, "head_rgb": raster.color, "head_alpha": raster.alpha, "torso_alpha": torso_alpha,
                "depth": depth, "offset": offset, "raster": raster}  # type: ignore[dict-item]
