"""Phone timings of speech without a transcript: recognise the words, then force-align them.

Why: ``render --audio`` seals the lips on p/b/m and holds pauses still at the phones it
decodes from the audio alone.  pocketsphinx's free phone loop (any phone may follow any
other) finds only ~70 % of the bilabials of real English speech: a 40 ms "b" between two
vowels loses to a "d" or a "v" with nothing to say a word needs it.  Decoding *words* with
the en-US acoustic model, language model and dictionary that ship in the pocketsphinx
wheel (offline, BSD) puts that knowledge back: even a misrecognised word usually keeps its
neighbours' lip closures ("the" for "be" is the exception), and the recognised words are
then force-aligned phone by phone (:func:`avatar3d.audio.alignment.forced_alignment`, the
aligner the synthetic generator uses) for their timings.  Nothing of any reference
transcript is used: the constraints come from the audio alone.

Fallback: the phone loop (``mode == "loop"``) when no word is recognised, when the
recogniser is unsure of its words (``WordPhonesConfig.min_confidence``) or when the words
do not align.  That is speech that is not English -- the English words pocketsphinx forces
on it are arbitrary -- and, measured, espeak-ng's synthetic voices, which it misrecognises.

Cost: ~7x the phone loop (0.5-0.8 vs 0.07-0.1 s of CPU per second of speech on 2 shared,
loaded cores).  Speech longer than a window is decoded window by
window by :func:`avatar3d.render.speech.phone_loop_timeline` with a :class:`WindowDecoder`.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from avatar3d.audio import alignment as al
from avatar3d.audio.phones import Phone
from avatar3d.errors import Avatar3DError

__all__ = ["WordPhonesConfig", "RecognisedWord", "WordPhones", "word_phones", "WindowDecoder",
           "reset_word_decoder"]


@dataclass(frozen=True)
class WordPhonesConfig:
    """How words are recognised and when the phone loop is used instead."""

    language_weight: float = 6.5
    """Weight of the en-US language model against the acoustics (pocketsphinx's default for this model)."""
    pause_mark_s: float = 0.1
    """A recogniser silence at least this long between two words is marked as a likely pause for the
    aligner (as punctuation is in a transcript); shorter ones stay optional-but-unlikely."""
    min_confidence: float = 0.5
    """Below this mean word posterior (the recogniser's lattice posterior of each word) the words are not
    trusted and the phone loop times the lips.  Measured (2026-11-26): real English recordings 0.55-0.99;
    espeak-ng's voices (English included: misrecognised) and foreign speech 0.17-0.42.  A thin margin,
    chosen on these same recordings: no held-out set of real speech was available."""

    def __post_init__(self) -> None:
        if not (self.language_weight > 0 and self.pause_mark_s >= 0 and 0 <= self.min_confidence <= 1):
            raise Avatar3DError(f"invalid word-phone settings {self}: language_weight must be positive, "
                                "pause_mark_s >= 0, min_confidence within 0..1")


@dataclass(frozen=True)
class RecognisedWord:
    """One recognised word (dictionary spelling, pronunciation variant dropped), [start, end) in seconds,
    and its posterior probability in the recogniser's lattice (how sure it was of this word here)."""

    word: str
    start: float
    end: float
    posterior: float


@dataclass(frozen=True)
class WordPhones:
    """Phones of a stretch of speech and how they were found."""

    phones: list[Phone]
    """Contiguous phones over [0, duration] (gaps are "SIL")."""
    words: tuple[RecognisedWord, ...]
    """What the recogniser heard (empty when nothing was)."""
    mode: str
    """"words" (recognised words, force-aligned) or "loop" (phone-loop decoding; see ``reason``)."""
    reason: str = ""
    """Why the phone loop was used ("" in word mode)."""

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)


_NOT_WORDS = re.compile(r"^(<.*>|\[.*\]|\+.*\+)$")  # <s>, </s>, <sil>, [NOISE], +SMACK+ ...


@functools.lru_cache(maxsize=4)
def _word_decoder(language_weight: float):
    """The en-US word recogniser (acoustic model + 3-gram LM + cmudict, all inside the wheel); ~0.5 s to build."""
    from pocketsphinx import Decoder, get_model_path  # lazy: loads its models; only word alignment needs it

    return Decoder(hmm=get_model_path("en-us/en-us"), lm=get_model_path("en-us/en-us.lm.bin"),
                   dict=get_model_path("en-us/cmudict-en-us.dict"), lw=float(language_weight),
                   loglevel="FATAL", cmn="batch")


def reset_word_decoder() -> None:
    """Drop the cached recogniser and the cached aligners, so what follows is reproducible whatever ran before."""
    _word_decoder.cache_clear()
    al.reset_aligners()


