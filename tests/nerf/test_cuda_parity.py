"""CUDA build vs the pure-torch mirror (on the same GPU) and vs the CPU build: the GPU half of the parity suite.

Skipped on machines without a CUDA torch and a GPU (CI): there the CUDA sources are only
compile-checked (test_hashgrid.py / test_raymarch.py / test_cuda_bindings_compile). Run on a
lent GPU with ``python -m pytest -q tests/nerf`` and the results go to tools/bench/RESULTS.md.

Tolerances are the CPU suite's: hash grid forward 1e-5, gradients 1e-5 * max|ref| (atomics
change the summation order); marching exact (raymarch.h forces round-once float32 under
nvcc); compositing 2e-6 absolute, gradients 1e-5 * max|ref|.
"""
from __future__ import annotations

import os

import pytest
import torch

from avatar3d.nerf.backend import cuda_available, load_extension
from avatar3d.nerf.composite import composite, composite_torch, render_inference
from avatar3d.nerf.encoding import HASHGRID_SPEC, hashgrid_encode, hashgrid_encode_cuda, hashgrid_encode_torch, make_layout
from avatar3d.nerf.occupancy import OccupancyGrid
from avatar3d.nerf.raymarch import RAYMARCH_SPEC, MarchParams, march_init, march_step, ray_march, ray_march_torch

pytestmark = pytest.mark.skipif(not cuda_available(), reason="no CUDA torch + GPU here: CUDA path compile-checked only")

CUDA = torch.device("cuda")
BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


@pytest.fixture(scope="module")
def cuda_builds():
    """Both CUDA extensions, JIT-built once (a failure is a test failure, not a skip)."""
    mods = {}
    for spec in (HASHGRID_SPEC, RAYMARCH_SPEC):
        record = load_extension(spec, "cuda")
        if record.module is None:
            pytest.fail(f"CUDA build of {spec.name} failed: {record.error}")
        mods[spec.name] = record.module
    return mods


HASH_CONFIGS = [  # (n_dims, n_levels, features, log2_table_size, n_points, base, scale)
    (2, 8, 2, 12, 3000, 16.0, 1.5),
    (3, 16, 2, 19, 200_000, 16.0, 1.5),
    (3, 4, 4, 10, 2500, 8.0, 2.0),
    (2, 3, 1, 6, 700, 4.0, 2.0),
    (3, 2, 8, 14, 1025, 32.0, 1.3),
    (3, 4, 2, 4, 500, 16.0, 1.5),  # 16 rows for 17^3 vertices: every level hashed, heavy collisions
]


@pytest.mark.parametrize("cfg", HASH_CONFIGS, ids=lambda c: f"d{c[0]}-L{c[1]}-F{c[2]}-T{c[3]}-N{c[4]}")
def test_hashgrid_cuda_matches_torch_and_cpu(cuda_builds, cfg) -> None:
    d, levels, feats, log2_t, n, base, scale = cfg
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    lay = make_layout(d, levels, feats, log2_t, base, scale)
    x = torch.rand(n, d, generator=gen)
    table = torch.rand(lay.n_rows, feats, generator=gen) * 2 - 1
    v_out = torch.randn(n, lay.out_dim, generator=gen)
    results = {}
    for name, fn, dev in (("cuda", hashgrid_encode_cuda, CUDA), ("torch", hashgrid_encode_torch, CUDA),
                          ("cpu", hashgrid_encode, torch.device("cpu"))):  # fmt: skip
        xr, tr = x.to(dev).requires_grad_(), table.to(dev).requires_grad_()
        out = fn(xr, tr, lay)
        g = torch.autograd.grad(out, (xr, tr), v_out.to(dev))
        results[name] = [out.detach().cpu(), g[0].cpu(), g[1].cpu()]
    msg = f"seed={seed} cfg={cfg}"
    for other in ("torch", "cpu"):
        ref = results[other]
        got = results["cuda"]
        torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5, msg=lambda m: f"{msg} fwd vs {other}: {m}")
        torch.testing.assert_close(got[2], ref[2], atol=1e-5 * ref[2].abs().max().item(), rtol=1e-5,
                                   msg=lambda m: f"{msg} v_table vs {other}: {m}")  # fmt: skip
        torch.testing.assert_close(got[1], ref[1], atol=1e-5 * ref[1].abs().max().item(), rtol=1e-4,
                                   msg=lambda m: f"{msg} v_x vs {other}: {m}")  # fmt: skip


