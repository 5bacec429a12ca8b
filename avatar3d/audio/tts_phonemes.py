"""Speech and its phoneme timeline from one espeak-ng synthesis, so the two agree exactly.

Why: ``--text`` used to drive the mouth from the synthesised audio alone, so the
lips closed on a "b" only as well as the audio model guessed it.  espeak-ng knows
when it speaks every phoneme; this module asks it.  The espeak-ng CLI cannot say
(``--pho`` needs an installed MBROLA voice, ``-x``/``-X`` have no times), so the
timings come from libespeak-ng's own phoneme events (``espeakEVENT_PHONEME``,
each with the absolute sample where the phoneme's audio starts), delivered in
the same synthesis call that makes the audio.

Process boundary: espeak-ng is GPL-3 and the project's rule
(:mod:`avatar3d.synth.speech`) is to run it only as a separate process.  The
library is therefore loaded with ctypes in a *child* Python process
(:func:`_child_main`, stdlib only) that writes the samples and events to a pipe;
the library never enters the caller's process (tested).  The child sets the same
voice, rate, pitch and flags as ``espeak-ng -b 1 --stdin``; its samples equal the
CLI's (tested), so :func:`synthesize_with_phonemes` can replace
:func:`avatar3d.synth.speech.synthesize` wherever timings are wanted.

Phoneme names are requested as IPA (``espeakINITIALIZE_PHONEME_IPA``) rather than
as espeak mnemonics: every language's phoneme table writes IPA, while mnemonics
are per-table spellings.  IPA is reduced to its base letters (length, stress,
tone, nasalisation and other diacritics dropped), then mapped to an ARPAbet
stand-in (:data:`IPA_TO_ARPABET`) whose lip class is the one
:mod:`avatar3d.audio.phonetic` uses.  The table covers the IPA letter chart; the
129 of the 131 installed espeak-ng voices that speak map with no unknown symbol (a sweep
over digits and a Latin sentence, 2026-11-27; ``kl`` crashes espeak-ng itself and
``chr-US-Qaaa-x-west`` does not load by its listed name, in the CLI either).  A
symbol outside the table is counted in ``TTSSpeech.unknown`` and given the
neutral ``velar_glottal`` class.  Choices a user might question: Spanish/Greek
``β``/``ɸ`` (lips almost touching) and German ``pf`` count as bilabial; ``ɹ``
(English r) as rounded, as ARPAbet R; ``ɔ`` as open (ARPAbet AO).

espeak-ng marks a stop (p, b, t, k ...) at its *release*; the silent closure before
it -- when a p/b seals the lips -- is found in the audio and given to the stop
(:func:`_with_stop_closures`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import subprocess
import sys
import unicodedata
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from avatar3d.audio.phones import Phone
from avatar3d.errors import Avatar3DError, MissingToolError
from avatar3d.resources import import_root
from avatar3d.synth.speech import check_speech_request, espeak_path

__all__ = ["TTSPhone", "TTSSpeech", "synthesize_with_phonemes", "ipa_to_arpabet", "IPA_TO_ARPABET", "LIBRARY"]

LIBRARY = "libespeak-ng.so.1"
_INSTALL_HINT = "run `apt-get install espeak-ng` (it brings libespeak-ng1) or `bash tools/install.sh`"
_TIMEOUT_S = 120
SIL = "SIL"

# IPA base letter (or letter sequence) -> ARPAbet stand-in; its lip class is
# avatar3d.audio.phonetic.CLASS_OF_PHONE[stand-in].  Longest match first.
IPA_TO_ARPABET: dict[str, str] = {
    # bilabial: lips sealed (β / ɸ are near-closures; pf starts with a p closure)
    "p": "P", "b": "B", "m": "M", "ɓ": "B", "ʙ": "B", "β": "B", "ɸ": "P", "ʘ": "P", "pf": "P",
    # labiodental
    "f": "F", "v": "V", "ɱ": "V", "ʋ": "V", "ⱱ": "V",
    # dental
    "θ": "TH", "ð": "DH",
    # alveolar / retroflex / lateral / palatal nasal: tongue work behind nearly closed teeth
    "t": "T", "d": "D", "n": "N", "l": "L", "s": "S", "z": "Z", "ɾ": "D", "r": "D", "ɬ": "S", "ɮ": "Z",
    "ɫ": "L", "ɗ": "D", "ʈ": "T", "ɖ": "D", "ɳ": "N", "ɭ": "L", "ɺ": "L", "ɽ": "D", "ɲ": "N", "ʎ": "L",
    "ts": "T", "dz": "D", "ʦ": "T", "ʣ": "D", "ǀ": "T", "ǃ": "T", "ǁ": "L", "ɻ": "R",
    # postalveolar (lips funnelled)
    "ʃ": "SH", "ʒ": "ZH", "tʃ": "CH", "dʒ": "JH", "ʧ": "CH", "ʤ": "JH", "ɕ": "SH", "ʑ": "ZH",
    "tɕ": "CH", "dʑ": "JH", "ʂ": "SH", "ʐ": "ZH", "ʈʂ": "CH", "ɖʐ": "JH", "ɧ": "SH",
    # velar / uvular / pharyngeal / glottal / palatal obstruents: the neighbours' shape
    "k": "K", "g": "G", "ɡ": "G", "ŋ": "NG", "x": "HH", "ɣ": "G", "χ": "HH", "ʁ": "G", "ʀ": "G", "q": "K",
    "ɢ": "G", "ɴ": "NG", "h": "HH", "ɦ": "HH", "ʔ": "HH", "ħ": "HH", "ʕ": "HH", "ʜ": "HH", "ʢ": "HH",
    "ʡ": "HH", "c": "K", "ɟ": "G", "ç": "HH", "ʝ": "Y", "ɰ": "G", "ʟ": "L", "ɠ": "G", "ʛ": "G", "ǂ": "K",
    # glides
    "j": "Y", "w": "W", "ʍ": "W", "ɥ": "W", "ɹ": "R",
    # rounded vowels (and r-coloured ones, as ARPAbet ER)
    "u": "UW", "ʊ": "UH", "o": "OW", "y": "UW", "ʏ": "UH", "ø": "OW", "œ": "OW", "ɵ": "OW", "ɞ": "OW",
    "ʉ": "UW", "ɶ": "OW", "ɚ": "ER", "ɝ": "ER", "ɔɪ": "OY", "oʊ": "OW", "əʊ": "OW",
    # open vowels (jaw open)
    "a": "AA", "ɑ": "AA", "æ": "AE", "ɐ": "AH", "ʌ": "AH", "ɒ": "AA", "ɔ": "AO", "ə": "AH", "ɜ": "AH",
    "ᵻ": "IH", "aɪ": "AY", "aʊ": "AW",
    # spread vowels
    "i": "IY", "ɪ": "IH", "e": "EY", "ɛ": "EH", "ɨ": "IH", "ɯ": "IY", "ɤ": "EH", "ɘ": "EH", "eɪ": "EY",
}
_MAX_KEY = max(len(k) for k in IPA_TO_ARPABET)
_TABLE_CHARS = frozenset("".join(IPA_TO_ARPABET))
_DROP_CATEGORIES = ("Mn", "Me", "Lm", "Sk", "Nd", "No", "Pd", "Po", "Ps", "Pe", "Pc", "Zs", "Cc", "Cf")
_DROP_CHARS = set("ːˑ˞ˈˌ'\"#-_=+:;.,!?()[]{}|‖/\\^~*&%@<>`")


@dataclass(frozen=True)
class TTSPhone:
    """One phoneme espeak-ng spoke: [start, end) in seconds from the start of the audio."""

    start: float
    end: float
    ipa: str
    """espeak-ng's IPA name (empty for pauses)."""
    label: str
    """ARPAbet stand-in (or "SIL"), for the class-level tools of :mod:`avatar3d.audio.phonetic`."""

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class TTSSpeech:
    """Audio and phoneme timeline of one synthesis."""

    audio: np.ndarray
    """float32 mono in [-1, 1] at ``sample_rate``."""
    sample_rate: int
    phones: tuple[TTSPhone, ...]
    """Contiguous over [0, duration]; pauses and the lead-in/tail are "SIL".  A stop starts at its silent
    closure (found in the audio), not at espeak-ng's event, which marks the release."""
    voice: str
    native_rate: int
    """espeak-ng's own output rate (22050 Hz); timings are exact samples at this rate."""
    unknown: tuple[str, ...] = ()
    """IPA names outside :data:`IPA_TO_ARPABET` (mapped to the neutral class)."""

    @property
    def duration(self) -> float:
        return len(self.audio) / float(self.sample_rate)

    def as_phones(self) -> list:
        """The timeline as :class:`avatar3d.audio.phones.Phone` (ARPAbet stand-ins), with
        neighbouring silences merged: what the lip-closure tools and constraints take."""
        out: list = []
        for p in self.phones:
            if out and p.label == SIL and out[-1].label == SIL:
                out[-1] = Phone(out[-1].start, p.end, SIL)
            else:
                out.append(Phone(p.start, p.end, p.label))
        return out


