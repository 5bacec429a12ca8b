"""Blendshape curves in the Live Link Face CSV layout, so Unreal / Unity / Blender rigs can be driven.

The layout is that of the recordings of Epic's *Live Link Face* iPhone app (one CSV per take),
which importers for Unreal (LiveLinkFaceImporter), Maya, MotionBuilder and Blender read:

* header ``Timecode,BlendShapeCount,`` + the 52 ARKit blendshapes in the app's order (UpperCamel
  names, e.g. ``EyeBlinkLeft``; note ``JawRight`` before ``JawLeft`` and ``MouthRight`` before
  ``MouthLeft``) + ``HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,
  RightEyePitch,RightEyeRoll``;
* one row per frame: timecode ``HH:MM:SS:FF.mmm`` (frame number within the second at the
  timecode rate, then the sub-frame in thousandths), ``61`` (52 weights + 9 angles), the values.
* blendshape weights are in [0, 1]; the angles are *normalised*: angle in degrees / 180, so
  [-1, 1] spans [-180°, 180°] (Epic's ARKit face-support code maps the tracked rotator that way
  before it is streamed and recorded).

Sources: the header and timecode form of real recorded takes published with open importers;
the angle normalisation from Epic's Unreal Engine AppleARKitFaceSupport source (see the README).

Head rotation convention (ours, stated because recorded takes differ with the phone's
orientation): the rotation ``R`` maps head space (face-model frame: +x the subject's left, +y
up, +z out of the face) to the OpenCV camera (x right, y down, z forward). Relative to the
frontal pose (the face looking straight into the camera), the head orientation is decomposed as
yaw about the vertical, then pitch, then roll about the face's forward axis:

* ``HeadYaw`` > 0: the subject turns to their own left (the nose moves to image right);
* ``HeadPitch`` > 0: the chin goes up (the nose moves to image top);
* ``HeadRoll`` > 0: the head tilts toward the subject's left shoulder (the top of the head
  moves to image right).

A rig that expects the opposite sign for an axis (e.g. a mirrored take) negates that column.
Eye rotations are written as 0 unless given (the tracker measures no gaze).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import atomic_path, check_writable

# The 52 ARKit blendshapes in Live Link Face's column order.
LLF_BLENDSHAPES: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthRight", "MouthLeft", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut",
)  # fmt: skip
LLF_ANGLES: tuple[str, ...] = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                               "RightEyeYaw", "RightEyePitch", "RightEyeRoll")  # fmt: skip
LLF_HEADER: tuple[str, ...] = ("Timecode", "BlendShapeCount") + LLF_BLENDSHAPES + LLF_ANGLES
LLF_COUNT = len(LLF_BLENDSHAPES) + len(LLF_ANGLES)  # 61, the BlendShapeCount column

AngleUnit = Literal["llf", "radians", "degrees"]

# Head space -> "frontal" camera frame (x image right, y up, z toward the viewer): a head looking
# straight into an OpenCV camera has R = FRONTAL, so R_rel = FRONTAL @ R is identity when frontal.
FRONTAL = np.diag([1.0, -1.0, -1.0])


def llf_name(arkit_name: str) -> str:
    """ARKit lowerCamel (``jawOpen``) -> Live Link Face UpperCamel (``JawOpen``)."""
    return arkit_name[:1].upper() + arkit_name[1:]


def head_angles(rotations: np.ndarray) -> np.ndarray:
    """[T, 3] (yaw, pitch, roll) in radians of head->OpenCV-camera rotations [T, 3, 3] (convention: module doc).

    ``FRONTAL @ R = Ry(yaw) @ Rx(-pitch) @ Rz(-roll)`` with right-handed elementary rotations
    about x = image right, y = up, z = toward the viewer.
    """
    r = np.asarray(rotations, dtype=np.float64)
    if r.ndim != 3 or r.shape[1:] != (3, 3):
        raise Avatar3DError(f"head rotations have shape {r.shape}: expected [frames, 3, 3]")
    q = FRONTAL[None] @ r
    yaw = np.arctan2(q[:, 0, 2], q[:, 2, 2])
    pitch = -np.arcsin(np.clip(-q[:, 1, 2], -1.0, 1.0))
    roll = -np.arctan2(q[:, 1, 0], q[:, 1, 1])
    return np.stack([yaw, pitch, roll], 1)


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of :func:`head_angles` for one frame (radians) -> head->OpenCV rotation [3, 3]."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(-pitch), math.sin(-pitch)
    cr, sr = math.cos(-roll), math.sin(-roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return FRONTAL @ (ry @ rx @ rz)


def timecode(frame: int, fps: float, start_s: float = 0.0) -> str:
    """``HH:MM:SS:FF.mmm`` of frame ``frame`` at ``fps`` (the timecode rate), starting at ``start_s``."""
    total = start_s + frame / fps
    seconds = math.floor(total + 1e-9)
    in_second = max(total - seconds, 0.0) * fps
    ff = math.floor(in_second + 1e-6)
    sub = min(int(round((in_second - ff) * 1000)), 999)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{int(s):02d}:{int(ff):02d}.{sub:03d}"


def _angle_scale(unit: AngleUnit) -> float:
    scales = {"llf": 1.0 / math.pi, "radians": 1.0, "degrees": 180.0 / math.pi}
    if unit not in scales:
        raise Avatar3DError(f"angle unit {unit!r}: use one of {', '.join(scales)}")
    return scales[unit]


def livelink_table(weights: Mapping[str, np.ndarray], rotations: np.ndarray, *,
                   eye_angles: np.ndarray | None = None, angle_unit: AngleUnit = "llf") -> np.ndarray:  # fmt: skip
    """[T, 61] float64 values in LLF column order (weights clipped to [0, 1], angles in ``angle_unit``)."""
    rotations = np.asarray(rotations, dtype=np.float64)
    n = rotations.shape[0] if rotations.ndim == 3 else -1
    angles = head_angles(rotations)
    table = np.zeros((n, LLF_COUNT), np.float64)
    column = {name.lower(): i for i, name in enumerate(LLF_BLENDSHAPES)}
    for name, curve in weights.items():
        i = column.get(llf_name(name).lower())
        if i is None:
            raise Avatar3DError(f"blendshape {name!r} is not one of the 52 ARKit names (e.g. jawOpen, eyeBlinkLeft)")
        values = np.asarray(curve, dtype=np.float64).reshape(-1)
        if values.shape[0] != n:
            raise Avatar3DError(f"blendshape {name!r} has {values.shape[0]} frames but the rotations have {n}")
        if not np.all(np.isfinite(values)):
            raise Avatar3DError(f"blendshape {name!r} has NaN or infinite values")
        table[:, i] = np.clip(values, 0.0, 1.0)
    scale = _angle_scale(angle_unit)
    base = len(LLF_BLENDSHAPES)
    table[:, base:base + 3] = angles * scale
    if eye_angles is not None:
        eyes = np.asarray(eye_angles, dtype=np.float64)
        if eyes.shape != (n, 6):
            raise Avatar3DError(f"eye angles have shape {eyes.shape}: expected [{n}, 6] "
                                "(left yaw, pitch, roll, right yaw, pitch, roll)")
        table[:, base + 3:] = eyes * scale
    return table


def write_livelink_csv(path: str | Path, weights: Mapping[str, np.ndarray], rotations: np.ndarray, fps: float, *,
                       eye_angles: np.ndarray | None = None, angle_unit: AngleUnit = "llf",
                       start_s: float = 0.0) -> Path:  # fmt: skip
    """Writes a Live Link Face CSV atomically: one row per frame of ``rotations`` [T, 3, 3] (head -> OpenCV camera).

    ``weights`` maps ARKit names (lowerCamel, e.g. ``jawOpen``; UpperCamel accepted) to [T] curves
    in [0, 1]; absent names are written as 0. ``eye_angles`` [T, 6] (radians) are optional.
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise Avatar3DError(f"fps {fps!r}: the frame rate must be a positive number")
    table = livelink_table(weights, rotations, eye_angles=eye_angles, angle_unit=angle_unit)
    if table.shape[0] == 0:
        raise Avatar3DError(f"{path}: no frames to write (the rotations are empty)")
    lines = [",".join(LLF_HEADER)]
    for i, row in enumerate(table):
        lines.append(f"{timecode(i, fps, start_s)},{LLF_COUNT}," + ",".join(f"{v:.10f}" for v in row))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    return path


