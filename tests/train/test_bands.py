"""Label bands the ray sampler reads every step (train/hull.py: within_px, neck_band).

Why: they decide which neck pixels the head field may own; they must match the Euclidean
definition, and the per-step path (values at the sampled pixels only) must equal the full map.
"""
from __future__ import annotations

import numpy as np

from avatar3d.train.hull import neck_band, within_px
from avatar3d.train.sampler import behind_head


def _labels(r: int) -> np.ndarray:
    """A head (1) with a mouth (3) above a neck/torso block (2), on background (0), at r x r."""
    s = r // 64
    lab = np.zeros((r, r), np.uint8)
    lab[12 * s:38 * s, 20 * s:44 * s] = 1
    lab[30 * s:33 * s, 28 * s:36 * s] = 3
    lab[38 * s:, 8 * s:56 * s] = 2
    return lab


def _brute_force(mask: np.ndarray, px: float) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    gy, gx = np.mgrid[: mask.shape[0], : mask.shape[1]]
    d2 = (gy[..., None] - ys) ** 2 + (gx[..., None] - xs) ** 2
    return d2.min(-1) <= px * px


def test_within_px_is_the_euclidean_band_exactly_at_low_resolution() -> None:
    head = np.isin(_labels(64), (1, 3))
    for px in (1, 3, 7.5):
        assert np.array_equal(within_px(head, px), _brute_force(head, px)), px


def test_bands_at_sampled_pixels_equal_the_full_map_and_stay_within_a_stride_at_512() -> None:
    lab = _labels(512)
    at = np.random.default_rng(0).integers(0, lab.size, 4096)
    for px in (8, 24, 96):
        full = neck_band(lab, px)
        assert np.array_equal(neck_band(lab, px, at=at), full.reshape(-1)[at])
        assert np.array_equal(behind_head(lab, px, at=at), behind_head(lab, px).reshape(-1)[at])
        # the coarse grid reads every 4th pixel: the band's lower edge is within a stride of px
        rows = np.flatnonzero(full[:, 32 * 8])
        assert rows.min() == 38 * 8 and abs(rows.max() - (38 * 8 - 1 + px)) <= 4, (px, rows.max())
    assert not neck_band(lab, 0).any() and not neck_band(lab, 0, at=at).any()
