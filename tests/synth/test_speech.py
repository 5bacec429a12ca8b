"""Speech for the synthetic subject: espeak-ng TTS, pocketsphinx phone timings, viseme curves.

Uses the real espeak-ng and pocketsphinx (no mocks; a missing espeak-ng is
simulated with an empty PATH).
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from avatar3d.audio.alignment import align_phones
from avatar3d.audio.phones import SIL, Phone, silences
from avatar3d.errors import Avatar3DError, MissingToolError
from avatar3d.face.blendshape_names import MOUTH_BLENDSHAPES
from avatar3d.synth import speech
from avatar3d.synth.speech import list_variants, list_voices, read_text_file, synthesize
from avatar3d.synth.visemes import LIP_OPENING, expression_curves

SR = 16000
FPS = 25
TEXT = "Bob bought a map. Then, he rested!"


@pytest.fixture(scope="module")
def bob():
    audio = synthesize(TEXT, voice="en-us", words_per_minute=160, sample_rate=SR)
    t0 = time.perf_counter()
    phones = align_phones(audio, SR, TEXT)
    elapsed = time.perf_counter() - t0
    return audio, phones, elapsed


def _energy_pauses(audio: np.ndarray, min_s: float = 0.2) -> list[tuple[float, float]]:
    """Stretches where espeak-ng's output is (near) digital silence."""
    hop = SR // 100
    rms = np.sqrt(np.mean(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1))
    quiet = np.concatenate([[False], rms < 0.002, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(int)))
    return [(a / 100, b / 100) for a, b in zip(edges[::2], edges[1::2]) if (b - a) / 100 >= min_s]


def _frame_times(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) / FPS


def test_synthesize_gives_sensible_audio(bob):
    audio, _, _ = bob
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < len(audio) / SR < 5.0
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.02  # not silent
    other = synthesize("Bob bought a map.", voice="en-us+f3", sample_rate=24000)
    assert 0.6 < len(other) / 24000 < 3.0


def test_voices_are_listed():
    langs = {v.language for v in list_voices()}
    assert {"en-us", "de"} <= langs
    assert "f3" in list_variants()


def test_alignment_covers_audio_contiguously(bob):
    audio, phones, elapsed = bob
    duration = len(audio) / SR
    assert phones[0].start == 0.0 and phones[-1].end == pytest.approx(duration)
    for a, b in zip(phones, phones[1:]):
        assert a.end == pytest.approx(b.start) and a.end > a.start
    assert all(p.label == SIL or p.label.isalpha() and p.label.isupper() for p in phones)
    assert elapsed < 1.5  # ~3 s of audio; measured ~0.05 s (about 0.025 s per second of audio)


def test_alignment_has_expected_phones_in_order(bob):
    _, phones, _ = bob
    labels = [p.label for p in phones if p.label != SIL]
    assert [lab for lab in labels if lab in ("P", "B", "M")] == ["B", "B", "B", "M", "P"]
    it = iter(labels)  # "bob bought a map then he rested" as a subsequence
    assert all(any(lab == want for lab in it) for want in ["B", "B", "T", "M", "AE", "P", "DH", "EH", "N",
                                                            "HH", "IY", "R", "EH", "S", "T", "D"])


def test_alignment_matches_espeak_pauses(bob):
    audio, phones, _ = bob
    aligned = silences(phones, 0.1)
    pauses = _energy_pauses(audio)
    assert len(pauses) >= 2  # the sentence pause and the final one
    for s, e in pauses:
        match = [(a, b) for a, b in aligned if a < (s + e) / 2 < b]
        assert match, f"espeak pause {s:.2f}-{e:.2f} not aligned as silence"
        a, b = match[0]
        assert abs(b - e) < 0.08 and (s == 0 or abs(a - s) < 0.08)


