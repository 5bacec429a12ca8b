"""The inner-lip gap as a linear function of the expression weights.

Why: how wide the mouth looks is the gap between the inner lips, and in a linear face model that
gap (its vertical part, which is nearly all of it) is a weighted sum of the expression weights.
With the weights, the mouth opening of a whole track costs one matrix product -- render uses it to
give new speech the subject's own mouth range (:func:`avatar3d.render.drive.mouth_amplitude_gain`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from avatar3d.face.landmark_sets import INNER_LIP_PAIRS
from avatar3d.face.model import MorphableModel


def lip_gap_weights(model: MorphableModel, names: Sequence[str]) -> np.ndarray:
    """float64 [len(names)]: metres the mean inner-lip gap opens per unit of each named channel (0 for a channel
    the model lacks).  Canonical head space has +y up, so the gap is upper y - lower y."""
    upper = [u for u, _ in INNER_LIP_PAIRS]
    lower = [v for _, v in INNER_LIP_PAIRS]
    known = set(model.expression_names)
    out = np.zeros(len(names))
    for j, name in enumerate(names):
        if name in known:
            lm = model.landmarks_from_vertices(model.expression_basis[model.expression_index(name)])
            out[j] = float(np.mean(lm[upper, 1] - lm[lower, 1]))
    return out


__all__ = ["lip_gap_weights"]
