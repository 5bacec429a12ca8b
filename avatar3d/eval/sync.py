"""Audio-visual sync: the lag between how far the mouth opens and how loud the speech is.

Why this measure: SyncNet's Sync-C/Sync-D need pretrained weights that are not available
offline, so sync is measured as METRICS.md defines it -- the lag (in video frames) that
maximises the normalised cross-correlation between

* the **mouth-opening curve** measured on the frames (MediaPipe face mesh: mean inner-lip
  gap divided by the inter-ocular distance, so it does not depend on image size or head
  distance), and
* the **speech envelope** of the audio, sampled once per video frame (log-energy in the
  speech band, zero-phase filtered so the envelope itself adds no delay),

with the peak height (a Pearson correlation in [-1, 1]) as confidence.

Sign convention: a **positive lag means the video is late** -- the mouth opens ``lag``
frames after the sound that goes with it (``mouth[i + lag]`` pairs with ``envelope[i]``).
A clip in sync gives 0; delaying the picture by k frames gives +k.

Timing convention: video frame ``k`` is shown during ``[k / fps, (k + 1) / fps)`` and is
paired with the audio around its centre ``(k + 0.5) / fps`` (as the synthetic generator
evaluates its visemes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import butter, sosfiltfilt

from avatar3d.errors import Avatar3DError
from avatar3d.eval.landmark_metrics import detect_landmarks
from avatar3d.face.landmark_sets import EYE_OUTER_CORNERS, INNER_LIP_PAIRS
from avatar3d.io.audio import read_wav
from avatar3d.io.video import probe_video, read_audio, read_video

__all__ = [
    "SyncResult",
    "audio_envelope",
    "mouth_opening_curve",
    "mouth_opening_from_landmarks",
    "sync_offset",
    "measure_video_sync",
    "shift_curve",
    "LagSpread",
    "lag_spread",
    "SPEECH_BAND_HZ",
]

PathLike = Union[str, Path]

SPEECH_BAND_HZ: tuple[float, float] = (150.0, 4000.0)  # voiced speech energy; drops hum and hiss
ENVELOPE_FLOOR_DB = 45.0  # quieter than (peak - this) counts as silence: room noise must not drive the curve
MIN_PAIRS = 12  # a lag scored on fewer finite frame pairs than this is not scored at all

# MediaPipe face-mesh indices: inner lip contour pairs (upper, lower), centre and either side,
# and the outer eye corners (the face-size normaliser).
_EYE_OUTER = EYE_OUTER_CORNERS


@dataclass
class SyncResult:
    """Outcome of :func:`sync_offset`.

    ``lag_frames`` > 0: video late (the mouth moves after the sound). ``confidence`` is the
    normalised cross-correlation at that lag (Pearson r; nan when no lag could be scored).
    ``lags`` / ``correlation`` hold the whole curve (nan where a lag had too few frame pairs),
    for plots. ``lag_refined`` is the parabolic sub-frame peak position; ``margin`` the peak
    minus the median correlation over all lags (SyncNet reports a similar peak-vs-rest figure).
    """

    lag_frames: int
    confidence: float
    lag_refined: float
    margin: float
    lags: np.ndarray = field(repr=False)
    correlation: np.ndarray = field(repr=False)
    n_pairs: int = 0  # finite frame pairs at lag 0

    @property
    def valid(self) -> bool:
        return bool(np.isfinite(self.confidence))

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready summary (nan -> None)."""
        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {"lag_frames": int(self.lag_frames) if self.valid else None, "confidence": num(self.confidence),
                "lag_refined": num(self.lag_refined), "margin": num(self.margin), "n_pairs": int(self.n_pairs)}


