"""Speaker-independent phonetic features: pocketsphinx phones turned into per-video-frame phone classes.

Why: the weight-free log-mel front-end carries the speaker's voice (pitch,
timbre, channel) as much as what is said, so a model trained on synthetic
voices can mistake a real voice's spectrum for a closure.  pocketsphinx's
offline US-English acoustic model (BSD, ships in its wheel) has already
learnt to ignore the speaker; its phones, reduced to the few classes the
lips can show, are a speaker-independent input and a reference timeline for
evaluation (:mod:`avatar3d.eval.lip_closure`).

Phones come from :mod:`avatar3d.audio.alignment` (the same pocketsphinx
decoders the synthetic generator uses): forced alignment to a transcript
when one is given (English), phone-loop decoding with the en-us phone LM
otherwise (any speech; foreign speech gets the nearest English phones).

Phone-class inventory (``PHONE_CLASSES``; ARPAbet, stress removed):

==============  ==============================  ========================================
class           phones                          what the mouth does
==============  ==============================  ========================================
sil             SIL (pauses, noise, fillers)    closed, still
bilabial        P B M                           lips sealed
labiodental     F V                             lower lip under the upper teeth
dental          TH DH                           tongue between the teeth, slightly open
alveolar        T D N L S Z                     nearly closed, teeth together
postalveolar    SH ZH CH JH                     lips funnelled forward
velar_glottal   K G NG HH                       takes the neighbours' shape
rounded         W R UW UH OW OY ER              lips rounded / protruded
open_vowel      AA AE AH AO AW AY               jaw open
spread_vowel    IY IH EH EY Y                   lips spread, jaw half open
==============  ==============================  ========================================

Time convention (as :mod:`avatar3d.audio.features`): video frame ``i``
covers ``[i / fps, (i + 1) / fps)``; its label is the phone at the centre
``(i + 0.5) / fps``; audio beyond the clip is silence.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatar3d.audio import alignment as al
from avatar3d.audio.phones import ARPABET, SIL, Phone
from avatar3d.errors import Avatar3DError

__all__ = ["PHONE_CLASSES", "CLASS_OF_PHONE", "PhoneTrack", "phone_frames", "track_from_phones",
           "phone_class_features", "class_index"]

_CLASS_PHONES: dict[str, tuple[str, ...]] = {
    "sil": (SIL,),
    "bilabial": ("P", "B", "M"),
    "labiodental": ("F", "V"),
    "dental": ("TH", "DH"),
    "alveolar": ("T", "D", "N", "L", "S", "Z"),
    "postalveolar": ("SH", "ZH", "CH", "JH"),
    "velar_glottal": ("K", "G", "NG", "HH"),
    "rounded": ("W", "R", "UW", "UH", "OW", "OY", "ER"),
    "open_vowel": ("AA", "AE", "AH", "AO", "AW", "AY"),
    "spread_vowel": ("IY", "IH", "EH", "EY", "Y"),
}
PHONE_CLASSES: tuple[str, ...] = tuple(_CLASS_PHONES)
"""Names of the phone classes, in feature-column order."""
CLASS_OF_PHONE: dict[str, int] = {p: i for i, phones in enumerate(_CLASS_PHONES.values()) for p in phones}
"""ARPAbet phone (or "SIL") -> class index; every phone of the en-us model has one."""
assert set(CLASS_OF_PHONE) == set(ARPABET) | {SIL}, "phone-class table must cover the en-us phone set"


def class_index(name: str) -> int:
    """Column of the class ``name`` (one-line error naming the known classes otherwise)."""
    try:
        return PHONE_CLASSES.index(name)
    except ValueError:
        raise Avatar3DError(f"unknown phone class {name!r}; known: {', '.join(PHONE_CLASSES)}") from None


@dataclass(frozen=True)
class PhoneTrack:
    """Phones of a clip, sampled at video frames."""

    fps: float
    index: np.ndarray
    """[n_frames] int64 phone class (column of ``PHONE_CLASSES``) at each frame centre."""
    label: np.ndarray
    """[n_frames] ARPAbet phone (or "SIL") at each frame centre."""
    confidence: np.ndarray
    """[n_frames] float32 in (0, 1]: share of the frame's 1/fps interval covered by its class.
    A temporal confidence (low next to phone boundaries), not an acoustic posterior."""
    coverage: np.ndarray
    """[n_frames, n_classes] float32: share of each frame's interval covered by each class (rows sum to 1)."""
    phones: tuple[Phone, ...]
    """The phone timeline the frames were sampled from (seconds, contiguous)."""
    mode: str
    """"align" (forced alignment to a transcript), "loop" (phone-loop decoding) or "given"."""

    @property
    def n_frames(self) -> int:
        return int(len(self.index))


