"""``avatar3d demo``: every stage that exists so far, end to end, on the built-in subject.

Today: synthesise a talking subject (speech, head motion, blinks, ground truth),
check it with MediaPipe, prepare it as a dataset and measure the tracking against the
ground truth.  Training and rendering join as they land.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from avatar3d.eval.pose import rotation_errors_deg, still_jitter_deg, translation_errors_mm
from avatar3d.synth.check import check_clip, load_groundtruth
from avatar3d.synth.generate import SynthConfig, generate
from data_prep.pipeline import prepare


def run_demo(out: Path, fast: bool = False) -> dict:
    """Run the demo into ``out`` and print where everything is."""
    started = time.time()
    subject_dir = Path(out) / "subject"
    print(f"[1/3] synthesising a {'8' if fast else '30'} s talking subject into {subject_dir}")
    report = generate(SynthConfig(duration_s=8.0 if fast else 30.0, seed=0), subject_dir)
    print("[2/3] checking the clip with MediaPipe against its ground truth")
    check = check_clip(subject_dir, progress=True)
    print(f"  face found in {100 * check['detection_rate']:.1f}% of {check['frames']} frames; "
          f"landmark error {check['mean_px']:.2f} px mean / {check['p95_px']:.2f} px p95 "
          f"(lips {check['lips_mean_px']:.2f} px, contour {check['contour_mean_px']:.2f} px)")
    prepared_dir = Path(out) / "prepared"
    print(f"[3/3] preparing the clip as a subject dataset in {prepared_dir}")
    manifest = prepare(subject_dir / "video.mp4", prepared_dir)
    truth = load_groundtruth(subject_dir / "groundtruth.npz")
    with np.load(prepared_dir / "tracking.npz") as tracking:
        rot_err = rotation_errors_deg(truth["rotation"], tracking["R"])
        trans_err = translation_errors_mm(truth["translation"], tracking["t"])
        jitter = still_jitter_deg(tracking["R"], truth["head_still"])
    print(f"  tracking vs ground truth: rotation {np.median(rot_err):.2f}° median, translation "
          f"{np.median(trans_err):.1f} mm median (after one global similarity), jitter while still {jitter:.3f}°")
    print(f"done in {time.time() - started:.0f} s. Outputs:")
    for key, path in report["files"].items():
        print(f"  {key:12s} {path}")
    print(f"  {'dataset':12s} {prepared_dir} (manifest.json lists every file)")
    print("not yet in the demo: avatar training, rendering from new speech (see README)")
    return {"synth": report, "check": check, "prep": manifest}