# --------------------------------------------------------------------------- #
# audio side
# --------------------------------------------------------------------------- #
def audio_envelope(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int,
                   band: tuple[float, float] = SPEECH_BAND_HZ, smooth_frames: float = 1.0) -> np.ndarray:
    """float64 [n_frames]: speech-band log-energy (dB) around each video frame's centre.

    The band-pass and smoothing are zero-phase (forward-backward), so the envelope is not
    delayed. Energy is averaged over one frame period centred on ``(k + 0.5) / fps``, then
    smoothed with a Gaussian of ``smooth_frames`` frames (sigma) and floored at
    ``peak - ENVELOPE_FLOOR_DB`` so silence is flat rather than noise. Frames past the end
    of the audio get the floor value.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1 or x.size == 0:
        raise Avatar3DError(f"audio must be a non-empty mono signal [N], got shape {np.shape(audio)}")
    if sample_rate <= 0 or fps <= 0 or n_frames <= 0:
        raise Avatar3DError(f"sample_rate, fps and n_frames must be positive (got {sample_rate}, {fps}, {n_frames})")
    lo, hi = band
    hi = min(hi, 0.45 * sample_rate)
    if x.size > 64:
        sos = butter(4, [lo, hi], btype="bandpass", fs=sample_rate, output="sos")
        x = sosfiltfilt(sos, x)
    power = np.concatenate([[0.0], np.cumsum(x * x)])  # prefix sums: window means in O(1)
    centres = (np.arange(n_frames) + 0.5) / fps * sample_rate
    half = 0.5 * sample_rate / fps
    a = np.clip(np.round(centres - half).astype(np.int64), 0, x.size)
    b = np.clip(np.round(centres + half).astype(np.int64), 0, x.size)
    energy = np.where(b > a, (power[b] - power[a]) / np.maximum(b - a, 1), 0.0)
    db = 10.0 * np.log10(energy + 1e-12)
    floor = db.max() - ENVELOPE_FLOOR_DB
    db = np.maximum(db, floor)
    if smooth_frames > 0:
        db = gaussian_filter1d(db, smooth_frames, mode="nearest")
    return db


# --------------------------------------------------------------------------- #
# video side
# --------------------------------------------------------------------------- #
def mouth_opening_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """float64 [N]: mean inner-lip gap / outer-eye-corner distance, from face-mesh landmarks.

    ``landmarks`` is ``[N, >=468, >=2]`` (x, y in any pixel units; NaN rows where no face).
    Dividing by the eye distance makes the curve independent of frame size and head
    distance; only x, y are used.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1] < 468 or lm.shape[2] < 2:
        raise ValueError(f"landmarks must be [N, 468+, 2+], got {lm.shape}")
    xy = lm[:, :, :2]
    upper = xy[:, [u for u, _ in INNER_LIP_PAIRS]]
    lower = xy[:, [v for _, v in INNER_LIP_PAIRS]]
    gap = np.linalg.norm(lower - upper, axis=-1).mean(axis=1)
    eyes = np.linalg.norm(xy[:, _EYE_OUTER[0]] - xy[:, _EYE_OUTER[1]], axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = gap / eyes
    out[~np.isfinite(out)] = np.nan
    return out


def mouth_opening_curve(frames: Iterable[np.ndarray], *, min_size: int = 256, video: bool = False) -> np.ndarray:
    """float64 [n]: the mouth-opening curve measured with MediaPipe on RGB uint8 frames.

    NaN where no face is found. Frames smaller than ``min_size`` are upsampled before
    detection (MediaPipe rarely finds a face below ~128 px). By default every frame is
    detected on its own, so no temporal filter can shift the curve in time; ``video=True``
    uses MediaPipe's tracking mode (faster on long clips; frames must be consecutive; it
    read ~0.1 frame later than per-frame detection on the synthetic clip).
    """
    return mouth_opening_from_landmarks(detect_landmarks(frames, min_size=min_size, video=video))


# --------------------------------------------------------------------------- #
# the lag
# --------------------------------------------------------------------------- #
def _pearson(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < MIN_PAIRS:
        return float("nan"), n
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    for v, raw in ((x, a[ok]), (y, b[ok])):  # a flat curve (silence, a frozen mouth) has no timing to find
        if float(np.abs(v).max()) <= 1e-9 * max(1.0, float(np.abs(raw).max())):
            return float("nan"), n
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den), n


def sync_offset(mouth_curve: np.ndarray, envelope: np.ndarray, max_lag_frames: int = 15) -> SyncResult:
    """The lag in ``[-max_lag_frames, max_lag_frames]`` maximising the normalised cross-correlation.

    For each lag L the Pearson correlation of ``mouth[i + L]`` with ``envelope[i]`` is taken
    over the frames where both are finite (NaN frames -- no face -- are skipped, not filled);
    lags with fewer than ``MIN_PAIRS`` pairs, or where either curve is flat (silence, a frozen
    mouth), are not scored; if none is, the result is invalid (nan confidence), never a guess.
    Positive lag = video late.
    Curves of different lengths are compared over their common start.
    """
    m = np.asarray(mouth_curve, dtype=np.float64).reshape(-1)
    e = np.asarray(envelope, dtype=np.float64).reshape(-1)
    n = min(m.size, e.size)
    m, e = m[:n], e[:n]
    max_lag = int(max(0, min(max_lag_frames, n - 1)))
    lags = np.arange(-max_lag, max_lag + 1)
    corr = np.full(lags.size, np.nan)
    n0 = 0
    for j, lag in enumerate(lags):
        if lag >= 0:
            r, cnt = _pearson(m[lag:], e[: n - lag])
        else:
            r, cnt = _pearson(m[: n + lag], e[-lag:])
        corr[j] = r
        if lag == 0:
            n0 = cnt
    if not np.isfinite(corr).any():
        return SyncResult(0, float("nan"), float("nan"), float("nan"), lags, corr, n0)
    j = int(np.nanargmax(corr))
    peak = float(corr[j])
    refined = float(lags[j])
    if 0 < j < lags.size - 1 and np.isfinite(corr[j - 1]) and np.isfinite(corr[j + 1]):
        den = corr[j - 1] - 2.0 * corr[j] + corr[j + 1]
        if den < 0:
            refined += float(0.5 * (corr[j - 1] - corr[j + 1]) / den)
    margin = peak - float(np.nanmedian(corr))
    return SyncResult(int(lags[j]), peak, refined, margin, lags, corr, n0)


MIN_SPREAD_WINDOWS = 3  # fewer windows than this cannot say how much the lag wanders
MIN_SPREAD_SEARCH = 3  # a search narrower than +-3 frames cannot show a wander beyond +-1


@dataclass
class LagSpread:
    """How much an audio lag measured over ``window`` frames wanders along one clip (:func:`lag_spread`).

    ``spread`` is the robust standard deviation (1.4826 x the median absolute deviation about the
    median) of the per-window lags, in frames; ``within_one`` the share of windows within +-1 frame of
    that median.  Both are nan when fewer than ``MIN_SPREAD_WINDOWS`` windows could be scored.
    """

    window: int
    lags: np.ndarray = field(repr=False)
    median: float
    spread: float
    within_one: float

    def resolves(self, frames: float) -> bool:
        """Whether a lag difference of ``frames`` stands out of this clip's own wander (spread <= frames)."""
        return bool(np.isfinite(self.spread) and self.spread <= frames)

    def to_dict(self) -> dict[str, float | int | None]:
        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        return {"window_frames": int(self.window), "windows": int(self.lags.size), "median_lag": num(self.median),
                "spread_frames": num(self.spread), "within_one": num(self.within_one)}


def lag_spread(mouth_curve: np.ndarray, envelope: np.ndarray, window: int, max_lag_frames: int = 15) -> LagSpread:
    """The lag of every non-overlapping ``window``-frame stretch of one clip, and how much it wanders.

    Why: a speaker's true audio-visual offset is constant along a clip, so the scatter of the lags
    measured over short stretches of the *reference* is the noise of the measure at that length.
    Windows too short to search +-``MIN_SPREAD_SEARCH`` frames with ``MIN_PAIRS`` pairs give no spread.
    A held-out span of 1-2 s is compared against this before its rendered-minus-reference lag is read
    as a sync error (on real speech the scatter at 1 s was measured at several frames).
    """
    m = np.asarray(mouth_curve, dtype=np.float64).reshape(-1)
    e = np.asarray(envelope, dtype=np.float64).reshape(-1)
    if window < 2:
        raise ValueError(f"window must be >= 2 frames, got {window}")
    n = min(m.size, e.size)
    search = min(max_lag_frames, window - MIN_PAIRS)  # lags past this have too few pairs to be scored
    found = []
    starts = range(0, n - window + 1, window) if search >= MIN_SPREAD_SEARCH else range(0)
    for s in starts:
        r = sync_offset(m[s:s + window], e[s:s + window], search)
        if r.valid:
            found.append(r.lag_frames)
    lags = np.asarray(found, dtype=np.float64)
    if lags.size < MIN_SPREAD_WINDOWS:
        return LagSpread(int(window), lags, float("nan"), float("nan"), float("nan"))
    med = float(np.median(lags))
    return LagSpread(int(window), lags, med, 1.4826 * float(np.median(np.abs(lags - med))),
                     float(np.mean(np.abs(lags - med) <= 1)))


def shift_curve(curve: np.ndarray, k: int) -> np.ndarray:
    """``curve`` delayed by ``k`` frames (advanced when negative), NaN where nothing is known.

    ``out[i] = curve[i - k]``: what a video late by ``k`` frames would measure.
    """
    c = np.asarray(curve, dtype=np.float64).reshape(-1)
    out = np.full_like(c, np.nan)
    if k >= 0:
        out[k:] = c[: c.size - k] if k else c
    else:
        out[:k] = c[-k:]
    return out


def measure_video_sync(video: PathLike, audio: PathLike | None = None, *, max_lag_frames: int = 15,
                       min_size: int = 256) -> tuple[SyncResult, np.ndarray, np.ndarray]:
    """Sync of an mp4 against its own audio track (or ``audio``, a WAV): (result, mouth curve, envelope).

    The frame rate comes from the video stream; audio is read at 16 kHz mono.
    """
    info = probe_video(video)
    mouth = mouth_opening_curve(read_video(video), min_size=min_size)
    if audio is None:
        rate = 16000
        samples = read_audio(video, rate)
    else:
        samples, rate = read_wav(audio)
    if samples.size == 0:
        raise Avatar3DError(f"{audio or video}: no audio samples; give a clip with an audio track or --audio")
    env = audio_envelope(samples, rate, float(info.fps), mouth.size)
    return sync_offset(mouth, env, max_lag_frames), mouth, env