@pytest.mark.parametrize("d", [2, 3])
def test_hashgrid_cuda_gradcheck_float64(cuda_builds, d: int) -> None:
    gen = torch.Generator().manual_seed(_seed())
    lay = make_layout(d, 3, 2, 5 if d == 3 else 4, 2.0, 1.5)
    res = torch.tensor(lay.resolutions, dtype=torch.float64)
    x = torch.rand(4096, d, generator=gen, dtype=torch.float64)
    frac = torch.frac(x[:, None, :] * res[None, :, None])
    x = x[((frac > 0.05) & (frac < 0.95)).flatten(1).all(1)][:4]  # away from cell faces (piecewise smooth)
    x = x.to(CUDA).requires_grad_()
    table = (torch.rand(lay.n_rows, 2, generator=gen, dtype=torch.float64) - 0.5).to(CUDA).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: hashgrid_encode_cuda(a, b, lay), (x, table), eps=1e-6, atol=1e-6)


def test_hashgrid_cuda_fp16_table_edges_and_empty(cuda_builds) -> None:
    gen = torch.Generator().manual_seed(_seed())
    lay = make_layout(3, 6, 2, 12, 16.0, 1.5)
    x = torch.rand(5000, 3, generator=gen).to(CUDA)
    table = (torch.rand(lay.n_rows, 2, generator=gen) * 2 - 1).to(CUDA)
    half = table.half().requires_grad_()
    out_c, out_t = hashgrid_encode_cuda(x, half, lay), hashgrid_encode_torch(x, half, lay)
    assert out_c.dtype == torch.float32
    torch.testing.assert_close(out_c, out_t, atol=1e-5, rtol=1e-5)
    v = torch.randn(out_c.shape, generator=gen).to(CUDA)
    (g_c,) = torch.autograd.grad(out_c, half, v)
    assert g_c.dtype == torch.float16
    # Reference: fp32 accumulation rounded to fp16 once. (The mirror's own fp16 gradient is worse on
    # the GPU: torch scatters fp16 contributions with fp16 atomics; up to 2.5% off, measured on an H200.)
    full = half.detach().float().requires_grad_()
    (g_ref,) = torch.autograd.grad(hashgrid_encode_torch(x, full, lay), full, v)
    torch.testing.assert_close(g_c.float(), g_ref.half().float(), atol=2e-3, rtol=2e-3)
    # Outside / boundary / NaN points: clamped values, finite, zero input gradient outside.
    pts = torch.tensor([[-0.5, 0.3, 1.7], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0], [2.0, -3.0, 0.25],
                        [float("nan"), 0.5, 0.5]], device=CUDA).requires_grad_()  # fmt: skip
    out = hashgrid_encode_cuda(pts, table, lay)
    (v_x,) = torch.autograd.grad(out.sum(), pts)
    assert torch.isfinite(out).all() and torch.isfinite(v_x).all()
    clamped = hashgrid_encode_cuda(pts.detach().nan_to_num(0.0).clamp(0, 1), table, lay)
    torch.testing.assert_close(out.detach(), clamped, atol=0, rtol=0)
    outside = (pts < 0) | (pts > 1) | pts.isnan()
    assert (v_x[outside] == 0).all()
    for n in (0, 1):
        xr, tr = torch.rand(n, 3, device=CUDA).requires_grad_(), table.clone().requires_grad_()
        o = hashgrid_encode_cuda(xr, tr, lay)
        assert o.shape == (n, lay.out_dim)
        gx, gt = torch.autograd.grad(o.sum(), (xr, tr), allow_unused=True)
        assert gx.shape == xr.shape and gt.shape == tr.shape


