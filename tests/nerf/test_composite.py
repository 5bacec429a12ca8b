"""Volume compositing: CPU build (closed-form backward) vs the torch mirror (autograd), analytic cases,
inference rounds with early termination.

Tolerances (float32, sigmas in [0, 20), intervals ~0.01-0.1, rgb in [0, 1]):
  weights, opacity, colour   atol 2e-6, rtol 1e-5  (exp/expm1 and summation order differ)
  depth                      atol 2e-6 * max t, rtol 1e-5
  v_sigmas, v_rgbs           atol 1e-5 * max|ref|, rtol 1e-4  (suffix sums: total - prefix vs reversed cumsum)
  early termination (1e-4)   opacity/colour within 2e-4 of the full composite, depth within 2e-4 * far
  analytic box               |opacity - (1 - exp(-sigma * chord))| < 1e-5
gradcheck runs in float64 on small packed cases (both builds).
"""
from __future__ import annotations

import os

import pytest
import torch

from avatar3d.nerf.composite import (
    composite,
    composite_cpu,
    composite_step,
    composite_torch,
    render_inference,
)
from avatar3d.nerf.occupancy import OccupancyGrid
from avatar3d.nerf.raymarch import RAYMARCH_SPEC, MarchParams, march_init, march_step, ray_march

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
OUTPUTS = ("weights", "opacity", "depth", "color")


def fresh_seed() -> int:
    """A new seed each run (tests print it on failure): parity on fresh random inputs."""
    return int.from_bytes(os.urandom(4), "little")


def _packed(n_rays: int, max_count: int, gen: torch.Generator, dtype=torch.float32, sigma_max: float = 20.0):
    """Random packed samples: counts in [0, max_count] (some rays empty), increasing contiguous-ish intervals."""
    counts = torch.randint(0, max_count + 1, (n_rays,), generator=gen)
    offsets = counts.cumsum(0) - counts
    s = int(counts.sum())
    dt = (0.01 + 0.09 * torch.rand(s, generator=gen, dtype=torch.float64))
    ray = torch.repeat_interleave(torch.arange(n_rays), counts)
    t_ends = 2.0 + torch.zeros(n_rays, dtype=torch.float64).index_add(0, ray, dt)[ray] * 0  # base per ray
    cum = dt.cumsum(0)
    base = torch.cat([torch.zeros(1, dtype=torch.float64), cum])[offsets][ray]
    t_ends = t_ends + cum - base
    t_starts = t_ends - dt
    sigmas = torch.rand(s, generator=gen, dtype=torch.float64) * sigma_max
    rgbs = torch.rand(s, 3, generator=gen, dtype=torch.float64)
    cast = [x.to(dtype) for x in (sigmas, rgbs, t_starts, t_ends)]
    return (*cast, offsets, counts)


def _run(fn, sigmas, rgbs, t0, t1, offsets, counts, upstream):
    s, c = sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_()
    res = fn(s, c, t0, t1, offsets, counts)
    outs = [getattr(res, k) for k in OUTPUTS]
    grads = torch.autograd.grad(outs, (s, c), upstream) if s.numel() else (torch.zeros_like(s), torch.zeros_like(c))
    return [o.detach() for o in outs], grads


@pytest.mark.parametrize("size", [(1, 5), (300, 40), (2000, 128), (4096, 12)], ids=lambda s: f"R{s[0]}-max{s[1]}")
def test_cpu_matches_torch_forward_backward(raymarch_ops, size) -> None:
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    args = _packed(*size, gen)
    n_rays, s = size[0], args[0].shape[0]
    upstream = [torch.randn(s, generator=gen), torch.randn(n_rays, generator=gen), torch.randn(n_rays, generator=gen),
                torch.randn(n_rays, 3, generator=gen)]  # fmt: skip
    (out_c, g_c), (out_t, g_t) = _run(composite_cpu, *args, upstream), _run(composite_torch, *args, upstream)
    t_max = float(args[3].max()) if s else 1.0
    msg = f"seed={seed} size={size}"
    for name, a, b in zip(OUTPUTS, out_c, out_t):
        atol = 2e-6 * (t_max if name == "depth" else 1.0)
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-5, msg=lambda m: f"{msg} {name}: {m}")
    for name, a, b in zip(("v_sigmas", "v_rgbs"), g_c, g_t):
        scale = b.abs().max().item() if b.numel() else 0.0  # a single ray may have no samples
        torch.testing.assert_close(a, b, atol=1e-5 * max(scale, 1e-6), rtol=1e-4,
                                   msg=lambda m: f"{msg} {name}: {m}")  # fmt: skip


