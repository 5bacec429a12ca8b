"""Phone-timed lip constraints (avatar3d.motion.phone_constraints) and their wiring into `render --audio/--text`.

Lips are judged where a viewer sees them: the face model's inner-lip gap posed by the curves
(avatar3d.eval.lip_closure; closed = gap < 2 mm).  Real speech is Debian's pocketsphinx-testdata:
constraints timed by the phone loop (audio only), judged against the forced alignment with the
transcript -- a different decoding, so the figure is not the loop grading itself.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from avatar3d.audio.phones import Phone
from avatar3d.audio.phonetic import phone_frames
from avatar3d.audio.tts_phonemes import synthesize_with_phonemes
from avatar3d.errors import Avatar3DError
from avatar3d.eval.lip_closure import LipGeometry, evaluate_lip_closure
from avatar3d.motion.model import load_default
from avatar3d.motion.phone_constraints import OPENING, PAIRED, PRESSING, PhoneConstraintConfig, apply_phone_constraints
from avatar3d.render.speech import SpeechSource, gated_mouth_curves

FPS = 25
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def geometry():
    return LipGeometry()


@pytest.fixture(scope="module")
def model():
    return load_default()


# --- the pure function ---------------------------------------------------------------------------------

def _open_mouth(n: int) -> dict[str, np.ndarray]:
    return {"jawOpen": np.full(n, 0.3, np.float32), "mouthClose": np.full(n, 0.05, np.float32),
            "mouthLowerDownLeft": np.full(n, 0.2, np.float32), "mouthPressLeft": np.zeros(n, np.float32),
            "mouthSmileLeft": np.full(n, 0.4, np.float32)}


def test_a_bilabial_shorter_than_a_frame_still_seals_the_lips(geometry) -> None:
    curves = _open_mouth(25)
    rest = {k: 0.0 for k in curves}
    # 30 ms "b" from 0.405 to 0.435 s: no frame centre (0.42 is frame 10's, 0.38 / 0.46 its neighbours') ...
    short = [Phone(0.0, 0.405, "AA"), Phone(0.405, 0.435, "B"), Phone(0.435, 1.0, "AA")]
    out = apply_phone_constraints(curves, short, FPS, rest=rest)
    gap = geometry.gap_mm(out.curves)
    assert geometry.gap_mm(curves)[10] > 5.0 and gap[10] < 2.0, "the frame nearest the phone closes"
    assert out.bilabial_weight[10] == 1.0 and 0 < out.bilabial_weight[9] < 1 and out.bilabial_weight[7] == 0
    assert gap[9] > gap[10] and gap[11] > gap[10], "neighbours only partly: no pop"
    assert np.allclose(out.curves["mouthSmileLeft"], 0.4), "shape channels untouched"
    assert np.allclose(gap[:8], geometry.gap_mm(curves)[:8]), "frames away from the phone as predicted"
    # ... and one that misses every frame centre by a wide margin still gets the nearest frame
    tiny = [Phone(0.0, 0.401, "AA"), Phone(0.401, 0.411, "P"), Phone(0.411, 1.0, "AA")]
    assert geometry.gap_mm(apply_phone_constraints(curves, tiny, FPS, rest=rest).curves)[10] < 2.0


def test_long_pauses_are_held_still_short_ones_are_not() -> None:
    n = 50
    wobble = {k: v + 0.05 * np.sin(np.arange(n)).astype(np.float32) for k, v in _open_mouth(n).items()}
    rest = {k: 0.01 for k in wobble}
    phones = [Phone(0.0, 0.3, "AA"), Phone(0.3, 0.8, "SIL"), Phone(0.8, 1.2, "AA"), Phone(1.2, 1.45, "SIL"),
              Phone(1.45, 2.0, "AA")]
    out = apply_phone_constraints(wobble, phones, FPS, rest=rest)
    held = np.arange(10, 18)  # centres 0.42 .. 0.70: at least 80 ms inside the 0.3-0.8 s pause
    for k, v in out.curves.items():
        assert np.allclose(v[held], 0.01), k
        assert np.allclose(v[31:36], wobble[k][31:36]), f"{k}: a 250 ms pause is left to the model"
    assert 0 < out.silence_weight[8] < 1, "the mouth settles into the pause over ~2 frames"
    assert out.n_silences == 1 and out.n_bilabials == 0


def test_constraints_close_and_only_move_the_models_own_openings(geometry) -> None:
    rng = np.random.default_rng(0)
    names = sorted(OPENING | PRESSING | PAIRED | {"mouthPucker"})
    curves = {k: rng.uniform(0, 0.6, 100).astype(np.float32) for k in names}
    phones = [Phone(i * 0.2, i * 0.2 + 0.08, "M" if i % 2 else "S") for i in range(20)]
    phones = [q for p in phones for q in (p, Phone(p.end, p.start + 0.2, "AE" if p.label == "S" else "IH"))]
    out = apply_phone_constraints(curves, phones, FPS)  # rest from the curves' own percentiles
    centres = (np.arange(100) + 0.5) / FPS
    vowel = np.zeros(100, bool)
    for p in phones:
        vowel |= (p.label in ("AE", "IH")) & (centres >= p.start) & (centres <= p.end)
    for k in OPENING:
        assert np.all(out.curves[k][~vowel] <= curves[k][~vowel] + 1e-6), f"{k} opened outside a vowel"
        widest = np.maximum.reduce([np.roll(curves[k], s) for s in (-1, 0, 1)])
        assert np.all(out.curves[k][1:-1] <= widest[1:-1] + 1e-6), f"{k}: more than the model's own opening"
    for k in PRESSING:
        assert np.all(out.curves[k] >= curves[k] - 1e-6), k
    sealed = out.bilabial_weight == 1
    assert sealed.sum() >= 20 and np.all(geometry.gap_mm(out.curves)[sealed] < 2.0)
    assert np.array_equal(out.curves["mouthPucker"], curves["mouthPucker"])


def test_a_vowel_takes_the_opening_the_model_put_one_frame_early(geometry) -> None:
    """The model opened on frame 4 (inside the "m"); the vowel is frames 5-7: the opening moves onto it."""
    jaw = np.zeros(15, np.float32)
    jaw[4] = 0.3
    curves = {"jawOpen": jaw, "mouthClose": np.zeros(15, np.float32)}
    phones = [Phone(0.0, 0.19, "M"), Phone(0.19, 0.31, "AA"), Phone(0.31, 0.6, "M")]
    out = apply_phone_constraints(curves, phones, FPS, rest={"jawOpen": 0.0, "mouthClose": 0.0})
    gap = geometry.gap_mm(out.curves)
    assert gap[4] < 2.0 and gap[5] > 5.0 and out.vowel_frames_moved == 1
    off = apply_phone_constraints(curves, phones, FPS, PhoneConstraintConfig(vowel_reach_s=0),
                                  rest={"jawOpen": 0.0, "mouthClose": 0.0})
    assert geometry.gap_mm(off.curves).max() < 2.0, "without it the sealed m leaves the vowel shut"


def test_channel_roles_agree_with_the_face_model(geometry) -> None:
    """OPENING parts the lips of the open face model, PRESSING and PAIRED (mouthClose) close them."""
    for name in OPENING | PRESSING | PAIRED:
        d = float(geometry.gap_mm({name: np.array([0.5])})[0] - geometry.gap_mm({name: np.array([0.0])})[0])
        assert (d > 0.5) if name in OPENING else (d < -0.1), (name, d)


def test_bad_input() -> None:
    with pytest.raises(Avatar3DError, match="no mouth curves"):
        apply_phone_constraints({}, [], FPS)
    with pytest.raises(Avatar3DError, match="differ in length"):
        apply_phone_constraints({"jawOpen": np.zeros(3), "mouthClose": np.zeros(4)}, [], FPS)
    with pytest.raises(Avatar3DError, match="fps"):
        apply_phone_constraints({"jawOpen": np.zeros(3)}, [], 0)
    with pytest.raises(Avatar3DError, match="NaN"):
        apply_phone_constraints({"jawOpen": np.array([0.0, np.nan])}, [], FPS)
    with pytest.raises(Avatar3DError, match="phone-constraint"):
        PhoneConstraintConfig(min_silence_s=0)
    with pytest.raises(Avatar3DError, match="--phones"):
        SpeechSource(text="hello", phones="maybe")


# --- real recorded speech, phone loop vs forced alignment ---------------------------------------------

# Real speech (pocketsphinx-testdata) with the phone loop, the recognised words and no constraints:
# tests/audio/test_word_phones.py::test_recognised_words_seal_90_percent_of_real_bilabials.


# --- --text: espeak-ng's own timings --------------------------------------------------------------------

def test_text_closes_every_bilabial_by_an_independent_alignment(model, geometry) -> None:
    """A held-out voice (en-029, never in the default model's training): espeak-ng's timings close every p/b/m
    the pocketsphinx forced alignment finds (without them 8 of 9) and hold the comma pause still (without
    them it moves), and the open vowels still open."""
    text = "My brother plays the piano, but he prefers bebop."
    tts = synthesize_with_phonemes(text, voice="en-029+f4")
    n = int(math.ceil(tts.duration * FPS))
    truth = phone_frames(tts.audio, 16000, FPS, n, transcript=text)
    assert truth.mode == "align"
    res = {}
    for name, phones in (("off", None), ("on", tts.as_phones())):
        curves = gated_mouth_curves(model, tts.audio, FPS, n, phones)
        res[name] = evaluate_lip_closure(curves, truth.phones, FPS, geometry=geometry)
    assert len(res["on"].bilabials) == 9 and len(res["on"].silences) == 1
    assert res["on"].bilabial_closure == 1.0 and res["off"].bilabial_closure < 1.0
    assert res["on"].silence_closed_still == 1.0 and res["off"].silence_closed_still == 0.0
    assert res["on"].open_vowel_opening >= res["off"].open_vowel_opening and res["on"].open_vowel_opening >= 0.75


def test_text_in_german_closes_at_espeaks_bilabials_and_pauses_still(model, geometry) -> None:
    tts = synthesize_with_phonemes("Mama baut Brot, aber Papa bleibt im Bett. Bitte, mehr Pampe!", voice="de")
    n = int(math.ceil(tts.duration * FPS))
    phones = tts.as_phones()
    curves = gated_mouth_curves(model, tts.audio, FPS, n, phones)
    res = evaluate_lip_closure(curves, phones, FPS, geometry=geometry)
    assert len(res.bilabials) >= 14 and res.bilabial_closure == 1.0
    assert res.silences and res.silence_closed_still == 1.0
    gap = geometry.gap_mm(curves)
    assert np.percentile(gap, 90) > 2.0, "the mouth still opens while speaking"


def test_speech_source_picks_and_logs_the_timeline(tmp_path) -> None:
    from avatar3d.io.audio import write_wav

    logs: list[str] = []
    spoken = SpeechSource(text="Bob and Mama.", voice="en-us").speech(log=logs.append)
    assert spoken.phones is not None and "espeak-ng's own phoneme timings" in logs[-1]
    assert sum(p.label in ("B", "M") for p in spoken.phones) == 4
    plain = synthesize_with_phonemes("Bob and Mama.", voice="en-us", sample_rate=16000)
    assert np.array_equal(spoken.audio, plain.audio)
    off = SpeechSource(text="Bob and Mama.", phones="off").speech(log=logs.append)
    assert off.phones is None and "--phones off" in logs[-1] and np.array_equal(off.audio, spoken.audio)
    wav = tmp_path / "speech.wav"
    write_wav(wav, spoken.audio, 16000)
    heard = SpeechSource(audio_path=wav).speech(log=logs.append)
    # auto: recognised words first; espeak-ng's voice is misrecognised (low word posterior), so the phone loop
    assert "word recognition" in logs[-1] and "phone-loop decoding instead" in logs[-1] and heard.phones is not None
    assert any(p.label in ("B", "M", "P") for p in heard.phones)
    loop = SpeechSource(audio_path=wav, phones="loop").speech(log=logs.append)
    assert "word recognition" not in logs[-1] and "phone-loop" in logs[-1]
    assert any(p.label in ("B", "M", "P") for p in loop.phones)