def _fresh(*kinds: str) -> None:
    """Reset the feature front-end of the cached aligner / phone-loop decoders ``kinds``.

    Why: pocketsphinx's noise removal keeps its estimate from one utterance to the next, so the second
    decode of the same audio differed from the first (word and phone boundaries moved by 10 ms);
    ``reinit_feat`` makes every decode equal the first one of a new decoder.
    """
    for kind in kinds:
        al.decoder(kind).reinit_feat()


def _recognise(pcm: np.ndarray, config: WordPhonesConfig) -> tuple[list[RecognisedWord], list[tuple[float, float]]]:
    """(words, recogniser pauses and fillers (start, end) in s) of one utterance."""
    dec = _word_decoder(config.language_weight)
    dec.reinit_feat()  # see _fresh
    al.decode_utterance(dec, pcm)
    words: list[RecognisedWord] = []
    pauses: list[tuple[float, float]] = []
    for s in dec.seg() or []:
        if s.end_frame < s.start_frame:
            continue
        start, end = s.start_frame * al.FRAME_S, (s.end_frame + 1) * al.FRAME_S
        name = re.sub(r"\(\d+\)$", "", s.word)
        if _NOT_WORDS.match(name):
            pauses.append((start, end))
        else:
            words.append(RecognisedWord(name, start, end, float(s.prob)))
    return words, pauses


def _alignment_text(words: list[RecognisedWord], pauses: list[tuple[float, float]], pause_mark_s: float) -> str:
    """The recognised words, with a comma after each followed by a recogniser pause >= ``pause_mark_s``
    (the aligner makes a pause likely there, as after punctuation in a transcript)."""
    out = []
    for i, w in enumerate(words):
        nxt = words[i + 1].start if i + 1 < len(words) else None
        paused = nxt is not None and sum(max(0.0, min(e, nxt) - max(s, w.end)) for s, e in pauses) >= pause_mark_s
        out.append(w.word + ("," if paused else ""))
    return " ".join(out)


def word_phones(audio: np.ndarray, sample_rate: int, config: WordPhonesConfig = WordPhonesConfig()) -> WordPhones:
    """Phone timeline of English ``audio`` (float, mono or [samples, channels], any rate) from recognised words.

    Deterministic: the same audio gives the same phones whatever was decoded before (every decoder starts
    from a fresh front-end, :func:`_fresh`).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise Avatar3DError(f"sample_rate={sample_rate!r} must be a positive whole number of Hz")
    x = np.asarray(audio)
    if np.issubdtype(x.dtype, np.integer):
        raise Avatar3DError(f"audio must be float in [-1, 1], got {x.dtype}; divide int16 PCM by 32768")
    duration = x.shape[0] / float(sample_rate) if x.ndim else 0.0
    if duration <= 0:
        return WordPhones([], (), "loop", "no audio")
    pcm = al.to_pcm16(x, int(sample_rate))
    with al.ALIGNER_LOCK:  # the cached decoders are stateful
        words, pauses = _recognise(pcm, config)
        confidence = float(np.mean([w.posterior for w in words])) if words else 0.0
        raw, reason = None, ""
        if not words:
            reason = "no words recognised"
        elif confidence < config.min_confidence:
            reason = (f"mean word posterior {confidence:.2f} < {config.min_confidence} "
                      "(not English, or a voice it does not know?)")
        else:
            _fresh("align", "align_fine")
            raw = al.forced_alignment(pcm, _alignment_text(words, pauses, config.pause_mark_s))
            reason = "" if raw is not None else "the recognised words did not align"
        if raw is None:
            _fresh("loop")
            raw = al.phone_loop(pcm)
    return WordPhones(al.phone_timeline(raw, duration), tuple(words), "loop" if reason else "words", reason)


class WindowDecoder:
    """The decode step of :func:`avatar3d.render.speech.phone_loop_timeline` (one window of speech -> phones),
    remembering how each window was decoded, for the render log."""

    def __init__(self, config: WordPhonesConfig = WordPhonesConfig()) -> None:
        self.config = config
        self.results: list[WordPhones] = []

    def __call__(self, audio: np.ndarray, sample_rate: int) -> list[Phone]:
        res = word_phones(audio, sample_rate, self.config)
        self.results.append(WordPhones([], (), res.mode, res.reason))  # phones and words not kept: memory
        return res.phones

    def describe(self) -> str:
        """One line: how the windows were decoded."""
        n, fell = len(self.results), [r for r in self.results if r.mode != "words"]
        line = "pocketsphinx word recognition (en-US LM) + forced alignment of the recognised words (no transcript)"
        if fell:
            line += (f"; phone loop instead in {len(fell)} of {n} window(s): {fell[0].reason}" if n > 1
                     else f" -> phone-loop decoding instead: {fell[0].reason}")
        return line
