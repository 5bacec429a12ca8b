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

from avatar3d.gaussians.camera import DILATION, PinholeCamera
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


def footprint_filter(means: torch.Tensor, scales: torch.Tensor, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor,
                     zoom: float) -> torch.Tensor:  # fmt: skip
    """Scales widened so each Gaussian covers, ``zoom`` times larger, the image footprint it was trained with.

    Why: training fits splats whose 2D covariance includes the rasterizer's low-pass of ``DILATION`` px²
    at the training size; many end up sub-pixel.  Rendered at ``zoom`` x that size the same low-pass is
    ``zoom``² times smaller in image terms, so the splats shrink to dots with gaps between them (at 2x:
    held-out PSNR 33 -> 23 dB on a real clip).  Adding an isotropic 3D variance that projects to
    ``DILATION (zoom² - 1)`` px² at each Gaussian's depth restores the trained footprint exactly in the
    image plane (Sigma' = R diag(s² + sigma²) R^T keeps the rotation); Mip-Splatting's 3D filter, by the
    training sampling rate.
    """
    depth = (means @ R.float().T + t.float())[:, 2].clamp_min(1e-3)
    focal = float(K[0, 0])  # K of the zoomed image
    extra = DILATION * (zoom * zoom - 1.0) * (depth / focal) ** 2
    return torch.sqrt(scales * scales + extra[:, None])


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
              size: int, trained_size: int | None = None) -> RasterOutput:  # fmt: skip
        """The head's Gaussians through K with head pose R [3, 3], t [3] (head -> OpenCV camera).

        ``trained_size``: the resolution the Gaussians were fitted at; above it they are widened by
        :func:`footprint_filter`, so a larger render shows the learned surface, not gaps between splats.
        """
        scales = gaussians.scales
        if trained_size is not None and size > trained_size:
            scales = footprint_filter(gaussians.means, scales, K, R, t, size / trained_size)
        return rasterize_gaussians(gaussians.means, gaussians.quats, scales, gaussians.opacities,
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
               background: torch.Tensor, size: int, trained_size: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        """One differentiable frame [size, size] from the training camera (``trained_size``: see :meth:`splat`).

        Returns ``rgb`` [H, W, 3] (head over torso over ``background``), ``head_rgb`` (premultiplied),
        ``head_alpha``, ``torso_alpha``, ``depth`` (metres along the ray, 0 where no head), ``offset``
        (the torso deformation, for its regulariser) and the raster output ``raster`` (2D means, radii).
        """
        raster = self.splat(self.head(motion), K, R, t, size, trained_size)
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
