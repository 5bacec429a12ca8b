"""Ray marching through an occupancy grid into packed samples (training) or rounds (inference).

Why: the field is evaluated only where samples land, so samples must be few (only in
occupied cells, wider with distance) and laid out without padding. Two layouts:

* training, :func:`ray_march` -> :class:`PackedSamples`: every sample of every ray,
  ``ray_indices [S]``, ``t_starts/t_ends [S]``, per-ray ``offsets/counts [R]``; built in
  two passes (count, exclusive cumsum, fill) so all builds emit identical samples;
* inference, :func:`march_init` + :func:`march_step` (+ ``composite_step`` in
  :mod:`avatar3d.nerf.composite`): rounds of at most ``n_steps`` samples for each ray
  still alive; rays leave the alive set when their transmittance drops below a
  threshold, they leave the box, or they reach ``max_samples``.

The step rule lives in ``cuda_ext/include/raymarch.h`` (``a3d_march_step``);
:func:`ray_march_torch` is its pure-torch mirror (lock-step over rays, one Python
iteration per step, same float32 operations, so the samples match bit for bit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from avatar3d.errors import Avatar3DError
from avatar3d.nerf.backend import CUDA_EXT_DIR, ExtensionSpec, requested_backend, resolve_backend
from avatar3d.nerf.occupancy import GridGeometry, OccupancyGrid, bit_lookup, grid_cell_torch

RAYMARCH_SPEC = ExtensionSpec(
    name="raymarch",
    cpu_sources=(CUDA_EXT_DIR / "cpu" / "raymarch_cpu.cpp",),
    cuda_sources=(CUDA_EXT_DIR / "bindings" / "raymarch_cuda_bind.cpp", CUDA_EXT_DIR / "cuda" / "raymarch.cu"),
)


@dataclass(frozen=True)
class MarchParams:
    """Step rule: dt = clamp(t * cone_angle, dt_min, dt_max); at most ``max_samples`` per ray."""

    near_plane: float = 0.0
    cone_angle: float = 1.0 / 256
    dt_min: float = 2.0 * 3**0.5 / 512  # 512 steps across the diagonal of a [-1, 1]^3 box
    dt_max: float = 0.05
    max_samples: int = 1024

    def __post_init__(self) -> None:
        if not (self.dt_min > 0 and self.dt_max >= self.dt_min and self.cone_angle >= 0 and self.max_samples >= 0):
            raise Avatar3DError(
                f"MarchParams: need 0 < dt_min ({self.dt_min}) <= dt_max ({self.dt_max}), cone_angle "
                f"({self.cone_angle}) >= 0, max_samples ({self.max_samples}) >= 0"
            )

    def ext_args(self) -> tuple[float, float, float, float, int]:
        return self.near_plane, self.cone_angle, self.dt_min, self.dt_max, self.max_samples

    def f32(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The float parameters rounded to float32 once, as the compiled builds do."""
        names = ("near_plane", "cone_angle", "dt_min", "dt_max")
        return {n: torch.tensor(getattr(self, n), dtype=torch.float32, device=device) for n in names}


