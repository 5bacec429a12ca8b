"""Audio front-ends that turn speech into per-video-frame features for the motion model.

:mod:`avatar3d.audio.features` is the weight-free one (log-mel + YIN pitch + RMS
energy, aligned to video frames); it is re-exported here for convenience.
"""
from __future__ import annotations

from avatar3d.audio.features import (
    AudioFeatureConfig,
    energy,
    frame_features,
    frontend_name,
    log_mel,
    pitch,
)

__all__ = ["AudioFeatureConfig", "energy", "frame_features", "frontend_name", "log_mel", "pitch"]
