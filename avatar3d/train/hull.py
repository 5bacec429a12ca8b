"""Carving the head box with the parsing masks: cells that project outside the head are never sampled.

Why: a freshly initialised field is a uniform fog, so early training marches every cell of
the head box (100+ samples per ray on two CPU cores). Every training frame already tells,
through its head mask and tracked pose, which canonical cells can hold the head: a cell
whose centre lands on background or torso pixels in many frames is empty (a visual hull).
Carving those cells once, before the first step, keeps the occupancy grid inside the hull;
the density-driven grid updates then refine it. Masks are imperfect at their edges, so
masks are dilated and a cell is carved only when most of the frames agree.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from avatar3d.nerf.occupancy import OccupancyGrid


def carve_head_hull(
    grid: OccupancyGrid, R: np.ndarray, t: np.ndarray, K: np.ndarray, labels: np.ndarray, frame_ids: np.ndarray,
    *, max_frames: int = 96, dilate_px: int = 2, carve_fraction: float = 0.5, neck_px: int = 0,
) -> torch.Tensor:  # fmt: skip
    """Bool [n_cells]: True where the head may be. A cell is carved when, among the frames in which its
    centre projects inside the image, more than ``carve_fraction`` put it outside the dilated head mask
    (widened by :func:`neck_band` of ``neck_px``, where the head field may own the neck)."""
    ids = frame_ids[np.linspace(0, len(frame_ids) - 1, min(max_frames, len(frame_ids))).round().astype(int)]
    centres = grid.cell_points(torch.arange(grid.geometry.n_cells)).double().numpy()  # [C, 3]
    outside = np.zeros(len(centres), np.int32)
    seen = np.zeros(len(centres), np.int32)
    kernel = np.ones((2 * dilate_px + 1, 2 * dilate_px + 1), np.uint8)
    for i in ids:
        lab = np.asarray(labels[int(i)])
        head = (cv2.dilate(((lab == 1) | (lab == 3)).astype(np.uint8), kernel) > 0) | neck_band(lab, neck_px)
        cam = centres @ R[i].T + t[i]
        z = np.maximum(cam[:, 2], 1e-6)
        u = np.floor(K[0, 0] * cam[:, 0] / z + K[0, 2]).astype(np.int64)
        v = np.floor(K[1, 1] * cam[:, 1] / z + K[1, 2]).astype(np.int64)
        h, w = head.shape
        inside = (cam[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        seen += inside
        outside[inside] += ~head[v[inside], u[inside]]
    keep = outside <= carve_fraction * np.maximum(seen, 1)
    return torch.from_numpy(keep)


def neck_band(labels: np.ndarray, px: int, at: np.ndarray | None = None) -> np.ndarray:
    """Bool [H, W] (or [len(at)] at flat pixel indices ``at``): neck/torso pixels within ``px`` of the
    head label; none if px=0.

    Why: the parsing calls the neck "torso", but the neck turns with the head; inside this band the
    head field may own it (it is neither carved from the hull nor pushed to zero opacity).
    """
    torso = labels == 2
    if px <= 0:
        return np.zeros(labels.shape if at is None else len(at), bool)
    near = within_px((labels == 1) | (labels == 3), px, at)
    return near & (torso if at is None else torso.reshape(-1)[at])


def within_px(mask: np.ndarray, px: float, at: np.ndarray | None = None, max_side: int = 128) -> np.ndarray:
    """Bool [H, W] (or [len(at)] at flat pixel indices ``at``): pixels at most ``px`` from ``mask`` (Euclidean).

    Why a distance transform on a coarse grid: the sampler asks for these bands on every sampled
    frame of every step, and an elliptic dilation costs O(px²) per pixel (1.5 s for a 96 px band at
    512²). Above ``max_side`` the map is read every ``stride`` pixels, so the band is exact to a stride.
    """
    h, w = mask.shape
    stride = max(1, -(-max(h, w) // max_side))
    coarse = np.ascontiguousarray(mask[::stride, ::stride])
    if not coarse.any():
        return np.zeros(mask.shape if at is None else len(at), bool)
    near = cv2.distanceTransform((~coarse).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= px / stride
    if at is not None:
        return near[(at // w) // stride, (at % w) // stride] | mask.reshape(-1)[at]
    if stride > 1:
        near = np.repeat(np.repeat(near, stride, axis=0), stride, axis=1)[:h, :w]
    return near | mask
