"""Is there any speech in this audio? The share of voiced, audible 10 ms frames, read chunk by chunk.

Why: silence or white noise given as speech renders a still (or twitching) mouth without a word of
warning; a user should hear "no speech found in FILE" before waiting for the render. Voicing is the
front-end's own YIN (periodic, above ``silence_db``): silence is never voiced, white noise is
aperiodic, speech is voiced for roughly a third to a half of its frames.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from avatar3d.audio.features import AudioFeatureConfig, energy, pitch

__all__ = ["voiced_share", "no_speech_message", "MIN_VOICED_SHARE"]

MIN_VOICED_SHARE = 0.03
"""Below this share of voiced frames the audio holds no usable speech (measured: digital silence 0,
white noise 0.000-0.004, espeak-ng and recorded speech 0.3-0.6)."""


def voiced_share(chunks: Iterable[np.ndarray], config: AudioFeatureConfig = AudioFeatureConfig()) -> float:
    """Share of analysis frames that are voiced and louder than ``config.silence_db`` (0 for no audio)."""
    voiced = total = 0
    for chunk in chunks:
        x = np.asarray(chunk, np.float32)
        if len(x) < config.sample_rate // 10:  # a tail under 100 ms says nothing either way
            continue
        _, v = pitch(x, config)
        loud = energy(x, config) > config.silence_db
        n = min(len(v), len(loud))
        voiced += int(np.count_nonzero(v[:n] & loud[:n]))
        total += n
    return voiced / total if total else 0.0


def no_speech_message(path: Path | str, share: float) -> str:
    """The warning for audio without speech (``share`` from :func:`voiced_share`)."""
    return (f"no speech found in {path}: {100 * share:.1f}% of it is voiced (speech is typically 30-60%), so the "
            "mouth will barely move; check that this is the right file and that its sound is not silent or noise")
