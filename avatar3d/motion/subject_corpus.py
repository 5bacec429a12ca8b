"""Prepared subjects (``avatar3d prep`` folders) as motion-model training utterances.

Why this exists: the motion model learns from (audio features, 16 mouth weights)
pairs.  The synthetic corpus gets the weights from viseme rules; a prepared
subject gets them from its *tracked* expression (``tracking.npz``), so any clip a
user owns -- LRS3, VoxCeleb, HDTF, their own recording -- becomes training data
after ``avatar3d prep``, and personalisation learns the subject's own mouth
scale (amplitude, asymmetry, resting smile) rather than the rule book's.

Frames: the model runs at its own rate (25 fps); a subject at another rate has
its tracked curves linearly resampled to the model's frame centres, and a
model frame takes the train / val membership and the landmark-detection flag of
the subject frame it falls in.  Frames whose face was not detected are marked
invalid and never scored.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar3d.audio.features import AudioFeatureConfig, frame_features
from avatar3d.dataset.contract import AUDIO, LANDMARK_FLAGS, MANIFEST, TRACKING, read_arrays
from avatar3d.errors import Avatar3DError, InputError
from avatar3d.face.blendshape_names import MOUTH_BLENDSHAPES
from avatar3d.io.audio import read_wav
from avatar3d.io.hashing import file_sha256
from avatar3d.motion.corpus import cached_streams
from avatar3d.motion.model import hops_per_frame

MARKER = MANIFEST
"""A folder holding this file is a prepared subject."""
SILENCE_RMS = 1e-4
"""A subject's audio quieter than this (RMS, about -80 dB) counts as having no speech."""


@dataclass
class SubjectSpeech:
    """One prepared subject's speech and tracked mouth, at the model's frame rate."""

    root: Path
    fps: float
    features: dict[str, np.ndarray]  # log_mel [4N, M], energy_db / f0_hz / voiced_fraction [N]
    targets: np.ndarray  # float32 [N, 16] tracked mouth weights, in MOUTH_BLENDSHAPES order
    valid: np.ndarray  # bool [N]: the face was found in that frame
    train: tuple[int, int]  # [lo, hi) model frames of the subject's train split
    val: tuple[int, int]  # [lo, hi) model frames of its val split (the held-out last part)
    hops: int = 4  # analysis (log-mel) frames per model frame
    signature: dict = field(default_factory=dict)  # what the data was made from (resume checks)

    @property
    def n_frames(self) -> int:
        return int(len(self.targets))

    def utterance(self, lo: int | None = None, hi: int | None = None) -> dict[str, np.ndarray]:
        """Frames ``[lo, hi)`` as a corpus-style utterance dict (``targets`` + ``valid``).

        The log-mel is cut at the same boundaries, so the first frames' windows
        read silence before the cut (about 1.5 frames of context are lost).
        """
        lo = 0 if lo is None else max(0, int(lo))
        hi = self.n_frames if hi is None else min(self.n_frames, int(hi))
        if hi <= lo:
            raise Avatar3DError(f"{self.root}: empty frame range [{lo}, {hi})")
        return {"log_mel": self.features["log_mel"][self.hops * lo:self.hops * hi],
                **{k: self.features[k][lo:hi] for k in ("energy_db", "f0_hz", "voiced_fraction")},
                "targets": self.targets[lo:hi], "valid": self.valid[lo:hi]}


def is_subject(folder: str | Path) -> bool:
    """True if ``folder`` looks like an ``avatar3d prep`` output."""
    return (Path(folder) / MARKER).is_file()


def find_subjects(corpus_dir: str | Path) -> list[Path]:
    """The prepared subject folders directly inside ``corpus_dir`` (or ``corpus_dir`` itself), sorted by name."""
    root = Path(corpus_dir)
    if is_subject(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_subject(p))


