"""`avatar3d eval AVATAR SUBJECT`: score an avatar on the subject's held-out frames.

Why held-out and self-driven (METRICS.md): the avatar re-renders the frames it never trained
on with their tracked pose and motion, so every difference from the real frame is the
avatar's error. Image metrics (PSNR / SSIM on full frame, head, mouth) come from
:mod:`avatar3d.eval.image_metrics`; landmark metrics (LMD, blinks) and the mouth-opening
curve from MediaPipe run the same way on the rendered and the reference frames
(:mod:`avatar3d.eval.landmark_metrics`), and audio-visual sync from
:mod:`avatar3d.eval.sync`. A metric that cannot be measured (no face detected, too few
frames, no LPIPS weights) is reported as unavailable with the reason -- never filled in.
"""
from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from tqdm import tqdm

from avatar3d import __version__
from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.loading import load_avatar
from avatar3d.dataset.contract import FRAMES, TRACKING, read_arrays
from avatar3d.dataset.reader import LIP_IDS, load_subject
from avatar3d.errors import Avatar3DError
from avatar3d.eval import dlib_landmarks
from avatar3d.eval.image_metrics import frame_metrics, head_mask, mean_metrics
from avatar3d.eval.landmark_metrics import blink_rate, detect_landmarks, eye_aspect_ratio, landmark_distance
from avatar3d.eval.lpips import MIN_SIZE, load_lpips, lpips_pairs, resolve_weights
from avatar3d.eval.report import render_html
from avatar3d.eval.results import EvalRun
from avatar3d.eval.sync import MIN_PAIRS, audio_envelope, lag_spread, mouth_opening_from_landmarks, sync_offset
from avatar3d.guards import warn
from avatar3d.io.atomic import json_safe, write_json_atomic, write_text_atomic
from avatar3d.io.audio import read_wav
from avatar3d.io.video import read_video

__all__ = ["EvalConfig", "evaluate", "LPIPS_UNAVAILABLE"]

LPIPS_UNAVAILABLE = "no local weights given (--lpips-weights)"


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    frames: int | None = None  # evaluate the first N held-out frames (None: all of them)
    size: int | None = None  # render and compare at this square size (None: the avatar's training resolution)
    detect_min_size: int = 256  # frames smaller than this are upsampled before MediaPipe runs on them
    max_lag_frames: int = 15  # sync search range, +- frames (also capped at a third of the evaluated span)
    grid_frames: int = 6  # side-by-side examples in the report
    lpips_weights: Path | str | None = None  # local LPIPS (AlexNet v0.1) weights: avatar3d.eval.lpips.resolve_weights
    tracked_poses: bool = False
    """Score with the subject's landmark-tracked head poses (`--tracked-poses`) instead of the avatar's refined
    ones: what the avatar gives where no photometric re-tracking runs (a live landmark-driven pipeline)."""
    other_subject: bool = False
    """Score an avatar on a subject it was not trained on (`--other-subject`).  Off: refused, because
    its pixels then measure how much two people differ, not how good the avatar is."""


