"""A learned, motion-conditioned correction of the face Gaussians (position, rotation, scale, opacity) on top
of the blendshapes.

Why: the face Gaussians ride the face-model mesh, so they open the mouth exactly as far as the
tracked expression opens the mesh.  On real clips the tracker's fitted inner-lip gap moves only
0.4-0.5x as much as the detected lips (its neutral prior, which the synthetic ground truth needs),
and an avatar re-rendering its own clip opened the mouth ~0.65x as wide as the person.  A small
field that maps (rest position on the face, motion vector) to a per-Gaussian change lets the images,
not the tracked mesh alone, decide how far each part of the face moves, how lips turn and stretch,
and where the mouth's edge appears or fades (opacity).

Shape: a 3D hash grid over the head box, read at each face Gaussian's *rest* anchor (its point on the
undeformed mesh, fixed per Gaussian, so clones and splits inherit it), concatenated with the
standardised motion vector (the tracked channels move little around large resting values: raw, the
input is ~98 % constant, as the NeRF head found), through a small MLP to 10 numbers in [-1, 1]
(``tanh``), scaled by each kind's bound.  The whole change is multiplied by the region prior the NeRF
head uses (Gaussians around the mouth, eyes and brows): speech moves the lips, never the forehead.  The
last layer starts at zero: a fresh avatar renders exactly as without it.  Only face Gaussians get it;
the rigid hair / ears / neck Gaussians never move with speech.

At inference the grid features at the rest anchors do not change from frame to frame: they are read
once and kept until the Gaussians or the grid change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from avatar3d.nerf.encoding import HashGridConfig, HashGridEncoding
from avatar3d.nerf.fields import mlp, motion_statistics, region_weight

N_OUT = 10  # position (3), rotation as an axis-angle (3), log-scale (3), opacity logit (1)
POSITION, ROTATION, SCALE, OPACITY = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)
EVERYWHERE = (0.0, 0.0, 0.0, 1e3)  # the region of a residual saved before the prior: 1 on the whole head
ACTIVE_WEIGHT = 1e-3  # face Gaussians with a smaller region weight are not evaluated (their change would be < 10 µm)


@dataclass
class ResidualConfig:
    """The residual deformation field (off by default: presets turn it on where it was measured)."""

    enabled: bool = False
    n_levels: int = 8
    log2_table_size: int = 14
    base_resolution: int = 8
    finest_resolution: int = 128  # ~3 mm cells over the 0.4 m head box
    hidden: int = 32
    max_offset_m: float = 0.008  # the largest position correction along each axis
    max_rotation_rad: float = 0.3  # the largest turn about each axis
    max_log_scale: float = 0.5  # scales change by at most e^±0.5 per axis
    max_opacity_logit: float = 3.0  # opacity logits change by at most this
    motion_std_floor: float = 0.05  # per-channel std floor of the motion standardisation (as the NeRF head)


@dataclass
class ResidualChange:
    """One frame's change of the face Gaussians, already scaled to its units."""

    offset: torch.Tensor  # [N, 3] metres, canonical head space
    rotation: torch.Tensor  # [N, 4] unit quaternions (w, x, y, z), applied on the left
    log_scale: torch.Tensor  # [N, 3]
    opacity_logit: torch.Tensor  # [N]
    unit: torch.Tensor  # [N, 10] the same in units of the bounds (what the regulariser reads)


def axis_angle_quat(v: torch.Tensor) -> torch.Tensor:
    """[..., 3] axis-angle vectors -> [..., 4] unit quaternions (w, x, y, z); smooth at zero."""
    angle = v.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    sinc = torch.where(angle > 1e-8, torch.sin(half) / angle.clamp_min(1e-8), 0.5 - angle * angle / 48.0)
    return torch.cat([torch.cos(half), v * sinc], -1)


