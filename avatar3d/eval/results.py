"""What one evaluation produced: the type :mod:`avatar3d.eval.evaluate` fills and
:mod:`avatar3d.eval.report` renders.

Why its own module: the evaluator imports the report and the report reads this type; keeping it
in either one made the two import each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EvalRun"]


@dataclass
class EvalRun:
    """Everything the report shows: the metrics dict (= metrics.json) plus the curves and images."""

    metrics: dict[str, Any]
    frame_ids: np.ndarray  # [n] evaluated subject frames
    psnr_per_frame: np.ndarray  # [n] full-frame PSNR
    span_start: int  # first subject frame of the curves below
    mouth_rendered: np.ndarray  # [span] NaN where not evaluated / no face
    mouth_reference: np.ndarray  # [span]
    envelope: np.ndarray  # [span] dB
    sync_lags: np.ndarray  # [L]
    sync_corr_rendered: np.ndarray  # [L]
    sync_corr_reference: np.ndarray  # [L]
    samples: list[tuple[int, np.ndarray, np.ndarray]]  # (frame id, reference uint8, rendered uint8)
    rendered: np.ndarray | None = None  # uint8 [n, size, size, 3] every evaluated frame (benchmarks: flicker, sheets)
    reference: np.ndarray | None = None  # uint8 [n, size, size, 3] the matching real frames
