"""Live Link Face CSV: exact header, one row per frame, values in range, head angles with the stated signs."""
from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest

from avatar3d.cli import main
from avatar3d.errors import Avatar3DError
from avatar3d.export.livelink import (LLF_BLENDSHAPES, LLF_HEADER, head_angles, rotation_from_angles, timecode,
                                      write_livelink_csv)

# The header of a recorded Live Link Face take, spelled out independently of the module's tuples.
RECORDED_HEADER = (
    "Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    "EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    "EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,MouthRight,"
    "MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,MouthDimpleRight,"
    "MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,MouthShrugUpper,"
    "MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,MouthUpperUpRight,"
    "BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,CheekSquintLeft,"
    "CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,LeftEyeYaw,LeftEyePitch,"
    "LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
).split(",")
TIMECODE = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}\.\d{3}$")
NOSE_TIP = 1  # MediaPipe landmark at the tip of the nose


def read_csv(path) -> tuple[list[str], list[list[str]]]:  # type: ignore[no-untyped-def]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def column(rows: list[list[str]], name: str) -> np.ndarray:
    return np.array([float(r[RECORDED_HEADER.index(name)]) for r in rows])


def test_header_rows_and_pure_rotations(tmp_path):
    """Pure yaw / pitch / roll come out as that angle / 180° with the other two 0; names map to UpperCamel."""
    assert list(LLF_HEADER) == RECORDED_HEADER and len(LLF_BLENDSHAPES) == 52
    deg = math.pi / 180
    angles = [(20 * deg, 0, 0), (-35 * deg, 0, 0), (0, 15 * deg, 0), (0, -10 * deg, 0), (0, 0, 12 * deg),
              (25 * deg, -10 * deg, 5 * deg)]  # fmt: skip
    rotations = np.stack([rotation_from_angles(*a) for a in angles])
    jaw = np.linspace(0.0, 1.2, len(angles))  # 1.2 is out of range: clipped to 1
    out = tmp_path / "take.csv"
    write_livelink_csv(out, {"jawOpen": jaw, "eyeBlinkLeft": np.full(len(angles), 0.25)}, rotations, fps=25.0)
    header, rows = read_csv(out)
    assert header == RECORDED_HEADER
    assert len(rows) == len(angles) and all(len(r) == len(header) for r in rows)
    assert [r[1] for r in rows] == ["61"] * len(rows)
    assert all(TIMECODE.match(r[0]) for r in rows)
    np.testing.assert_allclose(column(rows, "JawOpen"), np.clip(jaw, 0, 1), atol=1e-9)
    np.testing.assert_allclose(column(rows, "EyeBlinkLeft"), 0.25, atol=1e-9)
    assert not column(rows, "EyeBlinkRight").any() and not column(rows, "TongueOut").any()
    got = np.stack([column(rows, n) for n in ("HeadYaw", "HeadPitch", "HeadRoll")], 1)
    np.testing.assert_allclose(got * 180, np.array(angles) / deg, atol=1e-6)  # normalised: degrees / 180
    assert not any(column(rows, n).any() for n in RECORDED_HEADER[-6:])  # no gaze: eye angles 0


def test_yaw_turns_the_nose_to_image_right():
    """Geometric check of the sign: a head yawed by +30° (subject's left) puts the nose tip right of its centre."""
    from avatar3d.face.default_model import load_face_model

    nose = np.asarray(load_face_model().mean, dtype=np.float64).reshape(-1, 3)[NOSE_TIP]
    t = np.array([0.0, 0.0, 0.5])
    for yaw_deg, pitch_deg in ((30, 0), (-30, 0), (0, 20), (0, -20)):
        R = rotation_from_angles(math.radians(yaw_deg), math.radians(pitch_deg), 0.0)
        centre, tip = t, R @ nose + t
        dx = tip[0] / tip[2] - centre[0] / centre[2]  # image x grows to the right
        dy = tip[1] / tip[2] - centre[1] / centre[2]  # image y grows downward
        if yaw_deg:
            assert np.sign(dx) == np.sign(yaw_deg) and abs(dx) > 0.1
        else:
            assert np.sign(-dy) == np.sign(pitch_deg) and abs(dy) > 0.05


