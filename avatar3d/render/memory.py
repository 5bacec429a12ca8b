"""Refuse a render whose frames cannot fit in this machine's memory, before any work, with the numbers.

Why: memory grows with the frame's pixel count (the head is rendered in passes of a bounded number
of rays, but the torso field, the composite and the frame buffers hold every pixel at once), and a
render that runs the machine out of memory takes it down with it instead of failing: `--size 4096`
once reached 21.8 GB of 23 GB. The figures below were measured (peak RSS of one frame of
tests/assets/sync_avatar on a CPU: 0.41 / 0.73 / 1.05 / 2.99 GB at 256² / 512² / 1024² / 2048²)
and carry a margin; see docs/render.md.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from avatar3d.errors import ResourceError

BYTES_PER_PIXEL = 1000  # measured 620 B a pixel of one frame (1024² -> 2048²), +60 % for the view warp and sinks
FIXED_BYTES = 1_000_000_000  # measured 0.75 GB: the interpreter, torch, the avatar and one pass of 512² head rays
EXTRA_VIEW_BYTES_PER_PIXEL = 64  # each further stereo eye: its finished float view is kept for the side by side

__all__ = ["available_memory", "estimate_render_bytes", "check_render_memory"]


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get without swapping (MemAvailable); None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate_render_bytes(size: int, eyes: int = 1) -> int:
    """Peak memory of rendering ``size``² frames with ``eyes`` views side by side."""
    pixels = int(size) * int(size)
    return FIXED_BYTES + pixels * (BYTES_PER_PIXEL + (int(eyes) - 1) * EXTRA_VIEW_BYTES_PER_PIXEL)


def check_render_memory(size: int, eyes: int = 1, label: str = "--size", available: int | None = None) -> None:
    """One-line :class:`ResourceError` (exit 6) when the render would need more memory than is available."""
    have = available_memory() if available is None else available
    need = estimate_render_bytes(size, eyes)
    if have is None or need <= have:
        return
    per_pixel = BYTES_PER_PIXEL + (eyes - 1) * EXTRA_VIEW_BYTES_PER_PIXEL
    fits = int(math.sqrt(max(have - FIXED_BYTES, 0) / per_pixel)) // 2 * 2
    advice = f"use {label} {fits} or smaller" if fits >= 16 else "free memory first"
    raise ResourceError(f"{label} {size}: rendering {size}x{size} frames needs about {need / 1e9:.1f} GB of memory, "
                        f"but {have / 1e9:.1f} GB is available; {advice}")  # fmt: skip
