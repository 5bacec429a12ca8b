"""Benchmark: how fast does `avatar3d synth` generate a clip, relative to the clip's own duration?

Target (Foundation issue): a 3-minute 512² clip in no more than 3 minutes on 2 cores,
i.e. generation time / clip duration <= 1.0.  Prints a table, then one JSON line.

    python tools/bench/synth.py [--duration 180] [--size 512] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from avatar3d.synth.generate import SynthConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="clip length in seconds (default 180)")
    parser.add_argument("--size", type=int, default=512, help="frame size (default 512)")
    parser.add_argument("--workers", type=int, default=2, help="render processes (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("AVATAR3D_CACHE", os.path.join(tmp, "cache"))  # include calibration in the timing
        started = time.time()
        report = generate(SynthConfig(duration_s=args.duration, size=args.size, workers=args.workers,
                                      seed=args.seed), os.path.join(tmp, "clip"), progress=False)
        total = time.time() - started
    clip = report["duration_s"]
    timing = report["timing_s"]
    frames = report["frames"]
    rows = [
        ("speech (TTS + alignment + curves)", timing["speech"]),
        ("photo lift + plate + calibration", timing["scene"]),
        ("render + encode", timing["render_encode"]),
        ("total", total),
    ]
    print(f"synthetic clip: {clip:.1f} s, {frames} frames at {args.size}², {args.workers} workers, {os.cpu_count()} cores")
    print(f"{'stage':38s} {'seconds':>9s} {'x clip duration':>16s}")
    for name, seconds in rows:
        print(f"{name:38s} {seconds:9.1f} {seconds / clip:16.3f}")
    print(f"render + encode per frame: {1000 * timing['render_encode'] / frames:.1f} ms")
    result = {
        "bench": "synth", "clip_s": clip, "frames": frames, "size": args.size, "workers": args.workers,
        "total_s": round(total, 2), "generation_over_clip_duration": round(total / clip, 3),
        "render_encode_ms_per_frame": round(1000 * timing["render_encode"] / frames, 2),
        "stages_s": {k: round(v, 2) for k, v in timing.items()},
        "calibration_val_px": round(report["calibration"]["val_error_px"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
