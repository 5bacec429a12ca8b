"""Cascaded occupancy grid: where the ray marcher may place samples.

Why: most of a head's bounding box is empty air; marching only through cells whose
(decayed, max-pooled) density exceeds a threshold cuts the samples per ray several
fold. The grid keeps a float density per cell (an EMA updated from the field during
training) and a packed bitfield, which is what the compiled marchers read.

Geometry (identical to ``a3d_make_occ_grid`` / ``a3d_grid_cell`` in
``cuda_ext/include/raymarch.h``; float32 throughout, one rounding per op):
cascade 0 is ``aabb``; cascade m covers the same centre with half size ``h0 * 2^m``;
each cascade has ``R^3`` cells; a point belongs to the finest cascade that contains
it. Cell ``(m, i, j, k)`` is bit ``m R^3 + (i R + j) R + k`` of the little-endian
bitfield (bit ``idx & 7`` of byte ``idx >> 3``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from avatar3d.errors import Avatar3DError

MAX_CASCADES = 8  # A3D_MAX_CASCADES


@dataclass(frozen=True)
class GridGeometry:
    """Cascade-0 box, cells per axis, number of cascades (the header's ``A3dOccGrid`` inputs)."""

    aabb: tuple[float, float, float, float, float, float]  # lo xyz, hi xyz of cascade 0
    resolution: int = 64
    n_cascades: int = 1

    def __post_init__(self) -> None:
        if len(self.aabb) != 6 or not all(self.aabb[3 + i] > self.aabb[i] for i in range(3)):
            raise Avatar3DError(f"occupancy grid: aabb={self.aabb} must be (lo_x, lo_y, lo_z, hi_x, hi_y, hi_z), lo < hi")
        if not 1 <= self.resolution <= 1024:
            raise Avatar3DError(f"occupancy grid: resolution={self.resolution} must be in 1..1024")
        if not 1 <= self.n_cascades <= MAX_CASCADES:
            raise Avatar3DError(f"occupancy grid: n_cascades={self.n_cascades} must be in 1..{MAX_CASCADES}")

    @property
    def n_cells(self) -> int:
        return self.n_cascades * self.resolution**3

    @property
    def n_bytes(self) -> int:
        return (self.n_cells + 7) // 8

    def ext_args(self) -> tuple[list[float], int, int]:
        """Grid arguments of the compiled ops."""
        return [float(v) for v in self.aabb], self.resolution, self.n_cascades

    def tables(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """float32 centre [3], half0 [3], outer_lo/outer_hi [3], mip_lo/mip_cell [C, 3] as the header computes them."""
        box = torch.tensor(self.aabb, dtype=torch.float32, device=device)
        lo, hi = box[:3], box[3:]
        center = (lo + hi) * 0.5
        half0 = (hi - lo) * 0.5
        r = torch.tensor(float(self.resolution), dtype=torch.float32, device=device)
        mip_lo, mip_cell, h = [], [], half0
        for _ in range(self.n_cascades):
            mip_lo.append(center - h)
            mip_cell.append((h + h) / r)
            outer_hi = center + h
            h = h * 2.0
        return {
            "center": center, "half0": half0, "outer_lo": mip_lo[-1], "outer_hi": outer_hi,
            "mip_lo": torch.stack(mip_lo), "mip_cell": torch.stack(mip_cell),
        }  # fmt: skip


def grid_mip_torch(x: torch.Tensor, geom: GridGeometry, tables: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cascade index [N] (int64) of float32 points [N, 3]: finest cascade containing the point."""
    ax = (x - tables["center"]).abs()  # [N, 3]
    mip = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    for j in range(geom.n_cascades - 1):
        mip += (ax >= tables["half0"] * float(2**j)).any(1)
    return mip


def grid_cell_torch(
    x: torch.Tensor, geom: GridGeometry, tables: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mip [N], cell [N, 3] int64, linear cell index [N]) of float32 points [N, 3] (mirror of a3d_grid_cell)."""
    mip = grid_mip_torch(x, geom, tables)
    c = torch.floor((x - tables["mip_lo"][mip]) / tables["mip_cell"][mip])  # [N, 3]
    c = torch.where(c >= 0, c, torch.zeros_like(c))  # below the grid or NaN -> 0
    c = torch.clamp_max(c, float(geom.resolution - 1)).to(torch.int64)
    r = geom.resolution
    index = mip * r**3 + (c[:, 0] * r + c[:, 1]) * r + c[:, 2]
    return mip, c, index


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool [n_cells] (any shape, flattened) -> little-endian uint8 bitfield [ceil(n / 8)]."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = (1 << torch.arange(8, device=flat.device, dtype=torch.int64)).to(torch.uint8)
    return (flat.view(-1, 8) * weights).sum(1, dtype=torch.int64).to(torch.uint8)


def unpack_bits(bits: torch.Tensor, n_cells: int) -> torch.Tensor:
    """uint8 bitfield -> bool [n_cells]."""
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    return ((bits[:, None] >> shifts) & 1).bool().reshape(-1)[:n_cells]


def bit_lookup(bits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Bit ``index`` of the bitfield (bool, same shape as index)."""
    return ((bits[index >> 3] >> (index & 7).to(torch.uint8)) & 1).bool()


class OccupancyGrid(torch.nn.Module):
    """Cascaded density grid + packed bitfield over ``aabb`` (cascade 0) and its 2^m enlargements.

    Until the first :meth:`update` every cell is occupied (the marcher then samples the
    whole box). Buffers: ``density`` [C, R, R, R] float32, ``bitfield`` [ceil(C R^3 / 8)] uint8.
    """

    def __init__(self, aabb: Sequence[float], resolution: int = 64, n_cascades: int = 1):
        super().__init__()
        self.geometry = GridGeometry(tuple(float(v) for v in aabb), int(resolution), int(n_cascades))  # type: ignore[arg-type]
        g = self.geometry
        self.register_buffer("density", torch.zeros(g.n_cascades, g.resolution, g.resolution, g.resolution))
        self.register_buffer("bitfield", pack_bits(torch.ones(g.n_cells, dtype=torch.bool)))
        self.threshold = 0.0  # last threshold used by update()

    @property
    def outer_aabb(self) -> tuple[float, ...]:
        """The marching box (outermost cascade), as float32 values."""
        t = self.geometry.tables()
        return tuple(torch.cat([t["outer_lo"], t["outer_hi"]]).tolist())

    def occupancy_fraction(self) -> float:
        return float(unpack_bits(self.bitfield, self.geometry.n_cells).float().mean())

    @torch.no_grad()
    def set_occupancy(self, mask: torch.Tensor) -> None:
        """Sets the bitfield from a bool mask [C, R, R, R] (or [n_cells]); density is left alone."""
        if mask.numel() != self.geometry.n_cells:
            raise Avatar3DError(f"occupancy grid: mask has {mask.numel()} cells, the grid {self.geometry.n_cells}")
        self.bitfield.copy_(pack_bits(mask.to(self.bitfield.device)))

    def occupied(self, points: torch.Tensor) -> torch.Tensor:
        """Bool [...] for points [..., 3] (float32 math, exactly the marcher's lookup)."""
        x = points.reshape(-1, 3).to(device=self.bitfield.device, dtype=torch.float32)
        _, _, index = grid_cell_torch(x, self.geometry, self.geometry.tables(x.device))
        return bit_lookup(self.bitfield, index).reshape(points.shape[:-1])

    def cell_points(self, index: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        """World positions [K, 3] of cells ``index`` [K]: cell corner + jitter [K, 3] in [0, 1) (0.5: centre)."""
        g = self.geometry
        r = g.resolution
        t = g.tables(index.device)
        mip, rest = index // r**3, index % r**3
        ijk = torch.stack([rest // (r * r), (rest // r) % r, rest % r], 1).float()  # [K, 3]
        u = torch.full_like(ijk, 0.5) if jitter is None else jitter
        return t["mip_lo"][mip] + (ijk + u) * t["mip_cell"][mip]

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[torch.Tensor], torch.Tensor],
        step: int,
        *,
        decay: float = 0.95,
        threshold_cap: float = 0.01,
        warmup_steps: int = 256,
        cell_fraction: float = 0.25,
        chunk: int = 1 << 18,
        generator: torch.Generator | None = None,
    ) -> None:
        """One EMA update from ``density_fn(points [K, 3]) -> sigma [K]``.

        Before ``warmup_steps`` every cell is evaluated; afterwards ``cell_fraction`` of
        the cells drawn uniformly plus as many drawn from the occupied ones. Each
        evaluated cell (at a random point inside it) becomes ``max(density * decay,
        sigma)``; the bitfield is ``density > min(mean density, threshold_cap)``.
        """
        g = self.geometry
        dev = self.density.device
        if step < warmup_steps:
            index = torch.arange(g.n_cells, device=dev)
        else:
            n = max(1, int(g.n_cells * cell_fraction))
            uniform = torch.randint(g.n_cells, (n,), generator=generator, device=dev)
            occ = unpack_bits(self.bitfield, g.n_cells).nonzero().squeeze(1)
            pick = torch.randint(max(occ.numel(), 1), (n if occ.numel() else 0,), generator=generator, device=dev)
            index = torch.cat([uniform, occ[pick]])
        jitter = torch.rand(index.numel(), 3, generator=generator, device=dev)
        points = self.cell_points(index, jitter)  # [K, 3]
        sigma = torch.cat([density_fn(p).reshape(-1).float() for p in points.split(chunk)]) if index.numel() else points[:, 0]
        flat = self.density.view(-1)
        fresh = torch.full_like(flat, float("-inf")).scatter_reduce_(0, index, sigma, "amax")  # max over duplicates
        sampled = fresh > float("-inf")
        flat.copy_(torch.where(sampled, torch.maximum(flat * decay, fresh), flat))
        self.threshold = min(float(flat.mean()), float(threshold_cap))
        self.bitfield.copy_(pack_bits(flat > self.threshold))

    def extra_repr(self) -> str:
        g = self.geometry
        return f"aabb={g.aabb}, resolution={g.resolution}, n_cascades={g.n_cascades}"