# espeak-ng mnemonics that leak into IPA output where a language's table defines no IPA (seen: ga "A",
# ky "N"/"S", lb "X", en/cmn "dZ"/"tS"), and a Greek epsilon (da) standing for IPA open-mid e.
_MNEMONIC_LEAKS = {"A": "ɑ", "E": "ɛ", "I": "ɪ", "O": "ɔ", "U": "ʊ", "V": "ʌ", "N": "ŋ", "S": "ʃ", "Z": "ʒ",
                   "T": "θ", "D": "ð", "X": "x", "C": "ç", "Q": "ʔ", "R": "ʁ", "ε": "ɛ"}


def ipa_base(name: str) -> str:
    """IPA name reduced to base letters: no length, stress, tone, diacritics, modifier letters or ties."""
    name = str(name)
    if name.startswith("(") and name.endswith(")"):
        return ""  # a language switch, e.g. "(en)": espeak-ng's short pause between languages
    out = []
    for whole in unicodedata.normalize("NFC", "".join(_MNEMONIC_LEAKS.get(c, c) for c in name)):
        # a letter of the table stays whole (ç is not c + cedilla); others lose their combining marks (ɔ̃ -> ɔ)
        for ch in (whole,) if whole in _TABLE_CHARS else unicodedata.normalize("NFD", whole):
            if ch in _DROP_CHARS or unicodedata.category(ch) in _DROP_CATEGORIES:
                continue
            out.append(ch)
    return "".join(out)


