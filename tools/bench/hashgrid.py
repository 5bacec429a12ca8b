"""Benchmark the hash-grid encoding: CPU C++/OpenMP build vs the pure-torch mirror.

Why: the encoding runs for every sample along every ray, forward and backward, so
its throughput bounds CPU training. Both paths are timed in the same run on the
same inputs (fresh random points in [0,1]^d, table ~ U(-1e-4, 1e-4)).

Modes:
  fwd        forward only, under torch.no_grad()
  fwd+bwd    forward, then autograd backward to the table (and inputs with --input-grad)

Usage: python tools/bench/hashgrid.py [--points 65536] [--levels 16] [--features 2]
       [--log2-table 19] [--dims 3] [--repeats 5] [--input-grad]
The last line printed is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from avatar3d.nerf.backend import load_extension
from avatar3d.nerf.encoding import HASHGRID_SPEC, hashgrid_encode_cpu, hashgrid_encode_torch, make_layout


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall s, process CPU s) of each step after a warm-up.

    Steps alternate so machine load hits both alike; CPU time (all threads) is
    reported too because shared 2-core machines make wall time noisy.
    """
    for step in steps.values():
        step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            step()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return {
        name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1 << 16)
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--features", type=int, default=2)
    ap.add_argument("--log2-table", type=int, default=19)
    ap.add_argument("--dims", type=int, default=3, choices=(2, 3))
    ap.add_argument("--base", type=float, default=16.0)
    ap.add_argument("--scale", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--input-grad", action="store_true", help="also backpropagate to the input points")
    args = ap.parse_args()

    t0 = time.perf_counter()
    record = load_extension(HASHGRID_SPEC, "cpu")
    if record.module is None:
        sys.exit(f"CPU build failed: {record.error}")
    load_s = time.perf_counter() - t0

    lay = make_layout(args.dims, args.levels, args.features, args.log2_table, args.base, args.scale)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.points, args.dims, generator=gen).requires_grad_(args.input_grad)
    table = ((torch.rand(lay.n_rows, args.features, generator=gen) * 2 - 1) * 1e-4).requires_grad_()
    v_out = torch.randn(args.points, lay.out_dim, generator=gen)
    wrt = (x, table) if args.input_grad else (table,)

    rows = []
    figures: dict[str, float | int | str] = {}
    for mode in ("fwd", "fwd+bwd"):
        steps = {}
        for name, fn in (("cpu", hashgrid_encode_cpu), ("torch", hashgrid_encode_torch)):
            if mode == "fwd":
                def step(fn=fn) -> None:
                    with torch.no_grad():
                        fn(x, table, lay)
            else:
                def step(fn=fn) -> None:
                    torch.autograd.grad(fn(x, table, lay), wrt, v_out)
            steps[name] = step
        secs = time_interleaved(steps, args.repeats)
        (c_wall, c_cpu), (t_wall, t_cpu) = secs["cpu"], secs["torch"]
        rows.append((mode, c_wall, t_wall, t_wall / c_wall, t_cpu / c_cpu))
        key = mode.replace("+", "_")
        figures[f"{key}_cpu_ms"] = round(c_wall * 1e3, 2)
        figures[f"{key}_torch_ms"] = round(t_wall * 1e3, 2)
        figures[f"{key}_cpu_points_per_s"] = round(args.points / c_wall)
        figures[f"{key}_torch_points_per_s"] = round(args.points / t_wall)
        figures[f"{key}_speedup"] = round(t_wall / c_wall, 2)
        figures[f"{key}_speedup_cpu_time"] = round(t_cpu / c_cpu, 2)

    print(f"hash grid: {args.points} points x {args.dims}D, {args.levels} levels x {args.features} features, "
          f"table 2^{args.log2_table} ({lay.n_rows} rows, {sum(lay.hashed)} hashed levels), "
          f"{torch.get_num_threads()} threads, input grad {'on' if args.input_grad else 'off'}")  # fmt: skip
    print(f"CPU build loaded via {record.source} in {load_s:.1f} s; medians of {args.repeats} interleaved runs; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':<9} {'cpu ms':>9} {'torch ms':>9} {'cpu Mpts/s':>11} {'torch Mpts/s':>13} {'speedup':>8} "
          f"{'(CPU time)':>10}")  # fmt: skip
    for mode, c, t, r, rc in rows:
        print(f"{mode:<9} {c * 1e3:>9.1f} {t * 1e3:>9.1f} {args.points / c / 1e6:>11.2f} "
              f"{args.points / t / 1e6:>13.2f} {r:>7.1f}x {rc:>9.1f}x")  # fmt: skip
    figures.update(points=args.points, dims=args.dims, levels=args.levels, features=args.features,
                   log2_table=args.log2_table, threads=torch.get_num_threads(), input_grad=args.input_grad,
                   build=record.source, loadavg=round(os.getloadavg()[0], 2))  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