def test_timecode_format():
    assert timecode(0, 25) == "00:00:00:00.000"
    assert timecode(26, 25) == "00:00:01:01.000"
    assert timecode((3600 + 61) * 25 + 7, 25) == "01:01:01:07.000"
    assert timecode(3, 50, start_s=59.5) == "00:00:59:28.000"
    assert timecode(1, 30000 / 1001) == "00:00:00:01.000"


def test_bad_input_is_one_line_error_and_no_file(tmp_path):
    rot = np.stack([np.diag([1.0, -1.0, -1.0])] * 3)
    out = tmp_path / "x.csv"
    with pytest.raises(Avatar3DError, match="jawOpn"):
        write_livelink_csv(out, {"jawOpn": np.zeros(3)}, rot, 25)
    with pytest.raises(Avatar3DError, match="frames"):
        write_livelink_csv(out, {"jawOpen": np.zeros(4)}, rot, 25)
    with pytest.raises(Avatar3DError, match="NaN"):
        write_livelink_csv(out, {"jawOpen": np.array([0.0, np.nan, 0.0])}, rot, 25)
    with pytest.raises(Avatar3DError, match="frame rate"):
        write_livelink_csv(out, {}, rot, 0)
    with pytest.raises(Avatar3DError, match="directory"):
        write_livelink_csv(tmp_path, {}, rot, 25)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_training_clip(tiny_avatar_run, tmp_path, capsys):
    """`avatar3d export AVATAR --blendshapes`: one row per tracked frame, the tracked curves, real head yaw signs."""
    from avatar3d.avatar.loading import load_avatar
    from avatar3d.face.default_model import load_face_model

    avatar, _ = tiny_avatar_run
    out = tmp_path / "curves" / "take.csv"
    assert main(["export", str(avatar), "--blendshapes", str(out)]) == 0
    bundle = load_avatar(avatar).bundle
    header, rows = read_csv(out)
    assert header == RECORDED_HEADER
    assert len(rows) == int(bundle.n_frames) == len(bundle.R)
    values = np.array([[float(v) for v in r[2:]] for r in rows])
    assert values[:, :52].min() >= 0 and values[:, :52].max() <= 1
    assert np.abs(values[:, 52:]).max() <= 1
    names = list(bundle.expression_names)
    jaw = np.clip(np.asarray(bundle.expression)[:, names.index("jawOpen")], 0, 1)
    np.testing.assert_allclose(column(rows, "JawOpen"), jaw, atol=1e-6)
    np.testing.assert_allclose(column(rows, "EyeBlinkLeft"), np.asarray(bundle.blink)[:, 0], atol=1e-6)
    assert column(rows, "JawOpen").std() > 0.01  # the subject talks: the curve moves
    # The written yaw/pitch agree with where the tracked pose puts the nose tip in the image.
    nose = np.asarray(load_face_model().mean, dtype=np.float64).reshape(-1, 3)[NOSE_TIP]
    R, t = np.asarray(bundle.R, np.float64), np.asarray(bundle.t, np.float64)
    tip = np.einsum("nij,j->ni", R, nose) + t
    dx = tip[:, 0] / tip[:, 2] - t[:, 0] / t[:, 2]
    dy = tip[:, 1] / tip[:, 2] - t[:, 1] / t[:, 2]
    yaw, pitch = column(rows, "HeadYaw") * 180, column(rows, "HeadPitch") * 180
    assert np.ptp(yaw) > 5  # the synthetic subject turns its head (±15°)
    assert np.corrcoef(yaw, dx)[0, 1] > 0.9
    assert np.corrcoef(pitch, -dy)[0, 1] > 0.5
    np.testing.assert_allclose(np.stack([yaw, pitch], 1) * math.pi / 180, head_angles(R)[:, :2], atol=1e-8)
    assert "blendshapes" in capsys.readouterr().out
