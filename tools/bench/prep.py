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
* expression accuracy against the generator's true ARKit weights (same names as the face
  model's; a tracked channel the generator never drives has truth 0): per channel the
  correlation (where the truth varies) and the mean absolute error, and as a summary the
  mean absolute error over all channels, the mean correlation of the varying jaw / mouth
  channels and of all varying channels, jawOpen's correlation, and the "noise floor": the
  mean (and largest) standard deviation of the tracked channels whose truth is constant.
  The two rigs differ (the generator's is not the tracker's linear model), so the absolute
  error mixes scale and noise; the correlations and the noise floor do not;
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

from avatar3d.dataset.contract import LANDMARKS, LANDMARK_FLAGS
from avatar3d.errors import Avatar3DError
from avatar3d.eval.pose import rotation_errors_deg, still_jitter_deg, translation_errors_mm
from avatar3d.face import landmark_sets as rg
from avatar3d.face.default_model import load_face_model
from avatar3d.synth.check import load_groundtruth
from avatar3d.synth.generate import SynthConfig, generate
from data_prep.fitted import fitted_projection, load_tracking
from data_prep.pipeline import PrepConfig, prepare


CONSTANT_STD = 1e-3
"""A true channel whose standard deviation is below this counts as constant (weights in [0, 1])."""


def expression_accuracy(truth: dict, expression: np.ndarray, names: tuple[str, ...] | list[str],
                        frames: np.ndarray | None = None) -> dict:
    """Tracked expression weights [N,Ke] (named ``names``) against the ground truth's ``expression``.

    Returns {"channels": {name: {corr, mae, std, std_true}}, "summary": {...}} over ``frames``
    (a boolean mask; default all).  ``corr`` is None where the truth is constant; a tracked
    channel that never moves while its truth does counts as correlation 0.
    """
    true_names = [str(n) for n in truth["expression_names"]]
    unknown = [n for n in true_names if n not in names]
    if unknown:
        raise Avatar3DError(f"ground-truth expressions {unknown} are not in the face model's names: "
                            "regenerate the clip or use a face model with ARKit names")
    keep = np.ones(len(expression), bool) if frames is None else np.asarray(frames, bool)
    est = np.asarray(expression, np.float64)[keep]
    true_all = np.asarray(truth["expression"], np.float64)[keep]
    channels: dict[str, dict] = {}
    for j, name in enumerate(names):
        true = true_all[:, true_names.index(name)] if name in true_names else np.zeros(len(est))
        e = est[:, j]
        varies = true.std() > CONSTANT_STD
        corr = None
        if varies:
            corr = float(np.corrcoef(e, true)[0, 1]) if e.std() > 1e-12 else 0.0
        channels[name] = {"corr": corr, "mae": float(np.abs(e - true).mean()), "std": float(e.std()),
                          "std_true": float(true.std())}
    varying = {k: c for k, c in channels.items() if c["corr"] is not None}
    mouth = [c["corr"] for k, c in varying.items() if k.startswith(("jaw", "mouth"))]
    floor = [c["std"] for c in channels.values() if c["corr"] is None]
    summary = {
        "mae_all": float(np.mean([c["mae"] for c in channels.values()])),
        "mouth_corr": float(np.mean(mouth)) if mouth else float("nan"),
        "varying_corr": float(np.mean([c["corr"] for c in varying.values()])) if varying else float("nan"),
        "jaw_corr": channels["jawOpen"]["corr"] if "jawOpen" in channels and channels["jawOpen"]["corr"] is not None
        else float("nan"),
        "noise_floor": float(np.mean(floor)) if floor else float("nan"),
        "noise_floor_max": float(np.max(floor)) if floor else float("nan"),
        "n_varying": len(varying), "n_mouth": len(mouth), "n_constant": len(floor),
    }
    return {"channels": channels, "summary": summary}


def measure(clip_dir: Path, subject: Path, manifest: dict, config: PrepConfig) -> dict:
    """Every figure of the report, from a generated clip folder and its prepared subject."""
    truth = load_groundtruth(clip_dir / "groundtruth.npz")
    tracking = load_tracking(subject)
    n = tracking.n_frames
    if len(truth["rotation"]) != n:
        raise Avatar3DError(f"{subject}: {n} frames but the ground truth has {len(truth['rotation'])}; "
                            "prepare at the clip's own fps")
    flags = np.load(subject / LANDMARK_FLAGS)
    ok = flags != 0
    rot = rotation_errors_deg(truth["rotation"][ok], tracking.R[ok])
    rot_raw = rotation_errors_deg(truth["rotation"][ok], tracking.R[ok], align=False)
    trans = translation_errors_mm(truth["translation"][ok], tracking.t[ok])
    intr = manifest["intrinsics"]
    model = load_face_model(config.face_model)
    _, projected = fitted_projection(tracking, model, intr["cx"], intr["cy"])
    inner = np.ones(468, bool)
    inner[rg.FACE_OVAL] = False
    to_truth = np.linalg.norm(projected - truth["landmarks"][:, :468, :2], axis=-1)[ok]
    mediapipe = np.load(subject / LANDMARKS)[:, :468, :2]
    to_mediapipe = np.linalg.norm(projected - mediapipe, axis=-1)[ok]
    mediapipe_to_truth = np.linalg.norm(mediapipe - truth["landmarks"][:, :468, :2], axis=-1)[ok]
    expression = expression_accuracy(truth, tracking.expression, model.expression_names, ok)
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
        "expression": expression["summary"], "expression_channels": expression["channels"],
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
    ex = report["expression"]
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
        ("expression mean abs error, all channels (weight)", f"{ex['mae_all']:.3f}"),
        (f"expression corr., jawOpen / mouth ({ex['n_mouth']} channels, mean)",
         f"{ex['jaw_corr']:.2f} / {ex['mouth_corr']:.2f}"),
        (f"expression corr., all {ex['n_varying']} varying channels (mean)", f"{ex['varying_corr']:.2f}"),
        (f"expression std where truth constant, mean / max ({ex['n_constant']})",
         f"{ex['noise_floor']:.3f} / {ex['noise_floor_max']:.3f}"),
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