def ipa_to_arpabet(name: str) -> tuple[str, bool]:
    """(ARPAbet stand-in or "SIL", known?) for one espeak-ng IPA phoneme name.

    The longest table key that starts the base letters decides (``tʃ`` before
    ``t``, ``aɪ`` before ``a``); an empty name is a pause.
    """
    base = ipa_base(name)
    if not base:
        return SIL, True
    if len(base) > 1 and base[0] == "ʔ":
        base = base[1:]  # a glottal onset (ar, da "ʔe"): the lips show the vowel
    for k in range(min(_MAX_KEY, len(base)), 0, -1):
        hit = IPA_TO_ARPABET.get(base[:k])
        if hit is not None:
            return hit, True
    return "G", False  # velar_glottal: takes the neighbours' shape


# --- the child process: the only place libespeak-ng is loaded ---------------------------------------

def _child_main() -> None:  # pragma: no cover - runs in the child; exercised through synthesize_with_phonemes
    """Read {text, voice, rate, pitch} as JSON on stdin; write one JSON line (rate, events) then int16 PCM.

    Standard library only: nothing of the parent's process state is needed.  On failure one JSON line
    {"error": ...} and exit code 3.
    """
    req = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    out = sys.stdout.buffer

    def fail(msg: str) -> None:
        out.write((json.dumps({"error": msg}) + "\n").encode())
        out.flush()
        sys.exit(3)

    lib = None
    for name in (LIBRARY, ctypes.util.find_library("espeak-ng")):
        if name:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
    if lib is None:
        fail("missing-library")

    class EventId(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

    class Event(ctypes.Structure):
        _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                    ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                    ("user_data", ctypes.c_void_p), ("id", EventId)]

    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                     ctypes.POINTER(Event))
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [callback_type]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    AUDIO_OUTPUT_SYNCHRONOUS, PHONEME_EVENTS, PHONEME_IPA = 2, 0x1, 0x2
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, None, PHONEME_EVENTS | PHONEME_IPA)
    if rate <= 0:
        fail("initialise")
    pcm: list[bytes] = []
    events: list[list] = []

    def on_audio(wav, n, ev) -> int:  # type: ignore[no-untyped-def]
        if n > 0:
            pcm.append(ctypes.string_at(wav, 2 * n))
        i = 0
        while ev[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            e = ev[i]
            if e.type == 7:  # espeakEVENT_PHONEME
                events.append([int(e.sample), bytes(e.id.string).decode("utf-8", "ignore")])
            i += 1
        return 0

    class VoiceSpec(ctypes.Structure):
        _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                    ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                    ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]

    keep = callback_type(on_audio)
    lib.espeak_SetSynthCallback(keep)
    voice = req["voice"].encode()
    if lib.espeak_SetVoiceByName(voice) != 0:  # as the CLI's -v: by name, else by language (e.g. en-gb)
        spec = VoiceSpec(languages=voice)
        if lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != 0:
            fail("voice")
    RATE, PITCH = 1, 3
    lib.espeak_SetParameter(RATE, int(req["rate"]), 0)
    lib.espeak_SetParameter(PITCH, int(req["pitch"]), 0)
    text = req["text"].encode("utf-8")
    buf = ctypes.create_string_buffer(text)
    # the CLI's flags for `-b 1 --stdin`: UTF-8, [[phoneme]] input allowed, end-of-text pause
    CHARS_UTF8, PHONEMES, ENDPAUSE, POS_CHARACTER = 0x1, 0x100, 0x1000, 1
    if lib.espeak_Synth(buf, len(text) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8 | PHONEMES | ENDPAUSE, None, None) != 0:
        fail("synthesis")
    lib.espeak_Synchronize()
    out.write((json.dumps({"sample_rate": rate, "events": events}) + "\n").encode())
    out.write(b"".join(pcm))
    out.flush()


