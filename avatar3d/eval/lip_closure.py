"""Lip closure on bilabials and a closed, still mouth in pauses (METRICS.md "Lip closure").

Why through the face model: blendshape weights are not comparable between
shapes (mouthClose 0.4 seals the lips only together with the jaw), so
"closed" is measured where a viewer sees it -- the lip gap of the face
model's landmarks posed with the predicted weights (identity at the mean,
canonical head space, millimetres).

Definitions (defaults in :class:`LipClosureConfig`):

* **lip gap** of a frame: mean over the three central inner-lip landmark
  pairs (82/87, 13/14, 312/317) of ``upper.y - lower.y`` in mm.  Signed:
  negative means the lips are pressed past each other (a linear model's
  press/close shapes overshoot); anything below the threshold is closed.
* **frames of an interval** ``[s, e)``: the video frames whose display
  interval ``[i / fps, (i + 1) / fps)`` overlaps it (so a 30 ms phone between
  two frame centres still has a frame).
* **bilabial closure**: a P, B or M phone is closed if the lip gap is below
  ``closed_mm`` (2 mm) on at least one of its frames.  Rate = closed / all.
* **open-vowel opening** (the check that a model cannot pass the closure
  test by never opening): an AA/AE/AH/AO/AW/AY phone of at least
  ``min_vowel_s`` (100 ms) is open if the gap exceeds ``closed_mm`` on at
  least one of its frames.  Not a target: the synthetic ground truth itself
  reaches ~80 % (a vowel between two bilabials stays nearly sealed).
* **still silence**: each silence of at least ``min_silence_s`` (300 ms),
  trimmed by ``edge_margin_s`` (100 ms) at both ends where the mouth may
  still be closing or already opening, passes if on every judged frame the
  gap is below ``closed_mm`` (closed) and no lip landmark moves more than
  ``still_mm`` (0.5 mm) from the previous frame (still).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import soundfile as sf

from avatar3d.audio.phones import BILABIALS, SIL, Phone, silences
from avatar3d.errors import Avatar3DError
from avatar3d.face.default_model import load_face_model
from avatar3d.face.landmark_sets import LIP_INNER_LOWER, LIP_INNER_UPPER, LIP_OUTER_LOWER, LIP_OUTER_UPPER
from avatar3d.face.model import MorphableModel

__all__ = ["LipClosureConfig", "LipGeometry", "LipClosureResult", "evaluate_lip_closure", "interval_frames",
           "OPEN_VOWELS", "Recording", "TESTDATA_DIR", "pocketsphinx_recordings", "read_recording"]

UPPER_INNER_CENTRE = tuple(LIP_INNER_UPPER[4:7])  # (82, 13, 312): the middle of the inner upper lip
LOWER_INNER_CENTRE = tuple(LIP_INNER_LOWER[4:7])  # (87, 14, 317)
# Every lip contour point once: outer upper, outer lower (corners dropped), inner upper, inner lower.
LIP_LANDMARKS = tuple(LIP_OUTER_UPPER + LIP_OUTER_LOWER[1:-1] + LIP_INNER_UPPER + LIP_INNER_LOWER[1:-1])
OPEN_VOWELS = frozenset({"AA", "AE", "AH", "AO", "AW", "AY"})


@dataclass(frozen=True)
class LipClosureConfig:
    """Thresholds of the lip-closure measure (state them with every figure)."""

    closed_mm: float = 2.0
    """Lip gap (mm) below which the lips count as closed (a 0.1 jawOpen alone opens them ~2.3 mm)."""
    still_mm: float = 0.5
    """Largest lip-landmark displacement (mm) between consecutive frames that still counts as still."""
    min_silence_s: float = 0.3
    """Silences at least this long are judged."""
    edge_margin_s: float = 0.1
    """Time at each end of a silence not judged (closing / opening there is natural)."""
    min_vowel_s: float = 0.1
    """Open vowels at least this long are judged by the opening counter-check (shorter ones between
    bilabials stay sealed even in the synthetic ground truth)."""

    def __post_init__(self) -> None:
        if not (self.closed_mm > -50 and self.still_mm > 0 and self.min_silence_s > 0 and self.edge_margin_s >= 0):
            raise Avatar3DError(f"invalid lip-closure thresholds {self}")


class LipGeometry:
    """Blendshape curves -> lip gap (mm) and lip landmarks (mm) through a face model's landmarks."""

    def __init__(self, face: MorphableModel | None = None) -> None:
        self.face = face if face is not None else load_face_model()
        lms = np.array(LIP_LANDMARKS)
        tri = self.face.triangles[self.face.landmark_faces[lms]]  # [L, 3] vertex ids
        bary = self.face.landmark_bary[lms].astype(np.float64)  # [L, 3]
        self._mean = np.einsum("lkc,lk->lc", self.face.mean[tri].astype(np.float64), bary) * 1000.0
        self._basis = np.einsum("elkc,lk->elc", self.face.expression_basis[:, tri].astype(np.float64), bary) * 1000.0
        pos = {v: i for i, v in enumerate(LIP_LANDMARKS)}
        self._upper = [pos[v] for v in UPPER_INNER_CENTRE]
        self._lower = [pos[v] for v in LOWER_INNER_CENTRE]

    def landmarks_mm(self, curves: Mapping[str, np.ndarray]) -> np.ndarray:
        """[n_frames, L, 3] lip landmarks in mm (canonical head space, mean identity)."""
        if not curves:
            raise Avatar3DError("no blendshape curves given (expected e.g. the dict MotionModel.predict returns)")
        lengths = {len(np.asarray(c)) for c in curves.values()}
        if len(lengths) != 1:
            raise Avatar3DError(f"blendshape curves differ in length ({sorted(lengths)}); give one value per frame")
        rows, weights = [], []
        for name, curve in curves.items():
            try:
                rows.append(self.face.expression_index(name))
            except KeyError:
                raise Avatar3DError(f"blendshape {name!r} is not in the face model {self.face.name!r}") from None
            weights.append(np.asarray(curve, np.float64))
        w = np.stack(weights, axis=1)  # [n, k]
        if not np.all(np.isfinite(w)):
            raise Avatar3DError("blendshape curves contain NaN or infinity")
        return self._mean[None] + np.einsum("nk,klc->nlc", w, self._basis[rows])

    def gap_mm(self, curves: Mapping[str, np.ndarray]) -> np.ndarray:
        """[n_frames] signed inner-lip gap in mm (< 0: pressed)."""
        return self.gap_from_landmarks(self.landmarks_mm(curves))

    def gap_from_landmarks(self, lm: np.ndarray) -> np.ndarray:
        return lm[:, self._upper, 1].mean(axis=1) - lm[:, self._lower, 1].mean(axis=1)


