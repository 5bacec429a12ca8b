"""Prep stage: ``subject/audio.wav`` -> ``subject/audio_features.npz`` (weight-free front-end).

The npz holds the per-video-frame arrays of
:func:`avatar3d.audio.features.frame_features` (``mel_window``, ``f0_hz``,
``voiced``, ``voiced_fraction``, ``energy_db``, ``frame_times_s``,
``mel_offsets_s``, ``log_mel`` at 100 Hz) plus what made them: ``frontend``
(name + full config as JSON), ``fps``, ``n_frames``, ``audio_sha256``,
``source_sample_rate``, ``audio_duration_s``.  Feature ``i`` describes the
audio around ``(i + 0.5) / fps``.

A wav at another sample rate is resampled (polyphase) rather than refused:
the dataset contract says 16 kHz, but a user-supplied wav at 44.1 / 48 kHz is
unambiguous and resampling loses nothing the features use (< 7.6 kHz).
The original rate is recorded.  Re-running with the same audio bytes, fps,
frame count and config skips the work (the stage-skip rule of the pipeline).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf

from avatar3d.audio.features import AudioFeatureConfig, frame_features, frontend_name
from avatar3d.dataset.contract import AUDIO, AUDIO_FEATURES
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import save_npz_atomic
from avatar3d.io.audio import read_wav
from avatar3d.io.hashing import file_sha256

__all__ = ["extract_audio_features", "AUDIO_NAME", "FEATURES_NAME"]

AUDIO_NAME = AUDIO
FEATURES_NAME = AUDIO_FEATURES
SILENT_PEAK_DBFS = -60.0
"""A wav whose loudest sample is below this is treated as silent (no speech to drive a face)."""


def _up_to_date(out: Path, digest: str, fps: float, n_frames: int, frontend: str) -> bool:
    """True if ``out`` was made from the same audio bytes, frame grid and front-end."""
    if not out.is_file():
        return False
    try:
        with np.load(out, allow_pickle=False) as old:
            return (str(old["audio_sha256"]) == digest and str(old["frontend"]) == frontend
                    and float(old["fps"]) == fps and int(old["n_frames"]) == n_frames)
    except Exception:  # unreadable or older layout: recompute
        return False


def extract_audio_features(subject_dir: Union[str, Path], fps: float, n_frames: int,
                           config: AudioFeatureConfig = AudioFeatureConfig(),
                           max_shortfall_s: float = 0.25, force: bool = False) -> Path:
    """Write ``audio_features.npz`` for the ``n_frames`` video frames at ``fps``; returns its path.

    Errors (one line each): missing or unreadable ``audio.wav``, non-finite
    samples, silent audio (peak below -60 dBFS), and audio shorter than the
    video by more than ``max_shortfall_s`` (a smaller shortfall reads as
    silence at the end; longer audio is fine, the tail is not used).
    """
    subject = Path(subject_dir)
    wav = subject / AUDIO_NAME
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(fps) and fps > 0):
        raise Avatar3DError(f"fps={fps!r} must be a positive number of frames per second (the manifest fps)")
    if int(n_frames) < 1:
        raise Avatar3DError(f"n_frames={n_frames} must be at least 1 (the manifest frame count)")
    fps, n_frames = float(fps), int(n_frames)
    if not wav.is_file():
        raise Avatar3DError(f"{wav}: not found; prepare the subject from a clip with sound "
                            "(`avatar3d prep CLIP -o SUBJECT`)")
    digest = file_sha256(wav)
    frontend = frontend_name(config)
    out = subject / FEATURES_NAME
    if not force and _up_to_date(out, digest, fps, n_frames, frontend):
        return out


    try:
        source_rate = int(sf.info(str(wav)).samplerate)
    except (RuntimeError, ValueError):
        source_rate = 0  # read_wav below reports the unreadable file in one line
    audio, rate = read_wav(wav, sample_rate=config.sample_rate)
    if not np.all(np.isfinite(audio)):
        raise Avatar3DError(f"{wav}: contains NaN or inf samples; re-export the audio")
    peak = float(np.max(np.abs(audio)))
    peak_db = 20.0 * math.log10(peak) if peak > 0 else -math.inf
    if peak_db < SILENT_PEAK_DBFS:
        raise Avatar3DError(f"{wav}: audio is silent (peak {peak_db:.0f} dBFS < {SILENT_PEAK_DBFS:.0f}); "
                            "the clip needs speech to drive the face")
    duration = audio.shape[0] / rate
    video = n_frames / fps
    if duration < video - max_shortfall_s:
        raise Avatar3DError(f"{wav}: audio is {duration:.2f} s but the video is {video:.2f} s ({n_frames} frames "
                            f"at {fps:g} fps); re-run decode, or check fps / frame count")
    feats = frame_features(audio, fps, n_frames, config)
    save_npz_atomic(out, **feats, frontend=np.array(frontend), fps=np.float64(fps),
                    n_frames=np.int64(n_frames), audio_sha256=np.array(digest),
                    source_sample_rate=np.int64(source_rate), audio_duration_s=np.float64(duration))
    return out
