"""Personalisation on the prepared 16 s subject: beats the base model and the mean on the held-out val split."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from avatar3d.cli import main
from avatar3d.errors import Avatar3DError
from avatar3d.face.blendshape_names import MOUTH_BLENDSHAPES
from avatar3d.motion.model import load, load_default
from avatar3d.motion.personalize import PersonalizeConfig, personalize
from avatar3d.motion.subject_corpus import load_subject_speech
from avatar3d.synth.speech import synthesize

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_personalized_model_beats_base_and_mean_and_speaks_in_the_subjects_scale(prepared_subject, tmp_path,
                                                                                   capsys) -> None:
    torch.set_num_threads(1)
    subject = prepared_subject[0]
    out = tmp_path / "me.pt"
    assert main(["motion", "personalize", str(subject), "-o", str(out), "--steps", "200"]) == 0
    printed = capsys.readouterr().out
    assert "personalised" in printed and "predict the train mean" in printed
    model = load(out)
    report = model.info["personalization"]
    val = {k: v["val_l1"] for k, v in report["table"].items()}
    # measured (16 s subject, 36 val frames): personalised 0.057, mean 0.065, base as is 0.29
    assert val["personalized"] < val["base"] and val["personalized"] < val["train_mean"], val
    assert report["frames"]["val"] == 36 and report["steps_run"] <= 200

    # new speech (a sentence and voice it never heard) -> curves in the subject's tracked scale
    audio = synthesize("Please bring the small purple boat to the harbour tomorrow.", voice="en-gb+f2")
    n = len(audio) * 25 // 16000
    curves = model.predict(audio, 25, n)
    assert list(curves) == list(MOUTH_BLENDSHAPES)
    pred = np.stack([curves[k] for k in MOUTH_BLENDSHAPES], axis=1)
    assert pred.shape == (n, 16) and np.all((pred >= 0) & (pred <= 1))
    speech = load_subject_speech(subject)
    tracked_mean = speech.targets[slice(*speech.train)].mean(0)
    base = np.stack(list(load_default().predict(audio, 25, n).values()), axis=1)
    assert np.abs(pred.mean(0) - tracked_mean).mean() < 0.5 * np.abs(base.mean(0) - tracked_mean).mean()
    assert pred[:, 0].std() > 0.005  # the jaw still moves with the speech
    # ... as widely as the subject's own jaw moves: the calibration keeps the spread (least squares shrank it
    # by the correlation, so on a real 5 s clip the new-speech mouth opened a fifth as wide as the subject's)
    jaw = speech.targets[slice(*speech.train)][speech.valid[slice(*speech.train)], 0]
    print(f"jaw spread on new speech {pred[:, 0].std():.4f}, the subject's own {jaw.std():.4f}")
    assert 0.6 * jaw.std() < pred[:, 0].std() < 1.6 * jaw.std()


def test_pretrain_reads_a_folder_of_prepared_subjects(prepared_subject, tmp_path) -> None:
    torch.set_num_threads(1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "speaker1").symlink_to(prepared_subject[0], target_is_directory=True)
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"channels": 24, "mel_project": 8, "dilations": [1, 2, 1]},
                                   "train": {"batch": 8, "crop_frames": 32, "warmup_steps": 5}}))
    assert main(["motion", "pretrain", str(corpus), "-o", str(tmp_path / "m.pt"), "--steps", "30",
                 "--config", str(cfg)]) == 0
    model = load(tmp_path / "m.pt")
    assert model.info["corpus_kind"] == "subjects" and model.info["trained_steps"] == 30
    assert model.config.channels == 24


def test_bad_subjects_are_one_line_errors(prepared_subject, tmp_path, capsys) -> None:
    not_subject = tmp_path / "holiday_photos"
    not_subject.mkdir()
    assert main(["motion", "personalize", str(not_subject), "-o", str(tmp_path / "x.pt")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a prepared subject" in err and err.count("\n") == 1
    silent = tmp_path / "no_audio"
    silent.mkdir()
    for name in ("manifest.json", "tracking.npz", "landmark_flags.npy"):
        shutil.copy(prepared_subject[0] / name, silent / name)
    with pytest.raises(Avatar3DError, match="audio.wav is missing"):
        personalize(silent, tmp_path / "y.pt", config=PersonalizeConfig(steps=1), progress=False)
    assert main(["motion", "pretrain", str(not_subject), "-o", str(tmp_path / "z.pt"), "--steps", "1"]) == 2
    assert "no prepared subject folders" in capsys.readouterr().err
    assert not any(p.suffix == ".pt" for p in tmp_path.iterdir())  # nothing half-written


def test_calibration_keeps_the_subjects_spread_when_the_prediction_correlates_weakly() -> None:
    """A few seconds of a real person: the base prediction correlates ~0.4 with the tracked mouth. Least squares
    would scale it by that correlation (a mouth that barely opens); the calibration matches the spread."""
    from avatar3d.motion.personalize import calibrate_output

    rng = np.random.default_rng(0)
    n, k = 120, len(MOUTH_BLENDSHAPES)
    signal = rng.normal(size=(n, k))
    logit_target = -2.0 + 0.8 * signal
    logit_pred = -1.0 + 0.5 * (0.4 * signal + np.sqrt(1 - 0.4**2) * rng.normal(size=(n, k)))
    target, pred = 1 / (1 + np.exp(-logit_target)), 1 / (1 + np.exp(-logit_pred))
    model = load_default()
    head = model.net.head
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    calibrate_output(model, pred, target, np.arange(n))
    w1, w0 = head.weight.detach().reshape(k, -1).double(), w0.reshape(k, -1).double()
    slope = ((w1 * w0).sum(1) / (w0 * w0).sum(1)).numpy()  # each output row was scaled by its slope
    offset = (head.bias.detach().double() - torch.from_numpy(slope) * b0.double()).numpy()
    calibrated = offset + slope * logit_pred
    ratio = calibrated.std(0) / logit_target.std(0)
    assert np.all((ratio > 0.9) & (ratio < 1.1)), ratio
    assert np.abs(calibrated.mean(0) - logit_target.mean(0)).max() < 0.05
