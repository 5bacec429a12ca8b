"""Phone timeline -> per-video-frame mouth expression weights (ARKit blendshape names).

These curves are the ground truth the synthetic subject is rendered from.

Scale convention: ``jawOpen = 1`` is a ~20 degree jaw rotation; speech rarely
exceeds ~0.4 (~8 degrees), so open vowels target about 0.3-0.4.

Model: every phone has a target shape (``VISEME_TARGETS``).  Targets are
blended with Cohen-Massaro style dominance functions (Gaussian in time, width
growing with the phone's duration), so a phone's lip shape leaks into its
neighbours (co-articulation: rounding spreads from "oo", alveolars take the
neighbouring vowel's lips).  Two hard constraints are then imposed, because a
renderer's viewer notices them and the generator's tests check them:

* pauses: the mouth closes with a 100 ms raised-cosine ramp centred on each
  silence edge, so in a silence every weight is exactly 0 from 50 ms inside
  its edges;
* bilabials P/B/M: the lips seal (jaw almost closed, lips pressed) on a
  plateau of at least +-25 ms around the phone centre (so the nearest 25 fps
  frame is inside it); jaw and lip-opening weights reach it over an 80 ms
  raised-cosine ramp, press/close build up over 160 ms.

With these ramps no weight changes by more than ~0.25 between 25 fps frames.
"""
from __future__ import annotations

import numpy as np

from avatar3d.audio.phones import BILABIALS, SIL, Phone
from avatar3d.errors import Avatar3DError
from avatar3d.face.blendshape_names import MOUTH_BLENDSHAPES

# Weights that open the lips; they are forced to 0 in pauses and at bilabial closures.
LIP_OPENING: tuple[str, ...] = (
    "jawOpen", "mouthFunnel", "mouthUpperUpLeft", "mouthUpperUpRight",
    "mouthLowerDownLeft", "mouthLowerDownRight",
)


def _sym(**kw: float) -> dict[str, float]:
    """Expand symmetric keys (``smile=`` -> mouthSmileLeft/Right) into ARKit names."""
    out: dict[str, float] = {}
    pairs = {"smile": "mouthSmile", "stretch": "mouthStretch", "press": "mouthPress",
             "upperUp": "mouthUpperUp", "lowerDown": "mouthLowerDown"}
    for k, v in kw.items():
        if k in pairs:
            out[pairs[k] + "Left"] = v
            out[pairs[k] + "Right"] = v
        else:
            out[k] = v
    return out