def load_subject_speech(subject_dir: str | Path, fps: float = 25.0,
                        audio: AudioFeatureConfig | None = None, speech_encoder: Any = None,
                        cache_dir: Path | None = None) -> SubjectSpeech:
    """Read ``audio.wav`` + ``tracking.npz`` + ``manifest.json`` of a prepared subject; one-line errors.

    With ``speech_encoder`` (a loaded SpeechEncoder) ``features["log_mel"]`` holds
    the encoder's stream instead of the log-mel (same 100 Hz rows), cached in
    ``cache_dir`` (keyed by the audio's hash) when one is given.
    """
    audio = audio or AudioFeatureConfig()
    root = Path(subject_dir)
    fix = f"run `avatar3d prep CLIP -o {root}` first"
    if not root.is_dir():
        raise Avatar3DError(f"subject folder {root} not found: {fix}")
    if not is_subject(root):
        raise InputError(f"{root} is not a prepared subject (no {MARKER}): {fix}")
    try:
        manifest = json.loads((root / MARKER).read_text(encoding="utf-8"))
        subj_fps, n_subj = float(manifest["fps"]), int(manifest["n_frames"])
        splits = {k: tuple(int(v) for v in manifest["split"][k]) for k in ("train", "val")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Avatar3DError(f"{root / MARKER} is unreadable or incomplete ({type(exc).__name__}: {exc}): "
                            f"re-run `avatar3d prep` into {root}") from exc
    wav = root / AUDIO
    if not wav.is_file():
        raise Avatar3DError(f"{wav} is missing: the subject has no speech to learn from; prepare a clip with "
                            "sound")
    tracking = root / TRACKING
    if not tracking.is_file():
        raise Avatar3DError(f"{tracking} is missing (tracking did not finish): re-run `avatar3d prep` into {root}")
    arrays = read_arrays(tracking, ("expression", "expression_names"))
    expression, names = arrays["expression"].astype(np.float32), [str(s) for s in arrays["expression_names"]]
    missing = [n for n in MOUTH_BLENDSHAPES if n not in names]
    if missing:
        raise Avatar3DError(f"{tracking}: the tracked expression lacks mouth blendshapes {missing}; track with a "
                            "face model that names ARKit mouth shapes (the built-in default does)")
    if len(expression) != n_subj:
        raise Avatar3DError(f"{tracking} has {len(expression)} frames but the manifest says {n_subj}: re-run "
                            f"`avatar3d prep` into {root}")
    flags_path = root / LANDMARK_FLAGS
    flags = np.load(flags_path).astype(bool) if flags_path.is_file() else np.ones(n_subj, bool)
    if len(flags) != n_subj:
        flags = np.ones(n_subj, bool)

    x, _ = read_wav(wav, sample_rate=audio.sample_rate)
    if float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < SILENCE_RMS:
        raise Avatar3DError(f"{wav} is silent: the subject has no speech to learn from; prepare a clip with sound")
    n = max(1, int(round(n_subj * float(fps) / subj_fps)))
    feats = frame_features(x, float(fps), n, audio)
    audio_sha = file_sha256(wav)
    if speech_encoder is not None:
        feats = dict(feats, log_mel=_encoder_stream(speech_encoder, x, audio.sample_rate, len(feats["log_mel"]),
                                                    cache_dir, f"{root.name}-{audio_sha[:16]}.npz"))

    centres = (np.arange(n) + 0.5) / float(fps)  # model frame centres, seconds
    src = (np.arange(n_subj) + 0.5) / subj_fps
    cols = [names.index(k) for k in MOUTH_BLENDSHAPES]
    targets = np.stack([np.interp(centres, src, expression[:, c]) for c in cols], axis=1).astype(np.float32)
    owner = np.clip(np.floor(centres * subj_fps).astype(np.int64), 0, n_subj - 1)  # subject frame of each model frame

    def to_model(rng: tuple[int, int]) -> tuple[int, int]:
        inside = np.nonzero((owner >= rng[0]) & (owner < rng[1]))[0]
        return (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, 0)

    train, val = to_model(splits["train"]), to_model(splits["val"])
    if train[1] - train[0] < 2:
        raise Avatar3DError(f"{root}: the train split has under 2 frames; prepare a longer clip")
    signature = {"subject": root.name, "audio_sha256": audio_sha, "tracking_sha256": file_sha256(tracking),
                 "fps": float(fps), "frames": n}
    return SubjectSpeech(root, float(fps), {k: feats[k] for k in ("log_mel", "energy_db", "f0_hz", "voiced_fraction")},
                         targets, flags[owner], train, val, hops_per_frame(float(fps), audio), signature)


def _encoder_stream(encoder: Any, x: np.ndarray, sample_rate: int, rows: int, cache_dir: Path | None,
                    name: str) -> np.ndarray:
    """The encoder stream of a subject's whole audio (cached as ``cache_dir/name`` when a folder is given)."""
    def compute() -> list[np.ndarray]:
        return [encoder.encode(x, sample_rate)]

    if cache_dir is None:
        stream = compute()[0]
    else:
        meta = {"fingerprint": encoder.fingerprint, "key": encoder.cache_key(), "file": name, "rows": rows}
        stream = cached_streams(Path(cache_dir) / name, meta, compute)[0]
    if len(stream) != rows:
        raise Avatar3DError(f"speech encoder gave {len(stream)} rows for {rows} analysis frames")
    return stream


def load_subject_corpus(corpus_dir: str | Path, fps: float = 25.0, audio: AudioFeatureConfig | None = None,
                        speech_encoder: Any = None, cache_dir: Path | None = None,
                        ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], dict]:
    """(train utterances, val utterances, signature) of every prepared subject under ``corpus_dir``.

    Each subject gives one train utterance (its train split) and one val
    utterance (its held-out last part), so the val frames never train.
    ``speech_encoder`` / ``cache_dir``: see :func:`load_subject_speech`.
    """
    subjects = find_subjects(corpus_dir)
    if not subjects:
        raise Avatar3DError(f"{corpus_dir}: no prepared subject folders (with {MARKER}) inside and no corpus "
                            "index.json: pass a synthetic corpus or a folder of `avatar3d prep` outputs")
    train, val, sig = [], [], []
    for folder in subjects:
        s = load_subject_speech(folder, fps, audio, speech_encoder, cache_dir)
        train.append(s.utterance(*s.train))
        if s.val[1] > s.val[0]:
            val.append(s.utterance(*s.val))
        sig.append(s.signature)
    return train, val, {"subjects": sig}


def seconds(utterances: list[dict[str, np.ndarray]], fps: float) -> float:
    """Total duration of ``utterances`` (s)."""
    return float(sum(len(u["targets"]) for u in utterances)) / fps if fps > 0 else math.nan


__all__ = ["SubjectSpeech", "is_subject", "find_subjects", "load_subject_speech", "load_subject_corpus", "seconds"]
