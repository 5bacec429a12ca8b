"""Phone timings from recognised words (avatar3d.audio.word_phones): what `render --audio` seals the lips with.

Real speech is Debian's pocketsphinx-testdata.  The constraints come from the audio alone (word_phones takes
no transcript); they are judged against the forced alignment *with* the transcript, a different decoding, and
beside the phone loop they replace (the figures the issue was measured with).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar3d.audio.alignment import align_phones
from avatar3d.audio.phones import SIL
from avatar3d.audio.phonetic import phone_frames
from avatar3d.audio.tts_phonemes import synthesize_with_phonemes
from avatar3d.audio.word_phones import WindowDecoder, WordPhonesConfig, reset_word_decoder, word_phones
from avatar3d.errors import Avatar3DError
from avatar3d.eval.lip_closure import (TESTDATA_DIR, LipGeometry, evaluate_lip_closure, pocketsphinx_recordings,
                                       read_recording)
from avatar3d.motion.model import load_default
from avatar3d.render.speech import StreamConfig, gated_mouth_curves, phone_loop_timeline

FPS = 25
BILABIAL = ("P", "B", "M")
needs_testdata = pytest.mark.skipif(not TESTDATA_DIR.is_dir(), reason="pocketsphinx-testdata is not installed "
                                    "(apt-get install pocketsphinx-testdata; tools/install.sh and CI install it)")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Short clips: one torch thread is far cheaper than two fighting a loaded CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _found(truth, decoded, slack: float = 0.04) -> int:
    """True bilabials with a decoded P/B/M within ``slack`` s."""
    dec = [p for p in decoded if p.label in BILABIAL]
    return sum(any(d.start < t.end + slack and d.end > t.start - slack for d in dec)
               for t in truth if t.label in BILABIAL)


@needs_testdata
def test_recognised_words_seal_90_percent_of_real_bilabials() -> None:
    """Issue 6 on real speech (measured 2026-11-26, default model + speech gate, 25 fps, 11 force-aligned
    recordings): phone loop 86-89 % of 35 bilabials closed (it finds 24-25), recognised words 100 % (they find
    32; 97 % with their timeline moved 40 ms either way); silences closed and still 100 % of 4 and open vowels
    80 % of 20 either way."""
    reset_word_decoder()
    model, geometry = load_default(), LipGeometry()
    rows = {k: {"bil": [], "vow": [], "sil": []} for k in ("off", "loop", "words", "early", "late")}
    found: dict[str, int] = {}
    n_words_mode = n_rec = 0
    for rec in pocketsphinx_recordings(transcribed_only=True):
        audio, sr = read_recording(rec)
        n = int(math.ceil(len(audio) / sr * FPS))
        truth = phone_frames(audio, sr, FPS, n, transcript=rec.transcript)
        if truth.mode != "align":
            continue
        n_rec += 1
        heard = word_phones(audio, sr)  # no transcript: the audio alone
        n_words_mode += heard.mode == "words"
        # early / late: the word timeline moved by 40 ms -- where the words were heard right it is the judge's
        # own timeline (the same aligner), so the rate must not hang on that shared timing
        moved = {k: [p.__class__(max(p.start + d, 0.0), max(p.end + d, 0.0), p.label) for p in heard.phones]
                 for k, d in (("early", -0.04), ("late", 0.04))}
        for name, phones in (("off", None), ("loop", align_phones(audio, sr, None)), ("words", heard.phones),
                             *moved.items()):
            res = evaluate_lip_closure(gated_mouth_curves(model, audio, FPS, n, phones), truth.phones, FPS,
                                       geometry=geometry)
            rows[name]["bil"] += res.bilabials
            rows[name]["vow"] += res.open_vowels
            rows[name]["sil"] += res.silences
            if phones is not None:
                found[name] = found.get(name, 0) + _found(truth.phones, phones)
    rate = {name: {"bil": float(np.mean([d["closed"] for d in r["bil"]])),
                   "vow": float(np.mean([d["open"] for d in r["vow"]])),
                   "sil": float(np.mean([d["closed"] and d["still"] for d in r["sil"]]))} for name, r in rows.items()}
    n_bil = len(rows["words"]["bil"])
    print(f"{n_words_mode} of {n_rec} recordings in word mode; bilabials found {found}; rates {rate}")
    assert n_rec >= 10 and n_bil >= 30 and n_words_mode >= n_rec - 1
    assert rate["words"]["bil"] >= 0.9, "issue 6 target: lips closed on >= 90 % of bilabials"
    assert found["words"] >= found["loop"] + 4, "the words find bilabials the phone loop misses"
    assert rate["words"]["bil"] > rate["loop"]["bil"] and rate["loop"]["bil"] > rate["off"]["bil"] + 0.05
    assert rate["loop"]["sil"] == 1.0 and rate["off"]["sil"] < 1.0, "negative control: without phones a pause moves"
    assert min(rate["early"]["bil"], rate["late"]["bil"]) >= 0.9, "40 ms of timing error still closes >= 90 %"
    assert rate["words"]["sil"] == 1.0, "pauses >= 300 ms closed and still"
    assert rate["words"]["vow"] >= rate["loop"]["vow"] - 0.05 and rate["words"]["vow"] >= 0.6, \
        "the counter-check: closure is not bought by a mouth that stays shut"


@needs_testdata
def test_same_phones_every_time_and_in_windows() -> None:
    """Two recordings back to back (~9.6 s): the same phones on a second decode after another one (the
    decoders' noise estimate used to carry over and move boundaries), then in windows of <= 7 s cut at a pause."""
    recs = [r for r in pocketsphinx_recordings(transcribed_only=True) if r.name.endswith(("0890.wav", "0930.wav"))]
    assert len(recs) == 2
    gap = np.zeros(8000, np.float32)
    parts, truth, t = [], [], 0.0
    for rec in recs:
        audio, sr = read_recording(rec)
        assert sr == 16000
        truth += [p.__class__(p.start + t, p.end + t, p.label) for p in align_phones(audio, sr, rec.transcript)]
        parts += [audio, gap]
        t += (len(audio) + len(gap)) / sr
    audio = np.concatenate(parts)
    first = word_phones(audio, 16000)
    other = read_recording(pocketsphinx_recordings(transcribed_only=True)[0])[0]
    assert word_phones(other[:16000], 16000).phones != first.phones
    again = word_phones(audio, 16000)  # whatever was decoded in between
    assert first.mode == "words" and first.phones == again.phones and first.words == again.words
    assert first.phones[0].start == 0 and abs(first.phones[-1].end - len(audio) / 16000) < 1e-9

    decoder = WindowDecoder()
    config = StreamConfig(phone_window_s=7.0, phone_cut_search_s=4.0)
    chunks = (audio[i:i + 16000] for i in range(0, len(audio), 16000))
    windowed, cuts = phone_loop_timeline(chunks, config, decoder)
    print(f"cuts {cuts}; modes {[r.mode for r in decoder.results]}; {decoder.describe()}")
    assert len(cuts) >= 1 and len(decoder.results) == len(cuts) + 1
    assert all(r.mode == "words" for r in decoder.results)
    assert all(a.end == b.start for a, b in zip(windowed, windowed[1:]))
    assert all(any(p.label == SIL and p.start <= c <= p.end for p in windowed) for c in cuts), "cut in a pause"
    n_true = sum(p.label in BILABIAL for p in truth)
    assert n_true >= 8
    whole, in_windows = _found(truth, first.phones), _found(truth, windowed)
    print(f"true bilabials found: {whole} of {n_true} decoded whole, {in_windows} in windows")
    assert in_windows >= whole - 1 and whole >= 6  # measured 6 and 6 of 9 ("to be" heard as "to the")


def test_foreign_speech_falls_back_to_the_phone_loop() -> None:
    """German: the English words pocketsphinx forces on it are arbitrary, so the phone loop times the lips."""
    tts = synthesize_with_phonemes("Mama baut Brot, aber Papa bleibt im Bett. Bitte, mehr Pampe!", voice="de")
    reset_word_decoder()
    heard = word_phones(tts.audio, 16000)
    assert heard.mode == "loop" and heard.words and "not English" in heard.reason, heard.reason
    reset_word_decoder()
    assert heard.phones == align_phones(tts.audio, 16000, None), "exactly the phone loop's timeline"
    assert sum(p.label in BILABIAL for p in heard.phones) >= 5


def test_bad_input_and_silence() -> None:
    with pytest.raises(Avatar3DError, match="sample_rate"):
        word_phones(np.zeros(1600, np.float32), 0)
    with pytest.raises(Avatar3DError, match="int16"):
        word_phones(np.zeros(1600, np.int16), 16000)
    with pytest.raises(Avatar3DError, match="word-phone settings"):
        WordPhonesConfig(min_confidence=1.5)
    empty = word_phones(np.zeros(0, np.float32), 16000)
    assert empty.phones == [] and empty.mode == "loop"
    quiet = word_phones(np.zeros(16000, np.float32), 16000)  # 1 s of digital silence
    assert quiet.mode == "loop" and all(p.label == SIL for p in quiet.phones)
