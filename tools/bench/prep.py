"""Benchmark: `avatar3d prep` on a synthetic subject, measured against its ground truth.

Generates a synthetic clip (default 60 s, 512²), runs ``prepare`` with the default
PrepConfig, and reports (definitions: docs METRICS.md):

* rotation error (deg): median / p95 after the constant frame offset between the face
  model's canonical frame and the generator's rig, and raw;
* translation error (mm): median after the one global similarity (monocular scale);
* landmark reprojection error (px): the fitted model's projected landmarks
  (:func:`data_prep.fitted.fitted_projection`, the preview's projection) against the
  true landmarks, all 468 and without the 36 face-oval (contour) points; and against
  MediaPipe's own landmarks (what the tracker fitted);
* jitter (deg/frame) on segments where the true head is still;
* wall time per stage (from the manifest) as a ratio of the clip duration.

Prints a table, then, as the very last line, one JSON object.

    python tools/bench/prep.py [--duration 60] [--seed 0] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from avatar3d.errors import Avatar3DError
from avatar3d.eval.pose import rotation_errors_deg, still_jitter_deg, translation_errors_mm
from avatar3d.face.default_model import load_face_model
from avatar3d.synth import regions as rg
from avatar3d.synth.check import load_groundtruth
from avatar3d.synth.generate import SynthConfig, generate
from data_prep.fitted import fitted_projection, load_tracking
from data_prep.pipeline import PrepConfig, prepare


def measure(clip_dir: Path, subject: Path, manifest: dict, config: PrepConfig) -> dict:
    """Every figure of the report, from a generated clip folder and its prepared subject."""
    truth = load_groundtruth(clip_dir / "groundtruth.npz")
    tracking = load_tracking(subject)
    n = tracking.n_frames
    if len(truth["rotation"]) != n:
        raise Avatar3DError(f"{subject}: {n} frames but the ground truth has {len(truth['rotation'])}; "
                            "prepare at the clip's own fps")
    flags = np.load(subject / "landmark_flags.npy")
    ok = flags != 0
    rot = rotation_errors_deg(truth["rotation"][ok], tracking.R[ok])
    rot_raw = rotation_errors_deg(truth["rotation"][ok], tracking.R[ok], align=False)
    trans = translation_errors_mm(truth["translation"][ok], tracking.t[ok])
    intr = manifest["intrinsics"]
    _, projected = fitted_projection(tracking, load_face_model(config.face_model), intr["cx"], intr["cy"])
    inner = np.ones(468, bool)
    inner[rg.FACE_OVAL] = False
    to_truth = np.linalg.norm(projected - truth["landmarks"][:, :468, :2], axis=-1)[ok]
    mediapipe = np.load(subject / "landmarks.npy")[:, :468, :2]
    to_mediapipe = np.linalg.norm(projected - mediapipe, axis=-1)[ok]
    mediapipe_to_truth = np.linalg.norm(mediapipe - truth["landmarks"][:, :468, :2], axis=-1)[ok]
    clip_s = n / float(manifest["fps"])
    stages = {name: record["wall_s"] for name, record in manifest["stages"].items()}
    return {
        "frames": n, "clip_s": round(clip_s, 2), "excluded_frames": int((~ok).sum()),
        "focal_px": round(tracking.focal, 1), "depth_scale": round(tracking.depth_scale, 3),
        "rotation_deg": {"median": float(np.median(rot)), "p95": float(np.percentile(rot, 95)),
                         "median_raw": float(np.median(rot_raw)), "p95_raw": float(np.percentile(rot_raw, 95))},
        "translation_mm": {"median": float(np.median(trans)), "p95": float(np.percentile(trans, 95))},
        "reprojection_px": {"all": float(np.nanmean(to_truth)), "non_contour": float(np.nanmean(to_truth[:, inner])),
                            "vs_mediapipe_all": float(np.nanmean(to_mediapipe)),
                            "vs_mediapipe_non_contour": float(np.nanmean(to_mediapipe[:, inner])),
                            "mediapipe_vs_truth_non_contour": float(np.nanmean(mediapipe_to_truth[:, inner]))},
        "jitter_still_deg": still_jitter_deg(tracking.R[ok], truth["head_still"][ok]),
        "stage_s": stages, "stage_over_clip": {k: v / clip_s for k, v in stages.items()},
        "total_over_clip": sum(stages.values()) / clip_s,
    }


def _rounded(value: object) -> object:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 3)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="clip length in seconds (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the clip and the subject folder here (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        os.environ.setdefault("AVATAR3D_CACHE", str(Path(tmp) / "cache"))
        clip_dir, subject = root / "clip", root / "subject"
        started = time.time()
        generate(SynthConfig(duration_s=args.duration, seed=args.seed), clip_dir, progress=False)
        generate_s = time.time() - started
        config = PrepConfig()
        started = time.time()
        manifest = prepare(clip_dir / "video.mp4", subject, config, progress=False, log=lambda _: None)
        prep_s = time.time() - started
        report = measure(clip_dir, subject, manifest, config)
    report.update(bench="prep", seed=args.seed, generate_s=round(generate_s, 1), prep_wall_s=round(prep_s, 1),
                  cores=os.cpu_count())
    rot, tr, rp = report["rotation_deg"], report["translation_mm"], report["reprojection_px"]
    print(f"prep on a {report['clip_s']:.0f} s synthetic clip (seed {args.seed}, {report['frames']} frames, "
          f"{report['excluded_frames']} excluded), {os.cpu_count()} cores; focal {report['focal_px']} px, "
          f"depth scale {report['depth_scale']}")
    rows = [
        ("rotation error, median / p95 (deg, after offset)", f"{rot['median']:.2f} / {rot['p95']:.2f}"),
        ("rotation error, median / p95 (deg, raw)", f"{rot['median_raw']:.2f} / {rot['p95_raw']:.2f}"),
        ("translation error, median / p95 (mm, after similarity)", f"{tr['median']:.2f} / {tr['p95']:.2f}"),
        ("reprojection vs truth, all 468 (px)", f"{rp['all']:.2f}"),
        ("reprojection vs truth, non-contour (px)", f"{rp['non_contour']:.2f}"),
        ("reprojection vs MediaPipe, all / non-contour (px)",
         f"{rp['vs_mediapipe_all']:.2f} / {rp['vs_mediapipe_non_contour']:.2f}"),
        ("MediaPipe vs truth, non-contour (px)", f"{rp['mediapipe_vs_truth_non_contour']:.2f}"),
        ("jitter on still segments (deg/frame)", f"{report['jitter_still_deg']:.3f}"),
    ]
    for name, value in rows:
        print(f"{name:56s} {value:>14s}")
    print(f"{'stage':20s} {'seconds':>9s} {'x clip duration':>16s}")
    for name, seconds in report["stage_s"].items():
        print(f"{name:20s} {seconds:9.1f} {report['stage_over_clip'][name]:16.3f}")
    print(f"{'total':20s} {sum(report['stage_s'].values()):9.1f} {report['total_over_clip']:16.3f}")
    print(json.dumps(_rounded(report)))


if __name__ == "__main__":
    main()
