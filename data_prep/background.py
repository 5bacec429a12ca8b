"""Stage 4 of ``avatar3d prep``: a clean background plate from pixels the person never covers.

Outputs in ``out_dir`` (atomic writes):

* ``background.png`` - RGB plate [H, W, 3]: per-pixel median over the sampled
  frames in which the pixel is background (robust to the odd frame where the
  segmentation missed a strand of hair or a shadow), filled by push-pull
  diffusion where the person covered the pixel in every sampled frame.
* ``background_unseen.png`` - 255 where the plate was filled (never seen), else 0;
  renderers and losses can down-weight those pixels.
* ``background.json`` - coverage, sampled frames, speed; written last (completion marker).

Why the margin: segmentation edges are a few pixels off and hair edges are
semi-transparent, so background pixels next to the person carry some of its
colour; the person is dilated by ``margin_px`` before a pixel counts as seen.

Why push-pull rather than ``cv2.inpaint``: the hole behind a torso spans a third
of the frame; Telea's marching fill smears boundary colours into streaks over
such distances, whereas averaging the known pixels over a pyramid and pulling
the coarse levels back into the hole gives a smooth, plausible fill that never
overshoots the surrounding colours (``method="telea"`` is still available).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from tqdm import tqdm

from avatar3d.dataset.contract import FRAMES, PLATE, PLATE_UNSEEN, iter_labels
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import atomic_path, write_json_atomic
from avatar3d.io.video import read_video
from data_prep.segment import BACKGROUND, PARSING_NAME

PathLike = Union[str, Path]

__all__ = ["BackgroundConfig", "BackgroundResult", "robust_plate", "push_pull_fill", "estimate_background"]

PLATE_NAME = PLATE
UNSEEN_NAME = PLATE_UNSEEN
REPORT_NAME = "background.json"


@dataclass
class BackgroundConfig:
    """Sampling, robustness and fill settings."""

    max_frames: int = 120
    """Most frames sampled (evenly over the clip); bounds time and memory."""
    max_memory_mb: float = 512.0
    """Upper bound on the sampled frames' memory; lowers ``max_frames`` for large frames."""
    margin_px: int = 4
    """Person (any non-background label) is dilated by this before a pixel counts as background."""
    min_seen: int = 1
    """A pixel is 'seen' when it is background in at least this many sampled frames."""
    method: str = "pushpull"
    """Hole fill: 'pushpull' (smooth multi-scale diffusion) or 'telea' (cv2.inpaint)."""


@dataclass
class BackgroundResult:
    """Summary saved as ``background.json`` (plus the arrays, not saved there)."""

    n_frames: int
    n_sampled: int
    seen_fraction: float
    mean_samples_per_seen_pixel: float
    wall_s: float
    config: dict
    plate: Optional[np.ndarray] = None
    unseen: Optional[np.ndarray] = None

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("plate", "unseen")}