def avatar_curves(bundle: AvatarBundle) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """(ARKit weights, rotations [N, 3, 3], fps) of an avatar's own training clip, every frame in order.

    The tracked expression coefficients that carry ARKit names are passed through; the eyelid
    measure (blink, [N, 2] = subject's left, right) drives eyeBlinkLeft/Right, as it drives the avatar.
    """
    bundle.require_motion()
    expression = np.asarray(bundle.expression, dtype=np.float64)
    blink = np.asarray(bundle.blink, dtype=np.float64)
    weights = arkit_weights([str(n) for n in bundle.expression_names], expression, blink)
    return weights, np.asarray(bundle.R, dtype=np.float64), float(bundle.fps)


def arkit_weights(names: list[str], expression: np.ndarray, blink: np.ndarray) -> dict[str, np.ndarray]:
    """ARKit-named curves of an avatar motion track: its named expression channels, with the eyelid
    measure (blink [T, 2] = subject's left, right) driving eyeBlinkLeft/Right as it drives the avatar."""
    known = {n.lower() for n in LLF_BLENDSHAPES}
    weights = {name: expression[:, j] for j, name in enumerate(names) if llf_name(name).lower() in known}
    if blink.ndim == 2 and blink.shape[1] == 2:
        weights["eyeBlinkLeft"], weights["eyeBlinkRight"] = blink[:, 0], blink[:, 1]
    return weights


def export_blendshapes(avatar: str | Path, out: str | Path) -> dict[str, object]:
    """`avatar3d export AVATAR --blendshapes out.csv`: the training clip's tracked curves as an LLF CSV."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise Avatar3DError(f"{out}: blendshape curves are written as .csv (the Live Link Face layout)")
    check_writable(out)
    bundle = AvatarBundle.load(avatar)
    weights, rotations, fps = avatar_curves(bundle)
    write_livelink_csv(out, weights, rotations, fps)
    return {"path": str(out), "frames": int(rotations.shape[0]), "fps": fps, "curves": len(weights)}
