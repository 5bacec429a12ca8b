"""Phones as the audio layer names them: the ARPAbet set, silence, the bilabials, and the timeline
type every aligner returns.

Why apart from the aligner: evaluation, motion and the generator only need the vocabulary and
timeline arithmetic, not pocketsphinx.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SIL", "ARPABET", "BILABIALS", "Phone", "silences", "fill_silence"]

SIL = "SIL"
# ARPAbet phones of the en-us acoustic model (stress digits dropped).
ARPABET = frozenset(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split())
BILABIALS = frozenset({"P", "B", "M"})
"""Phones said with the lips sealed: the closures a viewer checks first."""


@dataclass(frozen=True)
class Phone:
    """One phone: [start, end) in seconds; ARPAbet label without stress, or "SIL"."""

    start: float
    end: float
    label: str

    @property
    def duration(self) -> float:
        return self.end - self.start


def silences(phones: list[Phone], min_duration: float = 0.0) -> list[tuple[float, float]]:
    """(start, end) of silent stretches at least ``min_duration`` s long (neighbouring SILs merged)."""
    out: list[tuple[float, float]] = []
    for p in phones:
        if p.label != SIL:
            continue
        if out and abs(out[-1][1] - p.start) < 1e-9:
            out[-1] = (out[-1][0], p.end)
        else:
            out.append((p.start, p.end))
    return [(s, e) for s, e in out if e - s >= min_duration - 1e-9]


def fill_silence(phones: list[Phone], duration: float) -> list[Phone]:
    """Contiguous timeline over [0, duration]: gaps (leading, between sentences, trailing) become SIL."""
    out: list[Phone] = []
    t = 0.0
    for p in sorted(phones, key=lambda q: q.start):
        start, end = max(p.start, t), min(p.end, duration)
        if start > t + 1e-6:
            out.append(Phone(t, start, SIL))
        if end > start:
            out.append(Phone(start, end, p.label))
            t = end
    if t < duration - 1e-6:
        out.append(Phone(t, duration, SIL))
    return out
