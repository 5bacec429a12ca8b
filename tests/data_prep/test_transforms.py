"""transforms_train/val.json: the RAD-NeRF / ER-NeRF layout written from the tracked poses."""
from __future__ import annotations

import json

import numpy as np
import pytest

from avatar3d.errors import Avatar3DError
from data_prep.transforms import c2w_to_head_pose, head_pose_to_c2w, read_transforms, write_transforms


def test_layout_split_and_round_trip(prepared_subject):
    out, _, manifest, _ = prepared_subject
    with np.load(out / "tracking.npz") as tracking:
        R, t, focal = tracking["R"], tracking["t"], float(tracking["focal"])
    flags = np.load(out / "landmark_flags.npy")
    for name in ("train", "val"):
        data = json.loads((out / f"transforms_{name}.json").read_text())
        assert data["focal_len"] == pytest.approx(focal)
        assert (data["cx"], data["cy"]) == (manifest["width"] / 2, manifest["height"] / 2)
        assert data["avatar3d"]["units"] == "m" and data["avatar3d"]["camera"] == "opengl"
        start, end = manifest["split"][name]
        expected = [i for i in range(start, end) if flags[i] != 0]
        assert [f["img_id"] for f in data["frames"]] == expected
        assert all(f["aud_id"] == f["img_id"] for f in data["frames"])
        ids, R_back, t_back = read_transforms(out / f"transforms_{name}.json")
        np.testing.assert_allclose(R_back, R[ids], atol=1e-6)
        np.testing.assert_allclose(t_back, t[ids], atol=1e-6)
        c2w = np.array(data["frames"][0]["transform_matrix"])
        assert c2w.shape == (4, 4) and np.allclose(c2w[3], [0, 0, 0, 1])


def test_camera_convention():
    # a face 1 m in front of the camera, looking into it: head +y (up) is camera -y, head +z (out of
    # the face) is camera -z
    R = np.diag([1.0, -1.0, -1.0])[None]
    t = np.array([[0.0, 0.0, 1.0]])
    c2w = head_pose_to_c2w(R, t)[0]
    np.testing.assert_allclose(c2w[:3, 3], [0.0, 0.0, 1.0])  # camera 1 m in front of the face
    np.testing.assert_allclose(c2w[:3, :3], np.eye(3), atol=1e-12)  # OpenGL camera: looks down its -z at the face
    R2, t2 = c2w_to_head_pose(c2w[None])
    np.testing.assert_allclose(R2, R, atol=1e-12)
    np.testing.assert_allclose(t2, t, atol=1e-12)


def test_excluded_frames_are_left_out(prepared_subject, tmp_path):
    out, _, manifest, _ = prepared_subject
    for name in ("tracking.npz", "manifest.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    flags = np.load(out / "landmark_flags.npy").copy()
    flags[[0, 5, manifest["split"]["val"][0]]] = 0
    np.save(tmp_path / "landmark_flags.npy", flags)
    train, val = write_transforms(tmp_path)
    train_ids = [f["img_id"] for f in json.loads(train.read_text())["frames"]]
    val_data = json.loads(val.read_text())
    assert 0 not in train_ids and 5 not in train_ids and 1 in train_ids
    assert manifest["split"]["val"][0] not in [f["img_id"] for f in val_data["frames"]]
    assert manifest["split"]["val"][0] in val_data["avatar3d"]["excluded_frames"]


def test_missing_tracking_is_a_clear_error(prepared_subject, tmp_path):
    out, _, _, _ = prepared_subject
    (tmp_path / "manifest.json").write_bytes((out / "manifest.json").read_bytes())
    with pytest.raises(Avatar3DError, match="tracking.npz.*track stage"):
        write_transforms(tmp_path)