def interval_frames(start: float, end: float, fps: float, n_frames: int) -> np.ndarray:
    """Frame indices whose display interval [i/fps, (i+1)/fps) overlaps [start, end)."""
    if end <= start:
        return np.zeros(0, np.int64)
    i0 = max(int(np.floor(start * fps)), 0)
    i1 = min(int(np.ceil(end * fps)), n_frames)
    return np.arange(i0, max(i1, i0), dtype=np.int64)


@dataclass
class LipClosureResult:
    """Per-phone and per-silence outcomes and their rates (rates are None when nothing was judged)."""

    config: LipClosureConfig
    bilabials: list[dict] = field(default_factory=list)
    """{label, start, end, min_gap_mm, closed} per P/B/M phone."""
    open_vowels: list[dict] = field(default_factory=list)
    """{label, start, end, max_gap_mm, open} per open vowel."""
    silences: list[dict] = field(default_factory=list)
    """{start, end, frames, max_gap_mm, max_motion_mm, closed, still} per judged silence."""
    speech_gap_mm_median: float | None = None

    @staticmethod
    def _rate(items: list[dict], key: str) -> float | None:
        return float(np.mean([d[key] for d in items])) if items else None

    @property
    def bilabial_closure(self) -> float | None:
        return self._rate(self.bilabials, "closed")

    @property
    def open_vowel_opening(self) -> float | None:
        return self._rate(self.open_vowels, "open")

    @property
    def silence_closed(self) -> float | None:
        return self._rate(self.silences, "closed")

    @property
    def silence_still(self) -> float | None:
        return self._rate(self.silences, "still")

    @property
    def silence_closed_still(self) -> float | None:
        return float(np.mean([d["closed"] and d["still"] for d in self.silences])) if self.silences else None

    def summary(self) -> dict:
        return {"bilabials": len(self.bilabials), "bilabial_closure": self.bilabial_closure,
                "open_vowels": len(self.open_vowels), "open_vowel_opening": self.open_vowel_opening,
                "silences": len(self.silences), "silence_closed": self.silence_closed,
                "silence_still": self.silence_still, "silence_closed_still": self.silence_closed_still,
                "speech_gap_mm_median": self.speech_gap_mm_median, "thresholds": asdict(self.config)}


