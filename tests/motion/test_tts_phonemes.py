"""espeak-ng speech with its own phoneme timeline (avatar3d.audio.tts_phonemes): the timings agree with the audio.

Each synthesis is one child process (~0.3 s); the sentences are short.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatar3d.audio.alignment import align_phones
from avatar3d.audio.phones import SIL
from avatar3d.audio.phonetic import CLASS_OF_PHONE, PHONE_CLASSES
from avatar3d.audio.tts_phonemes import ipa_to_arpabet, synthesize_with_phonemes
from avatar3d.errors import Avatar3DError
from avatar3d.synth.speech import synthesize

RATE = 16000
BILABIAL = PHONE_CLASSES.index("bilabial")


def _rms(audio: np.ndarray, start: float, end: float) -> float:
    seg = audio[int(start * RATE):int(end * RATE)]
    return float(np.sqrt(np.mean(seg.astype(np.float64) ** 2))) if len(seg) else 0.0


def _bilabials(phones) -> list:
    return [p for p in phones if p.label != SIL and CLASS_OF_PHONE[p.label] == BILABIAL]


@pytest.fixture(scope="module")
def english():
    return synthesize_with_phonemes("Mom, be calm. Peter bought a big map.", voice="en-us")


def test_audio_is_espeaks_own_and_the_phones_tile_it(english) -> None:
    # the very samples `espeak-ng -b 1 --stdin` writes (synth.speech.synthesize), not a second synthesis
    cli = synthesize("Mom, be calm. Peter bought a big map.", voice="en-us")
    assert len(cli) == len(english.audio) and np.array_equal(cli, english.audio)
    phones = english.phones
    assert phones[0].start == 0.0 and abs(phones[-1].end - english.duration) < 1e-9
    assert all(abs(a.end - b.start) < 1e-9 and b.end > b.start for a, b in zip(phones, phones[1:]))
    labels = [p.label for p in english.as_phones()]
    # espeak-ng 1.51, en-us: m ɑː m | b iː k ɑː m | p iː ɾ ɚ b ɔː t ɐ b ɪ ɡ m æ p
    assert labels[:10] == ["M", "AA", "M", "SIL", "B", "IY", "K", "AA", "M", "SIL"], labels
    assert len(_bilabials(english.phones)) == 9 and english.unknown == ()


def test_pauses_espeak_reports_are_silent_and_its_vowels_are_not(english) -> None:
    audio, phones = english.audio, english.as_phones()
    pauses = [p for p in phones if p.label == SIL and p.duration >= 0.05]
    comma = [p for p in pauses if 0.2 < p.start < 0.6]
    assert len(comma) == 1 and comma[0].duration >= 0.15, "the comma after 'Mom' is a real pause"
    for p in pauses:  # resampling rings ~1 ms into a pause: 5 ms trimmed at each end
        assert _rms(audio, p.start + 0.005, p.end - 0.005) < 1e-3, (p, _rms(audio, p.start, p.end))
    vowels = [p for p in phones if p.label in ("AA", "IY", "AO", "AE") and p.duration >= 0.06]
    assert len(vowels) >= 6
    assert all(_rms(audio, p.start, p.end) > 0.03 for p in vowels)


def test_bilabial_times_agree_with_an_independent_forced_alignment(english) -> None:
    """pocketsphinx (BSD) aligns the same audio to the words: each of its 9 bilabials has one within 60 ms."""
    truth = _bilabials(align_phones(english.audio, RATE, "Mom, be calm. Peter bought a big map."))
    ours = _bilabials(english.as_phones())
    assert len(truth) == len(ours) == 9
    for p in ours:
        mid = 0.5 * (p.start + p.end)
        assert min(abs(mid - 0.5 * (q.start + q.end)) for q in truth) < 0.06, p


@pytest.mark.parametrize("voice, text, n_bilabial", [
    ("de", "Mama baut Brot, aber Papa bleibt im Bett.", 11),
    ("fr", "Le bébé mange une pomme, puis il boit.", 7),
    ("es", "Mi papá bebe vino, pero mamá no.", 9),  # b/v spoken as β count as bilabial (documented)
])
def test_other_languages_map_and_pause_where_the_audio_does(voice, text, n_bilabial) -> None:
    tts = synthesize_with_phonemes(text, voice=voice)
    assert tts.unknown == (), f"{voice}: unmapped espeak-ng IPA {tts.unknown}"
    assert len(_bilabials(tts.phones)) == n_bilabial, [(p.ipa, p.label) for p in tts.phones]
    pauses = [p for p in tts.as_phones() if p.label == SIL and p.duration >= 0.1]
    assert len(pauses) >= 2, "the comma and the end of the sentence"
    assert all(_rms(tts.audio, p.start + 0.005, p.end - 0.005) < 1e-3 for p in pauses)
    assert all(_rms(tts.audio, p.start, p.end) > 0.005 for p in tts.phones if p.label != SIL and p.duration > 0.06
               and CLASS_OF_PHONE[p.label] in (PHONE_CLASSES.index("open_vowel"), PHONE_CLASSES.index("spread_vowel")))


def test_ipa_names_map_to_lip_classes() -> None:
    cases = {"p": "P", "mʲ": "M", "β": "B", "pf": "P", "tʃ": "CH", "aɪ": "AY", "ɑː": "AA", "ɔ̃": "AO", "y": "UW",
             "ɚ": "ER", "ə-": "AH", "ʔe": "EY", "θ": "TH", "ç": "HH", "": SIL, "(en)": SIL, "N": "NG", "ε": "EH",
             "tɕh": "CH", "ˈiː": "IY"}
    for ipa, arpa in cases.items():
        assert ipa_to_arpabet(ipa) == (arpa, True), ipa
    assert ipa_to_arpabet("☃") == ("G", False), "unknown symbols get the neutral class and are reported"


def test_espeak_library_never_enters_this_process(english) -> None:
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        pytest.skip("no /proc on this system")
    assert "libespeak-ng" not in maps.read_text(), "GPL-3 espeak-ng runs in a child process only"


def test_bad_input_is_one_line() -> None:
    for text in ("", "   \n"):
        with pytest.raises(Avatar3DError, match="empty"):
            synthesize_with_phonemes(text)
    with pytest.raises(Avatar3DError, match="unknown voice 'xx-nope'"):
        synthesize_with_phonemes("hello", voice="xx-nope")
    with pytest.raises(Avatar3DError, match="variant"):
        synthesize_with_phonemes("hello", voice="en-us+nobody")
    with pytest.raises(Avatar3DError, match="words_per_minute"):
        synthesize_with_phonemes("hello", words_per_minute=10)
    with pytest.raises(Avatar3DError, match="no phonemes"):
        synthesize_with_phonemes("...", voice="en-us")
