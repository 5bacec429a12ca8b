"""Orders in which recorded frames are replayed when a render runs longer than the recording.

Why its own module: the drive tracks, the driving-video pose and the idle face all replay frames
this way; it sat in :mod:`avatar3d.render.drive`, which imports those modules, so they imported
each other.
"""
from __future__ import annotations

import numpy as np

from avatar3d.errors import Avatar3DError

__all__ = ["ping_pong"]


def ping_pong(ids: np.ndarray, n: int) -> np.ndarray:
    """``n`` entries of ``ids`` played forward then backward, repeatedly (no jump where it turns)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        raise Avatar3DError("the avatar has no training frames to take poses from")
    if len(ids) == 1:
        return np.full(n, ids[0], dtype=np.int64)
    cycle = np.concatenate([ids, ids[-2:0:-1]])
    return cycle[np.arange(n) % len(cycle)]
