"""The avatar API on the shipped avatar: format-1 files load, saves are format 2, mismatches are one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.avatar.bundle import FORMAT_VERSION, AvatarBundle
from avatar3d.avatar.loading import load_avatar
from avatar3d.avatar.nerf_avatar import NerfAvatar
from avatar3d.errors import Avatar3DError

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "sync_avatar"


def _render_first_training_frame(avatar, size: int = 32) -> torch.Tensor:
    b = avatar.bundle
    i = int(b.train_ids[0])
    motion = torch.from_numpy(b.motion_vectors()[i])
    R, t = (torch.from_numpy(np.asarray(a[i])).float() for a in (b.R, b.t))
    return avatar.render_frame(avatar.intrinsics(size), R, t, motion, avatar.background(size), size)["rgb"]


def test_a_format_1_avatar_loads_as_a_nerf_avatar_and_renders() -> None:
    raw = torch.load(SHIPPED / "avatar.pt", map_location="cpu", weights_only=False)
    assert raw["format_version"] == 1 and "backend" not in raw  # written before the avatar API existed
    avatar = load_avatar(SHIPPED)
    assert isinstance(avatar, NerfAvatar) and avatar.backend == "nerf" and avatar.bundle.format_version == 1
    rgb = _render_first_training_frame(avatar)
    assert rgb.shape == (32, 32, 3) and float(rgb.std()) > 0.05, "a flat image: the weights did not load"


def test_a_saved_bundle_is_format_2_and_renders_the_same(tmp_path) -> None:
    avatar = load_avatar(SHIPPED)
    avatar.bundle.save(tmp_path / "avatar.pt")
    raw = torch.load(tmp_path / "avatar.pt", map_location="cpu", weights_only=False)
    assert raw["format_version"] == FORMAT_VERSION == 2 and raw["backend"] == "nerf"
    again = load_avatar(tmp_path)
    assert again.bundle.expression_names == avatar.bundle.expression_names
    np.testing.assert_array_equal(again.bundle.R, avatar.bundle.R)
    assert torch.equal(_render_first_training_frame(again), _render_first_training_frame(avatar))
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("change, words", [
    ({"format_version": 99, "avatar3d_version": "9.9.9"}, ("avatar3d 9.9.9", "format 99", "reads formats 1, 2")),
    ({"backend": "hologram"}, ("'hologram'", "upgrade avatar3d")),
])
def test_an_avatar_this_version_cannot_read_is_one_line_naming_why(tmp_path, change, words) -> None:
    raw = torch.load(SHIPPED / "avatar.pt", map_location="cpu", weights_only=False)
    raw.update(change)
    torch.save(raw, tmp_path / "avatar.pt")
    with pytest.raises(Avatar3DError) as err:
        load_avatar(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "avatar.pt") in message
    assert all(w in message for w in words), message


def test_a_truncated_avatar_file_says_retrain_or_restore(tmp_path) -> None:
    data = (SHIPPED / "avatar.pt").read_bytes()
    (tmp_path / "avatar.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(Avatar3DError, match="not a readable avatar.*retrain or restore"):
        AvatarBundle.load(tmp_path)
