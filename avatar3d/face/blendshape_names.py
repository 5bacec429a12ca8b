"""Blendshape names: the ARKit vocabulary the face model, the motion model and the exporters share.

Why here: the names are the face model's (its expression basis is indexed by them); the motion
model, the generator's viseme table and the Live Link / OSC exporters only refer to them.
"""
from __future__ import annotations

__all__ = ["ARKIT_NAMES", "MOUTH_BLENDSHAPES", "UPPER_FACE_PREFIXES"]

ARKIT_NAMES: tuple[str, ...] = (
    "jawOpen", "jawForward", "jawLeft", "jawRight",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthPressLeft", "mouthPressRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeWideLeft", "eyeWideRight",
    "eyeSquintLeft", "eyeSquintRight",
    "browInnerUp", "browDownLeft", "browDownRight", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
)
"""The 39 expression blendshapes of the open face model, in basis order."""

MOUTH_BLENDSHAPES: tuple[str, ...] = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthPressLeft", "mouthPressRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthRollLower", "mouthRollUpper",
)
"""The 16 mouth shapes speech drives: the motion model's outputs and the generator's viseme curves, in
that order."""

UPPER_FACE_PREFIXES: tuple[str, ...] = ("eye", "brow", "cheek")
"""Name prefixes of the upper-face shapes (blinks, brows, cheeks): what speech does not drive, so a
render takes them from the subject, a driving video or the idle-motion model instead."""

assert set(MOUTH_BLENDSHAPES) <= set(ARKIT_NAMES), "mouth shapes must be face-model blendshapes"
