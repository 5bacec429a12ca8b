"""Phone-timed lip constraints on predicted mouth curves: sealed lips on p/b/m, a closed, still mouth in pauses.

Why: the audio-to-motion model closes the lips on most bilabials but misses short
ones (30-80 ms M/B on real speech stop at 2.2-4.8 mm), and it keeps moving a little
in pauses.  Viewers notice both.  When the phone timeline is known -- espeak-ng's
own timings for ``--text``, pocketsphinx phone-loop decoding for ``--audio`` --
those two rules can be imposed directly, while every other frame stays as
predicted.  Pure function of (curves, phones, fps); no model, no I/O.

Rules (thresholds in :class:`PhoneConstraintConfig`):

* **bilabial** (ARPAbet P, B, M): every frame whose centre ``(i + 0.5) / fps`` lies
  inside the phone is driven fully to the closed pose; a phone shorter than a frame
  that contains no frame centre closes the frame nearest its middle (so a 30 ms
  "b" still has a sealed frame at 25 fps).  Frames within ``bilabial_ramp_s`` of
  the phone are blended partially (weight falls linearly with the distance of the
  frame centre from the phone), so the closure does not pop.
* **silence** (SIL) at least ``min_silence_s`` long: frames inside it are blended
  to the rest pose with a weight that rises from 0 at the silence's edges to 1
  ``silence_settle_s`` inside them (no ramp at the clip's own start and end), so
  the middle of a pause is exactly the rest pose: closed and still.
* **closed pose**: the lip-opening channels (:data:`OPENING`: jawOpen, mouthFunnel,
  mouthUpperUp*, mouthLowerDown*) are lowered to the rest value, never raised; the
  pressing channels (:data:`PRESSING`: mouthPress*, mouthRoll*) raised to it, never
  lowered; mouthClose (:data:`PAIRED`) is blended to it both ways, because in ARKit
  it seals the lips *against an open jaw* -- left high while the jaw closes, the
  lips would be pushed through each other (the face model reads -13 mm), a pose
  the avatar has never seen.  Other channels (smile, pucker, stretch ...) keep
  their predicted value on bilabials.
* **rest pose**: given by the caller -- the model's own output for digital silence
  (what :class:`avatar3d.motion.streaming.GateConfig` holds the mouth at), i.e. a
  pose in the avatar's own coefficient scale that the avatar has seen -- or, when
  not given, each curve's ``rest_percentile`` (low) percentile for opening
  channels and its median for the others.

The channel lists follow the ARKit definitions; the open face model agrees
(opening channels raise its inner-lip gap, pressing ones and mouthClose lower it; tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import numpy as np

from avatar3d.errors import Avatar3DError

__all__ = ["PhoneConstraintConfig", "ConstrainedMouth", "apply_phone_constraints", "OPENING", "PRESSING", "PAIRED",
           "BILABIAL_LABELS", "VOWEL_LABELS", "SIL"]

SIL = "SIL"
BILABIAL_LABELS = frozenset({"P", "B", "M"})
VOWEL_LABELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"})
OPENING = frozenset({"jawOpen", "mouthFunnel", "mouthUpperUpLeft", "mouthUpperUpRight", "mouthLowerDownLeft",
                     "mouthLowerDownRight"})
"""Channels that part the lips: lowered to the rest value on a bilabial."""
PRESSING = frozenset({"mouthPressLeft", "mouthPressRight", "mouthRollLower", "mouthRollUpper"})
"""Channels that press the lips together: raised to the rest value on a bilabial."""
PAIRED = frozenset({"mouthClose"})
"""Closes the lips relative to jawOpen: taken to the rest value with it on a bilabial."""


class _Timed(Protocol):
    start: float
    end: float
    label: str


@dataclass(frozen=True)
class PhoneConstraintConfig:
    """Thresholds of the phone constraints (see the module docstring for what each rule does)."""

    bilabial_ramp_s: float = 0.04
    """Frames whose centre is within this many seconds of a bilabial are partly closed (linear ramp, one
    frame at 25 fps: a centre 10 ms from the phone gets 3/4, 30 ms gets 1/4).  Short, so that a vowel
    between two bilabials ("papa") still opens; 60 ms cost 1 of 20 open vowels on real speech."""
    min_silence_s: float = 0.3
    """Silences at least this long are held at the rest pose (issue 6: closed and still in pauses >= 300 ms)."""
    silence_settle_s: float = 0.08
    """Time from a long silence's edge to the full rest pose: the mouth closes (and reopens) over ~2 frames
    at 25 fps, and is exactly still from 80 ms into the pause (the lip-closure measure skips 100 ms)."""
    vowel_reach_s: float = 0.04
    """On a vowel's frames the lips take the model's widest opening within this many seconds (one frame at
    25 fps; 0: off): the model opens a frame early or late as often as on time, and a bilabial sealed on
    the right frame would otherwise leave the vowel beside it closed (on held-out synthetic voices the
    open-vowel counter-check fell 75 % -> 25 % on one sentence without it)."""
    rest_percentile: float = 5.0
    """Without a given rest pose: the percentile of each opening channel taken as its closed value."""

    def __post_init__(self) -> None:
        if not (self.bilabial_ramp_s >= 0 and self.min_silence_s > 0 and self.silence_settle_s > 0
                and self.vowel_reach_s >= 0 and 0 <= self.rest_percentile <= 50):
            raise Avatar3DError(f"invalid phone-constraint settings {self}: ramps and silence length must be "
                                "positive, rest_percentile within 0..50")


@dataclass(frozen=True)
class ConstrainedMouth:
    """Curves after the constraints, with the per-frame weights that were applied (for logs and tests)."""

    curves: dict[str, np.ndarray]
    bilabial_weight: np.ndarray
    """[n] in [0, 1]: how far the lips were driven to the closed pose."""
    silence_weight: np.ndarray
    """[n] in [0, 1]: how far the whole mouth was driven to the rest pose."""
    rest: dict[str, float]
    n_bilabials: int
    n_silences: int
    vowel_frames_moved: int = 0
    """Vowel frames that took a neighbour's wider opening (see ``vowel_reach_s``)."""