def robust_plate(frames: np.ndarray, valid: np.ndarray, chunk_rows: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel median of ``frames`` [T,H,W,3] uint8 over the frames where ``valid`` [T,H,W] is True.

    Returns (plate [H,W,3] uint8, count [H,W] int). Invalid samples are pushed to
    the top of a per-pixel sort (value 256), so the median is read at the middle
    of the valid ones; done in row chunks to keep the uint16 copy small.
    """
    t, h, w, _ = frames.shape
    plate = np.zeros((h, w, 3), np.uint8)
    count = valid.sum(axis=0).astype(np.int32)
    for r0 in range(0, h, chunk_rows):
        r1 = min(r0 + chunk_rows, h)
        block = frames[:, r0:r1].astype(np.uint16)
        block[~valid[:, r0:r1]] = 256
        block.sort(axis=0)
        k = count[r0:r1]
        lo = np.clip((k - 1) // 2, 0, t - 1)[None, :, :, None]
        hi = np.clip(k // 2, 0, t - 1)[None, :, :, None]
        med = (np.take_along_axis(block, np.broadcast_to(lo, (1,) + block.shape[1:]), 0)[0]
               + np.take_along_axis(block, np.broadcast_to(hi, (1,) + block.shape[1:]), 0)[0] + 1) // 2
        plate[r0:r1] = np.where(k[..., None] > 0, np.minimum(med, 255), 0).astype(np.uint8)
    return plate, count


def push_pull_fill(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill ``image`` [H,W,C] where ``known`` [H,W] is False by pyramid push-pull diffusion."""
    img = image.astype(np.float32)
    weight = known.astype(np.float32)
    if weight.all():
        return image.copy()
    if not weight.any():
        raise Avatar3DError("background: no pixel was ever background; film some background beside the person")
    levels = [(img * weight[..., None], weight)]
    while min(levels[-1][1].shape) > 1:  # push: weighted averages, coarser and coarser
        v, wgt = levels[-1]
        levels.append((cv2.pyrDown(v), cv2.pyrDown(wgt)))
    v, wgt = levels[-1]
    filled = v / np.maximum(wgt, 1e-8)[..., None]
    for v, wgt in reversed(levels[:-1]):  # pull: fill each level's gaps from the coarser one
        up = cv2.resize(filled, (wgt.shape[1], wgt.shape[0]), interpolation=cv2.INTER_LINEAR)
        if up.ndim == 2:
            up = up[..., None]
        alpha = np.clip(wgt, 0.0, 1.0)[..., None]
        filled = alpha * (v / np.maximum(wgt, 1e-8)[..., None]) + (1.0 - alpha) * up
    out = np.where(known[..., None], img, filled)
    return np.clip(out + 0.5, 0, 255).astype(image.dtype) if image.dtype == np.uint8 else out


def _write_png(path: Path, rgb_or_gray: np.ndarray) -> None:
    img = rgb_or_gray[..., ::-1] if rgb_or_gray.ndim == 3 else rgb_or_gray
    ok, data = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise Avatar3DError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def estimate_background(
    out_dir: PathLike,
    config: Optional[BackgroundConfig] = None,
    frames_path: Optional[PathLike] = None,
    parsing_path: Optional[PathLike] = None,
    progress: bool = True,
) -> BackgroundResult:
    """Build the plate from ``out_dir/frames.mp4`` and ``out_dir/parsing.npz``; write ``background.png``."""
    config = config or BackgroundConfig()
    if config.method not in ("pushpull", "telea"):
        raise Avatar3DError(f"background: unknown fill method {config.method!r}; use 'pushpull' or 'telea'")
    out = Path(out_dir)
    frames_path = Path(frames_path) if frames_path is not None else out / FRAMES
    parsing_path = Path(parsing_path) if parsing_path is not None else out / PARSING_NAME
    if not frames_path.is_file():
        raise Avatar3DError(f"{frames_path}: not found; run the decode stage (avatar3d prep) first")
    labels_iter = iter_labels(parsing_path)  # raises now if missing
    with np.load(parsing_path) as z:
        n = int(z["has_face"].shape[0]) if "has_face" in z.files else None
    if not n:
        raise Avatar3DError(f"{parsing_path}: holds no frames; re-run the segment stage")
    (out / REPORT_NAME).unlink(missing_ok=True)
    started = time.perf_counter()
    frames_iter = read_video(frames_path)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * config.margin_px + 1,) * 2) if config.margin_px > 0 else None
    samples: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    pick: Optional[set[int]] = None
    seen_frames = 0
    for i, (rgb, labels) in enumerate(tqdm(zip(frames_iter, labels_iter), total=n, desc="background",
                                            unit="frame", disable=not progress)):
        if pick is None:
            per_frame_mb = rgb.nbytes * (1 + 1 / 3) / 2**20
            budget = max(1, min(config.max_frames, int(config.max_memory_mb / per_frame_mb)))
            pick = set(np.unique(np.linspace(0, n - 1, min(budget, n)).round().astype(int)).tolist())
        if labels.shape != rgb.shape[:2]:
            raise Avatar3DError(f"{parsing_path}: label size {labels.shape} differs from frames {rgb.shape[:2]}; "
                                f"re-run the segment stage")
        seen_frames = i + 1
        if i in pick:
            person = (labels != BACKGROUND).astype(np.uint8)
            if kernel is not None:
                person = cv2.dilate(person, kernel)
            samples.append(rgb)
            valid.append(person == 0)
    if seen_frames != n:
        raise Avatar3DError(f"{frames_path} has {seen_frames} frames but {parsing_path} has {n}; "
                            f"re-run the segment stage")
    stack, mask = np.stack(samples), np.stack(valid)
    del samples, valid
    plate, count = robust_plate(stack, mask)
    seen = count >= max(config.min_seen, 1)
    if not seen.any():
        raise Avatar3DError(f"{parsing_path}: no pixel is background in any sampled frame; "
                            f"film some background beside the person")
    if config.method == "telea":
        filled = cv2.inpaint(plate, (~seen).astype(np.uint8), 5, cv2.INPAINT_TELEA)
    else:
        filled = push_pull_fill(plate, seen)
    unseen = np.where(seen, 0, 255).astype(np.uint8)
    _write_png(out / PLATE_NAME, filled)
    _write_png(out / UNSEEN_NAME, unseen)
    result = BackgroundResult(
        n_frames=n, n_sampled=int(stack.shape[0]), seen_fraction=float(seen.mean()),
        mean_samples_per_seen_pixel=float(count[seen].mean()), wall_s=time.perf_counter() - started,
        config=asdict(config), plate=filled, unseen=unseen > 0,
    )
    write_json_atomic(out / REPORT_NAME, result.summary())
    return result
