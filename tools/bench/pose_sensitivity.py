"""How much held-out PSNR does pose error cost?  A diagnostic, not a way to score an avatar.

For each of N held-out frames of SUBJECT, a coordinate search over small offsets of the tracked
head pose (rotation steps 0.8 / 0.4 / 0.2°, translation 2 / 1 / 0.5 mm) maximises the head-region
PSNR of AVATAR's render against that frame.  The gain over the tracked pose bounds what a more
accurate pose could give (from above: six numbers per frame are fitted to the frame itself).
Usage: python tools/bench/pose_sensitivity.py AVATAR SUBJECT [--frames 10].  Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
from avatar3d.eval.image_metrics import frame_metrics
from avatar3d.dataset.reader import LIP_IDS, load_subject
from avatar3d.avatar.loading import load_avatar

STEPS = ((0.8, 0.002), (0.4, 0.001), (0.2, 0.0005))  # degrees, metres


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("avatar", type=Path)
    ap.add_argument("subject", type=Path)
    ap.add_argument("--frames", type=int, default=10)
    args = ap.parse_args()
    avatar = load_avatar(args.avatar)
    bundle = avatar.bundle
    data = load_subject(args.subject, int(bundle.resolution), progress=False)
    ids = data.val_ids[:: max(1, len(data.val_ids) // args.frames)][: args.frames]
    R0, t0 = data.R.copy(), data.t.copy()
    rows = []
    print(f"{'frame':>6}{'tracked':>9}{'searched':>10}   offset (deg; mm)")
    for i in (int(k) for k in ids):
        def head_psnr(dr: np.ndarray, dt: np.ndarray) -> float:
            data.R[i] = Rotation.from_rotvec(np.radians(dr)).as_matrix() @ R0[i]
            data.t[i] = t0[i] + dt
            pred = avatar.render_subject_frame(data, i)["rgb"].numpy()
            return frame_metrics(pred, data.image(i), np.asarray(data.labels[i]), data.landmarks[i][LIP_IDS]).psnr_head

        best_dr, best_dt = np.zeros(3), np.zeros(3)
        tracked = best = head_psnr(best_dr, best_dt)
        for step_deg, step_m in STEPS:
            for axis in range(6):
                for sign in (-1.0, 1.0):
                    dr, dt = best_dr.copy(), best_dt.copy()
                    if axis < 3:
                        dr[axis] += sign * step_deg
                    else:
                        dt[axis - 3] += sign * step_m
                    score = head_psnr(dr, dt)
                    if score > best:
                        best, best_dr, best_dt = score, dr, dt
        data.R[i], data.t[i] = R0[i], t0[i]
        rows.append((tracked, best, float(np.linalg.norm(best_dr)), float(np.linalg.norm(best_dt) * 1000)))
        print(f"{i:>6}{tracked:>9.2f}{best:>10.2f}   {np.round(best_dr, 2)}; {np.round(best_dt * 1000, 1)}", flush=True)
    a = np.array(rows)
    print(json.dumps({"frames": len(rows), "head_psnr_tracked": round(float(a[:, 0].mean()), 2),
                      "head_psnr_pose_searched": round(float(a[:, 1].mean()), 2),
                      "median_offset_deg": round(float(np.median(a[:, 2])), 2),
                      "median_offset_mm": round(float(np.median(a[:, 3])), 2)}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
