"""The avatar model: head field + torso field + occupancy grid, and how a pixel is rendered.

A pixel's colour is head over torso over the background plate:

    C = C_head + (1 - A_head) * (alpha_torso * C_torso + (1 - alpha_torso) * B)

where C_head, A_head are the volume-rendered colour (premultiplied) and opacity of the head
field along the ray *in canonical head space* (the camera ray mapped through the inverse head
pose), and the torso is the 2D field at the pixel. Masks supervise A_head and alpha_torso, so
the neck seam is learned from the parsing labels rather than pasted.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
from torch import nn

from avatar3d.errors import Avatar3DError
from avatar3d.nerf.composite import composite, render_inference
from avatar3d.nerf.fields import HeadField, HeadFieldConfig, TorsoField, TorsoFieldConfig
from avatar3d.nerf.occupancy import OccupancyGrid, pack_bits, unpack_bits
from avatar3d.nerf.pose_correction import PoseCorrection
from avatar3d.nerf.raymarch import MarchParams, prune_occluded, ray_march


@dataclass
class AvatarConfig:
    """Geometry and components of the avatar (the training schedule lives in TrainConfig)."""

    head: HeadFieldConfig = field(default_factory=HeadFieldConfig)
    torso: TorsoFieldConfig = field(default_factory=TorsoFieldConfig)
    head_aabb: tuple[float, ...] = (-0.17, -0.20, -0.14, 0.17, 0.20, 0.17)
    """Canonical head box (metres, face-model frame): face, hair, ears, down to the jaw line."""
    grid_resolution: int = 64  # occupancy cells per axis over the head box
    cone_angle: float = 1.0 / 256  # step grows with distance: ~half a pixel footprint at 128²
    dt_min: float = 0.0015  # metres
    dt_max: float = 0.01
    max_samples: int = 160  # per ray, training and inference
    prune_eps: float = 1e-3  # training: drop samples whose transmittance is below this (0: keep all)
    render_threshold: float = 1e-3  # inference: stop a ray once its transmittance is below this
    render_steps: int = 6  # inference: samples per ray per round (at least)
    render_sample_budget: int = 0  # inference: > 0 lets the survivors of a round take more steps (composite.render_inference)
    pose_knot_frames: int = 0
    """> 0: learn a smooth correction of the tracked head poses during training, one knot every this
    many frames (nerf.pose_correction); 0: the tracked poses are used as they are."""

    def march_params(self) -> MarchParams:
        return MarchParams(0.05, self.cone_angle, self.dt_min, self.dt_max, self.max_samples)


@dataclass
class RayBatch:
    """Rays of many frames; head-space origin/direction, image position and per-ray conditioning."""

    origins: torch.Tensor  # [P, 3] head space
    dirs: torch.Tensor  # [P, 3] unit, head space
    uv: torch.Tensor  # [P, 2] pixel centre / image side, in [0, 1]
    head_code: torch.Tensor  # [P, motion_code_dim]
    torso_code: torch.Tensor  # [P, 2 * n_anchors]
    background: torch.Tensor  # [P, 3]
    frame_ids: torch.Tensor | None = None  # [P] training frame (appearance codes)


def pixel_dirs(K: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Unit camera-space (OpenCV) directions [P, 3] of pixel positions [P, 2] (continuous, centre = +0.5)."""
    x = (pix[:, 0] - K[0, 2]) / K[0, 0]
    y = (pix[:, 1] - K[1, 2]) / K[1, 1]
    return nn.functional.normalize(torch.stack([x, y, torch.ones_like(x)], -1), dim=-1)


def to_head_space(R: torch.Tensor, t: torch.Tensor, dirs_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera rays (origin at the camera) -> head space, with R [P|1, 3, 3], t [P|1, 3] head -> camera."""
    Rt = R.transpose(-1, -2)
    origins = -(Rt @ t.unsqueeze(-1)).squeeze(-1).expand(dirs_cam.shape[0], 3)
    dirs = (Rt @ dirs_cam.unsqueeze(-1)).squeeze(-1)
    return origins.contiguous(), dirs.contiguous()


def image_pixels(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[size*size, 2] pixel centres (x, y), row-major: the rays of one square image."""
    ij = torch.stack(torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device),
                                    indexing="ij"), -1).reshape(-1, 2).float()  # fmt: skip
    return ij.flip(-1) + 0.5


