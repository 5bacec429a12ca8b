"""The avatar's two fields: a motion-conditioned head field in canonical head space and a
head-aware torso field on the image plane.

Why these shapes:
* **Head field** — rays are cast through the inverse head pose, so the field only ever sees
  the canonical head; pose never has to be learned. Motion (expression coefficients + blink)
  enters through *region attention* (ER-NeRF's idea): the hash features at a point produce a
  per-channel gate in [0, 1] that multiplies a per-frame motion code. The learned gate is
  multiplied by a fixed spatial prior — Gaussians around the face model's mouth, eyes and
  brows — because on a short clip a purely learned gate turns the motion code into a per-frame
  appearance code that also changes the forehead and hair (measured: swapping motions changed
  the forehead as much as the mouth); with the prior, hair and forehead cannot move. Chosen over RAD-NeRF's decomposed motion grid because it costs one small linear layer
  per sample instead of a second grid lookup, which matters on two CPU cores.
* **Torso field** — the torso moves with the head but not rigidly (the neck bends), so it is a
  2D image-plane hash grid whose lookup is deformed by an offset predicted from the pixel and a
  *pose code*: the image positions of a few anchor points carried by the head pose (ER-NeRF's
  anchors). Colour and alpha come out per pixel and are composited under the head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from avatar3d.errors import Avatar3DError
from avatar3d.nerf.encoding import HashGridConfig, HashGridEncoding


def mlp(n_in: int, hidden: int, n_out: int, n_hidden_layers: int = 1) -> nn.Sequential:
    """ReLU MLP: ``n_hidden_layers`` hidden layers of width ``hidden``."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def motion_statistics(motion: torch.Tensor, std_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], std floored at ``std_floor`` [D]) of motion vectors [F, D]: the standardisation of a motion input.

    Why: tracked coefficients move little (jawOpen spans 0.24-0.38 on the 60 s bench subject) next to
    their resting values, so a network fed the raw vector sees an input that is ~98 % constant and
    learns to ignore it (the NeRF head's mouth stopped following the speech: mean mouth-box change
    0.001 between the 5th and 95th percentile jaw, against 0.088 in the real frames).
    """
    scale = (motion.std(0).clamp_min(std_floor) if motion.shape[0] > 1
             else torch.full((motion.shape[1],), max(std_floor, 1e-6), dtype=motion.dtype, device=motion.device))
    return motion.mean(0), scale


def region_weight(x: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """[M] in [0, 1] at points x [M, 3]: the largest of the (x, y, z, sigma) Gaussians ``regions`` [R, 4]."""
    d2 = (x[:, None, :] - regions[None, :, :3]).square().sum(-1)
    return torch.exp(-0.5 * d2 / regions[None, :, 3].square()).amax(-1)


def sh_encode(dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 2 of unit directions [..., 3] -> [..., 9] (view dependence)."""
    x, y, z = dirs.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479), -0.48860251 * y, 0.48860251 * z, -0.48860251 * x,
        1.09254843 * x * y, -1.09254843 * y * z, 0.31539157 * (2 * z * z - x * x - y * y),
        -1.09254843 * x * z, 0.54627422 * (x * x - y * y),
    ], -1)  # fmt: skip


