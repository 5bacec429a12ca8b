"""Tracking on the synthetic subject, measured against its ground-truth poses and landmarks.

The data-prep issue's targets: median rotation error ≤ 1.5°, median translation error
≤ 5 mm (after the global similarity), reprojection ≤ 2 px, jitter while still ≤ 0.2°
(its 60 s figures come from tools/bench/prep.py; this is a 16 s clip); the expression
weights follow the generator's true ARKit weights.
"""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.eval.pose import rotation_errors_deg, still_jitter_deg, translation_errors_mm
from avatar3d.face import landmark_sets as rg
from avatar3d.face.default_model import load_face_model
from avatar3d.synth.check import detect_video, load_groundtruth
from data_prep.track import TrackConfig, rodrigues, track


@pytest.fixture(scope="module")
def fitted(synth_clip):
    truth = load_groundtruth(synth_clip / "groundtruth.npz")
    detected = detect_video(synth_clip / "video.mp4")
    result = track(detected, 512, 512, load_face_model(), TrackConfig(), progress=False)
    return truth, result


def test_rotation_translation_and_jitter(fitted):
    truth, res = fitted
    err = rotation_errors_deg(truth["rotation"], res.rotation)
    assert np.median(err) <= 1.5, np.median(err)
    assert np.percentile(err, 95) <= 3.0
    t_err_mm = translation_errors_mm(truth["translation"], res.translation)
    assert np.median(t_err_mm) <= 5.0, np.median(t_err_mm)
    jitter = still_jitter_deg(res.rotation, truth["head_still"])
    assert jitter <= 0.2, jitter


def test_fitted_model_reprojects_onto_true_landmarks(fitted):
    truth, res = fitted
    err = np.linalg.norm(res.projected - truth["landmarks"][:, :, :2], axis=-1)
    inner = np.ones(468, bool)
    inner[rg.FACE_OVAL] = False
    assert err[:, inner].mean() <= 2.0
    assert np.nanmean(res.residual_px) <= 1.5  # against MediaPipe's own landmarks


def test_mouth_and_blinks_follow_the_truth(fitted):
    truth, res = fitted
    jaw = res.expression[:, res.expression_names.index("jawOpen")]
    opening = truth["mouth_opening_mm"]
    assert np.corrcoef(jaw, opening)[0, 1] > 0.7
    blink_true = truth["blink"][:, 0] > 0.5
    assert res.blink[blink_true, 0].mean() > res.blink[~blink_true, 0].mean() + 0.3


def test_expressions_follow_the_truth(fitted):
    """The tracked ARKit weights against the generator's (same names; a channel it never drives is 0).

    Before the neutral prior (2026-11-26) this clip read: mouth mean correlation 0.21, jawOpen 0.76,
    noise floor 0.083, mean abs error 0.19; after: 0.43, 0.89, 0.003, 0.094.
    """
    truth, res = fitted
    names = [str(n) for n in truth["expression_names"]]
    assert set(names) <= set(res.expression_names)  # the generator and the face model share the ARKit names
    true = np.zeros_like(res.expression, dtype=np.float64)
    for j, name in enumerate(names):
        true[:, res.expression_names.index(name)] = truth["expression"][:, j]
    varies = true.std(0) > 1e-3
    corr = {name: np.corrcoef(res.expression[:, k], true[:, k])[0, 1]
            for k, name in enumerate(res.expression_names) if varies[k]}
    mouth = [c for name, c in corr.items() if name.startswith(("jaw", "mouth"))]
    assert len(mouth) >= 10
    assert np.mean(mouth) >= 0.35, corr  # mouth shapes move with the truth, not with landmark noise
    assert corr["jawOpen"] >= 0.85, corr["jawOpen"]
    floor = res.expression[:, ~varies].std(0)
    assert floor.mean() <= 0.02 and floor.max() <= 0.05, dict(zip(np.array(res.expression_names)[~varies], floor))
    assert np.abs(res.expression - true).mean() <= 0.14


def test_rodrigues_matches_closed_form():
    import torch

    omega = torch.tensor([[0.0, 0.0, np.pi / 2], [1e-9, 0.0, 0.0]], dtype=torch.float64)
    rot = rodrigues(omega).numpy()
    np.testing.assert_allclose(rot[0], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-9)
    np.testing.assert_allclose(rot[1], np.eye(3), atol=1e-8)


def test_too_few_faces_is_a_clear_error():
    from avatar3d.errors import Avatar3DError

    with pytest.raises(Avatar3DError, match="face"):
        track(np.full((5, 468, 2), np.nan), 512, 512, load_face_model(), progress=False)