class AvatarModel(nn.Module):
    """Everything that is learned for one person, plus the occupancy grid of the head box."""

    def __init__(self, config: AvatarConfig, motion_dim: int, n_frames: int = 0, *,
                 motion_regions: Sequence[Sequence[float]]):
        """``motion_regions``: (x, y, z, sigma) Gaussians where motion may act on the head (training
        passes :func:`avatar3d.face.motion_regions.face_motion_regions`; loading passes the stored ones)."""
        super().__init__()
        if len(config.head_aabb) != 6:
            raise Avatar3DError(f"avatar: head_aabb in the config YAML needs 6 numbers (lo xyz, hi xyz), got {config.head_aabb}")
        self.config = config
        self.motion_dim = motion_dim
        self.head = HeadField(config.head, motion_dim, tuple(config.head_aabb), n_frames,
                              motion_regions=motion_regions)
        self.torso = TorsoField(config.torso)
        self.grid = OccupancyGrid(config.head_aabb, config.grid_resolution)
        self.pose = PoseCorrection(n_frames, config.pose_knot_frames) if config.pose_knot_frames > 0 and n_frames else None
        # Cells where the head may be at all (a visual hull from the masks; all True until carved).
        self.register_buffer("hull", torch.ones(self.grid.geometry.n_cells, dtype=torch.bool))

    @torch.no_grad()
    def set_hull(self, hull: torch.Tensor) -> None:
        """Restricts the occupancy grid to ``hull`` [n_cells] bool, now and after every update."""
        self.hull.copy_(hull.to(self.hull.device))
        self._apply_hull()

    def _apply_hull(self) -> None:
        occ = unpack_bits(self.grid.bitfield, self.grid.geometry.n_cells) & self.hull
        self.grid.bitfield.copy_(pack_bits(occ))

    # ------------------------------------------------------------ training

    def render_rays(self, batch: RayBatch) -> dict[str, torch.Tensor]:
        """Differentiable render of a ray batch: rgb, head opacity/colour, torso alpha/colour, regulariser terms."""
        n = batch.origins.shape[0]
        if self.pose is not None and batch.frame_ids is not None and self.training:
            origins, dirs = self.pose.correct_rays(batch.origins, batch.dirs, batch.frame_ids)
            batch = replace(batch, origins=origins, dirs=dirs)
        samples = ray_march(batch.origins.detach(), batch.dirs.detach(), self.grid, self.config.march_params())
        head_rgb = batch.origins.new_zeros(n, 3)
        head_alpha = batch.origins.new_zeros(n)
        attn_mean = batch.origins.new_zeros(())
        if samples.n_samples and self.config.prune_eps > 0:
            with torch.no_grad():
                x = samples.midpoints(batch.origins, batch.dirs)
                sigma = self.head.geometry(x, batch.head_code.detach()[samples.ray_indices])[0]
            samples, _ = prune_occluded(samples, sigma, self.config.prune_eps)
        if samples.n_samples:
            rays = samples.ray_indices
            x = samples.midpoints(batch.origins, batch.dirs)
            fid = batch.frame_ids[rays] if batch.frame_ids is not None else None
            sigma, rgb, attn = self.head(x, batch.dirs[rays], batch.head_code[rays], fid)
            res = composite(sigma, rgb, samples)
            head_rgb, head_alpha = res.color, res.opacity
            attn_mean = attn.mean()
        torso_rgb, torso_alpha, offset = self.torso(batch.uv, batch.torso_code)
        under = torso_alpha[:, None] * torso_rgb + (1 - torso_alpha[:, None]) * batch.background
        rgb = head_rgb + (1 - head_alpha[:, None]) * under
        return {"rgb": rgb, "head_alpha": head_alpha, "head_rgb": head_rgb, "torso_alpha": torso_alpha,
                "torso_rgb": torso_rgb, "attention": attn_mean, "offset": offset,
                "n_samples": torch.tensor(samples.n_samples)}  # fmt: skip

    @torch.no_grad()
    def update_grid(self, motion: torch.Tensor, step: int, generator: torch.Generator | None = None,
                    warmup_steps: int = 64, threshold: float = 1.0) -> None:  # fmt: skip
        """EMA occupancy update at the motion of one frame [motion_dim] (the grid keeps the max over motions)."""
        code = self.head.motion_code(motion.view(1, -1))

        def density(points: torch.Tensor) -> torch.Tensor:
            return self.head.geometry(points, code.expand(points.shape[0], -1))[0]

        self.grid.update(density, step, warmup_steps=warmup_steps, threshold_cap=threshold, generator=generator)
        self._apply_hull()

    # ------------------------------------------------------------ inference

    @torch.no_grad()
    def render_head(self, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, motion: torch.Tensor,
                    pix: torch.Tensor):  # type: ignore[no-untyped-def]
        """Early-terminated head render of pixel centres ``pix`` [P, 2] (x, y) seen through K with head pose R, t."""
        origins, dirs = to_head_space(R[None].float(), t[None].float(), pixel_dirs(K.float(), pix))
        code = self.head.motion_code(motion.view(1, -1).float())

        def field_fn(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sigma, rgb, _ = self.head(x, d, code.expand(x.shape[0], -1))
            return sigma, rgb

        cfg = self.config
        return render_inference(origins, dirs, self.grid, field_fn, cfg.march_params(), n_steps=cfg.render_steps,
                                threshold=cfg.render_threshold, sample_budget=cfg.render_sample_budget)  # fmt: skip

    @torch.no_grad()
    def render_image(
        self, K: torch.Tensor, R: torch.Tensor, t: torch.Tensor, motion: torch.Tensor, background: torch.Tensor,
        size: int,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """One frame [size, size]: rgb [H, W, 3], head opacity, torso alpha, head depth (metres along the ray).

        K is for this image size; R [3, 3], t [3] the head pose; motion [motion_dim]; background [H, W, 3].
        """
        pix = image_pixels(size, K.device)
        state = self.render_head(K, R, t, motion, pix)
        torso_code = self.torso.pose_code(R[None].float(), t[None].float(), K.float(), size)
        torso_rgb, torso_alpha, _ = self.torso(pix / size, torso_code.expand(pix.shape[0], -1))
        bg = background.reshape(-1, 3).float()
        under = torso_alpha[:, None] * torso_rgb + (1 - torso_alpha[:, None]) * bg
        rgb = state.color + (1 - state.opacity[:, None]) * under
        shape = (size, size)
        return {"rgb": rgb.clamp(0, 1).view(*shape, 3), "head_alpha": state.opacity.view(shape),
                "torso_alpha": torso_alpha.view(shape),
                "depth": (state.depth / state.opacity.clamp_min(1e-6)).view(shape)}  # fmt: skip
