"""Phone timings for speech audio, from pocketsphinx (BSD): the aligner behind every phone timeline.

English with a transcript: forced alignment against the text (cmudict
pronunciations; words missing from cmudict are pronounced with espeak-ng's
own phoneme output, run as a CLI subprocess, so that they match what the
synthesiser said).  Anything else: phone-loop decoding with the en-us phone
language model.  The timeline is in seconds at pocketsphinx's 10 ms frame
resolution.
"""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from avatar3d.audio.phones import ARPABET, SIL, Phone
from avatar3d.errors import Avatar3DError

__all__ = ["FRAME_S", "ALIGNER_LOCK", "decoder", "to_pcm16", "decode_utterance", "words_of",
           "espeak_pronunciation", "forced_alignment", "phone_loop", "phone_timeline", "align_phones",
           "reset_aligners"]

FRAME_S = 0.01  # pocketsphinx frame shift
_PS_RATE = 16000

ALIGNER_LOCK = threading.Lock()
"""Held around every use of the cached decoders (they are stateful): one user at a time."""


# --- pocketsphinx decoders (built once; building one takes ~0.15 s) -------------------------

_ALIGN_CONFIGS = {
    # bestpath off: the lattice rescoring pass can return a path the grammar does not allow
    # (typically dropping the last word).  No automatic fillers: silences are explicit in the FSG.
    "align": dict(bestpath=False, fsgusefiller=False),
    "align_fine": dict(bestpath=False, fsgusefiller=False, topn=16, beam=1e-60, pbeam=1e-60),
}


@functools.lru_cache(maxsize=None)
def decoder(kind: str):
    """Cached decoder: "align", "align_fine" (retry settings) or "loop" (phone loop).

    cmn=batch makes results independent of what was decoded before (live
    CMN would carry its estimate over from the previous utterance).
    """
    from pocketsphinx import Decoder, get_model_path  # lazy: loads its models; only aligning needs it

    common = dict(hmm=get_model_path("en-us/en-us"), loglevel="FATAL", cmn="batch", lm=None)
    if kind == "loop":
        # Low LM weight: the phone LM is English-specific, the acoustics should dominate.
        return Decoder(allphone=get_model_path("en-us/en-us-phone.lm.bin"), lw=2.0, bestpath=False, **common)
    dec = Decoder(dict=get_model_path("en-us/cmudict-en-us.dict"), **common, **_ALIGN_CONFIGS[kind])
    phones = sorted(ARPABET)
    for i, ph in enumerate(phones):  # one pseudo-word per phone: the FSG is built over phones
        dec.add_word(_PH + ph, ph, i == len(phones) - 1)  # rebuild search tables once, at the end
    return dec


_PH = "ph_"


