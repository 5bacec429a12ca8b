"""The flat layers of a NeRF avatar seen from a moved camera: planes and their homographies.

Why planes: the torso field and the background plate are images of the training view with no
depth, so a camera moved away from the training one sees each as a fronto-parallel plane (the
torso just behind the head origin, the plate a fixed distance behind it) that shifts and turns
with parallax against the head.  Exact for a zoom, right to first order for the small moves the
supported camera range allows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def plane_homography(K_view: np.ndarray, K_train: np.ndarray, Rc: np.ndarray, tc: np.ndarray,
                     depth: float) -> np.ndarray | None:  # fmt: skip
    """3x3 map from a view's pixels to the training image's pixels for a fronto-parallel plane at ``depth``
    metres in front of the training camera, with the view camera X_view = Rc X_train + tc; None when it is
    the identity (so the training camera renders exactly what the avatar renders).

    A plane n.X = d maps by X_view = (Rc + tc n^T / d) X_train, so pixels map by
    K_view (Rc + tc n^T / d) K_train^-1; this is its inverse.
    """
    n = np.array([0.0, 0.0, 1.0])
    A = K_view @ (Rc + np.outer(tc, n) / max(depth, 1e-3)) @ np.linalg.inv(K_train)
    H = np.linalg.inv(A)
    H = H / H[2, 2]
    if np.abs(H - np.eye(3)).max() < 1e-12:
        return None
    return H


def apply_homography(H: np.ndarray | None, pix: torch.Tensor) -> torch.Tensor:
    """Pixel positions [P, 2] mapped by H (None: unchanged)."""
    if H is None:
        return pix
    Ht = torch.as_tensor(H, dtype=torch.float32, device=pix.device)
    q = pix @ Ht[:2, :2].T + Ht[:2, 2]
    w = pix @ Ht[2, :2] + Ht[2, 2]
    return q / w[:, None]


@dataclass(frozen=True)
class LayerPlanes:
    """Where the two flat layers sit, for views away from the training camera.

    The torso field and the background plate are images of the training view with no depth, so
    a moved camera sees each as a plane: the torso just behind the head origin (shoulders sit
    about that deep), the plate a fixed distance behind it.  Both depths are choices, not
    measurements: the clip carries no depth for them.
    """

    torso_behind_head_m: float = 0.03
    background_behind_head_m: float = 1.0