def _num(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _reference_frames(data: Any, ids: np.ndarray, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] reference frames: the training cache at its resolution, else decoded and resized."""
    if size == data.resolution:
        return np.stack([np.asarray(data.frames[int(i)]) for i in ids])

    wanted = {int(i): k for k, i in enumerate(ids)}
    out = np.zeros((len(ids), size, size, 3), np.uint8)
    last = int(ids[-1])
    for j, frame in enumerate(read_video(data.root / FRAMES)):
        if j in wanted:
            interp = cv2.INTER_AREA if size < frame.shape[0] else cv2.INTER_CUBIC
            out[wanted[j]] = cv2.resize(frame, (size, size), interpolation=interp)
        if j >= last:
            break
    return out


def _span_curve(values: np.ndarray, ids: np.ndarray, start: int, length: int) -> np.ndarray:
    curve = np.full(length, np.nan)
    curve[ids - start] = values
    return curve


SPEECH_RANGE_DB = 6.0  # an envelope varying less than this over the span has no speech to sync to


def _sync_entry(result: Any, envelope: np.ndarray) -> dict[str, Any]:
    """The JSON entry of one sync measurement; when there is no lag, the reason why."""
    entry = result.to_dict()
    if not result.valid:
        if float(np.ptp(envelope)) < SPEECH_RANGE_DB:
            entry["unavailable"] = "no speech in the evaluated frames (the audio envelope is flat)"
        elif result.n_pairs < MIN_PAIRS:
            entry["unavailable"] = f"fewer than {MIN_PAIRS} frames with a detected face in the evaluated span"
        else:
            entry["unavailable"] = "the mouth-opening curve is flat"
    return entry


def _mouth_sync_entry(result: Any) -> dict[str, Any]:
    """The JSON entry of the rendered-vs-reference mouth lag (positive: the rendered mouth moves late)."""
    entry = result.to_dict()
    if not result.valid:
        entry["unavailable"] = (f"fewer than {MIN_PAIRS} frames with a face detected in both" if result.n_pairs < MIN_PAIRS
                                else "a mouth-opening curve is flat")
    return entry


def _check_own_subject(avatar: Path, meta: AvatarBundle, subject: Path, allowed: bool,
                       log: Callable[[str], None]) -> bool | None:
    """Whether ``subject`` is the one the avatar was trained on (recognised by its tracked poses).

    Another subject is refused unless ``allowed`` (then it is scored with a warning); None when the
    subject has no tracking (the loader reports that).
    """
    if not (subject / TRACKING).is_file():
        return None
    tracked = read_arrays(subject / TRACKING, ("R", "t"))  # a corrupt file: one line, before any work
    R, t = tracked["R"], tracked["t"]
    if meta.is_trained_on(R, t):
        return True
    trained = meta.subject or "another subject"
    what = (f"{avatar} was trained on {trained}, not on {subject}: its scores there would measure how two people "
            "differ, not the avatar")  # fmt: skip
    if not allowed:
        raise Avatar3DError(f"{what}; evaluate it on its own subject, or pass --other-subject to score it anyway")
    warn(f"{what} (scored anyway: --other-subject)")
    return False


def evaluate(avatar: str | Path, subject: str | Path, out_dir: str | Path, config: EvalConfig | None = None, *,
             progress: bool = True, log: Callable[[str], None] = print) -> EvalRun:
    """Render the held-out frames, measure them, write ``metrics.json`` and ``report.html`` into ``out_dir``."""
    config = config or EvalConfig()
    lpips_metric, lpips_files = None, None
    if config.lpips_weights is not None:  # read and checked before any rendering: bad weights fail at once

        lpips_files = resolve_weights(config.lpips_weights)
        lpips_metric = load_lpips(lpips_files)
    avatar, subject, out_dir = Path(avatar), Path(subject), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise Avatar3DError(f"{out_dir} is a file: give a folder for the report (-o REPORT_DIR)")
    loaded = load_avatar(avatar)
    meta = loaded.bundle
    r = int(meta.resolution)
    own = _check_own_subject(avatar, meta, subject, config.other_subject, log)  # before the frame cache is built
    data = load_subject(subject, r, progress=progress)
    head_poses = "landmark-tracked"
    if config.tracked_poses:
        log(f"[eval] scoring with {subject}'s landmark-tracked head poses (--tracked-poses)")
    elif n_refined := loaded.use_refined_poses(data):
        head_poses = "refined"
        log(f"[eval] {subject} is the avatar's own subject: using its refined head poses ({n_refined} frames "
            "differ from the landmark tracking: corrected in training or re-tracked photometrically)")
    ids = np.asarray(data.val_ids, dtype=np.int64)
    if len(ids) == 0:
        raise Avatar3DError(f"{subject}: the held-out (val) split is empty; re-run `avatar3d prep` with a val split")
    if config.frames is not None:
        if config.frames <= 0:
            raise Avatar3DError(f"--frames {config.frames}: give a positive number of frames")
        ids = ids[: config.frames]
    size = int(config.size or r)
    if not 16 <= size <= data.size:
        raise Avatar3DError(f"--size {size}: pick a size in 16..{data.size} (the prepared frames of {subject})")

    # --- render ---------------------------------------------------------------------------
    bar = None
    if progress:
        bar = tqdm(total=len(ids), desc="eval render", unit="frame", dynamic_ncols=True)
    rendered = np.zeros((len(ids), size, size, 3), np.uint8)
    seconds = 0.0
    for k, i in enumerate(ids):
        t0 = time.perf_counter()
        rgb = loaded.render_subject_frame(data, int(i), size)["rgb"].numpy()
        seconds += time.perf_counter() - t0
        rendered[k] = (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    reference = _reference_frames(data, ids, size)

    # --- image metrics ----------------------------------------------------------------------

    rows, heads = [], []
    for k, i in enumerate(ids):
        labels = np.asarray(data.labels[int(i)])
        if size != r:
            labels = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
        lips = data.landmarks[int(i)][LIP_IDS] * (size / r)
        rows.append(frame_metrics(rendered[k], reference[k], labels, lips))
        heads.append(head_mask(labels))
    image = mean_metrics(rows)
    lpips_entry = _lpips_entry(lpips_metric, lpips_files, rendered, reference, heads)

    # --- landmarks: LMD, blinks, mouth opening ---------------------------------------------
    lm_pred = detect_landmarks(rendered, min_size=config.detect_min_size, video=False)
    lm_ref = detect_landmarks(reference, min_size=config.detect_min_size, video=False)
    lmd = landmark_distance(lm_pred, lm_ref, size)
    lmd_dlib = _dlib_lmd_entry(rendered, reference, size, config.detect_min_size)
    fps = float(data.fps)
    blinks_pred = blink_rate(eye_aspect_ratio(lm_pred), fps)
    blinks_ref = blink_rate(eye_aspect_ratio(lm_ref), fps)

    # --- sync over the span of evaluated frames (gaps = excluded frames stay NaN) ----------
    start, span = int(ids[0]), int(ids[-1] - ids[0] + 1)
    mouth_pred = _span_curve(mouth_opening_from_landmarks(lm_pred), ids, start, span)
    mouth_ref = _span_curve(mouth_opening_from_landmarks(lm_ref), ids, start, span)
    audio, rate = read_wav(data.audio_path)
    clip_envelope = audio_envelope(audio, rate, fps, data.n_frames)
    envelope = clip_envelope[start:start + span]
    max_lag = int(max(0, min(config.max_lag_frames, span // 3)))
    # how much the reference's own audio lag wanders over stretches this long (prep's landmarks, whole clip):
    # a rendered-minus-reference difference inside it is not a measured sync error
    spread = lag_spread(mouth_opening_from_landmarks(data.landmarks), clip_envelope, span, max_lag) if span >= 2 else None
    sync_pred = sync_offset(mouth_pred, envelope, max_lag)
    sync_ref = sync_offset(mouth_ref, envelope, max_lag)
    relative = (sync_pred.lag_frames - sync_ref.lag_frames) if sync_pred.valid and sync_ref.valid else None
    # the avatar's lag read directly: its mouth against the reference's over the same frames, no audio in between
    # (on a 1-2 s held-out span each audio lag is a weak estimate, and their difference adds both errors)
    sync_mouth = sync_offset(mouth_pred, mouth_ref, max_lag)

    train_cfg = avatar / "config.yaml" if avatar.is_dir() else avatar.parent / "config.yaml"
    metrics: dict[str, Any] = {
        "avatar3d_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "avatar": str(avatar.resolve()),
        "subject": str(subject.resolve()),
        "avatar_trained_on": str(meta.subject),
        "own_subject": own,
        "eval_config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "train_config_yaml": train_cfg.read_text(encoding="utf-8") if train_cfg.is_file() else None,
        "avatar_config": meta.config,
        "avatar_backend": meta.backend,
        "training_resolution": r,
        "size": size,
        "fps": fps,
        "head_poses": head_poses,
        "frames": {"split": "val", "n": int(len(ids)), "first": int(ids[0]), "last": int(ids[-1]),
                   "val_total": int(len(data.val_ids))},
        "render_fps": len(ids) / max(seconds, 1e-9),
        "image": {k: _num(v) for k, v in image.items()},
        "lpips": lpips_entry,
        "lmd": {**lmd.to_dict(), "unit": "px at 512x512",
                **({"unavailable": "no frame with a face detected in both rendered and reference"}
                   if lmd.n_both == 0 else {})},
        "lmd_dlib": lmd_dlib,
        "blink": {"rendered": blinks_pred.to_dict(), "reference": blinks_ref.to_dict()},
        "sync": {"rendered": _sync_entry(sync_pred, envelope), "reference": _sync_entry(sync_ref, envelope),
                 "lag_rendered_minus_reference": relative, "mouth_rendered_vs_reference": _mouth_sync_entry(sync_mouth),
                 "max_lag_frames": max_lag,
                 "reference_lag_spread": spread.to_dict() if spread is not None else None,
                 "convention": "positive lag = video late (mouth opens after the sound)"},
        "detection_rate": {"rendered": _num(lmd.detection_rate_pred), "reference": _num(lmd.detection_rate_ref)},
    }
    pick = np.unique(np.linspace(0, len(ids) - 1, min(config.grid_frames, len(ids))).round().astype(int))
    run = EvalRun(
        metrics=metrics, frame_ids=ids, psnr_per_frame=np.array([row.psnr_full for row in rows]),
        span_start=start, mouth_rendered=mouth_pred, mouth_reference=mouth_ref, envelope=envelope,
        sync_lags=sync_pred.lags, sync_corr_rendered=sync_pred.correlation, sync_corr_reference=sync_ref.correlation,
        samples=[(int(ids[k]), reference[k], rendered[k]) for k in pick], rendered=rendered, reference=reference,
    )
    page = render_html(run)  # built before anything is written: a plotting failure leaves no partial report
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", json_safe(metrics))
    write_text_atomic(out_dir / "report.html", page)
    log(f"[eval] {len(ids)} held-out frames at {size}²: PSNR {_fmt(image['psnr_full'])} dB "
        f"(head {_fmt(image['psnr_head'])}, mouth {_fmt(image['psnr_mouth'])}), mouth LMD {_fmt(lmd.mouth)} px"
        + (f" (dlib 68-point: {_fmt(lmd_dlib['mouth'])})" if "unavailable" not in lmd_dlib else "") + ", "
        f"face detected in {lmd.detection_rate_pred:.0%} rendered / {lmd.detection_rate_ref:.0%} reference frames, "
        f"sync lag {sync_pred.lag_frames if sync_pred.valid else 'n/a'}"
        + (f", LPIPS {_fmt(lpips_entry['full'])}" if "unavailable" not in lpips_entry else "")
        + f" -> {out_dir / 'report.html'}")
    return run


def _dlib_lmd_entry(rendered: np.ndarray, reference: np.ndarray, size: int, min_size: int) -> dict[str, Any]:
    """metrics.json's ``lmd_dlib``: LMD from dlib's 68 points (mouth = points 48-67, the anchors' mouth LMD),
    or None means and ``unavailable``: why (dlib is optional; see avatar3d.eval.dlib_landmarks)."""
    reason = dlib_landmarks.dlib_unavailable_reason()
    if reason is not None:
        return {"mouth": None, "face": None, "unavailable": reason}
    result = landmark_distance(dlib_landmarks.detect_landmarks_68(rendered, min_size=min_size),
                               dlib_landmarks.detect_landmarks_68(reference, min_size=min_size), size,
                               mouth_ids=dlib_landmarks.MOUTH_68, n_points=dlib_landmarks.N_68)  # fmt: skip
    return {**result.to_dict(), "unit": "px at 512x512", "detector": "dlib 68-point shape predictor (iBUG 300-W)",
            **({"unavailable": f"no frame with a face found by dlib in both rendered and reference (found in "
                               f"{result.detection_rate_pred:.0%} / {result.detection_rate_ref:.0%}; its HOG detector "
                               "misses blurred faces)"} if result.n_both == 0 else {})}  # fmt: skip


def _lpips_entry(metric: Any, files: Any, rendered: np.ndarray, reference: np.ndarray,
                 heads: list[np.ndarray]) -> dict[str, Any]:
    """metrics.json's ``lpips``: the means with their provenance, or None means and ``unavailable``: the
    reason -- a mapping either way, like the ``lmd`` and ``sync`` entries."""
    if metric is None:
        return {"full": None, "head": None, "unavailable": LPIPS_UNAVAILABLE}
    if rendered.shape[1] < MIN_SIZE:
        return {"full": None, "head": None,
                "unavailable": f"frames of {rendered.shape[1]} px are below AlexNet's {MIN_SIZE} px minimum; use --size"}
    full, head = lpips_pairs(metric, rendered, reference, heads)
    n_head = int(np.isfinite(head).sum())
    return {"full": _num(float(np.mean(full))), "head": _num(float(np.nanmean(head))) if n_head else None,
            "n_frames": int(len(full)), "n_head": n_head, "per_frame_full": [float(v) for v in full],
            "net": "alex", "version": "0.1", "weights": files.describe(),
            "backbone": str(files.backbone), "heads": str(files.heads),
            "head_region": f"bounding box of the reference head mask, frames where it is >= {MIN_SIZE} px",
            "convention": "RGB scaled to [-1, 1] at the evaluated size, no resizing; mean of per-frame values"}


def _fmt(x: float) -> str:
    return f"{x:.2f}" if x is not None and np.isfinite(x) else "n/a"