@dataclass
class PackedSamples:
    """Samples of all rays, ray-major: ray r owns entries ``offsets[r] : offsets[r] + counts[r]``."""

    ray_indices: torch.Tensor  # [n_samples] int64
    t_starts: torch.Tensor  # [n_samples] float32
    t_ends: torch.Tensor  # [n_samples] float32
    offsets: torch.Tensor  # [n_rays] int64
    counts: torch.Tensor  # [n_rays] int64

    @property
    def n_samples(self) -> int:
        return self.t_starts.shape[0]

    def midpoints(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> torch.Tensor:
        """Sample positions [n_samples, 3] at the middle of each interval."""
        t = (self.t_starts + self.t_ends) * 0.5
        return rays_o[self.ray_indices] + t[:, None] * rays_d[self.ray_indices]


def prune_occluded(samples: PackedSamples, sigmas: torch.Tensor, eps: float = 1e-4) -> tuple[PackedSamples, torch.Tensor]:
    """Drops samples whose incoming transmittance is below ``eps`` (hidden behind a surface).

    Why: training marches every occupied cell up to the cap, but samples behind an opaque
    surface get weights < eps and only cost time. Evaluating densities once without
    gradients and keeping the visible samples (nerfacc's early stop for training) cuts the
    expensive gradient pass to the samples that matter. Returns the kept samples and the
    [n_samples] bool mask; sigmas [n_samples] is a no-grad density estimate.
    """
    a = sigmas.detach().double().clamp_min(0) * (samples.t_ends - samples.t_starts).double()
    before = torch.cumsum(a, 0) - a  # exclusive prefix over the whole packed array
    start = before[samples.offsets.clamp_max(max(samples.n_samples - 1, 0))] if samples.n_samples else before
    trans = torch.exp(-(before - start[samples.ray_indices])) if samples.n_samples else before
    keep = trans > eps
    counts = torch.zeros_like(samples.counts).index_add_(0, samples.ray_indices[keep], torch.ones_like(
        samples.ray_indices[keep]))  # fmt: skip
    pruned = PackedSamples(samples.ray_indices[keep], samples.t_starts[keep], samples.t_ends[keep],
                           counts.cumsum(0) - counts, counts)  # fmt: skip
    return pruned, keep


def _rays_f32(rays_o: torch.Tensor, rays_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if rays_o.dim() != 2 or rays_o.shape[1] != 3 or rays_d.shape != rays_o.shape:
        raise Avatar3DError(f"raymarch: rays_o/rays_d must be [n_rays, 3], got {tuple(rays_o.shape)}, "
                            f"{tuple(rays_d.shape)}")  # fmt: skip
    return rays_o.float().contiguous(), rays_d.float().contiguous()


def ray_aabb_torch(
    rays_o: torch.Tensor, rays_d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, near_plane: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test (mirror of a3d_ray_aabb): (t_near [R], t_far [R], hit [R]); axis-parallel rays handled exactly."""
    zero = rays_d == 0  # [R, 3]
    t1 = (lo - rays_o) / rays_d
    t2 = (hi - rays_o) / rays_d
    inf = torch.tensor(float("inf"), device=rays_o.device)
    tmin = torch.where(zero, -inf, torch.minimum(t1, t2)).amax(1) if rays_o.shape[0] else rays_o[:, 0]
    tmax = torch.where(zero, inf, torch.maximum(t1, t2)).amin(1) if rays_o.shape[0] else rays_o[:, 0]
    inside = ((rays_o >= lo) & (rays_o <= hi)) | ~zero
    finite = torch.isfinite(rays_o).all(1) & torch.isfinite(rays_d).all(1)
    t_near = torch.maximum(tmin, near_plane)
    hit = finite & inside.all(1) & (tmax > t_near)
    return t_near, tmax, hit


def _march_step_torch(
    o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, far: torch.Tensor, bits: torch.Tensor,
    geom: GridGeometry, tables: dict[str, torch.Tensor], p: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Mirror of a3d_march_step on a batch: (emit [A] bool, t_next [A] = sample end, t_new [A])."""
    dt = torch.minimum(torch.maximum(t * p["cone_angle"], p["dt_min"]), p["dt_max"])
    tn = torch.minimum(t + dt, far)
    stop = ~(tn > t)
    mid = (t + tn) * 0.5
    x = o + mid[:, None] * d  # [A, 3]
    mip, cell, index = grid_cell_torch(x, geom, tables)
    occ = bit_lookup(bits, index)
    side = (d > 0).float()
    bound = tables["mip_lo"][mip] + (cell.float() + side) * tables["mip_cell"][mip]
    t_axis = torch.where(d == 0, torch.full_like(d, float("inf")), (bound - o) / d)
    t_exit = t_axis.amin(1) if t_axis.shape[0] else tn
    t_new = torch.where(occ, tn, torch.maximum(tn, t_exit))
    t_new = torch.where(stop, far, t_new)
    return occ & ~stop, tn, t_new


def ray_march_torch(
    rays_o: torch.Tensor, rays_d: torch.Tensor, bits: torch.Tensor, geom: GridGeometry, params: MarchParams
) -> PackedSamples:
    """Pure-torch mirror of the compiled ``march`` (same samples, bit for bit)."""
    rays_o, rays_d = _rays_f32(rays_o, rays_d)
    dev = rays_o.device
    tables, p = geom.tables(dev), params.f32(dev)
    t, far, hit = ray_aabb_torch(rays_o, rays_d, tables["outer_lo"], tables["outer_hi"], p["near_plane"])
    n_rays = rays_o.shape[0]
    n = torch.zeros(n_rays, dtype=torch.int64, device=dev)
    alive = (hit & (t < far)).nonzero().squeeze(1) if params.max_samples > 0 else n.new_zeros(0)
    rec_ray, rec_t0, rec_t1 = [], [], []
    while alive.numel():
        ta, fa = t[alive], far[alive]
        emit, tn, t_new = _march_step_torch(rays_o[alive], rays_d[alive], ta, fa, bits, geom, tables, p)
        rec_ray.append(alive[emit])
        rec_t0.append(ta[emit])
        rec_t1.append(tn[emit])
        n[alive] += emit.long()
        t[alive] = t_new
        alive = alive[(t_new < fa) & (n[alive] < params.max_samples)]
    if rec_ray:
        ray_indices = torch.cat(rec_ray)
        order = torch.sort(ray_indices, stable=True).indices  # ray-major; steps stay in order within a ray
        ray_indices, t0, t1 = ray_indices[order], torch.cat(rec_t0)[order], torch.cat(rec_t1)[order]
    else:
        ray_indices, t0, t1 = n.new_zeros(0), rays_o.new_zeros(0), rays_o.new_zeros(0)
    return PackedSamples(ray_indices, t0, t1, n.cumsum(0) - n, n)


def ray_march(
    rays_o: torch.Tensor, rays_d: torch.Tensor, grid: OccupancyGrid, params: MarchParams, *, backend: str = "auto"
) -> PackedSamples:
    """Packed samples of rays [n_rays, 3] through ``grid``'s occupied cells (no gradients: t are constants)."""
    kind, ops = resolve_backend(RAYMARCH_SPEC, requested_backend(backend), rays_o.device)
    if ops is None:
        return ray_march_torch(rays_o, rays_d, grid.bitfield, grid.geometry, params)
    rays_o, rays_d = _rays_f32(rays_o, rays_d)
    out = ops.march(rays_o, rays_d, grid.bitfield, *grid.geometry.ext_args(), *params.ext_args())
    return PackedSamples(*out)


# ---------------------------------------------------------------- inference rounds


@dataclass
class RenderState:
    """Per-ray running state of an inference render; ``alive`` lists the rays still marching."""

    rays_o: torch.Tensor  # [R, 3] float32
    rays_d: torch.Tensor  # [R, 3] float32
    t: torch.Tensor  # [R] next march position
    far: torch.Tensor  # [R]
    n_done: torch.Tensor  # [R] int64 samples emitted so far
    trans: torch.Tensor  # [R] transmittance
    depth: torch.Tensor  # [R] accumulated sum w t
    color: torch.Tensor  # [R, 3]
    alive: torch.Tensor  # [A] int64 ray ids
    rounds: int = 0

    @property
    def opacity(self) -> torch.Tensor:
        return 1.0 - self.trans

    def compact(self, max_samples: int, threshold: float) -> None:
        """Drops rays that are opaque (trans < threshold), out of the box or at the sample cap."""
        a = self.alive
        keep = (self.trans[a] >= threshold) & (self.t[a] < self.far[a]) & (self.n_done[a] < max_samples)
        self.alive = a[keep]


@dataclass
class RoundSamples:
    """One inference round: up to k samples for each alive ray (entries past ``counts`` are padding)."""

    ray_ids: torch.Tensor  # [A] int64
    t_starts: torch.Tensor  # [A, k] float32
    t_ends: torch.Tensor  # [A, k]
    counts: torch.Tensor  # [A] int64

    def valid(self) -> torch.Tensor:
        """[A, k] bool mask of real samples."""
        k = self.t_starts.shape[1]
        return torch.arange(k, device=self.counts.device)[None, :] < self.counts[:, None]


def march_init(
    rays_o: torch.Tensor, rays_d: torch.Tensor, grid: OccupancyGrid, params: MarchParams,
    dtype: torch.dtype = torch.float32,
) -> RenderState:  # fmt: skip
    """Box entry/exit of every ray and an empty compositing state (transmittance 1)."""
    rays_o, rays_d = _rays_f32(rays_o, rays_d)
    dev = rays_o.device
    tables, p = grid.geometry.tables(dev), params.f32(dev)
    t, far, hit = ray_aabb_torch(rays_o, rays_d, tables["outer_lo"], tables["outer_hi"], p["near_plane"])
    n = rays_o.shape[0]
    alive = (hit & (t < far)).nonzero().squeeze(1) if params.max_samples > 0 else torch.zeros(0, dtype=torch.int64)
    return RenderState(
        rays_o, rays_d, t, far, torch.zeros(n, dtype=torch.int64, device=dev), torch.ones(n, dtype=dtype, device=dev),
        torch.zeros(n, dtype=dtype, device=dev), torch.zeros(n, 3, dtype=dtype, device=dev), alive.to(dev),
    )  # fmt: skip


def march_round_torch(
    state: RenderState, bits: torch.Tensor, geom: GridGeometry, params: MarchParams, n_steps: int
) -> RoundSamples:
    """Mirror of the compiled ``march_round``: advances ``state.t``/``n_done`` of the alive rays."""
    ids = state.alive
    dev = state.rays_o.device
    tables, p = geom.tables(dev), params.f32(dev)
    a = ids.numel()
    t0 = torch.zeros(a, n_steps, device=dev)
    t1 = torch.zeros(a, n_steps, device=dev)
    counts = torch.zeros(a, dtype=torch.int64, device=dev)
    t, far, done = state.t[ids].clone(), state.far[ids], state.n_done[ids].clone()
    sel = torch.arange(a, device=dev)  # positions (into the alive list) still stepping this round
    sel = sel[(t < far) & (done < params.max_samples)]
    while sel.numel():
        r = ids[sel]
        emit, tn, t_new = _march_step_torch(state.rays_o[r], state.rays_d[r], t[sel], far[sel], bits, geom, tables, p)
        e = sel[emit]
        t0[e, counts[e]] = t[e]
        t1[e, counts[e]] = tn[emit]
        counts[e] += 1
        done[e] += 1
        t[sel] = t_new
        sel = sel[(t_new < far[sel]) & (counts[sel] < n_steps) & (done[sel] < params.max_samples)]
    state.t[ids] = t
    state.n_done[ids] = done
    return RoundSamples(ids, t0, t1, counts)


def march_step(
    state: RenderState, grid: OccupancyGrid, params: MarchParams, n_steps: int = 4, *, backend: str = "auto"
) -> RoundSamples:
    """Next ``n_steps`` samples of every alive ray (same samples as :func:`ray_march`, in rounds)."""
    if n_steps < 1:
        raise Avatar3DError(f"march_step: n_steps={n_steps} must be >= 1")
    kind, ops = resolve_backend(RAYMARCH_SPEC, requested_backend(backend), state.rays_o.device)
    if ops is None:
        return march_round_torch(state, grid.bitfield, grid.geometry, params, n_steps)
    ids = state.alive
    t0, t1, counts, t_new, done = ops.march_round(
        state.rays_o, state.rays_d, grid.bitfield, *grid.geometry.ext_args(), *params.ext_args(),
        ids, state.t[ids], state.far[ids], state.n_done[ids], n_steps,
    )  # fmt: skip
    state.t[ids] = t_new
    state.n_done[ids] = done
    return RoundSamples(ids, t0, t1, counts)


FieldFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""(positions [M, 3], directions [M, 3]) -> (sigmas [M], rgbs [M, 3])."""
