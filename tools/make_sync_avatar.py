"""Packs a trained avatar as the small test asset of the rendered lip-sync test (tests/assets/sync_avatar).

Why: the suite's own avatars (64², a minute of CPU training) are too small and too briefly trained
for MediaPipe to read their mouths, so the issue's check -- mouth opening measured on the rendered
mp4 against the speech, within ±1 frame -- needs an avatar trained properly. Training one takes
minutes on a GPU, or 20 minutes of this project's CPU, which CI cannot spend; so one is trained once
by the project itself and shipped, about 4 MB, with its personalised motion model.

How the shipped one was made (2026-11-26):
1. on a GPU, the 60 s seed-3 bench subject (`tools/bench/train.py` makes it; 512² frames):
   ``python tools/bench/train_gpu.py SUBJECT --config configs/gpu_256_small.yaml --minutes 2 --budgets``
   (H200: 4,055 steps in 120 s, held-out PSNR 38.4 / 37.0 / 34.1 dB full / head / mouth);
2. here: ``python tools/make_sync_avatar.py AVATAR_DIR SUBJECT tests/assets/sync_avatar``.

This step personalises the motion model to SUBJECT (when the avatar has none yet), stores the float
weights of both as float16 (they load back into float32 models; the test measures this copy), drops
the checkpoint, history and TensorBoard logs, and forgets the subject's path (a machine-local folder).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from avatar3d.motion.personalize import personalize  # noqa: E402
from avatar3d.render.speech import PERSONAL_MODEL_NAME  # noqa: E402
from avatar3d.avatar.bundle import AVATAR_FILE, AvatarBundle  # noqa: E402


def half(tree: Any) -> Any:
    """``tree`` with every float32/float64 tensor cast to float16 (integer and boolean ones untouched)."""
    if isinstance(tree, dict):
        return {k: half(v) for k, v in tree.items()}
    if torch.is_tensor(tree) and tree.is_floating_point():
        return tree.to(torch.float16)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("avatar", type=Path, help="trained avatar folder (avatar.pt, config.yaml)")
    ap.add_argument("subject", type=Path, help="the prepared subject it was trained on (for the motion model)")
    ap.add_argument("out", type=Path, help="asset folder to (re)write")
    args = ap.parse_args()
    motion = args.avatar / PERSONAL_MODEL_NAME
    if not motion.is_file():
        personalize(args.subject, motion, progress=True)
    bundle = AvatarBundle.load(args.avatar)
    bundle.state = half(bundle.state)
    bundle.subject = ""
    blob = torch.load(motion, map_location="cpu", weights_only=False)
    blob["weights"] = half(blob["weights"])
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:  # the asset is replaced whole or not at all
        staged = Path(tmp) / "asset"
        staged.mkdir()
        bundle.save(staged / AVATAR_FILE)
        torch.save(blob, staged / PERSONAL_MODEL_NAME)
        shutil.copy2(args.avatar / "config.yaml", staged / "config.yaml")
        if args.out.exists():
            shutil.rmtree(args.out)
        staged.rename(args.out)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(args.out.iterdir()))
    print(f"wrote {args.out}: {sizes}")


if __name__ == "__main__":
    main()