def evaluate_lip_closure(curves: Mapping[str, np.ndarray], phones: list[Phone] | tuple[Phone, ...], fps: float,
                         config: LipClosureConfig = LipClosureConfig(),
                         geometry: LipGeometry | None = None) -> LipClosureResult:
    """Judge predicted mouth curves (``{ARKit name: [n_frames]}``, frame i centred at (i + 0.5) / fps)
    against a phone timeline (e.g. ``PhoneTrack.phones`` from a forced alignment)."""
    if not (fps > 0 and np.isfinite(fps)):
        raise Avatar3DError(f"fps={fps!r} must be a positive number")
    geometry = geometry or LipGeometry()
    lm = geometry.landmarks_mm(curves)
    n = len(lm)
    gap = geometry.gap_from_landmarks(lm)
    motion = np.zeros(n)
    if n > 1:
        motion[1:] = np.linalg.norm(np.diff(lm, axis=0), axis=-1).max(axis=1)
    res = LipClosureResult(config=config)
    speech = np.zeros(n, bool)
    for p in phones:
        idx = interval_frames(p.start, p.end, fps, n)
        if p.label != SIL:
            speech[idx] = True
        if not len(idx):
            continue
        if p.label in BILABIALS:
            g = float(gap[idx].min())
            res.bilabials.append(dict(label=p.label, start=p.start, end=p.end, min_gap_mm=g,
                                      closed=bool(g < config.closed_mm)))
        elif p.label in OPEN_VOWELS and p.end - p.start >= config.min_vowel_s - 1e-9:
            g = float(gap[idx].max())
            res.open_vowels.append(dict(label=p.label, start=p.start, end=p.end, max_gap_mm=g,
                                        open=bool(g > config.closed_mm)))
    for s, e in silences(list(phones), config.min_silence_s):
        idx = interval_frames(s + config.edge_margin_s, e - config.edge_margin_s, fps, n)
        # only frames wholly inside the trimmed silence are judged
        idx = idx[(idx / fps >= s + config.edge_margin_s - 1e-9) & ((idx + 1) / fps <= e - config.edge_margin_s + 1e-9)]
        if not len(idx):
            continue
        mv = motion[idx[idx > 0]]
        max_motion = float(mv.max()) if len(mv) else 0.0
        max_gap = float(gap[idx].max())
        res.silences.append(dict(start=s, end=e, frames=int(len(idx)), max_gap_mm=max_gap, max_motion_mm=max_motion,
                                 closed=bool(max_gap < config.closed_mm), still=bool(max_motion < config.still_mm)))
    if speech.any():
        res.speech_gap_mm_median = float(np.median(gap[speech]))
    return res


# --- real recorded speech: Debian's pocketsphinx-testdata ---------------------------------------

TESTDATA_DIR = Path("/usr/share/pocketsphinx/test/data")
"""Where Debian's ``pocketsphinx-testdata`` puts pocketsphinx's test recordings (16 kHz mono)."""

# Recordings shipped without a transcript file; the text is the one pocketsphinx's own test suite
# expects its recogniser to return for it.
_KNOWN_TEXT = {"goforward.raw": "go forward ten meters"}
# Recordings with no transcript at all: phone-loop decoding (their silences are still judged).
_UNTRANSCRIBED = ("numbers.raw", "something.raw", "tidigits/dhd.2934z.raw")


@dataclass(frozen=True)
class Recording:
    """One real recording: path, transcript (None -> phone loop) and where the transcript came from."""

    name: str
    path: Path
    transcript: str | None
    source: str


def _transcription_file(path: Path, folder: str, suffix: str) -> list[Recording]:
    out = []
    for line in path.read_text().splitlines():
        if "(" not in line:
            continue
        text, utt = line.rsplit("(", 1)
        text = " ".join(w for w in text.split() if w not in ("<s>", "</s>"))
        name = f"{folder}/{utt.strip(' )')}{suffix}"
        wav = path.parent / f"{utt.strip(' )')}{suffix}"
        if wav.is_file() and text:
            out.append(Recording(name, wav, text, f"{folder}/{path.name}"))
    return out


def pocketsphinx_recordings(root: str | Path = TESTDATA_DIR, transcribed_only: bool = False) -> list[Recording]:
    """The real recordings of Debian's ``pocketsphinx-testdata`` (librivox read speech, a card-game
    command set, "go forward ten meters" ...), with their transcripts where the package has them.

    One-line error if the package is not installed.
    """
    root = Path(root)
    if not root.is_dir():
        raise Avatar3DError(f"{root}: pocketsphinx test recordings not found; install them with "
                            "`apt-get install pocketsphinx-testdata` (tools/install.sh does)")
    recs: list[Recording] = []
    for sub, trans in (("librivox", "transcription"), ("cards", "cards.transcription")):
        if (root / sub / trans).is_file():
            recs += _transcription_file(root / sub / trans, sub, ".wav")
    for name, text in _KNOWN_TEXT.items():
        if (root / name).is_file():
            recs.append(Recording(name, root / name, text, "pocketsphinx test suite"))
    if not transcribed_only:
        recs += [Recording(n, root / n, None, "none (phone loop)") for n in _UNTRANSCRIBED if (root / n).is_file()]
    if not recs:
        raise Avatar3DError(f"{root}: no recordings found; reinstall pocketsphinx-testdata")
    return recs


def read_recording(rec: Recording) -> tuple[np.ndarray, int]:
    """(float32 mono audio, sample rate); ``.raw`` files are 16 kHz little-endian int16 (the package's format)."""
    if rec.path.suffix == ".raw":
        return (np.fromfile(rec.path, dtype="<i2").astype(np.float32) / 32768.0), 16000

    try:
        audio, sr = sf.read(str(rec.path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own types for unreadable files
        raise Avatar3DError(f"{rec.path}: not a readable audio file ({exc})") from exc
    return audio.mean(axis=1), int(sr)
