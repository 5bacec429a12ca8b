"""Rebuild the shipped open face model: ``python tools/build_face_model.py [OUT.npz]``."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avatar3d.face.default_model import DEFAULT_MODEL_PATH, build_default_model  # noqa: E402


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_MODEL_PATH
    model = build_default_model()
    model.save(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {model.n_vertices} vertices, "
          f"{model.n_identity} identity, {model.n_expression} expression components")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
