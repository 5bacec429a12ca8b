"""Benchmark avatar3d.synth.raster against a per-triangle-loop baseline.

Why: the synthetic-subject generator renders 4,500 frames per 3-minute clip on
two CPU cores, so rasterize + interpolate must stay around 10-15 ms per 512x512
frame for a ~1,200-triangle head covering ~100k pixels.

Loads:
  head      ellipsoid "head" of ~1,200 triangles, ~100k px of 512x512, back faces culled
  head-all  same, no culling (back faces enumerated too)
  scatter   1,500 random overlapping triangles at random depths all over the frame

Usage: python tools/bench/raster.py [--frames N] [--baseline-frames N]
The last line printed is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from avatar3d.synth.raster import Fragments, interpolate, project, rasterize

H = W = 512


def ellipsoid_mesh(n_lat: int = 24, n_lon: int = 26, radii=(0.09, 0.12, 0.10)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lat-long ellipsoid, outward counter-clockwise winding; returns verts, faces, uv."""
    theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]  # ring polar angles (y axis is up/down)
    phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), -np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    verts = np.concatenate([ring, [[0, -1, 0], [0, 1, 0]]]) * np.asarray(radii)
    uv = np.concatenate([np.stack([p / (2 * np.pi), t / np.pi], -1).reshape(-1, 2), [[0.5, 0.0], [0.5, 1.0]]])
    top, bottom = len(ring), len(ring) + 1
    idx = np.arange(len(ring)).reshape(n_lat - 1, n_lon)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.full(n_lon, top), idx[0], nxt[0]], -1)]
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    faces.append(np.stack([a, c, b], -1).reshape(-1, 3))
    faces.append(np.stack([b, c, d], -1).reshape(-1, 3))
    faces.append(np.stack([np.full(n_lon, bottom), nxt[-1], idx[-1]], -1))
    faces = np.concatenate(faces)
    # Make every face outward-facing whatever the parametrisation's handedness.
    n = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    inward = np.einsum("fc,fc->f", n, verts[faces].mean(1)) < 0
    faces[inward] = faces[inward][:, ::-1]
    return verts, faces, uv


def head_load(frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The head mesh turned a little per frame, projected at 512x512."""
    verts, faces, uv = ellipsoid_mesh()
    yaw = 0.3 * np.sin(frame * 0.1)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    pts = verts @ rot.T + [0.0, 0.0, 0.6]
    xy, depth = project(pts, 1030.0, 1030.0, W / 2, H / 2)
    return xy, depth, faces, uv


def scatter_load(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1,500 random triangles (5-40 px) at random depths, overlapping everywhere."""
    rng = np.random.default_rng(seed)
    F = 1500
    centre = rng.uniform(0, [W, H], (F, 1, 2))
    size = rng.uniform(5, 40, (F, 1, 1))
    xy = (centre + size * rng.uniform(-1, 1, (F, 3, 2))).reshape(-1, 2)
    depth = rng.uniform(1.0, 5.0, (F, 1)) + rng.uniform(-0.3, 0.3, (F, 3))
    return xy, depth.reshape(-1), np.arange(3 * F).reshape(F, 3), rng.uniform(0, 1, (3 * F, 2))


def baseline_rasterize(xy, depth, tris, height, width, *, cull_backfaces=False, near=1e-3) -> Fragments:
    """The simple approach: Python loop over triangles, numpy over each bounding box."""
    tri_id = np.full((height, width), -1, np.int32)
    bary = np.zeros((height, width, 3), np.float32)
    zbuf = np.full((height, width), np.inf)
    for f, (a, b, c) in enumerate(tris):
        z = depth[[a, b, c]]
        if np.any(z <= near):
            continue
        (x0, y0), (x1, y1), (x2, y2) = xy[a], xy[b], xy[c]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0 or (cull_backfaces and area > 0):
            continue
        j0, j1 = max(int(np.floor(min(x0, x1, x2))), 0), min(int(np.ceil(max(x0, x1, x2))), width)
        i0, i1 = max(int(np.floor(min(y0, y1, y2))), 0), min(int(np.ceil(max(y0, y1, y2))), height)
        if j1 <= j0 or i1 <= i0:
            continue
        px = np.arange(j0, j1) + 0.5
        py = (np.arange(i0, i1) + 0.5)[:, None]
        w0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) / area
        w1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        u = np.stack([w0 / z[0], w1 / z[1], w2 / z[2]], -1)
        pz = 1.0 / u.sum(-1)
        win = inside & (pz < zbuf[i0:i1, j0:j1])
        zbuf[i0:i1, j0:j1][win] = pz[win]
        tri_id[i0:i1, j0:j1][win] = f
        bary[i0:i1, j0:j1][win] = u[win] * pz[win][:, None]
    return Fragments(tri_id, bary, np.where(tri_id >= 0, zbuf, np.inf).astype(np.float32))