def _run_child(text: str, voice: str, rate: int, pitch: int) -> tuple[int, list, np.ndarray]:
    """Run :func:`_child_main` in a fresh interpreter; returns (rate, events, int16 samples)."""
    espeak_path()  # a missing espeak-ng is reported as such, before the library is looked for
    root = str(import_root())  # the child imports this same copy of avatar3d
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import runpy; " \
           "runpy.run_path(sys.argv[2], run_name='__espeak_child__')"
    req = json.dumps({"text": text, "voice": voice, "rate": int(rate), "pitch": int(pitch)}).encode()
    try:
        proc = subprocess.run([sys.executable, "-c", code, root, __file__], input=req, capture_output=True,
                              env=env, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise Avatar3DError(f"espeak-ng did not finish within {_TIMEOUT_S} s; try shorter text") from exc
    head, _, body = proc.stdout.partition(b"\n")
    try:
        meta = json.loads(head.decode("utf-8")) if head else {}
    except ValueError:
        meta = {}
    if proc.returncode != 0 or "error" in meta or "sample_rate" not in meta:
        err = meta.get("error", "")
        if err == "missing-library":
            raise MissingToolError(f"{LIBRARY} (espeak-ng's library, needed for phoneme timings) was not found; "
                                   f"{_INSTALL_HINT}")
        if err == "voice":
            raise Avatar3DError(f"espeak-ng could not load voice {voice!r}; see `avatar3d synth --list-voices`")
        if proc.returncode < 0:
            raise Avatar3DError(f"espeak-ng crashed (signal {-proc.returncode}) speaking this text with voice "
                                f"{voice!r} (the espeak-ng CLI crashes on it too); try another voice or text")
        tail = " ".join(proc.stderr.decode("utf-8", "replace").split())[-300:]
        raise Avatar3DError(f"espeak-ng phoneme synthesis failed ({err or f'exit code {proc.returncode}'}): "
                            f"{tail or 'no message'}")
    return int(meta["sample_rate"]), meta["events"], np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")


def _timeline(events: list, total: int) -> tuple[list[list], set[str]]:
    """Phoneme events -> contiguous [start, end, ipa, label] spans in samples over [0, total); gaps are SIL."""
    spans: list[list] = []
    unknown: set[str] = set()
    marks = sorted(((min(max(int(s), 0), total), name) for s, name in events), key=lambda m: m[0])
    cursor = 0
    for k, (s, name) in enumerate(marks):
        e = marks[k + 1][0] if k + 1 < len(marks) else total
        if s > cursor:
            spans.append([cursor, s, "", SIL])
        if e <= s:
            cursor = max(cursor, s)
            continue
        label, known = ipa_to_arpabet(name)
        if not known:
            unknown.add(name)
        spans.append([s, e, name if label != SIL else "", label])
        cursor = e
    if cursor < total:
        spans.append([cursor, total, "", SIL])
    return spans, unknown


def _with_stop_closures(spans: list[list], pcm: np.ndarray, rate: int) -> list[list]:
    """Give each stop its closure: espeak-ng reports a stop (p, b, t, k ...) at its *release*, and the
    silent closure before the burst -- when the lips are sealed for a p/b -- inside the previous phone
    (measured: ~30 ms of digital silence before the event after a vowel).  Each stop's start moves back
    over the silent samples (5 ms RMS below ``_CLOSURE_DB`` of the speech level) right before it, at
    most ``_MAX_CLOSURE_S``, keeping ``_MIN_LEFT_S`` of the previous phone; not into a pause."""
    hop = max(1, int(round(0.005 * rate)))
    n = len(pcm) // hop
    if n == 0:
        return spans
    env = np.sqrt(np.mean(pcm[: n * hop].astype(np.float64).reshape(n, hop) ** 2, axis=1))
    quiet = env < np.percentile(env, 95) * 10.0 ** (_CLOSURE_DB / 20.0)
    for k in range(1, len(spans)):
        s, _, ipa, label = spans[k]
        prev = spans[k - 1]
        if label == SIL or prev[3] == SIL or not ipa_base(ipa)[:1] or ipa_base(ipa)[0] not in _STOPS:
            continue
        floor = max(prev[0] + int(_MIN_LEFT_S * rate), s - int(_MAX_CLOSURE_S * rate))
        j = s // hop  # walk back over quiet 5 ms blocks that end at or before the event
        while j - 1 >= 0 and (j - 1) * hop >= floor and quiet[j - 1]:
            j -= 1
        start = min(s, j * hop)
        if start < s:
            prev[1] = start
            spans[k][0] = start
    return spans


_STOPS = set("pbtdkgɡcɟqɢʈɖ")
_CLOSURE_DB = -40.0
_MAX_CLOSURE_S = 0.1
_MIN_LEFT_S = 0.02


def synthesize_with_phonemes(text: str, voice: str = "en-us", words_per_minute: int = 160, pitch: int = 50,
                             sample_rate: int = 16000) -> TTSSpeech:
    """Speak ``text`` with espeak-ng and return the audio with espeak-ng's own phoneme timeline.

    Same arguments, checks and audio as :func:`avatar3d.synth.speech.synthesize` (the voice is
    validated the same way; the 22050 Hz samples are identical, then resampled to
    ``sample_rate``).  Costs one child process (~0.3 s) plus the synthesis.
    """
    resolved = check_speech_request(text, voice, words_per_minute, pitch, sample_rate)
    native, events, pcm = _run_child(str(text), resolved, int(words_per_minute), int(pitch))
    if len(pcm) == 0:
        raise Avatar3DError(f"espeak-ng wrote no audio for voice {resolved!r}; check the text")
    spans, unknown = _timeline(events, len(pcm))
    spans = _with_stop_closures(spans, pcm, native)
    phones = [TTSPhone(a / native, b / native, ipa, label) for a, b, ipa, label in spans]
    if all(p.label == SIL for p in phones):
        raise Avatar3DError(f"espeak-ng spoke no phonemes for {str(text)[:40]!r} with voice {resolved!r}; "
                            "give words the voice can read")
    audio = pcm.astype(np.float32) / 32768.0
    if native != int(sample_rate):
        g = math.gcd(native, int(sample_rate))
        audio = resample_poly(audio, int(sample_rate) // g, native // g)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    dur = len(audio) / float(sample_rate)
    scale = dur / (len(pcm) / native)  # resampling rounds the length by < 1 sample
    phones = [TTSPhone(p.start * scale, p.end * scale, p.ipa, p.label) for p in phones]
    return TTSSpeech(audio=audio, sample_rate=int(sample_rate), phones=tuple(phones), voice=resolved,
                     native_rate=native, unknown=tuple(sorted(unknown)))


if __name__ == "__espeak_child__":  # pragma: no cover - the child process (see _run_child)
    _child_main()
