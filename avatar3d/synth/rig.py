"""Pose the generator's head: expressions, then the jaw rotation, then the head pose."""
from __future__ import annotations

import numpy as np

from avatar3d.synth.head_mesh import JAW_MAX_DEG, HeadMesh


def deform(mesh: HeadMesh, weights: dict[str, float], offsets: np.ndarray | None = None,
           closed: bool = True) -> np.ndarray:
    """Canonical vertices [V,3] for expression ``weights``.

    ``offsets`` [V,3] are added to the rest shape first (the landmark calibration
    uses them); ``closed`` applies the lip closure that is the rig's rest state.
    """
    v = mesh.rest.copy() if offsets is None else mesh.rest + offsets
    if closed:
        v += mesh.closure
    for name, w in weights.items():
        if w and name in mesh.shapes:
            v += w * mesh.shapes[name]
    jaw_open = float(weights.get("jawOpen", 0.0))
    if jaw_open:
        theta = np.deg2rad(JAW_MAX_DEG * jaw_open)
        c, s = np.cos(theta), np.sin(theta)
        rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
        w_jaw = mesh.jaw_weight * (1.0 - float(weights.get("mouthClose", 0.0)) * mesh.lip_weight)
        rotated = (v - mesh.jaw_pivot) @ rot.T + mesh.jaw_pivot
        v = v + w_jaw[:, None] * (rotated - v)
    return v


def to_camera(vertices: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Canonical -> camera coordinates."""
    return vertices @ rotation.T + translation
