"""``avatar3d demo``: every stage that exists so far, end to end, on the built-in subject.

Today: synthesise a talking subject (speech, head motion, blinks, ground truth) and
check it with MediaPipe.  Data prep, training and rendering join as they land.
"""
from __future__ import annotations

import time
from pathlib import Path

from avatar3d.synth.check import check_clip
from avatar3d.synth.generate import SynthConfig, generate


def run_demo(out: Path, fast: bool = False) -> dict:
    """Run the demo into ``out`` and print where everything is."""
    started = time.time()
    subject_dir = Path(out) / "subject"
    print(f"[1/2] synthesising a {'8' if fast else '30'} s talking subject into {subject_dir}")
    report = generate(SynthConfig(duration_s=8.0 if fast else 30.0, seed=0), subject_dir)
    print("[2/2] checking the clip with MediaPipe against its ground truth")
    check = check_clip(subject_dir, progress=True)
    print(f"  face found in {100 * check['detection_rate']:.1f}% of {check['frames']} frames; "
          f"landmark error {check['mean_px']:.2f} px mean / {check['p95_px']:.2f} px p95 "
          f"(lips {check['lips_mean_px']:.2f} px, contour {check['contour_mean_px']:.2f} px)")
    print(f"done in {time.time() - started:.0f} s. Outputs:")
    for key, path in report["files"].items():
        print(f"  {key:12s} {path}")
    print("not yet in the demo: data prep, avatar training, rendering from new speech (see README)")
    return {"synth": report, "check": check}
