"""`avatar3d demo --fast`, run the way a user runs it: the real entry point in its own process.

Why: issue 7 asks CI to run the fast demo; every stage is covered by its own tests, but only this
one shows that they still fit together (synth -> MediaPipe check -> prep -> train -> render ->
speech -> orbit -> eval) and that what the demo prints is there.  ~3 minutes on 2 cores.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from avatar3d.eval.image_metrics import head_mask, psnr
from avatar3d.io.video import probe_video, read_audio, read_video
from avatar3d.dataset.reader import load_subject


def test_fast_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "avatar3d", "demo", "--fast", "-o", str(out)], capture_output=True,
                          text=True, timeout=1200, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for step in range(1, 9):
        assert f"[{step}/8]" in proc.stdout, f"stage {step} never announced"
    summary = json.loads((out / "demo.json").read_text())
    print(f"fast demo: {summary['seconds']:.0f} s")

    # everything the demo lists exists and is printed where the user reads it
    for key, path in summary["files"].items():
        assert Path(path).exists(), f"{key}: {path} listed but missing"
        assert path in proc.stdout, f"{key}: {path} not printed"

    # the stages measured against the generator's ground truth
    assert summary["check"]["detection_rate"] > 0.95
    assert summary["tracking"]["rotation_median_deg"] < 2.0
    assert summary["tracking"]["translation_median_mm"] < 6.0

    # the avatar learned the subject: held-out frames far nearer than the training frames' mean image,
    # and re-tracking the held-out poses against the avatar did not make them worse
    train = summary["train"]
    data = load_subject(summary["files"]["dataset"], 64, progress=False)
    mean_image = np.mean([data.image(int(i)) for i in data.train_ids[::4]], axis=0)
    base_head = np.mean([psnr(mean_image, data.image(int(i)), head_mask(np.asarray(data.labels[int(i)])))
                         for i in data.val_ids])  # fmt: skip
    assert train["val"]["psnr_head"] > base_head + 6.0, (train["val"], base_head)
    assert train["val"]["psnr_head"] > train["val_tracked"]["psnr_head"] - 0.2, train
    assert summary["eval"]["image"]["psnr_head"] > base_head + 6.0

    # the new sentence: H.264 + AAC, one frame per 1/25 s of speech, sound as long as the picture,
    # and one Live Link Face row per frame with the ARKit names
    video = Path(summary["files"]["new_sentence_video"])
    info = probe_video(video)
    assert info.has_audio and float(info.fps) == 25.0 and (info.width, info.height) == (64, 64)
    assert abs(info.n_frames - round(summary["speech"]["seconds"] * 25)) <= 1
    sound = read_audio(video, 16000)
    assert abs(len(sound) / 16000 - info.n_frames / 25) < 0.1
    assert np.sqrt(np.mean(sound**2)) > 0.01, "the sentence's sound track is silent"
    with open(summary["files"]["new_sentence_curves"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == info.n_frames and {"JawOpen", "EyeBlinkLeft", "HeadYaw"} <= set(rows[0])
    jaw = np.array([float(r["JawOpen"]) for r in rows])
    assert jaw.max() - jaw.min() > 0.1, "the mouth never moves with the sentence"

    # the orbit turns the view: its first and middle frames differ far more than codec noise
    frames = np.stack(list(read_video(summary["files"]["orbit_video"]))).astype(np.float32)
    assert len(frames) > 25 and np.abs(frames[len(frames) // 2] - frames[0]).mean() > 4.0

    # the report and its metrics
    metrics = json.loads(Path(summary["files"]["metrics"]).read_text())
    assert metrics["image"] == summary["eval"]["image"]
    html = Path(summary["files"]["report"]).read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html  # self-contained


def test_demo_refuses_a_used_folder_at_once(tmp_path: Path) -> None:
    """A second demo into the same folder would stop after a minute, at training: say so before any work."""
    used = tmp_path / "used"
    (used / "avatar").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "avatar3d", "demo", "--fast", "-o", str(used)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "already exists" in proc.stderr and str(used) in proc.stderr, proc.stderr[-800:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert [p.name for p in used.iterdir()] == ["avatar"]
