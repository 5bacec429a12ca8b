"""`avatar3d eval` on the shared tiny avatar (64²) and its subject, and the landmark metrics on ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatar3d.cli import main
from avatar3d.eval.landmark_metrics import blink_rate, eye_aspect_ratio, landmark_distance


@pytest.fixture(scope="module")
def tiny_eval(tiny_avatar_run, avatar_subject: Path, tmp_path_factory: pytest.TempPathFactory):
    """The first 6 held-out frames of the tiny avatar evaluated once (CPU rendering is the cost): (run, folder)."""
    from avatar3d.eval.evaluate import EvalConfig, evaluate

    out = tmp_path_factory.mktemp("eval")
    run = evaluate(tiny_avatar_run[0], avatar_subject, out, EvalConfig(frames=6), progress=False, log=lambda s: None)
    return run, out


def test_metrics_json_matches_the_training_evaluator(tiny_eval, tiny_avatar_run, avatar_subject: Path) -> None:
    """The written PSNR/SSIM are the held-out figures the trainer's own evaluator computes."""
    from avatar3d.avatar.loading import load_avatar
    from avatar3d.dataset.reader import load_subject
    from avatar3d.train.trainer import evaluate_frames

    run, out = tiny_eval
    metrics = json.loads((out / "metrics.json").read_text())
    avatar = load_avatar(tiny_avatar_run[0])
    data = load_subject(avatar_subject, int(avatar.bundle.resolution), progress=False)
    assert metrics["frames"]["n"] == 6 and np.array_equal(run.frame_ids, data.val_ids[:6])
    assert metrics["frames"]["val_total"] == len(data.val_ids)
    expected, _ = evaluate_frames(avatar, data, data.val_ids[:2])
    # the eval quantises renders to uint8 (what a viewer sees): agreement within that rounding
    assert np.mean(run.psnr_per_frame[:2]) == pytest.approx(expected["psnr_full"], abs=0.05)
    assert 10.0 < metrics["image"]["psnr_full"] < 60.0
    for key in ("psnr_head", "psnr_mouth", "ssim_full", "ssim_head", "ssim_mouth"):
        assert metrics["image"][key] is not None and np.isfinite(metrics["image"][key])
    assert metrics["lpips"] == {"full": None, "head": None, "unavailable": "no local weights given (--lpips-weights)"}
    assert metrics["size"] == 64 and metrics["train_config_yaml"]
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # atomic writes leave no temp files


def test_unmeasurable_metrics_are_reported_not_invented(tiny_eval) -> None:
    """64² renders: MediaPipe may miss faces. Whatever it finds, every landmark metric is either a number
    backed by frames with a face, or None with a stated reason -- and the report says n/a."""
    run, out = tiny_eval
    m = json.loads((out / "metrics.json").read_text())
    lmd, n = m["lmd"], m["frames"]["n"]
    for side in ("rendered", "reference"):
        assert 0.0 <= m["detection_rate"][side] <= 1.0
    both = lmd["n_both"]
    assert both <= round(min(m["detection_rate"]["rendered"], m["detection_rate"]["reference"]) * n)
    if both == 0:
        assert lmd["mouth"] is None and lmd["face"] is None and "unavailable" in lmd
    else:
        assert lmd["mouth"] > 0 and lmd["face"] > 0
    second = m["lmd_dlib"]  # dlib's 68 points: numbers backed by frames, or None and why (not installed too)
    if second["mouth"] is None:
        assert second["face"] is None and second["unavailable"]
    else:
        assert second["mouth"] > 0 and 0 < second["n_both"] <= n and second["detector"].startswith("dlib")
    for side in ("rendered", "reference"):
        sync = m["sync"][side]
        assert (sync["lag_frames"] is None) == ("unavailable" in sync)
        found = np.isfinite(run.mouth_rendered if side == "rendered" else run.mouth_reference).sum()
        if sync["lag_frames"] is not None:
            assert found >= 12 and abs(sync["lag_frames"]) <= m["sync"]["max_lag_frames"]
    direct = m["sync"]["mouth_rendered_vs_reference"]  # the avatar's lag without the audio in between
    assert (direct["lag_frames"] is None) == ("unavailable" in direct)
    if direct["lag_frames"] is not None:
        assert abs(direct["lag_frames"]) <= m["sync"]["max_lag_frames"] and np.isfinite(direct["confidence"])
    spread = m["sync"]["reference_lag_spread"]  # the reference's own lag wander at the held-out span's length
    assert spread["window_frames"] == run.mouth_rendered.size and spread["windows"] >= 0
    assert (spread["spread_frames"] is None) == (spread["windows"] < 3)
    html = (out / "report.html").read_text()
    assert "mouth lag rendered vs reference" in html and "audio-lag spread" in html
    if both == 0 or m["sync"]["rendered"]["lag_frames"] is None:
        assert "n/a" in html
    print("tiny eval:", json.dumps({k: m[k] for k in ("image", "lmd", "sync", "detection_rate")}, indent=None))


