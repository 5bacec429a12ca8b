"""Rebuild the shipped default motion model (avatar3d/motion/data/default_motion.pt).

It is trained on a synthetic multi-voice corpus only (espeak-ng voices, accents, speeds and
pitches; mouth targets from the synthetic subject's viseme rules), with held-out voices,
by the motion benchmark, which also prints its held-out figures:

    python tools/train_default_motion.py            # ~10 minutes on 2 cores
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "avatar3d" / "motion" / "data" / "default_motion.pt"
ARGS = ["--corpus", "build/motion_corpus", "--model", "build/default_motion.pt", "--steps", "1500", "--seed", "0"]


def main() -> None:
    subprocess.run([sys.executable, str(REPO / "tools" / "bench" / "motion.py"), *ARGS], cwd=REPO, check=True)
    from avatar3d.motion.model import load

    load(REPO / "build" / "default_motion.pt").save(TARGET)  # weights only, no optimizer state
    print(f"wrote {TARGET} ({TARGET.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