def test_hashgrid_auto_backend_picks_cuda(cuda_builds, monkeypatch) -> None:
    from avatar3d.nerf.encoding import HashGridConfig, HashGridEncoding

    monkeypatch.delenv("AVATAR3D_BACKEND", raising=False)
    m = HashGridEncoding(HashGridConfig(n_dims=3, n_levels=4, log2_table_size=12)).to(CUDA)
    assert m.backend_for(CUDA) == "cuda"
    out = m(torch.rand(10, 3, device=CUDA))
    out.square().sum().backward()
    assert out.is_cuda and m.table.grad is not None and m.table.grad.is_cuda


def _rays(n: int, gen: torch.Generator, spread: float = 0.4):
    o = torch.randn(n, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.randn(n, 3, generator=gen) * spread + torch.tensor([0.0, 0.0, 1.0])
    return o, torch.nn.functional.normalize(d, dim=1)


def _on_gpu(grid: OccupancyGrid) -> OccupancyGrid:
    """A copy of ``grid`` (same bitfield) on the GPU."""
    g = grid.geometry
    copy = OccupancyGrid(g.aabb, g.resolution, g.n_cascades).to(CUDA)
    copy.bitfield.copy_(grid.bitfield.to(CUDA))
    return copy


MARCH_CASES = [  # (rays, res, cascades, occupied fraction, cone, dt_min, cap)
    (4000, 16, 1, 0.3, 0.0, 0.02, 128),
    (2500, 32, 1, 0.5, 1 / 256, 0.01, 64),
    (800, 24, 2, 0.2, 1 / 64, 0.01, 256),
    (65536, 64, 2, 0.4, 1 / 256, 0.004, 512),
    (300, 8, 1, 1.0, 0.01, 0.005, 16),
    (500, 16, 1, 0.0, 0.0, 0.01, 64),  # empty grid
]


@pytest.mark.parametrize("case", MARCH_CASES, ids=lambda c: f"R{c[0]}-res{c[1]}-C{c[2]}-occ{c[3]}")
def test_march_cuda_matches_cpu_and_torch_exactly(cuda_builds, case) -> None:
    n, res, cascades, frac, cone, dt_min, cap = case
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    grid = OccupancyGrid(BOX, res, cascades)
    grid.set_occupancy(torch.rand(grid.geometry.n_cells, generator=gen) < frac)
    o, d = _rays(n, gen)
    o[: n // 10] += torch.tensor([0.0, 5.0, 0.0])  # a tenth of the rays miss the box
    params = MarchParams(cone_angle=cone, dt_min=dt_min, dt_max=0.1, max_samples=cap)
    ref = ray_march(o, d, grid, params, backend="cpu")
    grid_gpu = _on_gpu(grid)
    got = ray_march(o.to(CUDA), d.to(CUDA), grid_gpu, params, backend="cuda")
    mirror = ray_march_torch(o.to(CUDA), d.to(CUDA), grid_gpu.bitfield, grid_gpu.geometry, params)
    for name in ("ray_indices", "t_starts", "t_ends", "offsets", "counts"):
        a, b, c = getattr(got, name).cpu(), getattr(ref, name), getattr(mirror, name).cpu()
        assert a.dtype == b.dtype and torch.equal(a, b), f"seed={seed} {case}: {name} CUDA != CPU build"
        assert torch.equal(a, c), f"seed={seed} {case}: {name} CUDA != torch mirror on the GPU"
    if frac == 0.0:
        assert got.n_samples == 0


def test_march_rounds_cuda_match_cpu(cuda_builds) -> None:
    gen = torch.Generator().manual_seed(_seed())
    grid = OccupancyGrid(BOX, 16, 2)
    grid.set_occupancy(torch.rand(grid.geometry.n_cells, generator=gen) < 0.4)
    grid_gpu = _on_gpu(grid)
    o, d = _rays(3000, gen)
    params = MarchParams(cone_angle=1 / 128, dt_min=0.01, max_samples=40)
    s_cpu, s_gpu = march_init(o, d, grid, params), march_init(o.to(CUDA), d.to(CUDA), grid_gpu, params)
    for _ in range(6):
        a = march_step(s_cpu, grid, params, 4, backend="cpu")
        b = march_step(s_gpu, grid_gpu, params, 4, backend="cuda")
        for name in ("ray_ids", "t_starts", "t_ends", "counts"):
            assert torch.equal(getattr(a, name), getattr(b, name).cpu()), name
        assert torch.equal(s_cpu.t, s_gpu.t.cpu()) and torch.equal(s_cpu.n_done, s_gpu.n_done.cpu())
        s_cpu.compact(params.max_samples, -1.0)
        s_gpu.compact(params.max_samples, -1.0)


def _packed(n_rays: int, max_count: int, gen: torch.Generator, dtype=torch.float32):
    counts = torch.randint(0, max_count + 1, (n_rays,), generator=gen)
    offsets = counts.cumsum(0) - counts
    s = int(counts.sum())
    dt = 0.01 + 0.09 * torch.rand(s, generator=gen, dtype=torch.float64)
    ray = torch.repeat_interleave(torch.arange(n_rays), counts)
    cum = dt.cumsum(0)
    base = torch.cat([torch.zeros(1, dtype=torch.float64), cum])[offsets][ray]
    t_ends = 2.0 + cum - base
    t_starts = t_ends - dt
    sigmas = torch.rand(s, generator=gen, dtype=torch.float64) * 20
    rgbs = torch.rand(s, 3, generator=gen, dtype=torch.float64)
    return [x.to(dtype) for x in (sigmas, rgbs, t_starts, t_ends)] + [offsets, counts]


@pytest.mark.parametrize("size", [(1, 5), (300, 40), (2000, 128), (65536, 48)], ids=lambda s: f"R{s[0]}-max{s[1]}")
def test_composite_cuda_matches_torch(cuda_builds, size) -> None:
    seed = _seed()
    gen = torch.Generator().manual_seed(seed)
    sig, rgb, t0, t1, off, cnt = (x.to(CUDA) for x in _packed(*size, gen))
    ups = [torch.randn(sig.shape[0], generator=gen).to(CUDA)] + [torch.randn(s, generator=gen).to(CUDA)
           for s in ((size[0],), (size[0],), (size[0], 3))]  # fmt: skip
    outs = {}
    from avatar3d.nerf.composite import composite_cuda

    for name, fn in (("cuda", composite_cuda), ("torch", composite_torch)):
        s, c = sig.clone().requires_grad_(), rgb.clone().requires_grad_()
        res = fn(s, c, t0, t1, off, cnt)
        vals = [res.weights, res.opacity, res.depth, res.color]
        grads = torch.autograd.grad(vals, (s, c), ups) if s.numel() else (s, c)
        outs[name] = [v.detach() for v in vals] + [g.detach() for g in grads]
    for i, label in enumerate(("weights", "opacity", "depth", "color", "v_sigmas", "v_rgbs")):
        a, b = outs["cuda"][i], outs["torch"][i]
        atol = 2e-6 if i < 4 else 1e-5 * max(b.abs().max().item() if b.numel() else 0.0, 1e-12)
        if label == "depth":
            atol = 2e-6 * 8.0
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4 if i >= 4 else 1e-5,
                                   msg=lambda m: f"seed={seed} {size} {label}: {m}")  # fmt: skip


def test_cuda_inference_render_matches_full_composite(cuda_builds) -> None:
    gen = torch.Generator().manual_seed(_seed())
    o, d = _rays(20000, gen, spread=0.2)
    o, d = o.to(CUDA), d.to(CUDA)
    grid = OccupancyGrid(BOX, 16).to(CUDA)

    def field(x, _dirs):
        r = x.norm(dim=-1)
        return torch.where(r < 0.8, 30.0, 0.0), torch.sigmoid(x * 3)

    params = MarchParams(cone_angle=1 / 256, dt_min=0.01, max_samples=400)
    full = ray_march(o, d, grid, params, backend="cuda")
    sig, rgb = field(full.midpoints(o, d), d[full.ray_indices])
    ref = composite(sig, rgb, full, backend="cuda")
    state = render_inference(o, d, grid, field, params, n_steps=4, threshold=1e-4, backend="cuda")
    assert state.alive.numel() == 0 and int(state.n_done.sum()) < full.n_samples
    torch.testing.assert_close(state.opacity, ref.opacity, atol=2e-4, rtol=0)
    torch.testing.assert_close(state.color, ref.color, atol=2e-4, rtol=0)
