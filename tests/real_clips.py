"""Where the shared real talking-head clips are (``../shared/real``: evaluation and tests only, never in
the repository) and the size tests prepare them at."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "real"
REAL_CLIPS = sorted(SHARED_REAL.glob("*.mp4")) if SHARED_REAL.is_dir() else []
REAL_PREP_SIZE = 256  # the checks do not depend on the size; 512² doubles the detection and parsing time