def test_no_face_found_is_reported_as_such(tiny_avatar_run, avatar_subject: Path, tmp_path: Path) -> None:
    """At 16² MediaPipe finds no face even upsampled: the eval finishes, PSNR is still measured, and every
    landmark metric is n/a with its reason -- no zeros, no crash."""
    from avatar3d.eval.evaluate import EvalConfig, evaluate

    evaluate(tiny_avatar_run[0], avatar_subject, tmp_path, EvalConfig(frames=3, size=16), progress=False,
             log=lambda s: None)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["detection_rate"] == {"rendered": 0.0, "reference": 0.0}
    assert m["lmd"]["mouth"] is None and m["lmd"]["face"] is None and "unavailable" in m["lmd"]
    assert m["sync"]["rendered"]["lag_frames"] is None and m["blink"]["rendered"]["per_minute"] is None
    assert m["image"]["psnr_full"] is not None and m["size"] == 16
    html = (tmp_path / "report.html").read_text()
    assert "n/a / n/a" in html and "no frame with a face detected" in html


def test_without_dlib_its_lmd_is_unavailable_with_the_install_line(monkeypatch) -> None:
    """dlib is optional: missing, the second detector's LMD is None with how to install it, and the report says so."""
    import avatar3d.eval.dlib_landmarks as dlib_landmarks
    from avatar3d.eval.evaluate import _dlib_lmd_entry
    from avatar3d.eval.report import _dlib_row

    reason = f"dlib is not installed ({dlib_landmarks.DLIB_INSTALL})"
    monkeypatch.setattr(dlib_landmarks, "dlib_unavailable_reason", lambda: reason)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    entry = _dlib_lmd_entry(frames, frames, 64, 256)
    assert entry["mouth"] is None and entry["face"] is None and "pip install dlib-bin" in entry["unavailable"]
    label, value, note = _dlib_row(entry)
    assert value == "unavailable" and "pip install" in note


def test_cli_eval_errors(tiny_avatar_run, avatar_subject: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    code = main(["eval", str(tiny_avatar_run[0]), str(avatar_subject), "-o", str(out),
                 "--lpips-weights", str(tmp_path / "alex.pth")])
    err = capsys.readouterr().err
    assert code == 2 and "alex.pth" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing written
    code = main(["eval", str(tiny_avatar_run[0]), str(tmp_path / "nope"), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: ") and "nope" in err and len(err.strip().splitlines()) == 1
    code = main(["eval", str(tiny_avatar_run[0]), str(avatar_subject), "-o", str(out), "--size", "4096"])
    assert code == 2 and "--size 4096" in capsys.readouterr().err


def test_blinks_found_on_ground_truth_landmarks(synth_clip: Path) -> None:
    """The eye-aspect blink detector finds every scripted blink of the synthetic subject, and nothing else."""
    with np.load(synth_clip / "groundtruth.npz") as z:
        landmarks, blink, fps = z["landmarks"], z["blink"], float(z["fps"])
    closed = blink.mean(axis=1) > 0.5
    truth = np.flatnonzero(closed[1:] & ~closed[:-1]) + 1
    assert len(truth) >= 2
    found = blink_rate(eye_aspect_ratio(landmarks), fps)
    assert found.count == len(truth)
    assert np.abs(np.array(found.starts) - truth).max() <= 1
    assert found.per_minute == pytest.approx(len(truth) / (len(landmarks) / fps) * 60.0)
    short = blink_rate(eye_aspect_ratio(landmarks[:50]), fps)  # 2 s: a count, but no per-minute rate
    assert short.count == int((truth < 50).sum()) and np.isnan(short.per_minute)


def test_lmd_is_in_512_pixels_and_skips_missing_faces(synth_clip: Path) -> None:
    with np.load(synth_clip / "groundtruth.npz") as z:
        ref = z["landmarks"][:20, :468, :2].astype(np.float64) * (256 / 512)  # as detected on 256² frames
    pred = ref + np.array([1.5, 2.0])  # 2.5 px off at 256² = 5 px at 512²
    pred[::4] = np.nan  # no face found in a quarter of the rendered frames
    r = landmark_distance(pred, ref, 256)
    assert r.mouth == pytest.approx(5.0) and r.face == pytest.approx(5.0)
    assert r.n_both == 15 and r.detection_rate_pred == pytest.approx(0.75) and r.detection_rate_ref == 1.0
    none = landmark_distance(np.full_like(ref, np.nan), ref, 256)
    assert np.isnan(none.mouth) and none.to_dict()["mouth"] is None
