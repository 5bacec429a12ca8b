"""Lip closure of the shipped motion model on real recorded speech (Debian's pocketsphinx-testdata).

Issue 6 targets: lips closed on >= 90 % of bilabials, closed and still in silences >= 300 ms.
The shipped default (trained on synthetic voices only) is measured, not assumed: on 2026-11-26
it closed 28 of 35 bilabials (80 %; the misses are 30-80 ms M/B with a 2.2-4.8 mm gap), every
silence closed, 6 of 9 still.  The floors below guard that level; raise them when a model
(e.g. one fed avatar3d.audio.phonetic features) does better.  The phone-timed constraints that
`render` applies on top of the model (89 % of the bilabials, every silence still) are tested in
tests/motion/test_phone_constraints.py; this file measures the model alone.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from avatar3d.audio.phones import Phone
from avatar3d.audio.phonetic import phone_frames
from avatar3d.errors import Avatar3DError
from avatar3d.eval.lip_closure import (TESTDATA_DIR, LipClosureConfig, LipGeometry, evaluate_lip_closure,
                                       pocketsphinx_recordings, read_recording)
from avatar3d.motion.model import load_default

FPS = 25

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def geometry():
    return LipGeometry()



@pytest.mark.skipif(not TESTDATA_DIR.is_dir(), reason="pocketsphinx-testdata is not installed "
                    "(apt-get install pocketsphinx-testdata; tools/install.sh and CI install it)")
def test_default_model_on_real_speech(geometry):
    model = load_default()
    bil, vow, sil, aligned = [], [], [], 0
    for rec in pocketsphinx_recordings():
        audio, sr = read_recording(rec)
        n = int(math.ceil(len(audio) / sr * FPS))
        track = phone_frames(audio, sr, FPS, n, transcript=rec.transcript)
        res = evaluate_lip_closure(model.predict(audio, FPS, n, sr), track.phones, FPS, geometry=geometry)
        sil += res.silences
        if track.mode == "align":
            aligned += 1
            bil += res.bilabials
            vow += res.open_vowels
    assert aligned >= 10 and len(bil) >= 30 and len(sil) >= 8, (aligned, len(bil), len(sil))
    closure = np.mean([d["closed"] for d in bil])
    print(f"bilabial closure {closure:.2f} of {len(bil)}; silences closed "
          f"{np.mean([d['closed'] for d in sil]):.2f}, still {np.mean([d['still'] for d in sil]):.2f} of {len(sil)}; "
          f"open vowels opened {np.mean([d['open'] for d in vow]):.2f} of {len(vow)}")
    assert closure >= 0.75, f"bilabial closure {closure:.2f} fell below the measured 0.80 (target 0.90)"
    assert np.mean([d["closed"] for d in sil]) >= 0.85
    assert np.mean([d["closed"] and d["still"] for d in sil]) >= 0.5
    # the counter-check: a mouth that never opened would pass the closure test
    assert np.mean([d["open"] for d in vow]) >= 0.5


def test_measure_on_the_synthetic_ground_truth(synth_clip, geometry):
    """The measure itself: the true curves pass it, a mouth held open fails it."""
    gt = np.load(synth_clip / "groundtruth.npz")
    names = [str(x) for x in gt["expression_names"]]
    truth = {k: gt["expression"][:, i] for i, k in enumerate(names)}
    phones = [Phone(float(s), float(e), str(lab)) for s, e, lab in
              zip(gt["phone_start"], gt["phone_end"], gt["phone_label"])]
    res = evaluate_lip_closure(truth, phones, FPS, geometry=geometry)
    assert len(res.bilabials) == 24 and res.bilabial_closure == 1.0
    assert len(res.silences) == 5 and res.silence_closed == 1.0 and res.silence_closed_still >= 0.8
    assert res.open_vowel_opening >= 0.8
    # the mouth opening the face model gives follows the generator's own rig measurement
    gap = geometry.gap_mm(truth)
    assert np.corrcoef(np.maximum(gap, 0), gt["mouth_opening_mm"])[0, 1] > 0.8
    held_open = {"jawOpen": np.full(len(gap), 0.3, np.float32)}
    bad = evaluate_lip_closure(held_open, phones, FPS, geometry=geometry)
    assert bad.bilabial_closure == 0.0 and bad.silence_closed == 0.0 and bad.open_vowel_opening == 1.0
    chatter = {"jawOpen": (np.arange(len(gap)) % 2 * 0.05).astype(np.float32)}  # closed but trembling
    shaky = evaluate_lip_closure(chatter, phones, FPS, geometry=geometry)
    assert shaky.silence_closed == 1.0 and shaky.silence_still == 0.0

    # the default model on this clip's audio (en-us, a voice family it was trained on)
    audio, sr = sf.read(str(synth_clip / "audio.wav"), dtype="float32")
    pred = load_default().predict(audio, FPS, len(gap), sr)
    res = evaluate_lip_closure(pred, phones, FPS, geometry=geometry)
    assert res.bilabial_closure >= 0.9 and res.silence_closed_still >= 0.8


def test_bad_input(geometry, tmp_path):
    phones = [Phone(0.0, 0.5, "SIL")]
    with pytest.raises(Avatar3DError, match="not in the face model"):
        evaluate_lip_closure({"mouthSmileWide": np.zeros(5)}, phones, FPS, geometry=geometry)
    with pytest.raises(Avatar3DError, match="differ in length"):
        evaluate_lip_closure({"jawOpen": np.zeros(5), "mouthClose": np.zeros(6)}, phones, FPS, geometry=geometry)
    with pytest.raises(Avatar3DError, match="no blendshape"):
        evaluate_lip_closure({}, phones, FPS, geometry=geometry)
    with pytest.raises(Avatar3DError, match="pocketsphinx-testdata"):
        pocketsphinx_recordings(tmp_path / "absent")
    with pytest.raises(Avatar3DError, match="thresholds"):
        LipClosureConfig(still_mm=0)