# phone -> (target weights, dominance).  High dominance = the shape is visible and resists
# co-articulation (bilabials, labiodentals, rounded); low = takes its neighbours' shape (HH, K).
VISEME_TARGETS: dict[str, tuple[dict[str, float], float]] = {
    SIL: ({}, 1.0),
    # open / mid vowels
    "AA": (_sym(jawOpen=0.38, lowerDown=0.25, upperUp=0.08), 1.0),
    "AE": (_sym(jawOpen=0.32, lowerDown=0.2, stretch=0.25, smile=0.12, upperUp=0.1), 1.0),
    "AH": (_sym(jawOpen=0.26, lowerDown=0.15, upperUp=0.05), 0.8),
    "AO": (_sym(jawOpen=0.3, mouthFunnel=0.3, lowerDown=0.15), 1.0),
    "AW": (_sym(jawOpen=0.3, mouthFunnel=0.25, mouthPucker=0.15, lowerDown=0.15), 1.0),
    "AY": (_sym(jawOpen=0.3, lowerDown=0.18, smile=0.1, stretch=0.1), 1.0),
    "EH": (_sym(jawOpen=0.22, lowerDown=0.15, stretch=0.2, smile=0.1), 0.9),
    "ER": (_sym(jawOpen=0.14, mouthFunnel=0.25, mouthPucker=0.2), 0.9),
    "EY": (_sym(jawOpen=0.18, lowerDown=0.12, stretch=0.25, smile=0.18), 0.9),
    "IH": (_sym(jawOpen=0.14, stretch=0.22, smile=0.15, lowerDown=0.08), 0.8),
    "IY": (_sym(jawOpen=0.09, stretch=0.3, smile=0.3, upperUp=0.05), 1.0),
    "OW": (_sym(jawOpen=0.2, mouthFunnel=0.45, mouthPucker=0.3), 1.2),
    "OY": (_sym(jawOpen=0.24, mouthFunnel=0.35, mouthPucker=0.2), 1.1),
    "UH": (_sym(jawOpen=0.14, mouthFunnel=0.3, mouthPucker=0.3), 1.0),
    "UW": (_sym(jawOpen=0.08, mouthFunnel=0.3, mouthPucker=0.65), 1.3),
    # consonants
    "P": (_sym(jawOpen=0.03, mouthClose=0.45, press=0.55, mouthRollLower=0.1, mouthRollUpper=0.1), 3.0),
    "B": (_sym(jawOpen=0.03, mouthClose=0.45, press=0.5, mouthRollLower=0.08, mouthRollUpper=0.08), 3.0),
    "M": (_sym(jawOpen=0.03, mouthClose=0.45, press=0.45, mouthRollLower=0.05, mouthRollUpper=0.05), 3.0),
    "F": (_sym(jawOpen=0.05, mouthRollLower=0.55, upperUp=0.22), 2.5),
    "V": (_sym(jawOpen=0.05, mouthRollLower=0.5, upperUp=0.2), 2.5),
    "W": (_sym(jawOpen=0.06, mouthPucker=0.6, mouthFunnel=0.25), 2.0),
    "R": (_sym(jawOpen=0.09, mouthPucker=0.25, mouthFunnel=0.2), 1.0),
    "SH": (_sym(jawOpen=0.07, mouthFunnel=0.4, mouthPucker=0.2, upperUp=0.1), 1.8),
    "ZH": (_sym(jawOpen=0.07, mouthFunnel=0.4, mouthPucker=0.2, upperUp=0.1), 1.8),
    "CH": (_sym(jawOpen=0.08, mouthFunnel=0.4, mouthPucker=0.2, upperUp=0.1), 1.8),
    "JH": (_sym(jawOpen=0.08, mouthFunnel=0.4, mouthPucker=0.2, upperUp=0.1), 1.8),
    "S": (_sym(jawOpen=0.04, stretch=0.22, smile=0.12, upperUp=0.06), 1.4),
    "Z": (_sym(jawOpen=0.04, stretch=0.22, smile=0.12, upperUp=0.06), 1.4),
    "TH": (_sym(jawOpen=0.08, lowerDown=0.12), 1.2),
    "DH": (_sym(jawOpen=0.08, lowerDown=0.1), 1.0),
    "T": (_sym(jawOpen=0.08, stretch=0.08), 0.6),
    "D": (_sym(jawOpen=0.08, stretch=0.08), 0.6),
    "N": (_sym(jawOpen=0.08, stretch=0.05), 0.5),
    "L": (_sym(jawOpen=0.11, lowerDown=0.05), 0.5),
    "Y": (_sym(jawOpen=0.06, smile=0.2, stretch=0.15), 0.8),
    "K": (_sym(jawOpen=0.12), 0.4),
    "G": (_sym(jawOpen=0.12), 0.4),
    "NG": (_sym(jawOpen=0.1), 0.4),
    "HH": (_sym(jawOpen=0.15), 0.2),
}
_PAUSE_RAMP_S = 0.05     # closure ramp half-length around silence edges
_BILABIAL_HOLD_S = 0.025  # minimum half-width of the sealed plateau
_BILABIAL_RAMP_S = 0.08   # jaw / lip-opening weights drop this fast before the seal...
_SEAL_RAMP_S = 0.16       # ...while press/close build up more gradually (also keeps steps small)