def to_pcm16(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """16 kHz int16 for pocketsphinx, with a fixed +-3 LSB noise floor.

    espeak-ng pauses are exact digital zeros; log-energy features of those
    frames are degenerate and make the search lose its path.  The noise is
    seeded, so results stay deterministic.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1:
        raise Avatar3DError(f"audio must be mono (1-D) or (samples, channels); got shape {x.shape}")
    if sample_rate != _PS_RATE:
        g = gcd(int(sample_rate), _PS_RATE)
        x = resample_poly(x, _PS_RATE // g, int(sample_rate) // g)
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0)
    pcm += np.random.default_rng(12345).integers(-3, 4, size=pcm.shape)
    return np.clip(pcm, -32768, 32767).astype(np.int16)


def decode_utterance(dec, pcm: np.ndarray) -> None:
    """Decodes ``pcm`` (from :func:`to_pcm16`) as one utterance with the active search.

    pocketsphinx carries its cepstral-mean estimate across utterances even with
    cmn=batch; it is restarted so an alignment never depends on what was decoded before.
    """
    dec.set_cmn(dec.config["cmninit"])
    dec.start_utt()
    dec.process_raw(pcm.tobytes(), full_utt=True)
    dec.end_utt()


def _clean_label(name: str) -> str:
    if name.startswith(_PH):
        name = name[len(_PH):]
    name = re.sub(r"\d", "", name.upper())
    return name if name in ARPABET else SIL  # SIL, fillers (+NSN+ ...), <s>, </s> become silence


# --- words and pronunciations ----------------------------------------------------------------

def words_of(text: str) -> list[str]:
    """Lower-case words of ``text``; punctuation dropped, apostrophes inside words kept."""
    return [w for w, _ in _words_and_breaks(text)]


def _words_and_breaks(text: str) -> list[tuple[str, bool]]:
    """(word, followed by punctuation) pairs; the synthesiser usually pauses at punctuation."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    out: list[tuple[str, bool]] = []
    for m in re.finditer(r"([A-Za-z0-9']+)([^A-Za-z0-9']*)", text):
        word = m.group(1).strip("'").lower()
        brk = bool(re.search(r"[.,;:!?()\"\u2014-]", m.group(2)))
        if word:
            out.append((word, brk))
        elif brk and out:
            out[-1] = (out[-1][0], True)
    return out


# espeak-ng English phoneme mnemonics (``-x --sep=" "``) -> ARPAbet.
_ESPEAK_TO_ARPA = {
    "a": "AE", "aa": "AE", "a#": "AH", "A:": "AA", "A@": "AA R", "0": "AA", "O:": "AO", "O": "AO",
    "O@": "AO R", "o@": "AO R", "aI": "AY", "aI@": "AY ER", "aI3": "AY ER", "aU": "AW", "aU@": "AW ER",
    "E": "EH", "e@": "EH R", "eI": "EY", "i": "IY", "i:": "IY", "I": "IH", "I#": "IH", "i@": "IH R",
    "i@3": "IY AH", "OI": "OY", "oU": "OW", "u:": "UW", "U": "UH", "U@": "UH R", "u@": "UH R",
    "V": "AH", "@": "AH", "3:": "ER", "3": "ER", "@L": "AH L", "r-": "ER", "n-": "AH N", "l-": "AH L",
    "p": "P", "b": "B", "t": "T", "d": "D", "k": "K", "g": "G", "f": "F", "v": "V", "s": "S", "z": "Z",
    "m": "M", "n": "N", "N": "NG", "l": "L", "r": "R", "w": "W", "h": "HH", "j": "Y", "T": "TH",
    "D": "DH", "S": "SH", "Z": "ZH", "tS": "CH", "dZ": "JH", "t#": "T", "d#": "D", "x": "K",
}


def _espeak_tokens_to_arpabet(tokens: list[str]) -> list[str]:
    phones: list[str] = []
    for tok in tokens:
        tok = tok.replace("'", "").replace(",", "").replace("_:", "").replace("_", "").replace(";", "")
        if not tok:
            continue
        arpa = _ESPEAK_TO_ARPA.get(tok) or _ESPEAK_TO_ARPA.get(tok.rstrip("#2345-")) \
            or _ESPEAK_TO_ARPA.get(tok.rstrip("#2345-").rstrip(":"))
        if arpa:
            phones.extend(arpa.split())
    return phones


@functools.lru_cache(maxsize=4096)
def espeak_pronunciation(word: str) -> tuple[str, ...]:
    """ARPAbet phones espeak-ng (en-us) uses for ``word``; () if espeak-ng is missing or fails.

    Used for words not in cmudict (names, numbers such as "42"), so the
    aligner expects what the synthesiser actually said.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-q", "-x", "--sep= ", "-v", "en-us", "--stdin"], input=word,
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(_espeak_tokens_to_arpabet(out.split()))


def _prepare_words(dec, text: str) -> tuple[list[str], set[int]]:
    """Words of ``text`` the decoder can pronounce, and the indices followed by punctuation.

    Words missing from cmudict get espeak-ng's pronunciation; a word that
    cannot be pronounced at all is dropped (the aligner then stretches its
    neighbours over it) and its pause mark moves to the previous word.
    """
    words: list[str] = []
    pause_after: set[int] = set()
    for w, brk in _words_and_breaks(text):
        if dec.lookup_word(w) is None:
            phones = espeak_pronunciation(w)
            if phones:
                dec.add_word(w, " ".join(phones), True)
            else:
                if brk and words:
                    pause_after.add(len(words) - 1)
                continue
        words.append(w)
        if brk:
            pause_after.add(len(words) - 1)
    return words, pause_after


# --- alignment -------------------------------------------------------------------------------

def _pronunciations(dec, word: str) -> list[list[str]]:
    """All dictionary pronunciations of ``word`` (stress removed, duplicates dropped)."""
    out: list[list[str]] = []
    for key in [word] + [f"{word}({k})" for k in range(2, 10)]:
        pron = dec.lookup_word(key)
        if pron is None:
            if key != word:
                break
            continue
        phones = [_clean_label(p) for p in pron.split()]
        phones = [p for p in phones if p != SIL]
        if phones and phones not in out:
            out.append(phones)
    return out


def _phone_grammar(dec, words: list[str], pause_after: set[int]):
    """FSG over phone pseudo-words: each word's pronunciations as parallel paths, with an
    optional silence between words (likely after punctuation, unlikely elsewhere)."""
    trans: list[tuple] = [(0, 1, 0.5, "<sil>"), (0, 1, 0.5)]
    state, nxt = 1, 2
    lo = hi = 0
    for i, word in enumerate(words):
        prons = _pronunciations(dec, word)
        lo += min(len(p) for p in prons)
        hi += max(len(p) for p in prons)
        end = nxt
        nxt += 1
        for pron in prons:
            cur = state
            for j, ph in enumerate(pron):
                last = j == len(pron) - 1
                to = end if last else nxt
                if not last:
                    nxt += 1
                trans.append((cur, to, 1.0 / len(prons) if j == 0 else 1.0, _PH + ph))
                cur = to
        p_sil = 0.5 if (i in pause_after or i == len(words) - 1) else 0.1
        trans += [(end, nxt, p_sil, "<sil>"), (end, nxt, 1.0 - p_sil)]
        state, nxt = nxt, nxt + 1
    return dec.create_fsg("phones", 0, state, trans), lo, hi


def forced_alignment(pcm: np.ndarray, text: str) -> list[tuple[str, int, int]] | None:
    """Phone-level forced alignment in one Viterbi pass over a phone grammar of ``text``.

    (pocketsphinx's own two-pass word-then-state alignment fails on longer
    utterances, so the grammar is built over phones directly.)  Returns None
    if the search did not reach the end of the grammar with either setting.
    """
    for kind in _ALIGN_CONFIGS:
        dec = decoder(kind)
        words, pause_after = _prepare_words(dec, text)
        if not words:
            return None
        fsg, lo, hi = _phone_grammar(dec, words, pause_after)
        try:
            dec.add_fsg("phones", fsg)
            dec.activate_search("phones")
            decode_utterance(dec, pcm)
        except RuntimeError:
            continue
        segs = [(s.word, s.start_frame, s.end_frame + 1) for s in (dec.seg() or [])
                if s.end_frame >= s.start_frame]
        n_phones = sum(1 for w, _, _ in segs if w.startswith(_PH))
        if lo <= n_phones <= hi:
            return [(_clean_label(w), a, b) for w, a, b in segs]
    return None


def phone_loop(pcm: np.ndarray) -> list[tuple[str, int, int]]:
    """(label, start frame, end frame) from phone-loop decoding: any speech, no transcript needed."""
    dec = decoder("loop")
    decode_utterance(dec, pcm)
    return [(_clean_label(s.word), s.start_frame, s.end_frame + 1) for s in (dec.seg() or [])
            if s.end_frame >= s.start_frame]


def phone_timeline(raw: list[tuple[str, int, int]], duration: float) -> list[Phone]:
    """Sorted, contiguous, non-overlapping phones covering [0, duration]; gaps become SIL."""
    out: list[Phone] = []
    t = 0.0
    for lab, f0, f1 in sorted(raw, key=lambda r: (r[1], r[2])):
        s, e = max(f0 * FRAME_S, t), min(f1 * FRAME_S, duration)
        if e <= s + 1e-9:
            continue
        if s > t + 1e-9:
            out.append(Phone(t, s, SIL))
        out.append(Phone(s, e, lab))
        t = e
    if duration > t + 1e-9:
        out.append(Phone(t, duration, SIL))
    merged: list[Phone] = []
    for p in out:  # merge neighbouring silences
        if merged and p.label == SIL and merged[-1].label == SIL:
            merged[-1] = Phone(merged[-1].start, p.end, SIL)
        else:
            merged.append(p)
    return merged


def align_phones(audio: np.ndarray, sample_rate: int, text: str | None, language: str = "en") -> list[Phone]:
    """Phone timeline of ``audio`` covering [0, duration] contiguously (gaps are "SIL").

    English (``language`` starting with "en") with ``text``: pocketsphinx
    forced alignment to the words of ``text`` (punctuation ignored; words not
    in cmudict pronounced via espeak-ng, or dropped if that is unavailable);
    agrees with hand labels within roughly 20-30 ms.  Other languages, no
    text, or a failed alignment: phone-loop decoding with the en-us acoustic
    model and phone LM.  That is only an approximation -- it labels foreign
    speech with the nearest English phones and is less accurate in timing --
    but is good enough to drive mouth opening and closures.
    """
    if int(sample_rate) <= 0:
        raise Avatar3DError(f"sample_rate={sample_rate} must be a positive number of Hz")
    pcm = to_pcm16(audio, int(sample_rate))
    duration = len(np.asarray(audio)) / float(sample_rate)
    if duration <= 0:
        return []
    raw = None
    with ALIGNER_LOCK:
        if text and text.strip() and str(language).lower().startswith("en"):
            raw = forced_alignment(pcm, text)
        if raw is None:
            raw = phone_loop(pcm)
    return phone_timeline(raw, duration)


def reset_aligners() -> None:
    """Drop the cached pocketsphinx decoders (they keep some state between utterances),
    so a batch of alignments that starts here is reproducible whatever ran before."""
    decoder.cache_clear()
