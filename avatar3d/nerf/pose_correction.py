"""Learned corrections of the tracked head poses, one smooth curve over the clip.

Why: the tracker's head pose is off by ~1° per axis on the synthetic subjects, and that
error is smooth in time (its autocorrelation is still 0.8-0.9 four frames apart on the
60 s benchmark subject).  A rigid canonical head seen through such poses is blurred by the
misalignment.  Each training frame's pose is therefore corrected by a small rigid motion
read from a piecewise-linear curve with a knot every ``knot_frames`` frames: few unknowns
per second, each seen by several frames' rays, and no high-frequency jitter to learn.

The correction is applied in head space: the corrected head -> camera pose is
``R' = R exp(w)``, ``t' = t + R v`` (rotation about the head origin, shift in head axes).
The curve's mean over the training frames is subtracted, so the canonical head stays in
the tracker's frame on average (the field and the corrections cannot drift together).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from avatar3d.rotation import so3_exp

TRANSLATION_UNIT_M = 0.1
"""Metres per unit of the translation half of a knot: a head-sized lever, so a unit of rotation
(rad) and of translation move surface points by similar amounts and one learning rate fits both."""


def slide_free(origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """``origins`` unchanged in value, with no gradient for sliding them along their (unit) ``dirs``.

    Why: a ray's rendering depends on its line, not on where along it the origin sits (the
    marcher measures its samples from the bounding-box entry), but the gradient through fixed
    sample distances does not know that: it rewards shifting the whole sample comb along the
    ray, a quadrature artefact.  On a briefly trained field that bias pushed the head-depth
    correction 18 mm off in 100 steps and *raised* the photometric error it was minimising.
    """
    along = (origins * dirs).sum(-1, keepdim=True)
    return origins - (along - along.detach()) * dirs


class PoseCorrection(nn.Module):
    """Per-frame rigid corrections [n_frames] from knots every ``knot_frames`` frames."""

    def __init__(self, n_frames: int, knot_frames: int):
        super().__init__()
        self.n_frames, self.knot_frames = int(n_frames), int(knot_frames)
        n_knots = (max(self.n_frames, 1) - 1) // self.knot_frames + 2
        self.knots = nn.Parameter(torch.zeros(n_knots, 6))
        # Mean interpolation weight of each knot over the training frames (the gauge); uniform until set.
        self.register_buffer("gauge", torch.full((n_knots,), 1.0 / n_knots))

    def _weights(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(left knot index, weight of the right knot) of each frame."""
        pos = frames.to(torch.float32) / self.knot_frames
        left = pos.floor().long().clamp(0, self.knots.shape[0] - 2)
        return left, (pos - left).unsqueeze(-1)

    @torch.no_grad()
    def set_gauge(self, train_ids: np.ndarray) -> None:
        """Fixes the correction's mean over ``train_ids`` to zero."""
        frames = torch.as_tensor(np.asarray(train_ids), dtype=torch.long, device=self.knots.device)
        left, w = self._weights(frames)
        gauge = torch.zeros_like(self.gauge)
        gauge.index_add_(0, left, (1 - w[:, 0]))
        gauge.index_add_(0, left + 1, w[:, 0])
        self.gauge.copy_(gauge / max(len(frames), 1))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rotation exp(w) [F, 3, 3], head-space shift v [F, 3] in metres) of frame indices [F]."""
        left, w = self._weights(frames)
        delta = (1 - w) * self.knots[left] + w * self.knots[left + 1] - self.gauge @ self.knots
        return so3_exp(delta[:, :3]), delta[:, 3:] * TRANSLATION_UNIT_M

    def correct_rays(self, origins: torch.Tensor, dirs: torch.Tensor,
                     frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Head-space rays [P, 3] of frames [P] as seen through the corrected poses (differentiable)."""
        unique, inverse = torch.unique(frames, return_inverse=True)
        rot, shift = self(unique)
        rt = rot.transpose(-1, -2)[inverse]
        o = (rt @ (origins - shift[inverse]).unsqueeze(-1)).squeeze(-1)
        d = (rt @ dirs.unsqueeze(-1)).squeeze(-1)
        return slide_free(o, d), d

    @torch.no_grad()
    def corrected_poses(self, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tracked head -> camera poses R [N, 3, 3], t [N, 3] with the learned corrections applied."""
        frames = torch.arange(len(R), device=self.knots.device)
        rot, shift = self(frames)
        rot, shift = rot.double().cpu().numpy(), shift.double().cpu().numpy()
        return R @ rot, t + np.einsum("nij,nj->ni", R, shift)
