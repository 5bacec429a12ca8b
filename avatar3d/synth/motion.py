"""Non-speech motion of the synthetic subject: a wandering head and eye blinks.

The head moves between random key poses with smooth (zero-velocity) transitions and
sometimes holds still, so trackers can be judged both on motion and on jitter while
the true head is still.  Blinks come every 2-6 s with a fast close and slower open.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeadMotionConfig:
    """Ranges of the head's wander around a frontal pose."""

    yaw_deg: float = 15.0
    """Yaw stays within ±yaw_deg."""
    pitch_deg: float = 10.0
    """Pitch stays within ±pitch_deg."""
    roll_deg: float = 5.0
    """Roll stays within ±roll_deg."""
    translation_m: tuple[float, float, float] = (0.02, 0.015, 0.03)
    """Translation stays within ± these (x, y, z) metres of the rest position."""
    move_seconds: tuple[float, float] = (0.8, 2.5)
    """Duration range of one move between key poses."""
    hold_probability: float = 0.3
    """Chance that a key pose is held still for ``hold_seconds``."""
    hold_seconds: tuple[float, float] = (1.0, 2.0)
    """Duration range of a still hold."""
    blink_interval_s: tuple[float, float] = (2.0, 6.0)
    """Time between blinks."""


@dataclass
class HeadTrack:
    """Per-frame head motion: Euler angles (deg) [N,3], translation offsets (m) [N,3], still flags [N]."""

    angles: np.ndarray
    translation: np.ndarray
    still: np.ndarray


def _smoothstep(x: np.ndarray) -> np.ndarray:
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)  # C2 quintic: zero velocity and acceleration at ends


def head_track(n_frames: int, fps: float, config: HeadMotionConfig, rng: np.random.Generator) -> HeadTrack:
    """Random smooth head wander with still holds, starting at the frontal rest pose."""
    limits = np.array([config.yaw_deg, config.pitch_deg, config.roll_deg, *config.translation_m])
    angles = np.zeros((n_frames, 6))
    still = np.zeros(n_frames, dtype=bool)
    current = np.zeros(6)
    frame = 0
    first = True
    while frame < n_frames:
        if first or rng.random() < config.hold_probability:
            n_hold = int(round(rng.uniform(*config.hold_seconds) * fps))
            end = min(n_frames, frame + n_hold)
            angles[frame:end] = current
            still[frame:end] = True
            frame = end
            first = False
            continue
        target = rng.uniform(-1.0, 1.0, size=6) * limits
        n_move = max(2, int(round(rng.uniform(*config.move_seconds) * fps)))
        s = _smoothstep(np.arange(1, n_move + 1) / n_move)[:, None]
        seg = current + s * (target - current)
        end = min(n_frames, frame + n_move)
        angles[frame:end] = seg[: end - frame]
        frame = end
        current = target
    return HeadTrack(angles=angles[:, :3].copy(), translation=angles[:, 3:].copy(), still=still)


def blink_track(n_frames: int, fps: float, config: HeadMotionConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-frame eye closure [N,2] (left, right) in [0,1]: fast close (~80 ms), slower open (~170 ms)."""
    t = np.arange(n_frames) / fps
    closure = np.zeros(n_frames)
    blink_at = rng.uniform(0.5, config.blink_interval_s[1])
    while blink_at < t[-1] + 1.0:
        close_s = rng.uniform(0.06, 0.1)
        hold_s = rng.uniform(0.02, 0.06)
        open_s = rng.uniform(0.14, 0.22)
        dt = t - blink_at
        closing = np.clip(dt / close_s, 0.0, 1.0)
        opening = np.clip((dt - close_s - hold_s) / open_s, 0.0, 1.0)
        shape = np.where(dt < 0, 0.0, _smoothstep(closing) * (1.0 - _smoothstep(opening)))
        closure = np.maximum(closure, shape)
        blink_at += close_s + hold_s + open_s + rng.uniform(*config.blink_interval_s)
    asym = 1.0 - np.abs(rng.normal(0.0, 0.03))
    return np.stack([closure, closure * asym], axis=1).astype(np.float32)
