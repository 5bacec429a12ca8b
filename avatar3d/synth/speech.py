"""Text-to-speech for the synthetic talking subject, via the espeak-ng CLI.

espeak-ng is GPL-3, so it is only ever run as a separate process (never
linked or loaded with ctypes); this module only builds its command line and
reads back the wav it writes.

Voices are validated here before espeak-ng runs because espeak-ng silently
falls back to a default voice for an unknown ``+variant`` (and the
synthetic data would then quietly use the wrong voice).
"""
from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from avatar3d.errors import Avatar3DError, InputError, MissingToolError

ESPEAK = "espeak-ng"
INSTALL_HINT = "run `apt-get install espeak-ng` or `bash tools/install.sh`"
_TIMEOUT_S = 120


@dataclass(frozen=True)
class Voice:
    """One espeak-ng voice: ``language`` is what ``-v`` takes (e.g. ``en-us``).

    ``aliases`` are the other language codes espeak-ng also accepts for it
    (e.g. ``en`` for ``en-us``).  A variant can be appended as
    ``language+variant`` (e.g. ``en-us+f3``); see :func:`list_variants`.
    """

    language: str
    name: str
    file: str
    gender: str = ""
    aliases: tuple[str, ...] = ()


def espeak_path() -> str:
    """Return the espeak-ng executable, or raise MissingToolError with the fix."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise MissingToolError(f"{ESPEAK} is not installed (not found on PATH); {INSTALL_HINT}")
    return path


def _run_espeak(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run espeak-ng with ``args``; a non-zero exit becomes a one-line Avatar3DError."""
    exe = espeak_path()
    try:
        proc = subprocess.run(
            [exe, *args], input=stdin, capture_output=True, text=True,
            encoding="utf-8", errors="replace", timeout=_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise Avatar3DError(f"{ESPEAK} did not finish within {_TIMEOUT_S} s; try shorter text") from exc
    if proc.returncode != 0:
        msg = " ".join((proc.stderr or proc.stdout or "").split()) or "no error message"
        raise Avatar3DError(f"{ESPEAK} failed (exit code {proc.returncode}): {msg}")
    return proc


_ALIAS_RE = re.compile(r"\(([^\s()]+)\s+\d+\)")


def _parse_voice_table(stdout: str) -> list[Voice]:
    """Parse the table printed by ``espeak-ng --voices[=...]``."""
    voices = []
    for line in stdout.splitlines()[1:]:  # first line is the header
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        _pty, lang, age_gender, name, file = parts[:5]
        rest = parts[5] if len(parts) > 5 else ""
        gender = age_gender.split("/")[-1] if "/" in age_gender else ""
        voices.append(Voice(lang, name.replace("_", " "), file, gender,
                            tuple(_ALIAS_RE.findall(rest))))
    return voices


@functools.lru_cache(maxsize=4)
def _voices_cached(exe: str) -> tuple[list[Voice], list[str]]:
    voices = _parse_voice_table(_run_espeak(["--voices"]).stdout)
    variants = [v.file.split("/")[-1] for v in _parse_voice_table(_run_espeak(["--voices=variant"]).stdout)]
    return voices, variants


def list_voices() -> list[Voice]:
    """All espeak-ng voices (``espeak-ng --voices``).

    Variants such as ``en-us+f3`` or ``de+Alex`` are accepted by
    :func:`synthesize` too; :func:`list_variants` lists the variant names.
    """
    return list(_voices_cached(espeak_path())[0])


def list_variants() -> list[str]:
    """Variant names usable as ``voice+variant`` (``espeak-ng --voices=variant``)."""
    return list(_voices_cached(espeak_path())[1])


def resolve_voice(voice: str) -> str:
    """Check ``voice`` (``base`` or ``base+variant``) and return it as espeak-ng spells it.

    espeak-ng silently falls back to its default for an unknown variant, so
    both parts are checked against the installed lists here.
    """
    base, plus, variant = str(voice).strip().partition("+")
    voices, variants = _voices_cached(espeak_path())
    names: dict[str, str] = {}
    for v in voices:
        for key in (v.language, v.file, *v.aliases):
            names.setdefault(key.lower(), key)
    if base.lower() not in names:
        examples = ", ".join(v.language for v in voices if v.language in ("en-us", "en-gb", "de", "fr-fr", "es")) \
            or ", ".join(v.language for v in voices[:5])
        raise Avatar3DError(
            f"unknown voice {voice!r}: espeak-ng has no voice {base!r} (available include {examples}; "
            f"`avatar3d synth --list-voices` shows them all)")
    resolved = names[base.lower()]
    if plus:
        by_lower = {name.lower(): name for name in variants}
        if variant.lower() not in by_lower:
            raise Avatar3DError(
                f"unknown voice variant {variant!r} in {voice!r} (available include "
                f"{', '.join(variants[:6])}; `avatar3d synth --list-voices` shows them all)")
        resolved += "+" + by_lower[variant.lower()]
    return resolved


def check_speech_request(text: str, voice: str, words_per_minute: int, pitch: int, sample_rate: int) -> str:
    """One-line errors for what a speech request can get wrong; returns the resolved espeak-ng voice.

    Shared by every way of speaking text (the CLI's wav here, the phoneme-timed synthesis in
    :mod:`avatar3d.audio.tts_phonemes`), so both refuse exactly the same input.
    """
    if text is None or not str(text).strip():
        raise Avatar3DError("the text to speak is empty (or only whitespace); give some words to synthesise")
    if not 80 <= int(words_per_minute) <= 450:
        raise Avatar3DError(f"words_per_minute={words_per_minute} is out of range; use 80..450")
    if not 0 <= int(pitch) <= 99:
        raise Avatar3DError(f"pitch={pitch} is out of range; use 0..99")
    if int(sample_rate) <= 0:
        raise Avatar3DError(f"sample_rate={sample_rate} must be a positive number of Hz, e.g. 16000")
    return resolve_voice(voice)


def synthesize(text: str, voice: str = "en-us", words_per_minute: int = 160, pitch: int = 50,
               sample_rate: int = 16000) -> np.ndarray:
    """Speak ``text`` with espeak-ng; return float32 mono audio in [-1, 1] at ``sample_rate``.

    espeak-ng writes a 22050 Hz wav to a temporary file, which is read back
    and resampled (polyphase) so callers get the rate their pipeline uses.
    Text is passed on stdin so that text starting with ``-`` is never read
    as an option.
    """
    resolved = check_speech_request(text, voice, words_per_minute, pitch, sample_rate)
    with tempfile.TemporaryDirectory(prefix="avatar3d_tts_") as tmp:
        wav_path = os.path.join(tmp, "speech.wav")
        proc = _run_espeak(["-v", resolved, "-s", str(int(words_per_minute)), "-p", str(int(pitch)),
                            "-b", "1", "-w", wav_path, "--stdin"], stdin=str(text))
        if not os.path.exists(wav_path) or os.path.getsize(wav_path) <= 44:
            msg = " ".join((proc.stderr or "").split()) or "it wrote no audio"
            raise Avatar3DError(f"{ESPEAK} failed for voice {resolved!r}: {msg}")
        audio, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        g = math.gcd(int(sr), int(sample_rate))
        audio = resample_poly(audio, int(sample_rate) // g, int(sr) // g)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file to speak; missing, unreadable or empty files are one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"text file {str(p)!r} not found; give the path of a UTF-8 .txt file to speak")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise Avatar3DError(f"text file {str(p)!r} is not UTF-8 text; save it as UTF-8") from exc
    except OSError as exc:
        raise Avatar3DError(f"cannot read text file {str(p)!r}: {exc.strerror}") from exc
    if not text.strip():
        raise Avatar3DError(f"text file {str(p)!r} is empty; put the sentences to speak in it")
    return text.strip()
