"""The flat layers of an avatar (either backend) seen from a moved camera: planes, their homographies,
and the torso layer and plate under a head rendered from that camera.

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

from avatar3d.nerf.fields import TorsoField


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


@dataclass(frozen=True)
class ViewCamera:
    """A view of the avatar: the head's intrinsics and pose (a stereo eye already shifted) and the
    camera move from the training camera, X_view = Rc X_train + tc (identity for the training view)."""

    K_head: torch.Tensor  # [3, 3] the training K with the focal scaled
    head_R: torch.Tensor  # [3, 3]
    head_t: torch.Tensor  # [3] with the eye offset applied
    Rc: np.ndarray
    tc: np.ndarray

    @classmethod
    def of(cls, K: torch.Tensor, head_R: torch.Tensor, head_t: torch.Tensor, torso_R: torch.Tensor,
           torso_t: torch.Tensor, focal_scale: float, eye_offset_m: float) -> "ViewCamera":  # fmt: skip
        """The view whose head pose is (head_R, head_t), seen by the training camera of the torso pose
        (torso_R, torso_t) moved, zoomed by ``focal_scale`` and shifted by ``eye_offset_m`` along x."""
        K_head = K.float().clone()
        K_head[0, 0] *= focal_scale
        K_head[1, 1] *= focal_scale
        eye_t = head_t - torch.tensor([eye_offset_m, 0.0, 0.0], device=K.device, dtype=head_t.dtype)
        if focal_scale == 1.0 and eye_offset_m == 0.0 and torch.equal(head_R, torso_R) and torch.equal(head_t, torso_t):
            return cls(K_head, head_R, eye_t, np.eye(3), np.zeros(3))  # exactly the training camera (float32 R R^T is ~1e-7 from I)
        R0, t0 = torso_R.double().cpu().numpy(), torso_t.double().cpu().numpy()
        R1, t1 = head_R.double().cpu().numpy(), eye_t.double().cpu().numpy()
        Rc = R1 @ R0.T
        return cls(K_head, head_R, eye_t, Rc, t1 - Rc @ t0)


@dataclass(frozen=True)
class ViewLayers:
    """What lies under the head in a view, per pixel (flat, row-major [P = size²]): the torso layer
    (premultiplied colour, alpha) and the background plate."""

    torso_premult: torch.Tensor  # [P, 3]
    torso_alpha: torch.Tensor  # [P]
    plate: torch.Tensor  # [P, 3]

    def under(self, head_color: torch.Tensor, head_alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """Premultiplied head [P, 3], [P] over the layers: ``rgb`` (over the plate), ``premult`` and ``alpha``
        (no plate: for RGBA output), each clamped to [0, 1]."""
        clear = (1 - head_alpha)[:, None]
        rgb = head_color + clear * (self.torso_premult + (1 - self.torso_alpha[:, None]) * self.plate)
        premult = head_color + clear * self.torso_premult
        alpha = head_alpha + (1 - head_alpha) * self.torso_alpha
        return {"rgb": rgb.clamp(0, 1), "premult": premult.clamp(0, 1), "alpha": alpha.clamp(0, 1)}


def view_layers(torso: TorsoField, K: torch.Tensor, view: ViewCamera, torso_R: torch.Tensor, torso_t: torch.Tensor,
                background: torch.Tensor, pix: torch.Tensor, size: int, planes: LayerPlanes) -> ViewLayers:  # fmt: skip
    """The torso layer and the plate of the training view warped, as planes, into ``view``.

    The torso's pose code stays the training view's (how the neck bends is a property of the head
    pose, not of the camera); ``pix`` [P, 2] are the view's pixel centres.
    """
    K = K.float()  # the view's K_head is a float32 copy: the training view's homographies are then exactly None
    K_train, K_view = K.double().cpu().numpy(), view.K_head.double().cpu().numpy()
    head_depth = float(torso_t.double().cpu()[2])
    layer_pix = apply_homography(plane_homography(K_view, K_train, view.Rc, view.tc,
                                                  head_depth + planes.torso_behind_head_m), pix)  # fmt: skip
    plate_H = plane_homography(K_view, K_train, view.Rc, view.tc, head_depth + planes.background_behind_head_m)
    code = torso.pose_code(torso_R[None].float(), torso_t[None].float(), K, size)
    torso_rgb, torso_alpha, _ = torso(layer_pix / size, code.expand(pix.shape[0], -1))
    plate = background.float()
    if plate_H is not None:
        grid = (apply_homography(plate_H, pix) / size * 2.0 - 1.0).view(1, size, size, 2)
        plate = torch.nn.functional.grid_sample(plate.permute(2, 0, 1)[None], grid, mode="bilinear",
                                                padding_mode="border", align_corners=False)[0].permute(1, 2, 0)
    return ViewLayers(torso_alpha[:, None] * torso_rgb, torso_alpha, plate.reshape(-1, 3))