def _check(curves: Mapping[str, np.ndarray], fps: float) -> int:
    if not curves:
        raise Avatar3DError("no mouth curves given (expected the dict MotionModel.predict returns)")
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and np.isfinite(fps) and fps > 0):
        raise Avatar3DError(f"fps={fps!r} must be a positive number of frames per second")
    lengths = {len(np.asarray(c)) for c in curves.values()}
    if len(lengths) != 1:
        raise Avatar3DError(f"mouth curves differ in length ({sorted(lengths)}); give one value per frame")
    return lengths.pop()


def _bilabial_weight(phones: Sequence[_Timed], centres: np.ndarray, fps: float, ramp: float) -> tuple[np.ndarray, int]:
    n = len(centres)
    w = np.zeros(n)
    count = 0
    for p in phones:
        if p.label not in BILABIAL_LABELS or p.end <= p.start:
            continue
        count += 1
        dist = np.maximum(np.maximum(p.start - centres, centres - p.end), 0.0)
        inside = dist <= 0.0
        if not inside.any():  # shorter than a frame: the frame nearest its middle closes
            k = int(np.clip(np.floor(0.5 * (p.start + p.end) * fps), 0, n - 1))
            if abs(centres[k] - 0.5 * (p.start + p.end)) <= 1.0 / fps:
                inside[k] = True
                dist[k] = 0.0
        ramp_w = np.clip(1.0 - dist / ramp, 0.0, 1.0) if ramp > 0 else (dist <= 0).astype(float)
        w = np.maximum(w, np.where(inside, 1.0, ramp_w))
    return w, count


def _phone_frames(p: _Timed, centres: np.ndarray, fps: float) -> np.ndarray:
    """Frames whose centre lies in the phone, or the frame nearest its middle when none does."""
    idx = np.flatnonzero((centres >= p.start) & (centres <= p.end))
    if len(idx) or not len(centres):
        return idx
    k = int(np.clip(np.floor(0.5 * (p.start + p.end) * fps), 0, len(centres) - 1))
    return np.array([k]) if abs(centres[k] - 0.5 * (p.start + p.end)) <= 1.0 / fps else idx