class TruncExp(torch.autograd.Function):
    """exp with the gradient of exp(min(x, 15)): densities grow fast without exploding gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


@dataclass
class HeadFieldConfig:
    """Head field: hash grid over the canonical head box + region-attended motion code."""

    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        n_dims=3, n_levels=16, features_per_level=2, log2_table_size=16, base_resolution=16,
        finest_resolution=1024))  # fmt: skip
    motion_code_dim: int = 32  # width of the per-frame motion code that the attention gates
    hidden: int = 64
    geo_dim: int = 15  # features passed from the density net to the colour net
    appearance_dim: int = 0  # per-training-frame appearance code (0: off); zero at inference
    motion_regions: tuple[tuple[float, ...], ...] = ()
    """Where motion may act: (x, y, z, sigma) Gaussians in canonical metres; empty = the regions the
    caller passes to the field (training: the face model's mouth, eyes and brows,
    :func:`avatar3d.face.motion_regions.face_motion_regions`)."""


class HeadField(nn.Module):
    """sigma, rgb at canonical points, given a motion vector per point (via its frame)."""

    def __init__(self, config: HeadFieldConfig, motion_dim: int, aabb: tuple[float, ...], n_frames: int = 0, *,
                 motion_regions: Sequence[Sequence[float]]):
        """``motion_regions``: (x, y, z, sigma) Gaussians where motion may act, used unless the config
        sets its own; the field does not know the face, so its caller places them."""
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(config.grid)
        enc = self.encoding.out_dim
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32).view(2, 3))
        self.motion_net = mlp(motion_dim, config.hidden, config.motion_code_dim)
        # Which motion channels the field may see (1) or ignores (0); set once by training.
        self.register_buffer("motion_mask", torch.ones(motion_dim))
        # Per-channel standardisation of the motion vector (set once by training from its frames).
        self.register_buffer("motion_offset", torch.zeros(motion_dim))
        self.register_buffer("motion_scale", torch.ones(motion_dim))
        self.attention = nn.Linear(enc, config.motion_code_dim)
        regions = config.motion_regions or motion_regions
        if len(regions) == 0:
            raise Avatar3DError("the head field needs motion regions: set avatar: head: motion_regions in the "
                                "config YAML (or pass the face model's regions from avatar3d.face.motion_regions)")
        self.register_buffer("regions", torch.tensor(regions, dtype=torch.float32).view(-1, 4))
        self.density_net = mlp(enc + config.motion_code_dim, config.hidden, 1 + config.geo_dim)
        self.appearance = nn.Embedding(max(n_frames, 1), config.appearance_dim) if config.appearance_dim else None
        if self.appearance is not None:
            nn.init.zeros_(self.appearance.weight)
        self.color_net = mlp(config.geo_dim + 9 + config.appearance_dim, config.hidden, 3)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Canonical metres -> [0, 1]^3 inside the head box."""
        lo, hi = self.aabb[0], self.aabb[1]
        return (x - lo) / (hi - lo)

    def region_prior(self, x: torch.Tensor) -> torch.Tensor:
        """[M] in [0, 1]: how much motion may act at x (1 at a region centre, ~0 on hair and forehead)."""
        return region_weight(x, self.regions)

    def motion_code(self, motion: torch.Tensor) -> torch.Tensor:
        """[F, motion_dim] -> [F, motion_code_dim]; computed once per frame, gathered per sample."""
        return self.motion_net((motion - self.motion_offset) / self.motion_scale * self.motion_mask)

    @torch.no_grad()
    def set_motion_statistics(self, motion: torch.Tensor, std_floor: float) -> None:
        """Standardise each channel with the training frames' mean and std (:func:`motion_statistics`)."""
        offset, scale = motion_statistics(motion, std_floor)
        self.motion_offset.copy_(offset)
        self.motion_scale.copy_(scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Avatars saved before the mask existed saw every channel.
        state_dict.setdefault(prefix + "motion_mask", torch.ones_like(self.motion_mask))
        # ...and saw the raw motion vector.
        state_dict.setdefault(prefix + "motion_offset", torch.zeros_like(self.motion_offset))
        state_dict.setdefault(prefix + "motion_scale", torch.ones_like(self.motion_scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def geometry(self, x: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma [M], geo features [M, geo_dim], attention [M, motion_code_dim]) at points x [M, 3]."""
        feat = self.encoding(self.normalize(x))
        attn = torch.sigmoid(self.attention(feat)) * self.region_prior(x)[:, None]
        h = self.density_net(torch.cat([feat, attn * code], -1))
        return TruncExp.apply(h[:, 0] - 1.0), h[:, 1:], attn

    def forward(
        self, x: torch.Tensor, dirs: torch.Tensor, code: torch.Tensor, frame_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, dirs [M, 3] (head space), code [M, motion_code_dim] -> sigma [M], rgb [M, 3], attention [M, D]."""
        sigma, geo, attn = self.geometry(x, code)
        parts = [geo, sh_encode(dirs)]
        if self.appearance is not None:
            if frame_ids is None:
                parts.append(geo.new_zeros(geo.shape[0], self.config.appearance_dim))
            else:
                parts.append(self.appearance(frame_ids))
        rgb = torch.sigmoid(self.color_net(torch.cat(parts, -1)))
        return sigma, rgb, attn


@dataclass
class TorsoFieldConfig:
    """Torso field: 2D hash grid on the image plane, deformed by the head's pose code."""

    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        n_dims=2, n_levels=12, features_per_level=2, log2_table_size=15, base_resolution=16,
        finest_resolution=512))  # fmt: skip
    hidden: int = 64
    max_offset: float = 0.1  # largest deformation, in units of the image side
    color_from_pose: bool = True
    """The colour/alpha net also sees the pose code.  False: the pose acts through the deformation only,
    so the torso cannot become a per-training-pose appearance code."""
    anchors: tuple[tuple[float, float, float], ...] = (
        (0.0, -0.09, 0.04), (-0.06, -0.06, 0.03), (0.06, -0.06, 0.03), (0.0, 0.02, 0.10))
    """Canonical head points (metres) whose projections form the pose code: chin, jaw sides, nose."""


class TorsoField(nn.Module):
    """rgb, alpha at image points uv [P, 2] in [0, 1] for a pose code [P, 2 * n_anchors]."""

    def __init__(self, config: TorsoFieldConfig):
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(config.grid)
        code = 2 * len(config.anchors)
        self.register_buffer("anchors", torch.tensor(config.anchors, dtype=torch.float32))
        self.deform_net = mlp(2 + code, config.hidden, 2)
        nn.init.zeros_(self.deform_net[-1].weight)
        nn.init.zeros_(self.deform_net[-1].bias)
        self.color_net = mlp(self.encoding.out_dim + (code if config.color_from_pose else 0), config.hidden, 4)

    def pose_code(self, R: torch.Tensor, t: torch.Tensor, K: torch.Tensor, size: int) -> torch.Tensor:
        """Anchor projections for poses R [F, 3, 3], t [F, 3] -> [F, 2 * n_anchors] in [-1, 1] image units."""
        cam = torch.einsum("fij,aj->fai", R, self.anchors) + t[:, None, :]  # [F, A, 3]
        uv = (cam[..., :2] / cam[..., 2:3].clamp_min(1e-3)) * K[[0, 1], [0, 1]] + K[[0, 1], [2, 2]]
        return (uv / size * 2.0 - 1.0).reshape(R.shape[0], -1)

    def forward(self, uv: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uv [P, 2] in [0, 1], code [P, C] -> rgb [P, 3], alpha [P], offset [P, 2]."""
        offset = torch.tanh(self.deform_net(torch.cat([uv * 2 - 1, code], -1))) * self.config.max_offset
        feat = self.encoding((uv + offset).clamp(0.0, 1.0))
        out = self.color_net(torch.cat([feat, code], -1) if self.config.color_from_pose else feat)
        return torch.sigmoid(out[:, :3]), torch.sigmoid(out[:, 3]), offset
