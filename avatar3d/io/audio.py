"""WAV read/write: float32 mono in, 16-bit PCM out, written atomically.

Why a wrapper over soundfile: every stage wants the same thing (mono float32 at
a known rate) and the same one-line errors for missing, corrupt or empty files,
instead of a libsndfile traceback.
"""
from __future__ import annotations

import os
from math import gcd
from pathlib import Path
from typing import Optional, Union

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from avatar3d.errors import Avatar3DError, InputError
from avatar3d.io.atomic import atomic_path

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["write_wav", "read_wav", "resample"]


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy.signal.resample_poly) of a 1-D float signal."""
    orig_rate, target_rate = int(orig_rate), int(target_rate)
    if orig_rate == target_rate or audio.size == 0:
        return audio.astype(np.float32, copy=False)

    g = gcd(orig_rate, target_rate)
    out = resample_poly(audio, target_rate // g, orig_rate // g)
    return out.astype(np.float32, copy=False)


def write_wav(path: PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write float audio ([N] mono or [N, C]) in [-1, 1] as 16-bit PCM WAV, atomically.

    Samples outside [-1, 1] are clipped (16-bit PCM would otherwise wrap around).
    """
    p = Path(path)
    arr = np.asarray(audio)
    if arr.ndim not in (1, 2):
        raise Avatar3DError(f"{p}: audio must have shape [N] or [N, channels], got {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        raise Avatar3DError(f"{p}: audio must be float in [-1, 1] (got {arr.dtype}); divide int16 by 32768")
    arr = np.clip(arr.astype(np.float32, copy=False), -1.0, 1.0)
    if not np.all(np.isfinite(arr)):
        raise Avatar3DError(f"{p}: audio contains NaN or inf samples; fix the audio source")
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise Avatar3DError(f"{p}: sample_rate must be positive, got {sample_rate}")
    with atomic_path(p) as tmp:
        sf.write(str(tmp), arr, sample_rate, subtype="PCM_16", format="WAV")
    return p


def read_wav(path: PathLike, sample_rate: Optional[int] = None) -> tuple[np.ndarray, int]:
    """Read an audio file (WAV, FLAC, OGG... anything libsndfile reads) as float32 mono.

    Multi-channel audio is averaged to mono. If ``sample_rate`` is given the
    signal is resampled to it. Returns ``(audio, sample_rate)``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an audio file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty (0 bytes); re-export the audio")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError) as exc:  # LibsndfileError is a RuntimeError
        detail = " ".join(str(exc).split())
        raise InputError(
            f"{p}: not a readable audio file ({detail}); convert it to 16-bit PCM WAV"
        ) from exc
    if data.shape[0] == 0:
        raise InputError(f"{p}: contains no audio samples; re-export the audio")
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if sample_rate is not None:
        if int(sample_rate) <= 0:
            raise Avatar3DError(f"{p}: sample_rate must be positive, got {sample_rate}")
        audio = resample(audio, rate, int(sample_rate))
        rate = int(sample_rate)
    return audio, int(rate)
