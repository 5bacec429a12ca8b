"""Occupancy grid + ray marching: CPU build vs the pure-torch mirror, edge cases, inference rounds.

Tolerances: marching is compared *exactly* (torch.equal on ray_indices, t_starts,
t_ends, offsets, counts): both builds run the same float32 operations, each rounded
once (raymarch.h). Grid geometry and cell indices are exact too.

The nvcc test compiles cuda_ext/cuda/raymarch.cu for sm_90 (~8 s); skipped without nvcc.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from avatar3d.errors import Avatar3DError
from avatar3d.nerf import backend as backend_mod
from avatar3d.nerf.backend import BackendUnavailable, load_extension
from avatar3d.nerf.occupancy import OccupancyGrid, grid_cell_torch, pack_bits, unpack_bits
from avatar3d.nerf.raymarch import (
    RAYMARCH_SPEC,
    MarchParams,
    march_init,
    march_step,
    ray_aabb_torch,
    ray_march,
    ray_march_torch,
)

REPO = Path(__file__).resolve().parents[2]
BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def fresh_seed() -> int:
    """A new seed each run (tests print it on failure): parity on fresh random inputs."""
    return int.from_bytes(os.urandom(4), "little")


def _rays(n: int, gen: torch.Generator, spread: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-like rays from around z = -3 towards the box (some miss it)."""
    o = torch.randn(n, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.randn(n, 3, generator=gen) * spread + torch.tensor([0.0, 0.0, 1.0])
    return o, torch.nn.functional.normalize(d, dim=1)


def _grid(res: int, cascades: int, fraction: float, gen: torch.Generator) -> OccupancyGrid:
    grid = OccupancyGrid(BOX, res, cascades)
    grid.set_occupancy(torch.rand(grid.geometry.n_cells, generator=gen) < fraction)
    return grid


def _assert_same(a, b, msg: str) -> None:
    for name in ("ray_indices", "t_starts", "t_ends", "offsets", "counts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), f"{msg}: {name} differs"


@pytest.mark.parametrize("cascades", [1, 2, 3])
def test_grid_geometry_and_lookup_match_header(raymarch_ops, cascades: int) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    grid = _grid(16, cascades, 0.5, gen)
    info = raymarch_ops.grid_info(*grid.geometry.ext_args())
    tab = grid.geometry.tables()
    for i, key in enumerate(("center", "half0", "outer_lo", "outer_hi")):
        assert torch.equal(torch.tensor(info[i], dtype=torch.float32), tab[key]), key
    assert torch.equal(torch.tensor(info[4], dtype=torch.float32).view(cascades, 3), tab["mip_lo"])
    assert torch.equal(torch.tensor(info[5], dtype=torch.float32).view(cascades, 3), tab["mip_cell"])
    pts = (torch.rand(20000, 3, generator=gen) * 2 - 1) * 2.0 ** (cascades - 1) * 1.1
    pts[:5] = torch.tensor([[0.0, 0, 0], [1.0, 1, 1], [-1.0, 0.5, 0], [float("nan"), 0, 0], [2.0, -2.0, 0.999]])
    occ, idx = raymarch_ops.occupied(pts, grid.bitfield, *grid.geometry.ext_args())
    _, _, idx_t = grid_cell_torch(pts, grid.geometry, tab)
    assert torch.equal(idx, idx_t) and torch.equal(occ, grid.occupied(pts))
    assert int(idx.min()) >= 0 and int(idx.max()) < grid.geometry.n_cells


def test_bit_packing_roundtrip() -> None:
    mask = torch.rand(3 * 5**3) < 0.3  # not a multiple of 8
    assert torch.equal(unpack_bits(pack_bits(mask), mask.numel()), mask)


def test_ray_aabb_matches(raymarch_ops) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    o, d = _rays(2000, gen, spread=1.0)
    o[:4] = torch.tensor([[0.5, 0.5, -3.0], [1.5, 0.0, -3.0], [0.0, 0.0, 0.0], [1.0, 0.0, -3.0]])
    d[:4] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # axis-parallel
    grid = OccupancyGrid(BOX, 8)
    near, far, hit = raymarch_ops.ray_aabb(o, d, *grid.geometry.ext_args(), 0.0)
    tab = grid.geometry.tables()
    near_t, far_t, hit_t = ray_aabb_torch(o, d, tab["outer_lo"], tab["outer_hi"], torch.tensor(0.0))
    assert torch.equal(hit, hit_t) and torch.equal(near[hit], near_t[hit]) and torch.equal(far[hit], far_t[hit])
    assert hit[:4].tolist() == [True, False, True, True]  # on the face x = 1 counts as inside
    assert near[2] == 0.0 and far[2] == 1.0  # origin inside: near clipped to the near plane


CASES = [  # (n_rays, resolution, cascades, occupied fraction, cone_angle, dt_min, max_samples)
    (1500, 16, 1, 0.3, 0.0, 0.02, 1024),
    (2500, 32, 1, 0.5, 1 / 256, 0.01, 64),
    (800, 24, 2, 0.2, 1 / 64, 0.01, 256),
    (300, 8, 1, 1.0, 0.01, 0.005, 16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"R{c[0]}-res{c[1]}-C{c[2]}-occ{c[3]}")
def test_march_cpu_matches_torch_exactly(raymarch_ops, case) -> None:
    n, res, cascades, frac, cone, dt_min, cap = case
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    grid = _grid(res, cascades, frac, gen)
    o, d = _rays(n, gen)
    params = MarchParams(cone_angle=cone, dt_min=dt_min, dt_max=0.1, max_samples=cap)
    a = ray_march(o, d, grid, params, backend="cpu")
    b = ray_march_torch(o, d, grid.bitfield, grid.geometry, params)
    _assert_same(a, b, f"seed={seed} case={case}")
    assert a.n_samples > 0 and int(a.counts.max()) <= cap
    # Every sample's midpoint is in an occupied cell, inside [near, far], steps within [dt_min, dt_max].
    assert grid.occupied(a.midpoints(o, d)).all()
    near, far, _ = raymarch_ops.ray_aabb(o, d, *grid.geometry.ext_args(), 0.0)
    assert (a.t_starts >= near[a.ray_indices]).all() and (a.t_ends <= far[a.ray_indices]).all()
    dt = a.t_ends - a.t_starts
    assert (dt > 0).all() and (dt <= 0.1 + 1e-6).all()
    assert torch.equal(a.offsets, a.counts.cumsum(0) - a.counts)
    assert torch.equal(a.ray_indices, torch.repeat_interleave(torch.arange(n), a.counts))


def test_march_is_deterministic_across_threads(raymarch_ops) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    grid = _grid(32, 2, 0.4, gen)
    o, d = _rays(3000, gen)
    params = MarchParams(dt_min=0.005, max_samples=512)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = ray_march(o, d, grid, params, backend="cpu")
        torch.set_num_threads(max(2, before))
        b = ray_march(o, d, grid, params, backend="cpu")
    finally:
        torch.set_num_threads(before)
    _assert_same(a, b, "1 vs 2 threads")


def test_missing_rays_and_empty_grid(raymarch_ops) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    o, d = _rays(400, gen)
    o[:100] += torch.tensor([0.0, 5.0, 0.0])  # far above the box, heading +z or up: all miss
    d[:100, 1] = d[:100, 1].abs()
    d[:50] = torch.tensor([0.0, 0.0, 1.0])
    grid = _grid(16, 1, 0.5, gen)
    params = MarchParams(dt_min=0.01)
    for march in (lambda: ray_march(o, d, grid, params, backend="cpu"),
                  lambda: ray_march_torch(o, d, grid.bitfield, grid.geometry, params)):  # fmt: skip
        s = march()
        assert (s.counts[:100] == 0).all() and s.counts[100:].sum() > 0
    grid.set_occupancy(torch.zeros(grid.geometry.n_cells, dtype=torch.bool))
    for backend in ("cpu", "torch"):
        s = ray_march(o, d, grid, params, backend=backend)
        assert s.n_samples == 0 and s.ray_indices.shape == (0,) and (s.counts == 0).all() and (s.offsets == 0).all()
    s = ray_march(o[:0], d[:0], grid, params, backend="cpu")
    assert s.offsets.shape == (0,) and s.n_samples == 0


def test_full_grid_covers_the_chord_and_cap(raymarch_ops) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    o, d = _rays(500, gen)
    grid = OccupancyGrid(BOX, 16)  # fresh grid: every cell occupied
    params = MarchParams(cone_angle=0.0, dt_min=0.01, dt_max=0.01, max_samples=1024)
    s = ray_march(o, d, grid, params, backend="cpu")
    _assert_same(s, ray_march_torch(o, d, grid.bitfield, grid.geometry, params), "full grid")
    near, far, hit = raymarch_ops.ray_aabb(o, d, *grid.geometry.ext_args(), 0.0)
    hit_rays = hit.nonzero().squeeze(1)
    first, last = s.offsets[hit_rays], s.offsets[hit_rays] + s.counts[hit_rays] - 1
    assert torch.equal(s.t_starts[first], near[hit_rays]) and torch.equal(s.t_ends[last], far[hit_rays])
    same_ray = s.ray_indices[1:] == s.ray_indices[:-1]
    assert torch.equal(s.t_starts[1:][same_ray], s.t_ends[:-1][same_ray])  # contiguous intervals
    capped = MarchParams(cone_angle=0.0, dt_min=0.01, dt_max=0.01, max_samples=7)
    c = ray_march(o, d, grid, capped, backend="cpu")
    _assert_same(c, ray_march_torch(o, d, grid.bitfield, grid.geometry, capped), "capped")
    assert torch.equal(c.counts, s.counts.clamp_max(7)) and (c.counts[hit] == 7).float().mean() > 0.9
    assert torch.equal(c.t_starts[c.offsets[hit_rays]], near[hit_rays])


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_inference_rounds_reproduce_the_packed_march(raymarch_ops, backend: str) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    grid = _grid(16, 2, 0.4, gen)
    o, d = _rays(600, gen)
    params = MarchParams(cone_angle=1 / 128, dt_min=0.01, max_samples=40)
    full = ray_march(o, d, grid, params, backend="cpu")
    state = march_init(o, d, grid, params)
    rays, t0s, t1s = [], [], []
    while state.alive.numel():
        rs = march_step(state, grid, params, n_steps=3, backend=backend)
        v = rs.valid()
        rays.append(rs.ray_ids[:, None].expand_as(v)[v])
        t0s.append(rs.t_starts[v])
        t1s.append(rs.t_ends[v])
        state.compact(params.max_samples, threshold=-1.0)  # never terminate on transmittance
    ray_ids = torch.cat(rays)
    order = torch.sort(ray_ids, stable=True).indices
    assert torch.equal(ray_ids[order], full.ray_indices)
    assert torch.equal(torch.cat(t0s)[order], full.t_starts) and torch.equal(torch.cat(t1s)[order], full.t_ends)
    assert torch.equal(state.n_done, full.counts)


def test_march_round_cpu_matches_torch(raymarch_ops) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    grid = _grid(16, 1, 0.5, gen)
    o, d = _rays(700, gen)
    params = MarchParams(dt_min=0.02, max_samples=30)
    s_cpu, s_t = march_init(o, d, grid, params), march_init(o, d, grid, params)
    for _ in range(4):
        a = march_step(s_cpu, grid, params, 5, backend="cpu")
        b = march_step(s_t, grid, params, 5, backend="torch")
        for name in ("ray_ids", "t_starts", "t_ends", "counts"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(s_cpu.t, s_t.t) and torch.equal(s_cpu.n_done, s_t.n_done)
        s_cpu.compact(params.max_samples, -1.0)
        s_t.compact(params.max_samples, -1.0)


def test_grid_update_from_a_sphere() -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    grid = OccupancyGrid(BOX, 16, 2)

    def sphere(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.norm(dim=-1) < 0.5, 10.0, 0.0)

    grid.update(sphere, step=0, threshold_cap=0.01, generator=gen)  # warm-up: every cell
    assert grid.threshold == pytest.approx(min(float(grid.density.mean()), 0.01))
    centre = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.15]])
    far_pts = torch.tensor([[0.9, 0.9, 0.9], [-1.8, 1.5, 0.0]])
    assert grid.occupied(centre).all() and not grid.occupied(far_pts).any()
    assert 0.0 < grid.occupancy_fraction() < 0.2
    before = grid.density.clone()
    grid.update(lambda x: torch.zeros(x.shape[0]), step=1000, decay=0.5, cell_fraction=0.1, generator=gen)
    changed = grid.density != before
    assert changed.any() and (grid.density[changed] == before[changed] * 0.5).all()  # sampled cells decayed
    assert (grid.density <= before).all()


def test_params_and_grid_validation() -> None:
    with pytest.raises(Avatar3DError, match="dt_min"):
        MarchParams(dt_min=0.0)
    with pytest.raises(Avatar3DError, match="aabb"):
        OccupancyGrid((0, 0, 0, 0, 1, 1))
    with pytest.raises(Avatar3DError, match="n_cascades"):
        OccupancyGrid(BOX, 8, 9)


def test_env_var_forces_torch(monkeypatch) -> None:
    monkeypatch.setenv(backend_mod.ENV_VAR, "torch")
    gen = torch.Generator().manual_seed(fresh_seed())
    grid = _grid(8, 1, 0.5, gen)
    o, d = _rays(50, gen)
    s = ray_march(o, d, grid, MarchParams(dt_min=0.05), backend="cpu")
    _assert_same(s, ray_march_torch(o, d, grid.bitfield, grid.geometry, MarchParams(dt_min=0.05)), "env torch")


@pytest.mark.skipif(backend_mod.cuda_available(), reason="this machine has CUDA")
def test_forcing_cuda_without_cuda_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    grid = OccupancyGrid(BOX, 8)
    with pytest.raises(BackendUnavailable, match="cuda"):
        ray_march(torch.zeros(1, 3), torch.ones(1, 3), grid, MarchParams(), backend="cuda")


def test_cuda_sources_compile_with_nvcc(tmp_path: Path) -> None:
    """CI's proof that the CUDA kernels compile (no GPU needed); the torch binding is not compiled here."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH: raymarch.cu not compile-checked")
    src = REPO / "cuda_ext" / "cuda" / "raymarch.cu"
    cmd = [nvcc, "-c", "-arch=sm_90", "-std=c++17", "-I", str(REPO / "cuda_ext" / "include"), str(src), "-o",
           str(tmp_path / "raymarch.o")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}"
