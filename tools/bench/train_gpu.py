"""Avatar training and rendering at 512² on a GPU (configs/gpu_512.yaml): time to 30 dB, render FPS.

Why separate from train.py: a lent GPU's time is short, so this one takes an already prepared
subject (prep needs MediaPipe, which GPU images lack), trains for a fixed time with frequent
held-out evaluations, and times inference renders with the CUDA kernels.

With --truth (the generator's groundtruth.npz, or any .npz with its rotation, translation and
intrinsics) it also reports the median rotation error of the training and held-out poses the
avatar ends with (tracked, or refined and re-tracked when the config refines poses); with
--train-on-truth it trains on the true poses and focal instead, which tells tracking error and
model capacity apart at 512².

Usage: python tools/bench/train_gpu.py SUBJECT [--minutes 3] [--out DIR] [--config configs/gpu_512.yaml]
                                       [--truth NPZ [--train-on-truth]] [--budgets B ...] [--device cuda]
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from avatar3d.config import load_config
from avatar3d.eval.pose import median_rotation_errors, true_camera
from avatar3d.dataset.reader import load_subject
from avatar3d.avatar.loading import load_avatar
from avatar3d.train.config import TrainConfig
from avatar3d.train.trainer import train

REPO = Path(__file__).resolve().parents[2]


def render_fps(avatar, data, ids, budget: int) -> float:  # type: ignore[no-untyped-def]
    model = avatar.model
    """Frames per second rendering ``ids`` at training resolution with adaptive rounds of ``budget`` samples."""
    model.config = dataclasses.replace(model.config, render_sample_budget=int(budget))
    sync = torch.cuda.synchronize if next(model.parameters()).is_cuda else (lambda: None)
    avatar.render_subject_frame(data, int(ids[0]))  # warm-up
    sync()
    t0 = time.perf_counter()
    for i in ids:
        avatar.render_subject_frame(data, int(i))
    sync()
    return len(ids) / (time.perf_counter() - t0)


def rotation_errors(truth: dict[str, np.ndarray], data, R: np.ndarray) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median rotation error (deg, after the constant frame offset) of poses ``R``, training and held-out frames."""
    return median_rotation_errors(truth["rotation"], R, {"train": data.train_ids, "val": data.val_ids})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "bench_train_gpu")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "gpu_512.yaml")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--budgets", type=int, nargs="*", default=[0, 65536, 262144, 1048576],
                    help="also time rendering with these render_sample_budget values (0: fixed steps per round)")
    ap.add_argument("--truth", type=Path, help="the generator's groundtruth.npz: report rotation errors")
    ap.add_argument("--train-on-truth", action="store_true", help="train on the true poses and focal (needs --truth)")
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu only to smoke-test this script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("tools/bench/train_gpu.py: torch sees no GPU (use --device cpu only to smoke-test the script)")
    if args.train_on_truth and args.truth is None:
        sys.exit("tools/bench/train_gpu.py: --train-on-truth needs --truth GROUNDTRUTH.npz")
    truth = dict(np.load(args.truth)) if args.truth else None
    config = load_config(TrainConfig, args.config)
    config = dataclasses.replace(config, time_budget_s=args.minutes * 60, steps=100_000, checkpoint_every=1000,
                                 eval=dataclasses.replace(config.eval, every=args.eval_every), device=args.device)  # fmt: skip
    t0 = time.perf_counter()
    data = load_subject(args.subject, config.resolution, progress=False)
    load_s = time.perf_counter() - t0
    if args.train_on_truth:
        decode = json.loads((args.subject / "decode.json").read_text(encoding="utf-8"))
        data.R, data.t, data.K, _ = true_camera(truth, data.R, data.t, decode, config.resolution)
    pose_errors_tracked = rotation_errors(truth, data, data.R) if truth and not args.train_on_truth else None
    result = train(args.subject, args.out, config, data=data, progress=False)
    history = json.loads((args.out / "history.json").read_text())
    to_30 = next((h["elapsed_s"] for h in history if h["psnr_full"] >= 30.0), None)

    avatar = load_avatar(args.out, args.device)
    bundle = avatar.bundle
    pose_errors_final = None
    if pose_errors_tracked is not None:
        pose_errors_final = rotation_errors(truth, data, np.asarray(bundle.R))  # refined / re-tracked if enabled
    ids = data.val_ids[:30]
    fps_by_budget = {b: render_fps(avatar, data, ids, b) for b in args.budgets}  # the same warm GPU, one after another
    fps = render_fps(avatar, data, ids, config.avatar.render_sample_budget)

    print(f"device {torch.cuda.get_device_name(0) if args.device == 'cuda' else args.device}; subject {data.n_frames} frames at {config.resolution}² "
          f"(cache {load_s:.0f} s)")
    print(f"{'step':>7}{'train s':>9}{'PSNR full':>11}{'head':>8}{'mouth':>8}")
    for h in history:
        print(f"{h['step']:>7}{h['elapsed_s']:>9.1f}{h['psnr_full']:>11.2f}{h['psnr_head']:>8.2f}{h['psnr_mouth']:>8.2f}")
    for label, value in (("final held-out", result.get("val")), ("  with landmark-tracked held-out poses",
                                                                  result.get("val_tracked"))):
        if value:
            print(f"{label}: PSNR full / head / mouth {value['psnr_full']:.2f} / {value['psnr_head']:.2f} / "
                  f"{value['psnr_mouth']:.2f} dB")
    if pose_errors_tracked:
        print(f"median rotation error train / val: tracked {pose_errors_tracked['rot_train_deg']:.2f}° / "
              f"{pose_errors_tracked['rot_val_deg']:.2f}°" + (f"; refined + re-tracked "
              f"{pose_errors_final['rot_train_deg']:.2f}° / {pose_errors_final['rot_val_deg']:.2f}°"
              if pose_errors_final else ""))
    print(f"time to 30 dB full-frame: {to_30} s; render {config.resolution}²: {fps:.1f} FPS (incl. host copies)")
    for budget, value in fps_by_budget.items():
        print(f"  render_sample_budget {budget:>9}: {value:.1f} FPS")
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    print(json.dumps({"device": device, "poses": "truth" if args.train_on_truth else "tracked",
                      "pose_errors_tracked": pose_errors_tracked, "pose_errors_final": pose_errors_final,
                      "val_tracked": result.get("val_tracked"), "resolution": config.resolution,
                      "steps": result["step"], "train_s": result["elapsed_s"], "val": result.get("val"),
                      "seconds_to_30db": to_30, "render_fps": round(fps, 1),
                      "render_fps_by_budget": {str(b): round(v, 1) for b, v in fps_by_budget.items()}, "history": history}))


if __name__ == "__main__":
    main()
