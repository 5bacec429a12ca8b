"""Benchmark ray marching + volume compositing: CPU C++/OpenMP build vs the pure-torch mirror.

Why: marching and compositing run once per training ray; with the hash grid they
bound CPU training throughput. Both paths run in the same process on the same inputs:
``--rays`` random pixels of a ``--image``² pinhole render of a [-1, 1]^3 head box from
z = -3 (most rays hit the box), an occupancy grid whose occupied cells form an
ellipsoid filling ~``--occupancy`` of the grid.

Modes:
  march          packed samples (count, scan, fill)
  composite fwd  weights/opacity/depth/colour under torch.no_grad()
  composite f+b  forward, then autograd backward to sigmas and rgbs

Usage: python tools/bench/raymarch.py [--rays 4096] [--image 512] [--resolution 64]
       [--occupancy 0.5] [--cone 0.004] [--repeats 5]
The last line printed is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from avatar3d.nerf.backend import load_extension
from avatar3d.nerf.composite import composite_cpu, composite_torch
from avatar3d.nerf.occupancy import OccupancyGrid
from avatar3d.nerf.raymarch import RAYMARCH_SPEC, MarchParams, ray_march, ray_march_torch


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each step after one warm-up; steps alternate so load hits both alike."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def head_rays(n: int, image: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random pixels of an image² pinhole camera at z = -3 (focal so the box fills ~80 % of the frame)."""
    focal = image * 3.0 / 2.0 * 0.8
    px = torch.randint(0, image, (n, 2), generator=gen).float() + 0.5 - image / 2
    d = torch.nn.functional.normalize(torch.cat([px / focal, torch.ones(n, 1)], 1), dim=1)
    return torch.tensor([0.0, 0.0, -3.0]).expand(n, 3).contiguous(), d


def ellipsoid_grid(resolution: int, occupancy: float) -> OccupancyGrid:
    grid = OccupancyGrid((-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), resolution)
    centres = grid.cell_points(torch.arange(grid.geometry.n_cells))
    r = (centres / torch.tensor([0.8, 1.0, 0.9])).norm(dim=1)
    grid.set_occupancy(r <= torch.quantile(r, occupancy))
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rays", type=int, default=4096)
    ap.add_argument("--image", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--occupancy", type=float, default=0.5)
    ap.add_argument("--cone", type=float, default=0.004)
    ap.add_argument("--max-samples", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    record = load_extension(RAYMARCH_SPEC, "cpu")
    if record.module is None:
        sys.exit(f"CPU build failed: {record.error}")
    load_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(0)
    o, d = head_rays(args.rays, args.image, gen)
    grid = ellipsoid_grid(args.resolution, args.occupancy)
    params = MarchParams(cone_angle=args.cone, dt_min=2 * math.sqrt(3) / 512, dt_max=0.05,
                         max_samples=args.max_samples)  # fmt: skip
    samples = ray_march(o, d, grid, params, backend="cpu")
    ref = ray_march_torch(o, d, grid.bitfield, grid.geometry, params)
    identical = all(torch.equal(getattr(samples, k), getattr(ref, k)) for k in ("ray_indices", "t_starts", "t_ends"))
    n_s = samples.n_samples
    sig = (torch.rand(n_s, generator=gen) * 30).requires_grad_()
    rgb = torch.rand(n_s, 3, generator=gen).requires_grad_()
    packed = (samples.t_starts, samples.t_ends, samples.offsets, samples.counts)
    upstream = [torch.randn(args.rays, 3, generator=gen)]

    def march_step(name: str) -> Callable[[], None]:
        if name == "cpu":
            return lambda: ray_march(o, d, grid, params, backend="cpu")
        return lambda: ray_march_torch(o, d, grid.bitfield, grid.geometry, params)

    def comp_step(fn, backward: bool) -> Callable[[], None]:
        def step() -> None:
            if backward:
                torch.autograd.grad(fn(sig, rgb, *packed).color, (sig, rgb), upstream)
            else:
                with torch.no_grad():
                    fn(sig, rgb, *packed)

        return step

    modes = {
        "march": {n: march_step(n) for n in ("cpu", "torch")},
        "composite fwd": {"cpu": comp_step(composite_cpu, False), "torch": comp_step(composite_torch, False)},
        "composite f+b": {"cpu": comp_step(composite_cpu, True), "torch": comp_step(composite_torch, True)},
    }
    rows, figures = [], {}
    for mode, steps in modes.items():
        secs = time_interleaved(steps, args.repeats)
        c, t = secs["cpu"], secs["torch"]
        rows.append((mode, c, t))
        key = mode.replace(" ", "_").replace("+", "")
        figures.update({f"{key}_cpu_ms": round(c * 1e3, 3), f"{key}_torch_ms": round(t * 1e3, 3),
                        f"{key}_cpu_rays_per_s": round(args.rays / c), f"{key}_cpu_samples_per_s": round(n_s / c),
                        f"{key}_torch_samples_per_s": round(n_s / t), f"{key}_speedup": round(t / c, 1)})  # fmt: skip

    hit = int((samples.counts > 0).sum())
    print(f"ray march + composite: {args.rays} rays of a {args.image}² render ({hit} rays with samples), grid "
          f"{args.resolution}³ at {grid.occupancy_fraction():.2f} occupancy, {n_s} samples "
          f"({n_s / max(hit, 1):.1f}/hit ray), cone {args.cone}, {torch.get_num_threads()} threads")  # fmt: skip
    print(f"CPU build loaded via {record.source} in {load_s:.1f} s; samples identical to the mirror: {identical}; "
          f"medians of {args.repeats} interleaved runs; load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':<14} {'cpu ms':>9} {'torch ms':>10} {'cpu Mrays/s':>12} {'cpu Msamp/s':>12} "
          f"{'torch Msamp/s':>14} {'speedup':>8}")  # fmt: skip
    for mode, c, t in rows:
        print(f"{mode:<14} {c * 1e3:>9.2f} {t * 1e3:>10.2f} {args.rays / c / 1e6:>12.3f} {n_s / c / 1e6:>12.2f} "
              f"{n_s / t / 1e6:>14.2f} {t / c:>7.1f}x")  # fmt: skip
    figures.update(rays=args.rays, samples=n_s, occupancy=round(grid.occupancy_fraction(), 3),
                   resolution=args.resolution, threads=torch.get_num_threads(), identical_samples=identical,
                   build=record.source, loadavg=round(os.getloadavg()[0], 2))  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
