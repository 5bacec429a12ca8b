"""The shipped default motion model drives a mouth from a voice it never heard."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.audio.alignment import align_phones
from avatar3d.face.blendshape_names import MOUTH_BLENDSHAPES
from avatar3d.motion.model import load_default
from avatar3d.synth.speech import synthesize
from avatar3d.synth.visemes import expression_curves

FPS = 25


@pytest.mark.parametrize("voice", ["en-029", "en-gb+m3"])  # a held-out accent; a held-out variant
def test_default_model_beats_a_constant_on_a_held_out_voice(voice):
    model = load_default()
    assert model.lookahead_ms() <= 200.0
    text = "Bring me the purple umbrella before the morning bus arrives."  # not a training sentence
    audio = synthesize(text, voice=voice)
    audio = np.concatenate([np.zeros(8000, np.float32), audio, np.zeros(8000, np.float32)])
    n_frames = len(audio) * FPS // 16000
    phones = align_phones(audio, 16000, text, language="en")
    truth = expression_curves(phones, FPS, n_frames)
    predicted = model.predict(audio, FPS, n_frames)
    t = np.stack([truth[name] for name in MOUTH_BLENDSHAPES], axis=1)
    p = np.stack([predicted[name] for name in MOUTH_BLENDSHAPES], axis=1)
    model_l1 = np.abs(p - t).mean()
    oracle_constant_l1 = np.abs(t - np.median(t, axis=0)).mean()  # the best constant, chosen knowing the truth
    assert model_l1 < 0.75 * oracle_constant_l1, (model_l1, oracle_constant_l1)
    jaw_true, jaw_pred = truth["jawOpen"], predicted["jawOpen"]
    assert np.corrcoef(jaw_true, jaw_pred)[0, 1] > 0.7
