"""Where on a face speech and blinks may change the avatar's appearance: Gaussian regions around
the mouth, the eyes and the brows of a face model's mean shape.

Why in face/: the regions are face geometry (landmark sets on the model's mean); the NeRF head
field only multiplies its learned motion gate by them, and receives them from whoever builds it.
"""
from __future__ import annotations

import numpy as np

from avatar3d.face import landmark_sets as rg
from avatar3d.face.model import MorphableModel

__all__ = ["MOUTH_SIGMA", "EYE_BROW_SIGMA", "face_motion_regions"]

MOUTH_SIGMA = 0.035  # metres: lips and jaw
EYE_BROW_SIGMA = 0.018  # metres: each eye, each brow


def face_motion_regions(model: MorphableModel) -> tuple[tuple[float, ...], ...]:
    """(x, y, z, sigma) per region, canonical metres: the mouth, the right and left eye, the right
    and left brow, each centred on the mean of its landmarks on ``model``'s mean shape."""
    v = np.asarray(model.mean, dtype=np.float64).reshape(-1, 3)
    groups = [(rg.LIP_OUTER_UPPER + rg.LIP_OUTER_LOWER, MOUTH_SIGMA),
              (rg.EYE_RIGHT_UPPER + rg.EYE_RIGHT_LOWER, EYE_BROW_SIGMA),
              (rg.EYE_LEFT_UPPER + rg.EYE_LEFT_LOWER, EYE_BROW_SIGMA),
              (rg.BROW_RIGHT, EYE_BROW_SIGMA), (rg.BROW_LEFT, EYE_BROW_SIGMA)]
    return tuple((*(float(c) for c in v[idx].mean(0)), sigma) for idx, sigma in groups)