class ResidualDeformation(nn.Module):
    """:class:`ResidualChange` of the face Gaussians at rest points [N, 3] for one motion vector [D]."""

    def __init__(self, config: ResidualConfig, motion_dim: int, aabb: tuple[float, ...],
                 regions: Sequence[Sequence[float]] = (EVERYWHERE,)) -> None:  # fmt: skip
        """``regions``: (x, y, z, sigma) Gaussians (canonical metres) where motion may act; the caller places them
        (training: the face model's mouth, eyes and brows)."""
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(HashGridConfig(
            n_dims=3, n_levels=config.n_levels, features_per_level=2, log2_table_size=config.log2_table_size,
            base_resolution=config.base_resolution, finest_resolution=config.finest_resolution))  # fmt: skip
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32).view(2, 3))
        self.register_buffer("regions", torch.tensor(regions, dtype=torch.float32).view(-1, 4))
        self.register_buffer("motion_offset", torch.zeros(motion_dim))
        self.register_buffer("motion_scale", torch.ones(motion_dim))
        self.net = mlp(self.encoding.out_dim + motion_dim, config.hidden, N_OUT)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self._cache: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def set_motion_statistics(self, motion: torch.Tensor) -> None:
        """Standardise each channel with the training frames' motion [F, D] (once, before training)."""
        offset, scale = motion_statistics(motion.float(), self.config.motion_std_floor)
        self.motion_offset.copy_(offset)
        self.motion_scale.copy_(scale)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # A residual saved before rotation / scale / opacity moved positions only: the same with zero rows.
        last = f"net.{len(self.net) - 1}."
        for name in (last + "weight", last + "bias"):
            w = state_dict.get(prefix + name)
            if w is not None and w.shape[0] == 3:
                state_dict[prefix + name] = torch.cat([w, w.new_zeros((N_OUT - 3,) + tuple(w.shape[1:]))])
        # ...and acted everywhere on the raw motion vector.
        state_dict.setdefault(prefix + "regions", torch.tensor([EVERYWHERE]))
        state_dict.setdefault(prefix + "motion_offset", torch.zeros_like(self.motion_offset))
        state_dict.setdefault(prefix + "motion_scale", torch.ones_like(self.motion_scale))
        self.regions = torch.empty_like(state_dict[prefix + "regions"])  # the stored count of regions
        self._cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _rest_features(self, rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(grid features [M, F], region weight [M, 1], their rows [M]) of the rest points inside the regions.

        Only Gaussians whose region weight reaches ``ACTIVE_WEIGHT`` are evaluated (a change scaled by less is
        under 10 µm): on a face most Gaussians are cheeks, forehead and nose, and the field's cost is a
        share of every training step.  Cached while nothing learns."""
        version = self.encoding.table._version  # every optimizer step or load changes it
        cached = self._cache
        if (not torch.is_grad_enabled() and cached is not None and cached[0] == version
                and cached[1].shape == rest.shape and torch.equal(cached[1], rest)):
            return cached[2], cached[3], cached[4]
        weight = region_weight(rest, self.regions)
        rows = torch.nonzero(weight >= ACTIVE_WEIGHT).squeeze(1)
        lo, hi = self.aabb[0], self.aabb[1]
        features = self.encoding(((rest[rows] - lo) / (hi - lo)).clamp(0.0, 1.0))
        weight = weight[rows, None]
        self._cache = (version, rest.detach().clone(), features, weight, rows) if not torch.is_grad_enabled() else None
        return features, weight, rows

    def forward(self, rest: torch.Tensor, motion: torch.Tensor) -> ResidualChange:
        features, weight, rows = self._rest_features(rest)
        code = ((motion.float() - self.motion_offset) / self.motion_scale).expand(rows.shape[0], -1)
        active = torch.tanh(self.net(torch.cat([features, code], -1))) * weight
        unit = active.new_zeros(rest.shape[0], N_OUT).index_copy(0, rows, active)
        c = self.config
        return ResidualChange(offset=unit[:, POSITION] * c.max_offset_m,
                              rotation=axis_angle_quat(unit[:, ROTATION] * c.max_rotation_rad),
                              log_scale=unit[:, SCALE] * c.max_log_scale,
                              opacity_logit=unit[:, OPACITY.start] * c.max_opacity_logit, unit=unit)  # fmt: skip