def test_visemes_close_mouth_in_pauses_and_bilabials(bob):
    audio, phones, _ = bob
    n = int(np.ceil(len(audio) / SR * FPS))
    curves = expression_curves(phones, FPS, n, rng=np.random.default_rng(0))
    assert set(MOUTH_BLENDSHAPES) <= set(curves)
    t = _frame_times(n)
    for v in curves.values():
        assert v.shape == (n,) and v.min() >= 0.0 and v.max() <= 1.0
        assert np.abs(np.diff(v)).max() <= 0.3  # smooth at 25 fps
    long_pauses = silences(phones, 0.3)
    assert long_pauses
    for s, e in long_pauses:
        inside = (t > s + 0.06) & (t < e - 0.06)
        assert curves["jawOpen"][inside].max(initial=0) <= 0.05
        for k in LIP_OPENING:
            assert curves[k][inside].max(initial=0) <= 0.01
    bilabials = [p for p in phones if p.label in ("P", "B", "M")]
    for p in bilabials:
        k = min(int((p.start + p.end) / 2 * FPS), n - 1)
        assert curves["jawOpen"][k] <= 0.08
        assert curves["mouthClose"][k] >= 0.4 and curves["mouthPressLeft"][k] >= 0.4
    vowel = np.zeros(n, bool)
    quiet = np.zeros(n, bool)
    for p in phones:
        span = (t >= p.start) & (t < p.end)
        if p.label[0] in "AEIOU":
            vowel |= span
        elif p.label == SIL:
            quiet |= span
    assert curves["jawOpen"][vowel].mean() > 0.08 > 5 * curves["jawOpen"][quiet].mean()
    assert curves["jawOpen"].max() < 0.45  # speech stays within ~8-9 degrees of jaw rotation


def test_visemes_are_deterministic_per_seed():
    phones = [Phone(0.0, 0.3, SIL), Phone(0.3, 0.5, "AA"), Phone(0.5, 0.6, "M"), Phone(0.6, 0.8, "UW"),
              Phone(0.8, 1.4, SIL)]
    a = expression_curves(phones, FPS, 35, rng=np.random.default_rng(7))
    b = expression_curves(phones, FPS, 35, rng=np.random.default_rng(7))
    c = expression_curves(phones, FPS, 35, rng=np.random.default_rng(8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert a["mouthPucker"][int(0.7 * FPS)] > 0.2 > a["mouthPucker"][int(0.4 * FPS)]  # rounded UW, not AA
    quiet = expression_curves(phones, FPS, 35, intensity=0.5)
    loud = expression_curves(phones, FPS, 35, intensity=1.5)
    assert quiet["jawOpen"].max() < loud["jawOpen"].max()


def test_non_english_uses_phone_loop():
    text = "Guten Morgen, wir gehen heute in den Park."
    audio = synthesize(text, voice="de", sample_rate=SR)
    phones = align_phones(audio, SR, text, language="de")
    assert phones[0].start == 0.0 and phones[-1].end == pytest.approx(len(audio) / SR)
    assert sum(p.label != SIL for p in phones) >= 8
    assert silences(phones, 0.1)  # at least the final pause


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_espeak_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingToolError) as exc:
        synthesize("hello")
    msg = _one_line_error(exc)
    assert "apt-get install espeak-ng" in msg and "tools/install.sh" in msg


@pytest.mark.parametrize("voice, needle", [("xx-nosuch", "'xx-nosuch'"), ("en-us+nosuch", "'nosuch'")])
def test_unknown_voice_is_explained(voice, needle):
    with pytest.raises(Avatar3DError) as exc:
        synthesize("hello", voice=voice)
    msg = _one_line_error(exc)
    assert needle in msg and "--list-voices" in msg


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_explained(text):
    with pytest.raises(Avatar3DError) as exc:
        synthesize(text)
    assert "empty" in _one_line_error(exc)


def test_espeak_failure_reports_its_stderr(tmp_path):
    with pytest.raises(Avatar3DError) as exc:  # bypasses voice validation to make espeak-ng itself fail
        speech._run_espeak(["-v", "zzzz", "-w", str(tmp_path / "x.wav"), "hello"])
    assert "does not exist" in _one_line_error(exc)


def test_read_text_file(tmp_path):
    with pytest.raises(Avatar3DError) as exc:
        read_text_file(tmp_path / "missing.txt")
    assert "missing.txt" in _one_line_error(exc)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(Avatar3DError) as exc:
        read_text_file(empty)
    assert "empty" in _one_line_error(exc)
    good = tmp_path / "good.txt"
    good.write_text("Hello there.\n")
    assert read_text_file(good) == "Hello there."