def _raised_cosine(x: np.ndarray) -> np.ndarray:
    """0 for x <= 0, 1 for x >= 1, smooth in between."""
    x = np.clip(x, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def _variation(rng: np.random.Generator | None) -> dict[str, float]:
    """Per-utterance multiplicative factors: jaw range, rounding, spreading, slight asymmetry."""
    gain = {k: 1.0 for k in MOUTH_BLENDSHAPES}
    if rng is None:
        return gain
    jaw, rnd, spread, lips = rng.uniform(0.85, 1.15, size=4)
    skew = rng.uniform(-0.08, 0.08)
    for k in MOUTH_BLENDSHAPES:
        g = {"jawOpen": jaw, "mouthFunnel": rnd, "mouthPucker": rnd}.get(k, 1.0)
        if "Smile" in k or "Stretch" in k:
            g = spread
        if "UpperUp" in k or "LowerDown" in k or "Roll" in k:
            g = lips
        if k.endswith("Left"):
            g *= 1.0 + skew
        elif k.endswith("Right"):
            g *= 1.0 - skew
        gain[k] = float(g)
    return gain


def expression_curves(phones: list[Phone], fps: float, n_frames: int, *, intensity: float = 1.0,
                      rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Mouth blendshape weights in [0, 1] for ``n_frames`` video frames at ``fps``.

    Frame k is evaluated at its centre, t = (k + 0.5) / fps.  Times outside
    the phone timeline count as silence.  ``intensity`` scales articulation
    (not the bilabial seal); ``rng`` adds small per-utterance variation
    (deterministic for a given seed).  Returns float32 arrays keyed by
    ARKit name (see ``MOUTH_BLENDSHAPES``).
    """
    if fps <= 0:
        raise Avatar3DError(f"fps={fps} must be positive, e.g. 25")
    if n_frames < 0:
        raise Avatar3DError(f"n_frames={n_frames} must be >= 0")
    if intensity < 0:
        raise Avatar3DError(f"intensity={intensity} must be >= 0 (1.0 is normal articulation)")
    t = (np.arange(n_frames) + 0.5) / float(fps)
    keys = list(MOUTH_BLENDSHAPES)
    gain = _variation(rng)
    if not phones or n_frames == 0:
        return {k: np.zeros(n_frames, np.float32) for k in keys}
    end_time = phones[-1].end

    # 1) dominance-blended targets (co-articulation)
    num = np.zeros((len(keys), n_frames))
    den = np.full(n_frames, 1e-6)
    for p in phones:
        target, alpha = VISEME_TARGETS.get(p.label, VISEME_TARGETS["AH"])
        centre, dur = 0.5 * (p.start + p.end), max(p.end - p.start, 0.01)
        width = 0.5 * dur + 0.03
        lo, hi = np.searchsorted(t, [centre - 4 * width, centre + 4 * width])
        if hi <= lo:
            continue
        d = alpha * np.exp(-0.5 * ((t[lo:hi] - centre) / width) ** 2)
        den[lo:hi] += d
        for i, k in enumerate(keys):
            v = target.get(k, 0.0)
            if v:
                num[i, lo:hi] += d * v
    w = num / den
    w *= intensity * np.array([gain[k] for k in keys])[:, None]

    # 2) pauses: close everything; exactly 0 from _PAUSE_RAMP_S inside each silence
    open_gate = np.ones(n_frames)
    pauses = [(p.start, p.end) for p in phones if p.label == SIL]
    if end_time < t[-1]:
        pauses.append((end_time, np.inf))
    for s, e in pauses:
        closing = np.ones(n_frames) if s <= 0 else _raised_cosine((t - (s - _PAUSE_RAMP_S)) / (2 * _PAUSE_RAMP_S))
        reopening = np.ones(n_frames) if np.isinf(e) else 1.0 - _raised_cosine(
            (t - (e - _PAUSE_RAMP_S)) / (2 * _PAUSE_RAMP_S))
        open_gate *= 1.0 - np.minimum(closing, reopening)
    w *= open_gate[None, :]

    # 3) bilabials: blend to the sealed-lips target on a plateau around the phone centre
    for p in phones:
        if p.label not in BILABIALS:
            continue
        target = VISEME_TARGETS[p.label][0]
        centre = 0.5 * (p.start + p.end)
        hold = max(0.5 * (p.end - p.start), _BILABIAL_HOLD_S)
        dist = np.abs(t - centre) - hold
        b_open = 1.0 - _raised_cosine(dist / _BILABIAL_RAMP_S)
        b_seal = 1.0 - _raised_cosine(dist / _SEAL_RAMP_S)
        for i, k in enumerate(keys):
            b = b_open if k in LIP_OPENING else b_seal
            v = target.get(k, 0.0)
            if k != "jawOpen":  # the seal's jaw stays nearly closed whatever the intensity
                v = v * gain[k] * min(intensity, 1.5)
            w[i] = (1.0 - b) * w[i] + b * v
    return {k: np.clip(w[i], 0.0, 1.0).astype(np.float32) for i, k in enumerate(keys)}
