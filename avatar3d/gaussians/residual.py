"""A learned, motion-conditioned correction of the face Gaussians' positions, on top of the blendshapes.

Why: the face Gaussians ride the face-model mesh, so they open the mouth exactly as far as the
tracked expression opens the mesh.  On real clips the tracker's fitted inner-lip gap moves only
0.4-0.5x as much as the detected lips (its neutral prior, which the synthetic ground truth needs),
and an avatar re-rendering its own clip opened the mouth ~0.65x as wide as the person.  A small
field that maps (rest position on the face, motion vector) to an offset lets the images, not the
tracked mesh alone, decide how far each part of the face moves.

Shape: a 3D hash grid over the head box, read at each face Gaussian's *rest* anchor (its point on the
undeformed mesh, fixed per Gaussian, so clones and splits inherit it), concatenated with the motion
vector, through a small MLP to an offset bounded by ``tanh`` to ``max_offset_m`` per axis.  The last
layer starts at zero: a fresh avatar renders exactly as without it.  Only face Gaussians get it; the
rigid hair / ears / neck Gaussians never move with speech.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avatar3d.nerf.encoding import HashGridConfig, HashGridEncoding
from avatar3d.nerf.fields import mlp


@dataclass
class ResidualConfig:
    """The residual deformation field (off by default: presets turn it on where it was measured)."""

    enabled: bool = False
    n_levels: int = 8
    log2_table_size: int = 14
    base_resolution: int = 8
    finest_resolution: int = 128  # ~3 mm cells over the 0.4 m head box
    hidden: int = 32
    max_offset_m: float = 0.008  # the largest correction along each axis


class ResidualDeformation(nn.Module):
    """offset [N, 3] (metres, canonical head space) for rest points [N, 3] and one motion vector [D]."""

    def __init__(self, config: ResidualConfig, motion_dim: int, aabb: tuple[float, ...]) -> None:
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(HashGridConfig(
            n_dims=3, n_levels=config.n_levels, features_per_level=2, log2_table_size=config.log2_table_size,
            base_resolution=config.base_resolution, finest_resolution=config.finest_resolution))  # fmt: skip
        self.register_buffer("aabb", torch.tensor(aabb, dtype=torch.float32).view(2, 3))
        self.net = mlp(self.encoding.out_dim + motion_dim, config.hidden, 3)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, rest: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        lo, hi = self.aabb[0], self.aabb[1]
        features = self.encoding(((rest - lo) / (hi - lo)).clamp(0.0, 1.0))
        h = self.net(torch.cat([features, motion.float().expand(rest.shape[0], -1)], -1))
        return torch.tanh(h) * self.config.max_offset_m
