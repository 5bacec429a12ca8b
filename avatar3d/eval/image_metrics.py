"""Image-quality metrics (PSNR / SSIM) on the full frame, the head and the mouth.

One definition of each metric lives here so that benchmarks, evaluation
reports and tests all compute the same numbers (see METRICS.md):

* images are RGB in [0, 1] (``float`` arrays ``[H, W, 3]``; ``uint8`` arrays
  are accepted and divided by 255);
* **head region** = pixels whose parsing label (of the reference frame) is
  1 (head) or 3 (mouth interior);
* **mouth region** = the box around the lip landmarks, padded by 20 % of the
  box width/height on each side;
* SSIM follows kornia: 11x11 Gaussian window, sigma 1.5, C1 = 0.01**2,
  C2 = 0.03**2, data range 1, statistics per channel, map averaged over
  channels;
* per-frame figures are averaged over frames as the mean of the per-frame
  values (mean of per-frame PSNR, as the literature does).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "FrameMetrics",
    "frame_metrics",
    "head_mask",
    "mean_metrics",
    "mouth_box",
    "mouth_mask",
    "psnr",
    "ssim",
    "ssim_map",
    "HEAD_LABELS",
    "SSIM_WINDOW",
    "SSIM_SIGMA",
]

HEAD_LABELS: tuple[int, ...] = (1, 3)  # head, mouth interior
SSIM_WINDOW: int = 11
SSIM_SIGMA: float = 1.5
SSIM_C1: float = 0.01**2
SSIM_C2: float = 0.03**2


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #
def _to_float(img: np.ndarray, name: str) -> np.ndarray:
    """Return ``img`` as float64 ``[H, W, C]``; ``uint8`` is scaled by 1/255."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be [H, W, C] (or [H, W]), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64, copy=False)


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _to_float(pred, "pred")
    r = _to_float(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref shapes differ: {p.shape} vs {r.shape}")
    return p, r


def _check_mask(mask: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    if m.shape != hw:
        raise ValueError(f"mask shape {m.shape} does not match image size {hw}")
    return m


# --------------------------------------------------------------------------- #
# PSNR
# --------------------------------------------------------------------------- #
def psnr(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB with data range 1: ``10 * log10(1 / MSE)``.

    The MSE runs over the pixels where ``mask`` is True (all pixels when None)
    and over all channels. Empty mask -> nan; identical images -> inf.
    """
    p, r = _pair(pred, ref)
    m = _check_mask(mask, p.shape[:2])
    diff2 = (p - r) ** 2
    if m is not None:
        if not m.any():
            return float("nan")
        diff2 = diff2[m]
    mse = float(diff2.mean())
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(1.0 / mse)


# --------------------------------------------------------------------------- #
# SSIM
# --------------------------------------------------------------------------- #
def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size // 2)
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM ``[H, W]`` (the per-channel SSIM maps averaged over channels).

    Local statistics use an 11x11 Gaussian window (sigma 1.5), C1 = 0.01**2,
    C2 = 0.03**2, data range 1 and population (biased) variances, as kornia.

    Borders: like kornia's ``padding="same"``, the image is reflect-padded by
    5 pixels (``torch`` "reflect", i.e. mirrored *without* repeating the edge
    pixel) before filtering, so the map has the input's size. The 5-pixel
    border band therefore depends on the padding convention; pixels at least
    5 px from every border equal skimage's ``structural_similarity`` map
    (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``)
    up to float rounding. Images must be at least 6 px on each side.
    """
    p, r = _pair(pred, ref)
    h, w, c = p.shape
    half = SSIM_WINDOW // 2
    if h <= half or w <= half:
        raise ValueError(f"SSIM needs images of at least {half + 1} px per side, got {h}x{w}")

    x = torch.from_numpy(np.ascontiguousarray(p.transpose(2, 0, 1)))  # [C, H, W]
    y = torch.from_numpy(np.ascontiguousarray(r.transpose(2, 0, 1)))
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0)[:, None]  # [5C, 1, H, W]
    stack = F.pad(stack, (half, half, half, half), mode="reflect")
    g = _gaussian_1d()
    stack = F.conv2d(stack, g.view(1, 1, 1, -1))  # horizontal pass
    stack = F.conv2d(stack, g.view(1, 1, -1, 1))  # vertical pass
    mu_x, mu_y, e_xx, e_yy, e_xy = stack[:, 0].split(c, dim=0)

    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + SSIM_C1) * (2.0 * cov + SSIM_C2)
    den = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (num / den).mean(dim=0).numpy()


def ssim(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean of :func:`ssim_map` over ``mask`` (all pixels when None); empty mask -> nan."""
    smap = ssim_map(pred, ref)
    m = _check_mask(mask, smap.shape)
    return _masked_mean(smap, m)


def _masked_mean(smap: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None:
        return float(smap.mean())
    if not mask.any():
        return float("nan")
    return float(smap[mask].mean())


# --------------------------------------------------------------------------- #
# regions
# --------------------------------------------------------------------------- #
def head_mask(labels: np.ndarray) -> np.ndarray:
    """Bool ``[H, W]``: parsing label is 1 (head) or 3 (mouth interior)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {lab.shape}")
    return np.isin(lab, HEAD_LABELS)


def mouth_box(
    lip_xy: np.ndarray, shape: tuple[int, int], pad: float = 0.2
) -> tuple[int, int, int, int]:
    """Padded box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) around the lip landmarks.

    ``lip_xy`` is ``[K, 2]`` pixel coordinates (x, y); rows with a non-finite
    value are ignored. The landmark bounding box is grown by ``pad`` times its
    width (resp. height) on each side; the result covers every pixel index
    from ``floor(lo)`` to ``floor(hi)`` inclusive, clipped to the image
    ``shape = (H, W)``. Returns ``(0, 0, 0, 0)`` when no landmark is finite.
    """
    pts = np.asarray(lip_xy, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return (0, 0, 0, 0)
    h, w = int(shape[0]), int(shape[1])
    (xmin, ymin), (xmax, ymax) = pts.min(axis=0), pts.max(axis=0)
    px, py = pad * (xmax - xmin), pad * (ymax - ymin)
    x0 = int(np.clip(math.floor(xmin - px), 0, w))
    y0 = int(np.clip(math.floor(ymin - py), 0, h))
    x1 = int(np.clip(math.floor(xmax + px) + 1, 0, w))
    y1 = int(np.clip(math.floor(ymax + py) + 1, 0, h))
    x1, y1 = max(x1, x0), max(y1, y0)
    return (x0, y0, x1, y1)


def mouth_mask(lip_xy: np.ndarray, shape: tuple[int, int], pad: float = 0.2) -> np.ndarray:
    """Bool ``[H, W]`` mask of :func:`mouth_box` (all False when no landmark)."""
    x0, y0, x1, y1 = mouth_box(lip_xy, shape, pad)
    m = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------- #
# per-frame and per-sequence
# --------------------------------------------------------------------------- #
@dataclass
class FrameMetrics:
    """PSNR (dB) and SSIM of one frame on the full frame, head and mouth regions."""

    psnr_full: float
    psnr_head: float
    psnr_mouth: float
    ssim_full: float
    ssim_head: float
    ssim_mouth: float


def frame_metrics(
    pred: np.ndarray, ref: np.ndarray, labels: np.ndarray, lip_xy: np.ndarray
) -> FrameMetrics:
    """All metrics of one frame; ``labels`` is the reference frame's parsing map
    ``[H, W]`` and ``lip_xy`` its lip landmarks ``[K, 2]`` in pixels.
    An empty region gives nan for that region."""
    p, r = _pair(pred, ref)
    hw = p.shape[:2]
    hmask = head_mask(labels)
    if hmask.shape != hw:
        raise ValueError(f"labels shape {hmask.shape} does not match image size {hw}")
    mmask = mouth_mask(lip_xy, hw)
    smap = ssim_map(p, r)
    return FrameMetrics(
        psnr_full=psnr(p, r),
        psnr_head=psnr(p, r, hmask),
        psnr_mouth=psnr(p, r, mmask),
        ssim_full=_masked_mean(smap, None),
        ssim_head=_masked_mean(smap, hmask),
        ssim_mouth=_masked_mean(smap, mmask),
    )


def mean_metrics(frames: Sequence[FrameMetrics]) -> dict[str, float]:
    """Mean over frames of each field, ignoring nan (all-nan or no frames -> nan).

    PSNR is averaged in dB (mean of per-frame PSNR); an inf frame (identical
    images) makes the mean inf.
    """
    names = [f.name for f in fields(FrameMetrics)]
    if len(frames) == 0:
        return {n: float("nan") for n in names}
    table = np.array([[asdict(fr)[n] for n in names] for fr in frames], dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns
        means = np.nanmean(table, axis=0)
    return {n: float(v) for n, v in zip(names, means)}
