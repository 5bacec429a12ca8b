"""Host memory of avatar training at 512² on a long subject: frames stay uint8 and memory-mapped.

Why: a 5-minute clip at 512² is 7,500 frames; held in RAM as float32 that is 23.6 GB, more than
this machine has. Training reads its frames and labels from the subject's uint8 cache
(SUBJECT/cache/r512/), memory-mapped, so only the pages of the frames a step draws are touched
and the kernel may drop them again. This runs the real `train` (cache build included, when the
cache is missing) for a few steps and reports the process's peak resident memory, split at the
end into private (anonymous) and file-backed (the memory-mapped cache) pages, against the
float32 and uint8 in-RAM sizes of the frames as references.

Either backend: the config's ``backend:`` picks the trainer (``--config gaussians_cpu --resolution 512`` for the
Gaussian avatar, which has no 512² preset yet).

Usage: python tools/bench/train_memory.py SUBJECT [--config configs/gpu_512.yaml] [--resolution R] [--steps 10]
       [--device cpu]
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from avatar3d.dataset.reader import load_subject  # noqa: E402
from avatar3d.train.gaussian_config import GaussianTrainConfig, load_train_config  # noqa: E402
from avatar3d.train.gaussian_trainer import train_gaussians  # noqa: E402
from avatar3d.train.trainer import train  # noqa: E402


def memory_status() -> dict[str, float]:
    """Peak and current resident memory of this process in MB (Linux /proc/self/status)."""
    fields = {"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[fields[key]] = round(int(value.split()[0]) / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject", type=Path)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "gpu_512.yaml")
    ap.add_argument("--resolution", type=int, help="train at this size instead of the config's")
    ap.add_argument("--steps", type=int, default=10, help="training steps after loading (0: load only)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    config = load_train_config(args.config)
    gaussian = isinstance(config, GaussianTrainConfig)
    config = dataclasses.replace(config, steps=max(1, args.steps), resolution=args.resolution or config.resolution, time_budget_s=0.0, checkpoint_every=10**9,
                                 eval=dataclasses.replace(config.eval, every=0, frames=1, held_out_pose_fit=None),
                                 device=args.device)  # fmt: skip
    cache_built = not (args.subject / "cache" / f"r{config.resolution}" / "cache.json").is_file()
    t0 = time.perf_counter()
    data = load_subject(args.subject, config.resolution, progress=True)
    load_s = time.perf_counter() - t0
    after_load = memory_status()
    train_s = 0.0
    if args.steps > 0:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            (train_gaussians if gaussian else train)(args.subject, Path(tmp) / "avatar", config, data=data,  # type: ignore[arg-type]
                                                     progress=True)  # fmt: skip
            train_s = time.perf_counter() - t0
    end = memory_status()
    n, r = data.n_frames, data.resolution
    float32_mb = n * r * r * 3 * 4 / 2**20
    uint8_mb = n * r * r * 3 / 2**20
    cache_mb = sum(f.stat().st_size for f in (args.subject / "cache" / f"r{r}").glob("*.npy")) / 2**20
    print(f"subject {args.subject}: {n} frames at {r}²; load {load_s:.0f} s ({'cache built' if cache_built else 'cached'}),"
          f" {args.steps} steps {train_s:.0f} s on {args.device}, {'Gaussian' if gaussian else 'NeRF'} avatar")
    print(f"{'what':<46}{'MB':>10}{'vs float32 frames':>19}")
    rows = [("frames as float32 in RAM (reference)", float32_mb), ("frames as uint8 in RAM (reference)", uint8_mb),
            ("uint8 cache on disk (frames + labels)", cache_mb),
            ("peak resident memory, whole run", end["peak_rss_mb"]),
            ("  peak while loading (and caching) the subject", after_load["peak_rss_mb"]),
            ("  resident after loading the subject", after_load["rss_mb"]),
            ("  private (anonymous) at the end", end["anon_mb"]),
            ("  file-backed (mapped cache pages) at the end", end["file_mb"])]  # fmt: skip
    for name, mb in rows:
        print(f"{name:<46}{mb:>10.0f}{mb / float32_mb:>18.1%}")
    print(json.dumps({"backend": "gaussians" if gaussian else "nerf", "frames": n, "resolution": r, "steps": args.steps, "device": args.device,
                      "float32_frames_mb": round(float32_mb), "cache_mb": round(cache_mb), **end,
                      "rss_after_load_mb": after_load["rss_mb"], "peak_rss_load_mb": after_load["peak_rss_mb"],
                      "cache_built": cache_built}))


if __name__ == "__main__":
    main()