@pytest.mark.parametrize("fn", [composite_cpu, composite_torch], ids=["cpu", "torch"])
def test_gradcheck_float64(raymarch_ops, fn) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    sigmas, rgbs, t0, t1, offsets, counts = _packed(6, 5, gen, dtype=torch.float64, sigma_max=8.0)

    def f(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = fn(s, c, t0, t1, offsets, counts)
        return torch.cat([r.weights, r.opacity, r.depth, r.color.reshape(-1)])

    assert torch.autograd.gradcheck(f, (sigmas.requires_grad_(), rgbs.requires_grad_()), eps=1e-6, atol=1e-7)


def test_no_samples_and_no_rays(raymarch_ops) -> None:
    for n_rays in (0, 5):
        offsets = counts = torch.zeros(n_rays, dtype=torch.int64)
        empty, rgb0 = torch.zeros(0, requires_grad=True), torch.zeros(0, 3, requires_grad=True)
        for fn in (composite_cpu, composite_torch):
            r = fn(empty, rgb0, empty.detach(), empty.detach(), offsets, counts)
            assert r.weights.shape == (0,) and r.color.shape == (n_rays, 3)
            assert (r.opacity == 0).all() and (r.depth == 0).all() and (r.color == 0).all()
            if n_rays:
                v_s, v_c = torch.autograd.grad(r.opacity.sum() + r.color.sum(), (empty, rgb0))
                assert v_s.shape == (0,) and v_c.shape == (0, 3)


def _chord(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Analytic float64 length of each ray inside BOX (0 for misses)."""
    o, d = o.double(), d.double()
    t1, t2 = (-1 - o) / d, (1 - o) / d
    near = torch.minimum(t1, t2).amax(1).clamp_min(0)
    far = torch.maximum(t1, t2).amin(1)
    return (far - near).clamp_min(0)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_homogeneous_box_opacity(raymarch_ops, backend: str) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    o = torch.randn(400, 3, generator=gen) * 0.4 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(torch.randn(400, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, 1.0]), dim=1)
    grid = OccupancyGrid(BOX, 16)  # full
    params = MarchParams(cone_angle=1 / 64, dt_min=0.01, dt_max=0.08, max_samples=4096)
    samples = ray_march(o, d, grid, params, backend=backend)
    sigma = 1.7
    r = composite(torch.full((samples.n_samples,), sigma), torch.ones(samples.n_samples, 3), samples, backend=backend)
    expected = 1 - torch.exp(-sigma * _chord(o, d))
    torch.testing.assert_close(r.opacity.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(r.color[:, 0], r.opacity, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_sphere_depth_near_entry(raymarch_ops, backend: str) -> None:
    """A dense ball of radius 0.5: expected depth / opacity ~ entry + 1/sigma (exponential free path)."""
    gen = torch.Generator().manual_seed(fresh_seed())
    sigma, radius = 200.0, 0.5

    def density(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.norm(dim=-1) < radius, sigma, 0.0)

    grid = OccupancyGrid(BOX, 32)
    o = torch.tensor([0.0, 0.0, -3.0]).expand(300, 3) + torch.randn(300, 3, generator=gen) * torch.tensor([0.15, 0.15, 0])
    d = torch.tensor([0.0, 0.0, 1.0]).expand(300, 3).contiguous()
    params = MarchParams(cone_angle=0.0, dt_min=0.002, dt_max=0.002, max_samples=4096)
    # Mark every cell the ball touches (cell-centre sampling may miss boundary cells).
    cells = torch.arange(grid.geometry.n_cells)
    corners = [grid.cell_points(cells, torch.full((cells.numel(), 3), float(u))) for u in (0.0, 1.0)]
    near_ball = (torch.minimum(corners[0].abs(), corners[1].abs()) * ((corners[0] * corners[1]) > 0)).norm(dim=1)
    grid.set_occupancy(near_ball < radius)
    samples = ray_march(o, d, grid, params, backend=backend)
    n = samples.n_samples
    mid = samples.midpoints(o, d)
    r = composite(density(mid), torch.ones(n, 3), samples, backend=backend)
    rho2 = o[:, 0] ** 2 + o[:, 1] ** 2
    entry = 3.0 - torch.sqrt((radius**2 - rho2).clamp_min(0))
    through = rho2 < (radius - 0.05) ** 2  # chords long enough to be opaque
    assert through.sum() > 50
    assert (r.opacity[through] > 0.99).all()
    depth = r.depth[through] / r.opacity[through]
    assert (depth - (entry[through] + 1 / sigma)).abs().max() < 2 * params.dt_min
    assert (r.opacity[rho2 > (radius + 0.02) ** 2] == 0).all()


def _field(sigma_scale: float):
    def field(x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sig = sigma_scale * (1.0 + torch.sin(3 * x[:, 0]) * torch.cos(2 * x[:, 1]) + x[:, 2] ** 2)
        rgb = torch.sigmoid(torch.stack([x[:, 0] * 3, x[:, 1] - x[:, 2], d[:, 2]], 1))
        return sig, rgb

    return field


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_inference_with_early_termination_matches_full_composite(raymarch_ops, backend: str) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    o = torch.randn(1500, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(torch.randn(1500, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=1)
    grid = OccupancyGrid(BOX, 16)
    grid.set_occupancy(torch.rand(grid.geometry.n_cells, generator=gen) < 0.7)
    params = MarchParams(cone_angle=1 / 256, dt_min=0.01, max_samples=400)
    field = _field(40.0)  # dense: every ray through the box dies long before its exit
    full = ray_march(o, d, grid, params, backend=backend)
    sig, rgb = field(full.midpoints(o, d), d[full.ray_indices])
    ref = composite(sig, rgb, full, backend=backend)
    state = render_inference(o, d, grid, field, params, n_steps=4, threshold=1e-4, backend=backend)
    assert state.alive.numel() == 0
    opaque = ref.opacity > 1 - 1e-4  # all but grazing rays
    assert opaque.float().mean() > 0.9 * (full.counts > 0).float().mean()
    assert (state.n_done[opaque] <= full.counts[opaque]).all() and (state.n_done < full.counts).float().mean() > 0.5
    assert int(state.n_done.sum()) < 0.5 * full.n_samples
    torch.testing.assert_close(state.opacity, ref.opacity, atol=2e-4, rtol=0)
    torch.testing.assert_close(state.color, ref.color, atol=2e-4, rtol=0)
    torch.testing.assert_close(state.depth, ref.depth, atol=2e-4 * 4.0, rtol=0)
    # Without termination (threshold 0) rounds reproduce the full composite up to rounding.
    thin = render_inference(o, d, grid, _field(0.5), params, n_steps=7, threshold=0.0, backend=backend)
    sig, rgb = _field(0.5)(full.midpoints(o, d), d[full.ray_indices])
    ref = composite(sig, rgb, full, backend=backend)
    assert torch.equal(thin.n_done, full.counts)
    torch.testing.assert_close(thin.opacity, ref.opacity, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(thin.color, ref.color, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(thin.depth, ref.depth, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_inference_in_passes_gives_the_same_pixels(raymarch_ops, backend: str) -> None:
    """Big frames render in passes of ``max_rays`` rays (bounded memory); rays are independent, so nothing changes."""
    gen = torch.Generator().manual_seed(fresh_seed())
    o = torch.randn(1000, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(torch.randn(1000, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=1)
    grid = OccupancyGrid(BOX, 16)
    grid.set_occupancy(torch.rand(grid.geometry.n_cells, generator=gen) < 0.7)
    params = MarchParams(cone_angle=1 / 256, dt_min=0.01, max_samples=400)
    one = render_inference(o, d, grid, _field(40.0), params, n_steps=4, threshold=1e-4, backend=backend, max_rays=0)
    passes = render_inference(o, d, grid, _field(40.0), params, n_steps=4, threshold=1e-4, backend=backend,
                              max_rays=300)  # 4 passes, the last one short
    assert passes.alive.numel() == 0 and passes.color.shape == (1000, 3)
    assert torch.equal(passes.n_done, one.n_done)
    for name in ("trans", "depth", "color"):
        torch.testing.assert_close(getattr(passes, name), getattr(one, name), atol=1e-6, rtol=0)


def test_composite_step_cpu_matches_torch(raymarch_ops) -> None:
    gen = torch.Generator().manual_seed(fresh_seed())
    o = torch.randn(800, 3, generator=gen) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.nn.functional.normalize(torch.randn(800, 3, generator=gen) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=1)
    grid = OccupancyGrid(BOX, 16)
    params = MarchParams(dt_min=0.02, max_samples=200)
    states = {b: march_init(o, d, grid, params) for b in ("cpu", "torch")}
    field = _field(5.0)
    while states["cpu"].alive.numel():
        for b, st in states.items():
            rs = march_step(st, grid, params, 6, backend="cpu")
            x = st.rays_o[rs.ray_ids, None] + ((rs.t_starts + rs.t_ends) * 0.5)[..., None] * st.rays_d[rs.ray_ids, None]
            sig, rgb = field(x.reshape(-1, 3), st.rays_d[rs.ray_ids, None].expand_as(x).reshape(-1, 3))
            composite_step(st, rs, sig.view(rs.t_starts.shape), rgb.view(*rs.t_starts.shape, 3), params,
                           threshold=1e-3, backend=b)  # fmt: skip
        assert torch.equal(states["cpu"].alive, states["torch"].alive)
    for name in ("trans", "depth", "color"):
        torch.testing.assert_close(getattr(states["cpu"], name), getattr(states["torch"], name), atol=1e-5, rtol=1e-5)