def track_from_phones(phones: list[Phone] | tuple[Phone, ...], fps: float, n_frames: int,
                      mode: str = "given") -> PhoneTrack:
    """Sample a phone timeline (e.g. a ground-truth one) at video frames; times outside it are silence."""
    fps, n_frames = _check_timing(fps, n_frames)
    n_cls = len(PHONE_CLASSES)
    cover = np.zeros((n_frames, n_cls), np.float64)
    label = np.full(n_frames, SIL, dtype=object)
    centres = (np.arange(n_frames) + 0.5) / fps
    for p in phones:
        cls = CLASS_OF_PHONE.get(p.label)
        if cls is None:
            raise Avatar3DError(f"phone {p.label!r} is not an ARPAbet phone of the en-us model (or 'SIL')")
        if p.end <= p.start:
            continue
        i0 = max(int(np.floor(p.start * fps)), 0)
        i1 = min(int(np.ceil(p.end * fps)), n_frames)
        if i1 <= i0:
            continue
        idx = np.arange(i0, i1)
        overlap = np.minimum(p.end, (idx + 1) / fps) - np.maximum(p.start, idx / fps)
        cover[idx, cls] += np.maximum(overlap, 0.0) * fps
        inside = (centres[idx] >= p.start) & (centres[idx] < p.end)
        label[idx[inside]] = p.label
    cover[:, CLASS_OF_PHONE[SIL]] += np.clip(1.0 - cover.sum(axis=1), 0.0, None)  # outside the timeline
    cover /= np.maximum(cover.sum(axis=1, keepdims=True), 1e-12)
    index = np.array([CLASS_OF_PHONE[lab] for lab in label], dtype=np.int64)
    conf = cover[np.arange(n_frames), index] if n_frames else np.zeros(0)
    return PhoneTrack(fps=fps, index=index, label=label.astype(str), confidence=conf.astype(np.float32),
                      coverage=cover.astype(np.float32), phones=tuple(phones), mode=mode)


def phone_frames(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int,
                 transcript: str | None = None, language: str = "en") -> PhoneTrack:
    """Per-frame phones of ``audio`` (float, mono or [samples, channels], any rate).

    With an English ``transcript``: pocketsphinx forced alignment to it
    (``mode == "align"``); if that fails, or without one, phone-loop decoding
    (``mode == "loop"``).  ``n_frames`` frames at ``fps`` are returned whatever
    the audio's length (beyond it: silence).  Costs ~0.1 s per second of
    speech on one core (phone loop; forced alignment about half that).
    """
    fps, n_frames = _check_timing(fps, n_frames)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise Avatar3DError(f"sample_rate={sample_rate!r} must be a positive whole number of Hz")
    x = np.asarray(audio)
    if np.issubdtype(x.dtype, np.integer):
        raise Avatar3DError(f"audio must be float in [-1, 1], got {x.dtype}; divide int16 PCM by 32768")
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[1] > 8):
        raise Avatar3DError(f"audio must be [samples] or [samples, channels]; got shape {x.shape}")
    duration = x.shape[0] / float(sample_rate)
    if duration <= 0:
        return track_from_phones([], fps, n_frames, mode="loop")
    pcm = al.to_pcm16(x, int(sample_rate))
    english = str(language).lower().startswith("en")
    with al.ALIGNER_LOCK:  # the cached decoders are stateful
        raw = al.forced_alignment(pcm, transcript) if (transcript and transcript.strip() and english) else None
        mode = "align" if raw is not None else "loop"
        if raw is None:
            raw = al.phone_loop(pcm)
    return track_from_phones(al.phone_timeline(raw, duration), fps, n_frames, mode=mode)


def phone_class_features(track: PhoneTrack, soft: bool = False, smooth_frames: int = 1) -> np.ndarray:
    """[n_frames, len(PHONE_CLASSES)] float32 phone-class features.

    ``soft=False``: one-hot of the class at each frame centre.  ``soft=True``:
    the classes' shares of each frame's interval, smoothed in time with a
    triangular kernel of half-width ``smooth_frames`` (1 -> weights 1/4, 1/2,
    1/4), rows summing to 1 -- so a 30 ms closure between two frame centres is
    not lost, and a model sees transitions coming.  The smoothing looks
    ``smooth_frames`` frames ahead (count it in a streaming look-ahead).
    """
    n_cls = len(PHONE_CLASSES)
    if not soft:
        out = np.zeros((track.n_frames, n_cls), np.float32)
        out[np.arange(track.n_frames), track.index] = 1.0
        return out
    if int(smooth_frames) < 0:
        raise Avatar3DError(f"smooth_frames={smooth_frames} must be >= 0")
    k = int(smooth_frames)
    cover = track.coverage.astype(np.float64)
    if k == 0 or track.n_frames == 0:
        return cover.astype(np.float32)
    kernel = (k + 1.0 - np.abs(np.arange(-k, k + 1))) / (k + 1.0) ** 2  # sums to 1
    padded = np.concatenate([np.repeat(cover[:1], k, 0), cover, np.repeat(cover[-1:], k, 0)])
    out = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(n_cls)], axis=1)
    return (out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _check_timing(fps: float, n_frames: int) -> tuple[float, int]:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not np.isfinite(fps) or fps <= 0:
        raise Avatar3DError(f"fps={fps!r} must be a positive number of frames per second")
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 0:
        raise Avatar3DError(f"n_frames={n_frames!r} must be a whole number >= 0")
    return float(fps), int(n_frames)
