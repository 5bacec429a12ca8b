"""`avatar3d prep` end to end on the synthetic clip: the dataset contract, resume and skip."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.pipeline import STAGES, prepare


@pytest.fixture(scope="module")
def prepared(prepared_subject):
    return prepared_subject  # the session's prepared synthetic subject (tests/conftest.py)


def test_writes_the_dataset_contract(prepared, synth_clip):
    out, _, manifest, log = prepared
    assert all(line.endswith("running") for line in log)
    for name in ("manifest.json", "frames.mp4", "audio.wav", "landmarks.npy", "tracking.npz", "parsing.npz",
                 "background.png", "audio_features.npz", "transforms_train.json", "transforms_val.json"):
        assert (out / name).is_file(), name
    truth = np.load(synth_clip / "groundtruth.npz")
    n = len(truth["rotation"])
    assert manifest["n_frames"] == n and manifest["fps"] == 25 and manifest["width"] == 512
    train, val = manifest["split"]["train"], manifest["split"]["val"]
    assert train[0] == 0 and train[1] == val[0] and val[1] == n and val[1] - val[0] == round(n / 11)
    assert set(manifest["stages"]) == {s.name for s in STAGES}
    for record in manifest["stages"].values():
        assert record["input_hashes"] and record["config_hash"] and record["wall_s"] >= 0
    with np.load(out / "tracking.npz") as tracking:
        assert tracking["R"].shape == (n, 3, 3) and tracking["expression"].shape[0] == n
        assert 300 < float(tracking["focal"]) < 1000
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_rerun_skips_finished_stages_and_reruns_what_changed(prepared, synth_clip):
    out, config, manifest, _ = prepared
    log: list[str] = []
    again = prepare(synth_clip / "video.mp4", out, config, progress=False, log=log.append)
    assert all("skipped" in line for line in log), log
    assert again["stages"] == manifest["stages"]
    (out / "background.png").unlink()  # as if a run had been killed during the background stage
    log.clear()
    prepare(synth_clip / "video.mp4", out, config, progress=False, log=log.append)
    ran = [line.split("]")[0][1:] for line in log if line.endswith("running")]
    assert ran == ["background"], log


def test_missing_clip_is_a_clear_error(tmp_path):
    from avatar3d.errors import Avatar3DError

    with pytest.raises(Avatar3DError, match="not found"):
        prepare(tmp_path / "nope.mp4", tmp_path / "out", progress=False, log=lambda _: None)
