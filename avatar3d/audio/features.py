"""The weight-free audio front-end: log-mel, pitch (YIN), energy, aligned to video frames.

Why weight-free: no speech-encoder weights ship anywhere reachable here, and a
motion model trained on these features works on any machine.  Everything is
vectorised over frames (torch STFT / FFT, numpy gathers): 60 s of audio takes
tens of milliseconds, not seconds.

Time convention (the one thing every consumer must agree on):

* **Analysis frames** (the "100 Hz" streams, ``hop = sample_rate * hop_ms / 1000``
  samples): frame ``k`` is centred on sample ``(k + 0.5) * hop``, i.e. it
  describes the hop cell ``[k * hop, (k + 1) * hop)``; a clip of ``N`` samples
  gives ``ceil(N / hop)`` frames.  Audio outside the clip counts as silence
  (zero padding).
* **Video frames**: feature index ``i`` describes the audio around time
  ``(i + 0.5) / fps``, the centre of the frame's display interval
  ``[i / fps, (i + 1) / fps)``.

Mel scale: **Slaney** (linear below 1 kHz, logarithmic above; the Auditory
Toolbox / librosa default) with Slaney area normalisation (each triangle has
unit area in Hz, so a band's value does not depend on its width).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.signal import resample_poly

from avatar3d.errors import Avatar3DError

__all__ = [
    "AudioFeatureConfig", "FRONTEND_VERSION", "frontend_name", "hop_samples", "analysis_frame_count",
    "mel_filterbank", "mel_center_frequencies", "hz_to_mel", "mel_to_hz",
    "log_mel", "pitch", "energy", "frame_features", "as_mono_audio", "resample_mono", "window_samples", "fft_size",
    "yin_lags",
]

FRONTEND_VERSION = "weightfree-v1"
LOG_FLOOR = 1e-10
"""Power floor of the log-mel and energy (-100 dB): digital silence maps to log(1e-10) = -23.03."""


@dataclass(frozen=True)
class AudioFeatureConfig:
    """Settings of the weight-free front-end (all analysis streams share one hop)."""

    sample_rate: int = 16000
    """Rate the audio is given at (Hz)."""
    n_mels: int = 80
    """Mel bands."""
    window_ms: float = 25.0
    """Analysis window of the STFT and of the RMS energy (Hann for the STFT, rectangular for RMS)."""
    hop_ms: float = 10.0
    """Hop between analysis frames (10 ms = the 100 Hz streams)."""
    fmin: float = 40.0
    """Lowest mel band edge (Hz)."""
    fmax: float = 7600.0
    """Highest mel band edge (Hz); must not exceed sample_rate / 2."""
    pitch_min_hz: float = 60.0
    """Lowest f0 searched (sets the longest YIN lag)."""
    pitch_max_hz: float = 500.0
    """Highest f0 searched (sets the shortest YIN lag)."""
    yin_threshold: float = 0.15
    """YIN absolute threshold: the first lag whose normalised difference dips below it is the period."""
    voicing_threshold: float = 0.3
    """A frame is voiced if the chosen dip is below this (aperiodicity 0 = perfectly periodic, ~1 = noise)."""
    silence_db: float = -60.0
    """Frames quieter than this (RMS, dB re full scale) are never voiced."""
    context_frames: int = 16
    """Analysis frames in each video frame's mel window (16 x 10 ms = 160 ms around the frame centre)."""


def frontend_name(config: AudioFeatureConfig) -> str:
    """One string naming the front-end and every setting, stored beside the features."""
    return f"{FRONTEND_VERSION} log-mel(slaney)+yin-f0+rms-db " + json.dumps(asdict(config), sort_keys=True)


def hop_samples(config: AudioFeatureConfig) -> int:
    """Hop in samples (rounded; 160 at 16 kHz / 10 ms)."""
    return max(1, int(round(config.sample_rate * config.hop_ms / 1000.0)))


def window_samples(config: AudioFeatureConfig) -> int:
    """Samples in one analysis window (``window_ms`` at the sample rate, at least 2)."""
    return max(2, int(round(config.sample_rate * config.window_ms / 1000.0)))


