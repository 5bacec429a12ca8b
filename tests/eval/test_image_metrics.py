"""Tests for avatar3d.eval.image_metrics: real numbers against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import data
from skimage.filters import gaussian
from skimage.metrics import structural_similarity
from skimage.transform import resize

from avatar3d.eval.image_metrics import (
    FrameMetrics,
    frame_metrics,
    head_mask,
    mean_metrics,
    mouth_box,
    mouth_mask,
    psnr,
    ssim,
    ssim_map,
)


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    """skimage astronaut, 128x128, float in [0, 1]."""
    return resize(data.astronaut(), (128, 128), anti_aliasing=True).astype(np.float64)


@pytest.fixture(scope="module")
def degraded(astro: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    blurred = gaussian(astro, sigma=1.0, channel_axis=-1)
    return np.clip(blurred + rng.normal(0.0, 0.03, astro.shape), 0.0, 1.0)


# ----------------------------------------------------------------- PSNR
def test_psnr_uniform_noise_matches_formula() -> None:
    rng = np.random.default_rng(1)
    ref = rng.uniform(0.2, 0.8, (64, 80, 3))
    a = 0.1  # uniform on [-a, a] has variance a^2 / 3
    pred = ref + rng.uniform(-a, a, ref.shape)
    mse = float(np.mean((pred - ref) ** 2))
    assert psnr(pred, ref) == pytest.approx(10.0 * math.log10(1.0 / mse), abs=1e-9)
    # and close to the theoretical value from the noise variance
    assert psnr(pred, ref) == pytest.approx(10.0 * math.log10(3.0 / a**2), abs=0.05)


def test_psnr_mask_counts_only_masked_pixels() -> None:
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 1, (40, 50, 3))
    pred = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 5:25] = True
    before = psnr(pred, ref, mask)
    corrupted = pred.copy()
    corrupted[~mask] = 1.0 - ref[~mask]
    assert psnr(corrupted, ref, mask) == before
    assert psnr(corrupted, ref) < before - 5.0
    mse = float(np.mean((pred[mask] - ref[mask]) ** 2))
    assert before == pytest.approx(10 * math.log10(1 / mse), abs=1e-9)
    assert math.isnan(psnr(pred, ref, np.zeros((40, 50), bool)))


def test_identical_images(astro: np.ndarray) -> None:
    assert psnr(astro, astro) == math.inf
    assert ssim(astro, astro) == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(ssim_map(astro, astro), 1.0)


def test_uint8_accepted(astro: np.ndarray) -> None:
    u8 = (astro * 255).round().astype(np.uint8)
    f = u8.astype(np.float64) / 255.0
    noisy = np.clip(f + 0.02, 0, 1)
    assert psnr(u8, noisy) == pytest.approx(psnr(f, noisy), abs=1e-12)
    assert ssim(u8, noisy) == pytest.approx(ssim(f, noisy), abs=1e-12)


def test_shape_mismatch_raises(astro: np.ndarray) -> None:
    with pytest.raises(ValueError, match="differ"):
        psnr(astro, astro[:-1])
    with pytest.raises(ValueError, match="differ"):
        ssim(astro, astro[:, :-1])
    with pytest.raises(ValueError, match="mask"):
        psnr(astro, astro, np.ones((3, 3), bool))


# ----------------------------------------------------------------- SSIM
def test_ssim_matches_skimage_interior(astro: np.ndarray, degraded: np.ndarray) -> None:
    # skimage crops (win_size - 1) // 2 = 5 px before averaging; its scipy "reflect"
    # border differs from our torch reflect padding, so compare on that interior.
    ref_mean, ref_map = structural_similarity(
        degraded, astro, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, channel_axis=-1, full=True,
    )
    ours = ssim_map(degraded, astro)
    assert ours.shape == (128, 128)
    inner = (slice(5, -5), slice(5, -5))
    np.testing.assert_allclose(ours[inner], ref_map.mean(axis=-1)[inner], atol=1e-6)
    interior = np.zeros((128, 128), bool)
    interior[inner] = True
    assert ssim(degraded, astro, interior) == pytest.approx(ref_mean, abs=1e-3)
    assert 0.3 < ref_mean < 0.95  # a real, non-trivial degradation
    # the full-frame value (with border band) stays close as well
    assert ssim(degraded, astro) == pytest.approx(ref_mean, abs=2e-2)


def test_ssim_mask_is_mean_of_map(astro: np.ndarray, degraded: np.ndarray) -> None:
    smap = ssim_map(degraded, astro)
    mask = np.zeros((128, 128), bool)
    mask[20:60, 30:90] = True
    assert ssim(degraded, astro, mask) == pytest.approx(float(smap[mask].mean()), abs=1e-12)
    assert math.isnan(ssim(degraded, astro, np.zeros((128, 128), bool)))


# ----------------------------------------------------------------- regions
def test_mouth_box_padded() -> None:
    lips = np.array([[40.0, 55.0], [60.0, 55.0], [50.0, 50.0], [50.0, 60.0], [np.nan, np.nan]])
    # width 20, height 10 -> pad 4 px in x, 2 px in y on each side
    assert mouth_box(lips, (100, 100)) == (36, 48, 65, 63)
    assert mouth_box(lips, (100, 100), pad=0.0) == (40, 50, 61, 61)
    # clipping at the image border
    assert mouth_box(lips, (58, 62)) == (36, 48, 62, 58)
    assert mouth_box(np.full((4, 2), np.nan), (100, 100)) == (0, 0, 0, 0)
    m = mouth_mask(lips, (100, 100))
    assert m.shape == (100, 100) and m.sum() == 29 * 15
    assert m[48:63, 36:65].all()
    assert not mouth_mask(np.full((4, 2), np.nan), (100, 100)).any()


def test_head_mask() -> None:
    labels = np.array([[0, 1, 2], [3, 4, 1], [5, 3, 0]])
    expected = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
    np.testing.assert_array_equal(head_mask(labels), expected)


# ----------------------------------------------------------------- frames
def test_frame_metrics_mouth_corruption(astro: np.ndarray) -> None:
    labels = np.zeros((128, 128), np.uint8)
    labels[20:110, 30:100] = 1
    labels[80:95, 50:80] = 3
    lips = np.array([[50.0, 85.0], [80.0, 85.0], [65.0, 80.0], [65.0, 95.0]])
    x0, y0, x1, y1 = mouth_box(lips, (128, 128))
    rng = np.random.default_rng(3)
    pred = astro.copy()
    pred[y0:y1, x0:x1] = rng.uniform(0, 1, (y1 - y0, x1 - x0, 3))

    fm = frame_metrics(pred, astro, labels, lips)
    assert fm.psnr_mouth < fm.psnr_full - 10.0
    # the head contains the box; the larger full frame dilutes the error more
    assert fm.psnr_mouth < fm.psnr_head < fm.psnr_full
    hm = head_mask(labels)
    mse_head = float(np.mean((pred[hm] - astro[hm]) ** 2))
    assert fm.psnr_head == pytest.approx(10 * math.log10(1 / mse_head), abs=1e-9)
    assert fm.ssim_mouth < 0.2 < fm.ssim_head < fm.ssim_full < 1.0
    mse_mouth = float(np.mean((pred[y0:y1, x0:x1] - astro[y0:y1, x0:x1]) ** 2))
    assert fm.psnr_mouth == pytest.approx(10 * math.log10(1 / mse_mouth), abs=1e-9)

    no_lips = frame_metrics(pred, astro, labels, np.full((4, 2), np.nan))
    assert math.isnan(no_lips.psnr_mouth) and math.isnan(no_lips.ssim_mouth)
    with pytest.raises(ValueError, match="labels"):
        frame_metrics(pred, astro, labels[:-1], lips)


def test_mean_metrics() -> None:
    a = FrameMetrics(20.0, 30.0, 10.0, 0.5, 0.7, 0.1)
    b = FrameMetrics(40.0, 20.0, float("nan"), 0.9, 0.9, 0.3)
    out = mean_metrics([a, b])
    assert out == pytest.approx(
        {"psnr_full": 30.0, "psnr_head": 25.0, "psnr_mouth": 10.0,
         "ssim_full": 0.7, "ssim_head": 0.8, "ssim_mouth": 0.2}
    )
    empty = mean_metrics([])
    assert set(empty) == set(out) and all(math.isnan(v) for v in empty.values())
