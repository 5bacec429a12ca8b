"""Benchmark the CUDA kernels against the pure-torch mirror on the same GPU, in the same run.

Why: the CUDA build is what makes 512² rendering real-time; the mirror is the reference it
must beat. Each op is timed with CUDA events (median of --repeats after a warm-up) on
fresh random inputs at training/render sizes:

  hashgrid fwd / fwd+bwd   3D, 16 levels x 2 features, 2^19 table, --points points (fp32 and fp16 table)
  march                    512² camera rays through a 128³ grid with a sphere occupied
  composite fwd+bwd        the packed samples of that march, random densities/colours
  render                   march_step + composite_step rounds with early termination,
                           a cheap analytic sphere field (kernel overhead of one 512² frame)

Usage: python tools/bench/cuda.py [--points 1048576] [--repeats 20]
Needs a CUDA torch and a GPU; exits with a one-line message otherwise. Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from avatar3d.nerf.backend import cuda_available, load_extension
from avatar3d.nerf.composite import composite_cuda, composite_torch, render_inference
from avatar3d.nerf.encoding import HASHGRID_SPEC, hashgrid_encode_cuda, hashgrid_encode_torch, make_layout
from avatar3d.nerf.occupancy import OccupancyGrid
from avatar3d.nerf.raymarch import RAYMARCH_SPEC, MarchParams, ray_march, ray_march_torch


def cuda_time(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn`` measured with CUDA events (after two warm-up calls)."""
    fn()
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def camera_rays(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole rays of a size x size image looking at the origin from z = -3 (fov ~ 40°)."""
    ij = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).float().to(device)
    xy = (ij + 0.5) / size * 2 - 1
    d = torch.cat([xy.flip(-1) * 0.36, torch.ones(size, size, 1, device=device)], -1).reshape(-1, 3)
    d = torch.nn.functional.normalize(d, dim=1)
    o = torch.tensor([0.0, 0.0, -3.0], device=device).expand_as(d).contiguous()
    return o, d


def sphere_field(x: torch.Tensor, _d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r = x.norm(dim=-1)
    return torch.where(r < 0.7, 50.0, 0.0), torch.sigmoid(x * 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1 << 20)
    ap.add_argument("--size", type=int, default=512, help="image side for march/composite/render")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    if not cuda_available():
        sys.exit("tools/bench/cuda.py: no CUDA torch + GPU here (run it on a GPU machine)")
    dev = torch.device("cuda")
    builds = {}
    for spec in (HASHGRID_SPEC, RAYMARCH_SPEC):
        t0 = time.perf_counter()
        rec = load_extension(spec, "cuda")
        if rec.module is None:
            sys.exit(f"CUDA build of {spec.name} failed: {rec.error}")
        builds[spec.name] = round(time.perf_counter() - t0, 1)

    rows: list[tuple[str, float, float]] = []
    gen = torch.Generator(device=dev).manual_seed(0)
    lay = make_layout(3, 16, 2, 19, 16.0, 1.5)
    x = torch.rand(args.points, 3, device=dev, generator=gen)
    v_out = torch.randn(args.points, lay.out_dim, device=dev, generator=gen)
    for dtype in (torch.float32, torch.float16):
        table = ((torch.rand(lay.n_rows, 2, device=dev, generator=gen) * 2 - 1) * 1e-4).to(dtype).requires_grad_()
        tag = "fp32" if dtype == torch.float32 else "fp16"
        with torch.no_grad():
            ms = [cuda_time(lambda f=f: f(x, table, lay), args.repeats) for f in (hashgrid_encode_cuda, hashgrid_encode_torch)]
        rows.append((f"hashgrid fwd {tag} ({args.points} pts)", *ms))

        def fwd_bwd(f, t=table):
            torch.autograd.grad(f(x, t, lay), t, v_out)

        ms = [cuda_time(lambda f=f: fwd_bwd(f), args.repeats) for f in (hashgrid_encode_cuda, hashgrid_encode_torch)]
        rows.append((f"hashgrid fwd+bwd {tag}", *ms))

    o, d = camera_rays(args.size, dev)
    grid = OccupancyGrid((-1, -1, -1, 1, 1, 1), 128).to(dev)
    centres = grid.cell_points(torch.arange(grid.geometry.n_cells, device=dev))
    grid.set_occupancy(centres.norm(dim=1) < 0.75)
    params = MarchParams(cone_angle=1 / 256, dt_min=2 / 256, dt_max=0.05, max_samples=256)
    ms_march = [
        cuda_time(lambda: ray_march(o, d, grid, params, backend="cuda"), args.repeats),
        cuda_time(lambda: ray_march_torch(o, d, grid.bitfield, grid.geometry, params), max(3, args.repeats // 4)),
    ]
    packed = ray_march(o, d, grid, params, backend="cuda")
    rows.append((f"march {args.size}² ({packed.n_samples} samples)", *ms_march))
    s = packed.n_samples
    sig = (torch.rand(s, device=dev, generator=gen) * 20).requires_grad_()
    rgb = torch.rand(s, 3, device=dev, generator=gen).requires_grad_()
    args_c = (packed.t_starts, packed.t_ends, packed.offsets, packed.counts)

    def comp(f):
        res = f(sig, rgb, *args_c)
        torch.autograd.grad([res.color.sum() + res.opacity.sum() + res.depth.sum()], (sig, rgb))

    rows.append(("composite fwd+bwd", cuda_time(lambda: comp(composite_cuda), args.repeats),
                 cuda_time(lambda: comp(composite_torch), max(3, args.repeats // 4))))  # fmt: skip
    render_ms = [
        cuda_time(lambda b=b: render_inference(o, d, grid, sphere_field, params, n_steps=8, backend=b), 5)
        for b in ("cuda", "torch")
    ]
    rows.append((f"render {args.size}² (rounds, early stop)", *render_ms))

    name = torch.cuda.get_device_name(0)
    print(f"device: {name}; torch {torch.__version__}; extension load s (JIT build times are in the build logs): {builds}")
    print(f"{'op':<44}{'cuda ms':>10}{'torch ms':>10}{'speedup':>9}")
    for op, a, b in rows:
        print(f"{op:<44}{a:>10.3f}{b:>10.3f}{b / a:>8.1f}x")
    print(json.dumps({
        "device": name, "torch": torch.__version__, "build_s": builds,
        "ops": {op: {"cuda_ms": round(a, 4), "torch_ms": round(b, 4), "speedup": round(b / a, 2)} for op, a, b in rows},
        "render_fps_kernels_only": round(1000.0 / render_ms[0], 1),
    }))


if __name__ == "__main__":
    main()