def analysis_frame_count(n_samples: int, config: AudioFeatureConfig) -> int:
    """Number of analysis frames for ``n_samples`` of audio: ceil(n / hop)."""
    return -(-int(n_samples) // hop_samples(config))


def _check_config(config: AudioFeatureConfig) -> None:
    nyq = config.sample_rate / 2.0
    if config.sample_rate <= 0 or config.hop_ms <= 0 or config.window_ms <= 0 or config.n_mels <= 0:
        raise Avatar3DError(f"audio feature config has a non-positive rate, window, hop or band count: {config}")
    if not 0 <= config.fmin < config.fmax <= nyq:
        raise Avatar3DError(f"mel range fmin={config.fmin} .. fmax={config.fmax} Hz must lie within 0 .. "
                            f"{nyq:g} Hz (half the sample rate) with fmin < fmax")
    if not 0 < config.pitch_min_hz < config.pitch_max_hz < nyq / 2:
        raise Avatar3DError(f"pitch range {config.pitch_min_hz} .. {config.pitch_max_hz} Hz is invalid; "
                            f"use 0 < pitch_min_hz < pitch_max_hz < {nyq / 2:g} Hz")
    if config.context_frames < 1:
        raise Avatar3DError(f"context_frames={config.context_frames} must be at least 1 (16 is typical)")


def as_mono_audio(audio: np.ndarray) -> np.ndarray:
    """Validate mono float audio; one-line errors for the shapes and values that break the maths."""
    x = np.asarray(audio)
    if x.ndim != 1:
        raise Avatar3DError(f"audio must be mono, shape [samples]; got shape {x.shape} (average the channels)")
    if x.size == 0:
        raise Avatar3DError("audio has no samples")
    if np.issubdtype(x.dtype, np.integer):
        raise Avatar3DError(f"audio must be float in [-1, 1], got {x.dtype}; divide int16 PCM by 32768")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise Avatar3DError("audio contains NaN or inf samples; fix the audio source")
    return x


def resample_mono(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 at ``target`` Hz (polyphase) with one-line errors for bad input (the motion model's
    and the renderer's way in for audio at any rate)."""
    x = np.asarray(audio)
    if x.ndim != 1:
        raise Avatar3DError(f"audio must be mono, shape [samples]; got shape {x.shape} (average the channels)")
    if np.issubdtype(x.dtype, np.integer):
        raise Avatar3DError(f"audio must be float in [-1, 1], got {x.dtype}; divide int16 PCM by 32768")
    if int(rate) <= 0:
        raise Avatar3DError(f"sample_rate={rate} must be a positive number of Hz")
    x = x.astype(np.float32, copy=False)
    if int(rate) == int(target):
        return x

    g = math.gcd(int(rate), int(target))
    return resample_poly(x, int(target) // g, int(rate) // g).astype(np.float32)


def _frames(x: torch.Tensor, length: int, hop: int, n_frames: int) -> torch.Tensor:
    """[n_frames, length] view: frame k centred on sample (k + 0.5) * hop, zeros outside the clip."""
    left = length // 2 - hop // 2
    right = max(0, (n_frames - 1) * hop + length - left - x.shape[0])
    padded = torch.nn.functional.pad(x, (left, right))
    return padded.unfold(0, length, hop)[:n_frames]


# --- mel filterbank ---------------------------------------------------------------------------

_F_SP = 200.0 / 3  # Hz per mel below the break
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel: linear (3 mel / 200 Hz) below 1 kHz, log-spaced above (6.4x per 27 mel)."""
    f = np.asarray(hz, dtype=np.float64)
    return np.where(f < _BREAK_HZ, f / _F_SP, _BREAK_MEL + np.log(np.maximum(f, 1e-9) / _BREAK_HZ) / _LOGSTEP)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    return np.where(m < _BREAK_MEL, m * _F_SP, _BREAK_HZ * np.exp(_LOGSTEP * (m - _BREAK_MEL)))


def fft_size(config: AudioFeatureConfig) -> int:
    """FFT length of the mel spectrogram: the next power of two at or above the window."""
    return 1 << (window_samples(config) - 1).bit_length()  # next power of two >= window


def mel_center_frequencies(config: AudioFeatureConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel band, [n_mels]."""
    edges = mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(config.fmax), config.n_mels + 2))
    return edges[1:-1]


@functools.lru_cache(maxsize=8)
def _mel_filterbank_cached(config: AudioFeatureConfig) -> np.ndarray:
    n_fft = fft_size(config)
    bins_hz = np.arange(n_fft // 2 + 1) * config.sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(config.fmin), hz_to_mel(config.fmax), config.n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz[None] - lo) / (mid - lo)
    falling = (hi - bins_hz[None]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    tri *= (2.0 / (hi - lo))  # Slaney normalisation: unit area per band
    fb = tri.astype(np.float32)
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=8)
def _mel_filterbank_torch(config: AudioFeatureConfig) -> torch.Tensor:
    return torch.from_numpy(_mel_filterbank_cached(config).copy())


def mel_filterbank(config: AudioFeatureConfig) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] Slaney mel filterbank (triangles on the continuous Hz axis).

    n_fft is the next power of two above the window (512 for 25 ms at 16 kHz).
    """
    _check_config(config)
    return _mel_filterbank_cached(config)


# --- the three 100 Hz streams ------------------------------------------------------------------

def log_mel(audio: np.ndarray, config: AudioFeatureConfig = AudioFeatureConfig()) -> np.ndarray:
    """Natural-log mel power spectrogram, [T, n_mels] float32, T = ceil(samples / hop).

    Power of a Hann-windowed STFT (torch.stft), Slaney mel bands, floored at
    1e-10 so digital silence is a finite -23.03 instead of -inf.
    """
    _check_config(config)
    x = torch.from_numpy(as_mono_audio(audio))
    hop, win, n_fft = hop_samples(config), window_samples(config), fft_size(config)
    t = analysis_frame_count(x.shape[0], config)
    # torch.stft centres the win-long window inside each n_fft frame; pad so that
    # frame k's window is centred on (k + 0.5) * hop.
    left = n_fft // 2 - hop // 2
    right = max(0, (t - 1) * hop + n_fft - left - x.shape[0])
    padded = torch.nn.functional.pad(x, (left, right))
    spec = torch.stft(padded, n_fft=n_fft, hop_length=hop, win_length=win,
                      window=torch.hann_window(win, dtype=torch.float32), center=False,
                      return_complex=True)[:, :t]  # [F, T]
    power = spec.real.square() + spec.imag.square()
    mel = _mel_filterbank_torch(config) @ power  # [n_mels, T]
    return torch.log(mel.clamp_min(LOG_FLOOR)).T.contiguous().numpy()


def energy(audio: np.ndarray, config: AudioFeatureConfig = AudioFeatureConfig()) -> np.ndarray:
    """RMS level in dB re full scale per analysis frame, [T] float32 (floor -100 dB).

    A full-scale sine reads -3 dB.  Rectangular ``window_ms`` window, same
    centres as :func:`log_mel`.
    """
    _check_config(config)
    x = torch.from_numpy(as_mono_audio(audio)).double()
    t = analysis_frame_count(x.shape[0], config)
    frames = _frames(x, window_samples(config), hop_samples(config), t)
    power = frames.square().mean(dim=1)
    return (10.0 * torch.log10(power.clamp_min(LOG_FLOOR))).float().numpy()


def yin_lags(config: AudioFeatureConfig) -> tuple[int, int]:
    """(shortest, longest) lag searched, in samples; one spare lag each side for interpolation."""
    lag_min = max(2, int(math.floor(config.sample_rate / config.pitch_max_hz)))
    lag_max = int(math.ceil(config.sample_rate / config.pitch_min_hz)) + 1
    return lag_min, lag_max


def _fast_fft_size(n: int) -> int:
    """Smallest 7-smooth integer >= n (pocketfft is ~3x faster at 672 than at 1024)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def pitch(audio: np.ndarray, config: AudioFeatureConfig = AudioFeatureConfig()) -> tuple[np.ndarray, np.ndarray]:
    """YIN f0 per analysis frame: ``(f0_hz [T] float32, voiced [T] bool)``; f0 is 0 where unvoiced.

    YIN (de Cheveigné & Kawahara 2002), vectorised over frames (in chunks of 16384): the difference
    function from FFT cross-correlations and running energy sums, the
    cumulative-mean normalisation, the first dip under ``yin_threshold``
    followed down to its local minimum (the global minimum if no dip), and
    parabolic interpolation of the raw difference for sub-sample periods.
    The integration window is one period at pitch_min_hz (17 ms for 60 Hz),
    not window_ms: on espeak-ng speech a 25 ms window voiced only 80 % of
    vowel frames (the f0 glides within it) against 83 % for 17 ms.
    """
    _check_config(config)
    x = torch.from_numpy(as_mono_audio(audio))
    t = analysis_frame_count(x.shape[0], config)
    lag_max = yin_lags(config)[1]
    frames = _frames(x, 2 * lag_max, hop_samples(config), t)  # [T, W + L], W = L
    f0 = torch.zeros(t, dtype=torch.float32)
    voiced = torch.zeros(t, dtype=torch.bool)
    for s in range(0, t, _YIN_CHUNK):  # bounded memory for long clips (~100 MB per chunk)
        f0[s:s + _YIN_CHUNK], voiced[s:s + _YIN_CHUNK] = _yin(frames[s:s + _YIN_CHUNK], config)
    return f0.numpy(), voiced.numpy()


_YIN_CHUNK = 16384


def _yin(frames: torch.Tensor, config: AudioFeatureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """YIN on a [n, W + L] batch of frames -> (f0 [n], voiced [n])."""
    lag_min, lag_max = yin_lags(config)
    width = lag_max  # one period at pitch_min_hz: short enough that gliding speech f0 stays periodic
    t = frames.shape[0]
    n_fft = _fast_fft_size(width + lag_max)  # >= W + L: no circular wrap for lags 0..L
    spec = torch.fft.rfft(frames, n=n_fft)
    head = torch.fft.rfft(frames[:, :width], n=n_fft)
    corr = torch.fft.irfft(spec * head.conj(), n=n_fft)[:, :lag_max + 1]  # r(tau), tau = 0..L
    csum = torch.nn.functional.pad(frames.square().cumsum(dim=1), (1, 0))
    lags = torch.arange(lag_max + 1)
    e_tau = csum[:, lags + width] - csum[:, lags]  # energy of x[tau : tau + W]
    diff = (e_tau[:, :1] + e_tau - 2.0 * corr).clamp_min(0.0)  # d(tau)
    running = diff[:, 1:].cumsum(dim=1)
    cmnd = torch.ones_like(diff)
    # the tiny relative term keeps 0/0 (digital silence) finite; silence is gated below anyway
    cmnd[:, 1:] = diff[:, 1:] * lags[1:] / (running + 1e-7 * e_tau[:, :1] + 1e-30)

    search = cmnd[:, lag_min:lag_max]  # candidate lags lag_min .. lag_max - 1
    below = search < config.yin_threshold
    first = torch.where(below.any(dim=1), below.float().argmax(dim=1), search.argmin(dim=1))
    idx = torch.arange(search.shape[1])
    next_up = torch.ones_like(below)
    next_up[:, :-1] = search[:, :-1] <= search[:, 1:]  # local minimum reached when the next lag is higher
    chosen = ((idx[None] >= first[:, None]) & next_up).float().argmax(dim=1)
    tau = chosen + lag_min
    rows = torch.arange(t)
    dip = cmnd[rows, tau]
    a, b, c = diff[rows, tau - 1], diff[rows, tau], diff[rows, tau + 1]
    denom = a - 2.0 * b + c
    shift = torch.where(denom > 0, 0.5 * (a - c) / denom.clamp_min(1e-30), torch.zeros_like(denom))
    period = tau.to(diff.dtype) + shift.clamp(-1.0, 1.0)
    loud = (10.0 * torch.log10((e_tau[:, 0] / width).clamp_min(LOG_FLOOR))) > config.silence_db
    voiced = (dip < config.voicing_threshold) & loud
    f0 = torch.where(voiced, config.sample_rate / period, torch.zeros_like(period))
    return f0.float(), voiced


# --- alignment to video frames -----------------------------------------------------------------

def _video_bins(n_analysis: int, frame_rate: float, fps: float, n_frames: int) -> np.ndarray:
    """Video frame of each analysis frame (its centre lies in [i / fps, (i + 1) / fps)), -1 if none."""
    centres = (np.arange(n_analysis) + 0.5) / frame_rate
    bins = np.floor(centres * fps + 1e-9).astype(np.int64)
    bins[(bins < 0) | (bins >= n_frames)] = -1
    return bins


def frame_features(audio: np.ndarray, fps: float, n_frames: int,
                   config: AudioFeatureConfig = AudioFeatureConfig()) -> dict[str, np.ndarray]:
    """All features resampled to ``n_frames`` video frames at ``fps``.

    Video frame ``i`` covers ``[i / fps, (i + 1) / fps)`` and its features
    describe the audio around its centre ``(i + 0.5) / fps``.  Returns:

    * ``mel_window`` [n_frames, context_frames, n_mels] float32 - log-mel
      sampled at ``centre + mel_offsets_s[j]`` (linear interpolation between
      analysis frames; exact frames when the frame rate divides 100 Hz, e.g.
      25 fps), slot ``j`` running from past (0) to future; outside the clip
      it reads as silence (log 1e-10).
    * ``mel_offsets_s`` [context_frames] - ``(j - (C - 1) / 2) * hop`` seconds:
      -75 ms .. +75 ms for 16 slots, symmetric about the centre.
    * ``f0_hz`` [n_frames] - geometric mean f0 of the voiced analysis frames
      whose centres fall in the video frame (0 if none is voiced).
    * ``voiced_fraction`` [n_frames] and ``voiced`` [n_frames] bool (fraction >= 0.5).
    * ``energy_db`` [n_frames] - RMS dB of the mean power over those frames.
    * ``frame_times_s`` [n_frames] - the centres ``(i + 0.5) / fps``.
    * ``log_mel`` [T, n_mels] - the 100 Hz stream itself, for other windowings.

    Above 100 fps a video frame may contain no analysis centre; it then takes
    the nearest analysis frame.  Audio shorter than the video reads as silence
    past its end (callers decide how much shortfall is acceptable).
    """
    _check_config(config)
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(fps) and fps > 0):
        raise Avatar3DError(f"fps={fps!r} must be a positive number of frames per second")
    if int(n_frames) < 1:
        raise Avatar3DError(f"n_frames={n_frames} must be at least 1")
    fps, n_frames = float(fps), int(n_frames)
    x = as_mono_audio(audio)
    mel = log_mel(x, config)
    f0, voiced = pitch(x, config)
    level = energy(x, config)
    frame_rate = config.sample_rate / hop_samples(config)
    t = mel.shape[0]
    centres = (np.arange(n_frames) + 0.5) / fps

    # per-frame pitch / voicing / energy: pool the analysis frames inside each video frame
    bins = _video_bins(t, frame_rate, fps, n_frames)
    ok = bins >= 0
    counts = np.bincount(bins[ok], minlength=n_frames).astype(np.float64)
    power = 10.0 ** (level.astype(np.float64) / 10.0)
    p_sum = np.bincount(bins[ok], weights=power[ok], minlength=n_frames)
    v_sum = np.bincount(bins[ok], weights=voiced[ok].astype(np.float64), minlength=n_frames)
    logf = np.where(voiced, np.log(np.maximum(f0, 1e-3)), 0.0)
    lf_sum = np.bincount(bins[ok], weights=logf[ok], minlength=n_frames)
    empty = counts == 0
    if empty.any():  # no analysis centre inside (fps > 100, or past the audio's end): nearest frame
        k = np.rint(centres[empty] * frame_rate - 0.5).astype(np.int64)
        inside = (k >= 0) & (k < t)
        kk = np.clip(k, 0, t - 1)
        counts[empty] = 1.0
        p_sum[empty] = np.where(inside, power[kk], LOG_FLOOR)
        v_sum[empty] = np.where(inside, voiced[kk], 0.0)
        lf_sum[empty] = np.where(inside & voiced[kk], logf[kk], 0.0)
    voiced_fraction = v_sum / counts
    f0_frame = np.where(v_sum > 0, np.exp(lf_sum / np.maximum(v_sum, 1.0)), 0.0)
    energy_frame = 10.0 * np.log10(np.maximum(p_sum / counts, LOG_FLOOR))

    # mel window: linear interpolation at centre + offsets, silence outside the clip
    c = config.context_frames
    offsets = (np.arange(c) - (c - 1) / 2.0) / frame_rate
    pos = (centres[:, None] + offsets[None]) * frame_rate - 0.5  # fractional analysis-frame index
    lo = np.floor(pos + 1e-9)
    w = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)[..., None]
    lo = lo.astype(np.int64)
    pad = c + 2
    floor_value = np.float32(math.log(LOG_FLOOR))
    top = int(lo.max()) + 2 if lo.size else 0
    mel_pad = np.full((pad + max(t, top + 1), mel.shape[1]), floor_value, dtype=np.float32)
    mel_pad[pad:pad + t] = mel
    lo_i = np.clip(lo + pad, 0, mel_pad.shape[0] - 2)
    window = mel_pad[lo_i] * (1.0 - w) + mel_pad[lo_i + 1] * w

    return {
        "mel_window": window.astype(np.float32),
        "mel_offsets_s": offsets.astype(np.float32),
        "f0_hz": f0_frame.astype(np.float32),
        "voiced": voiced_fraction >= 0.5,
        "voiced_fraction": voiced_fraction.astype(np.float32),
        "energy_db": energy_frame.astype(np.float32),
        "frame_times_s": centres,
        "log_mel": mel,
    }