def _retime_vowels(x: dict[str, np.ndarray], phones: Sequence[_Timed], centres: np.ndarray, fps: float,
                   reach: float) -> tuple[dict[str, np.ndarray], int]:
    """On vowel frames, the model's widest lip opening within ``reach`` seconds (openness = jawOpen - mouthClose):
    its opening and mouthClose values are copied in when wider than the frame's own."""
    if reach <= 0 or "jawOpen" not in x:
        return x, 0
    openness = x["jawOpen"] - x.get("mouthClose", 0.0)
    moving = [k for k in x if k in OPENING or k in PAIRED]
    out = {k: v.copy() for k, v in x.items()}
    moved = 0
    for p in phones:
        if p.label not in VOWEL_LABELS or p.end <= p.start:
            continue
        for i in _phone_frames(p, centres, fps):
            near = np.flatnonzero(np.abs(centres - centres[i]) <= reach + 1e-9)
            j = int(near[np.argmax(openness[near])])
            if openness[j] > openness[i] + 1e-9:
                for k in moving:
                    out[k][i] = x[k][j]
                moved += 1
    return out, moved


def _silence_weight(phones: Sequence[_Timed], centres: np.ndarray, duration: float,
                    config: PhoneConstraintConfig) -> tuple[np.ndarray, int]:
    spans: list[list[float]] = []
    for p in sorted(phones, key=lambda q: q.start):  # merge neighbouring silences
        if p.label != SIL or p.end <= p.start:
            continue
        if spans and abs(spans[-1][1] - p.start) < 1e-6:
            spans[-1][1] = p.end
        else:
            spans.append([p.start, p.end])
    w = np.zeros(len(centres))
    count = 0
    for s, e in spans:
        if e - s < config.min_silence_s - 1e-9:
            continue
        count += 1
        from_start = centres - s if s > 1e-6 else np.full(len(centres), np.inf)
        to_end = e - centres if e < duration - 1e-6 else np.full(len(centres), np.inf)
        inside = (centres >= s) & (centres <= e)
        w = np.maximum(w, np.where(inside, np.clip(np.minimum(from_start, to_end) / config.silence_settle_s, 0, 1), 0))
    return w, count


def apply_phone_constraints(curves: Mapping[str, np.ndarray], phones: Sequence[_Timed], fps: float,
                            config: PhoneConstraintConfig = PhoneConstraintConfig(),
                            rest: Mapping[str, float] | None = None) -> ConstrainedMouth:
    """Impose bilabial closures and still pauses from ``phones`` on ``curves`` (frame i centred at (i + 0.5) / fps).

    ``phones``: objects with ``start``, ``end`` (seconds) and an ARPAbet ``label`` or "SIL"
    (:class:`avatar3d.audio.phones.Phone`, :class:`avatar3d.audio.tts_phonemes.TTSPhone`); times
    outside them are left alone.  ``rest``: the closed rest value of each channel (missing channels and
    ``rest=None`` use the curves' own percentiles).  Returns new curves; the input is not modified.
    """
    n = _check(curves, fps)
    fps = float(fps)
    names = list(curves)
    x = {k: np.asarray(curves[k], np.float64) for k in names}
    if not all(np.all(np.isfinite(v)) for v in x.values()):
        raise Avatar3DError("mouth curves contain NaN or infinity")
    rest_v: dict[str, float] = {}
    for k in names:
        if rest is not None and k in rest:
            rest_v[k] = float(rest[k])
        elif n == 0:
            rest_v[k] = 0.0
        else:
            rest_v[k] = float(np.percentile(x[k], config.rest_percentile) if k in OPENING else np.median(x[k]))
    centres = (np.arange(n) + 0.5) / fps
    x, moved = _retime_vowels(x, phones, centres, fps, config.vowel_reach_s) if n else (x, 0)
    wb, nb = _bilabial_weight(phones, centres, fps, config.bilabial_ramp_s) if n else (np.zeros(0), 0)
    ws, ns = _silence_weight(phones, centres, n / fps, config) if n else (np.zeros(0), 0)
    out: dict[str, np.ndarray] = {}
    for k in names:
        v, r = x[k], rest_v[k]
        if k in OPENING:
            v = v - wb * np.maximum(v - r, 0.0)
        elif k in PRESSING:
            v = v + wb * np.maximum(r - v, 0.0)
        elif k in PAIRED:
            v = v + wb * (r - v)
        v = v + ws * (r - v)
        out[k] = v.astype(np.float32)
    return ConstrainedMouth(curves=out, bilabial_weight=wb.astype(np.float32), silence_weight=ws.astype(np.float32),
                            rest=rest_v, n_bilabials=nb, n_silences=ns, vowel_frames_moved=moved)