def time_frames(raster: Callable, loads: list, cull: bool, reuse: bool = False) -> tuple[float, float, Fragments]:
    """Median wall and CPU ms per frame of raster + interpolate(uv); ``reuse`` passes out= buffers.

    CPU (thread) time is reported too because shared 2-core machines make wall
    time noisy; it excludes time spent waiting for a core.
    """
    times, cpu, fr, img = [], [], None, None
    for xy, depth, faces, uv in loads:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        if reuse:
            fr = raster(xy, depth, faces, H, W, cull_backfaces=cull, out=fr)
            img = interpolate(fr, uv, faces, out=img)
        else:
            fr = raster(xy, depth, faces, H, W, cull_backfaces=cull)
            interpolate(fr, uv, faces)
        times.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return float(np.median(times)), float(np.median(cpu)), fr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60, help="frames timed per load for rasterize")
    ap.add_argument("--baseline-frames", type=int, default=3, help="frames timed per load for the baseline")
    args = ap.parse_args()

    loads = {
        "head": ([head_load(i) for i in range(args.frames)], True),
        "head-all": ([head_load(i) for i in range(args.frames)], False),
        "scatter": ([scatter_load(i) for i in range(args.frames)], False),
    }
    rows, figures = [], {}
    for name, (frames, cull) in loads.items():
        time_frames(rasterize, frames[:3], cull, reuse=True)  # warm-up (scratch buffers)
        ms, cpu, fr = time_frames(rasterize, frames, cull, reuse=True)
        ms_fresh, cpu_fresh, _ = time_frames(rasterize, frames, cull)
        ms_base, cpu_base, fr_base = time_frames(baseline_rasterize, frames[-args.baseline_frames :], cull)
        agree = float((fr.triangle == fr_base.triangle).mean())  # same last frame for both
        F = len(frames[0][2])
        covered = int(fr.mask.sum())
        rows.append((name, "rasterize+interpolate (out=)", ms, cpu, ms_base / ms))
        rows.append((name, "rasterize+interpolate", ms_fresh, cpu_fresh, ms_base / ms_fresh))
        rows.append((name, "baseline per-triangle loop", ms_base, cpu_base, 1.0))
        figures[name] = {
            "triangles": F,
            "covered_px": covered,
            "ms_per_frame": round(ms, 3),
            "cpu_ms_per_frame": round(cpu, 3),
            "ms_per_frame_fresh_outputs": round(ms_fresh, 3),
            "baseline_ms_per_frame": round(ms_base, 3),
            "baseline_cpu_ms_per_frame": round(cpu_base, 3),
            "speedup": round(ms_base / ms, 2),
            "agreement_with_baseline": round(agree, 6),
        }
        print(f"# {name}: {F} triangles, {covered} px covered, pixel agreement with baseline {agree:.5f}")

    print(f"{'load':<10} {'method':<30} {'ms/frame':>9} {'cpu ms':>8} {'speed-up':>9}")
    for name, method, ms, cpu, ratio in rows:
        print(f"{name:<10} {method:<30} {ms:9.2f} {cpu:8.2f} {ratio:8.1f}x")
    print(json.dumps({"image": [H, W], "frames": args.frames, "loads": figures}))


if __name__ == "__main__":
    main()
