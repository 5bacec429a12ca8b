"""Camera control of `avatar3d render`: training camera, orbit within the trained views, nerfstudio paths.

Uses the session's tiny avatar: its tracked training poses define the views it supports.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.layers import LayerPlanes
from avatar3d.avatar.loading import load_avatar
from avatar3d.cli import main
from avatar3d.io.audio import write_wav
from avatar3d.io.video import probe_video, read_video
from avatar3d.motion.model import DEFAULT_MODEL_PATH
from avatar3d.render.camera import (ViewRenderer, camera_track, load_camera_path, move_view,  # fmt: skip
                                    supported_range, view_angles)
from avatar3d.render.drive import DriveConfig, build_tracks
from avatar3d.synth.speech import synthesize


@pytest.fixture(scope="module")
def avatar(tiny_avatar_run):
    loaded = load_avatar(tiny_avatar_run[0])
    return loaded, loaded.bundle


def _tracks(bundle: AvatarBundle, n: int, pose: str):
    """Head poses and motion for ``n`` frames as `avatar3d render` builds them (mouth at rest)."""
    return build_tracks({}, n, float(bundle.fps), expression_names=list(bundle.expression_names),
                        expression=np.asarray(bundle.expression, np.float32),
                        blink=np.asarray(bundle.blink, np.float32), R=np.asarray(bundle.R),
                        t=np.asarray(bundle.t), train_ids=np.asarray(bundle.train_ids),
                        config=DriveConfig(pose=pose, blink="off"))  # fmt: skip


def _centres(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    return -np.einsum("nji,nj->ni", R, t)  # camera centre in head space


def test_moving_the_view_changes_exactly_the_view_angles(avatar) -> None:
    _, bundle = avatar
    R, t = np.asarray(bundle.R)[:20], np.asarray(bundle.t)[:20]
    yaw, pitch, dist = view_angles(R, t)
    R2, t2 = move_view(R, t, yaw + 7.0, pitch - 4.0, dist * 1.5)
    yaw2, pitch2, dist2 = view_angles(R2, t2)
    np.testing.assert_allclose(yaw2 - yaw, 7.0, atol=1e-9)
    np.testing.assert_allclose(pitch2 - pitch, -4.0, atol=1e-9)
    np.testing.assert_allclose(dist2 / dist, 1.5, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", R2, R2), np.einsum("nij,nkj->nik", R, R), atol=1e-12)


@pytest.mark.parametrize("pose", ["static", "subject"])
def test_orbit_stays_within_the_trained_views_and_is_smooth(avatar, pose) -> None:
    _, bundle = avatar
    view = supported_range(bundle)
    train_yaw, train_pitch, _ = view_angles(np.asarray(bundle.R)[bundle.train_ids],
                                            np.asarray(bundle.t)[bundle.train_ids])  # fmt: skip
    print(f"tiny avatar: {view.describe()} (typical view yaw {view.typical_yaw:+.1f}°, pitch "
          f"{view.typical_pitch:+.1f}°)")  # fmt: skip
    inside = ((train_yaw >= view.yaw[0]) & (train_yaw <= view.yaw[1]) & (train_pitch >= view.pitch[0])
              & (train_pitch <= view.pitch[1])).mean()  # fmt: skip
    assert inside >= 0.95 and view.yaw[1] - view.yaw[0] > 2.0 and view.pitch[1] - view.pitch[0] > 2.0
    tracks = _tracks(bundle, 250, pose)  # 10 s at 25 fps
    cam = camera_track("orbit", tracks.R, tracks.t, bundle)
    assert view.contains(cam.R, cam.t).all(), "every orbit frame views the head from inside the trained range"
    yaw, pitch, dist = view_angles(cam.R, cam.t)
    np.testing.assert_allclose(dist, view_angles(tracks.R, tracks.t)[2], rtol=1e-9)  # it orbits, no zoom
    centres = _centres(cam.R, cam.t)
    step = np.degrees(np.arccos(np.clip(np.einsum("ni,ni->n", centres[1:], centres[:-1])
                                        / (dist[1:] * dist[:-1]), -1, 1)))  # fmt: skip
    print(f"orbit with --pose {pose}: yaw {yaw.min():+.1f}..{yaw.max():+.1f}°, pitch {pitch.min():+.1f}.."
          f"{pitch.max():+.1f}°, largest step {step.max():.2f}°/frame, {cam.clamped} frames held at the edge")  # fmt: skip
    if pose == "static":
        assert cam.clamped <= 5
        assert yaw.max() - yaw.min() > 0.9 * (view.yaw[1] - view.yaw[0]), "the orbit uses the yaw range"
        assert pitch.max() - pitch.min() > 0.9 * (view.pitch[1] - view.pitch[0])
        assert step.max() < 1.0 and np.abs(np.diff(step)).max() < 0.05, "a smooth orbit: no jumps, no jerks"
        assert step[-1] < 1.0 and np.linalg.norm(centres[-1] - centres[0]) / dist[0] < np.radians(1.0), \
            "the orbit closes: the last frame is next to the first"
    else:
        own = np.degrees(np.arccos(np.clip(np.einsum("ni,ni->n", _centres(tracks.R, tracks.t)[1:],
                                                     _centres(tracks.R, tracks.t)[:-1]) / (dist[1:] * dist[:-1]),
                                           -1, 1)))  # fmt: skip
        assert step.max() < own.max() + 0.5, "the orbit adds no jump to the head's own motion"


def test_the_training_camera_renders_what_the_avatar_renders(avatar) -> None:
    model, bundle = avatar
    i = int(bundle.train_ids[5])
    R, t = np.asarray(bundle.R)[[i]], np.asarray(bundle.t)[[i]]
    motion = np.concatenate([bundle.expression, bundle.blink], axis=1).astype(np.float32)[[i]]
    views = ViewRenderer(model, 32, camera_track("training", R, t, bundle), R, t, motion)
    ours = views.render(0)[0]
    ref = model.render_frame(views.K, torch.from_numpy(R[0]).float(), torch.from_numpy(t[0]).float(),
                             torch.from_numpy(motion[0]), views.background, 32)  # fmt: skip
    assert torch.equal(ours["rgb"], ref["rgb"]) and torch.equal(ours["head_alpha"], ref["head_alpha"])


def _orbit_c2w(yaw_deg: float, centre_cv: np.ndarray) -> list[float]:
    """nerfstudio (OpenGL) camera->world of the training camera turned ``yaw_deg`` about the point ``centre_cv``."""
    a = np.radians(yaw_deg)
    rot_cv = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])  # about the camera y axis
    pos_cv = centre_cv - rot_cv @ centre_cv
    flip = np.diag([1.0, -1.0, -1.0])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = flip @ rot_cv @ flip, flip @ pos_cv
    return m.reshape(-1).tolist()


def _write_path(path: Path, cameras: list[dict], **extra) -> Path:
    path.write_text(json.dumps({"camera_type": "perspective", "render_height": 64, "render_width": 64,
                                "camera_path": cameras, **extra}))  # fmt: skip
    return path


def test_camera_path_beyond_the_trained_views_warns_once_and_is_clamped(avatar, tmp_path) -> None:
    _, bundle = avatar
    view = supported_range(bundle)
    tracks = _tracks(bundle, 40, "static")
    centre = tracks.t[0]  # the head origin, in the training camera
    fov = float(np.degrees(2 * np.arctan(32.0 / np.asarray(bundle.K)[1, 1])))
    cameras = [{"camera_to_world": _orbit_c2w(0.0, centre), "fov": fov, "aspect": 1.0},
               {"camera_to_world": _orbit_c2w(40.0, centre), "fov": fov / 2, "aspect": 1.0}]
    path = load_camera_path(_write_path(tmp_path / "path.json", cameras, fps=25.0, seconds=0.08))
    warnings: list[str] = []
    cam = camera_track(path, tracks.R, tracks.t, bundle, warn=warnings.append)
    print(warnings)
    assert len(warnings) == 1 and "clamped" in warnings[0] and "yaw" in warnings[0]
    assert cam.clamped == 39, "frames 1.. hold the 40° camera (the path is 2 frames long at 25 fps)"
    np.testing.assert_allclose(cam.R[0], tracks.R[0], atol=1e-9)  # the identity camera is the training one
    np.testing.assert_allclose(cam.t[0], tracks.t[0], atol=1e-9)
    assert view.contains(cam.R, cam.t).all()
    yaw, _, _ = view_angles(cam.R[1:], cam.t[1:])
    edge = view.yaw[1] if yaw.mean() > view.typical_yaw else view.yaw[0]
    np.testing.assert_allclose(yaw, edge, atol=0.02)  # held at the edge the path went past
    assert cam.focal_scale[0] == pytest.approx(1.0, abs=1e-6)
    assert cam.focal_scale[1] == pytest.approx(np.tan(np.radians(fov / 2)) / np.tan(np.radians(fov / 4)), rel=1e-6)
    # A path inside the range is followed as given: the camera turned 3° about the camera's y axis through the
    # head origin sees the head from where that rotation takes it (head space), at the same distance.
    small = load_camera_path(_write_path(tmp_path / "small.json", [{"camera_to_world": _orbit_c2w(3.0, centre)}]))
    quiet: list[str] = []
    moved = camera_track(small, tracks.R[:1], tracks.t[:1], bundle, warn=quiet.append)
    a = np.radians(3.0)
    turned = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) @ centre
    expected = tracks.R[0].T @ ((centre - turned) - centre)  # the moved camera centre, in head space
    assert not quiet
    np.testing.assert_allclose(_centres(moved.R, moved.t)[0], expected, atol=1e-9)


@pytest.mark.parametrize("content, needle", [
    ("{\"camera_path\": [", "not valid JSON"),
    ("[1, 2]", "camera_path"),
    ("{\"camera_path\": []}", "camera_path"),
    ("{\"camera_path\": [{\"fov\": 50}]}", "camera_to_world"),
    ("{\"camera_path\": [{\"camera_to_world\": [1, 0, 0]}]}", "16 finite numbers"),
    ("{\"camera_path\": [{\"camera_to_world\": [2,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1]}]}", "not a rigid"),
    ("{\"camera_path\": [{\"camera_to_world\": [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1], \"fov\": 0}]}", "fov"),
])  # fmt: skip
def test_bad_camera_paths_are_one_line_errors(tiny_avatar_run, tmp_path, capsys, content, needle) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    out = tmp_path / "x.mp4"
    assert main(["render", str(tiny_avatar_run[0]), "--text", "hi", "--camera", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:") and needle in err and "\n" not in err, err
    assert not out.exists()


def test_bad_camera_and_stereo_options_are_one_line_errors(tiny_avatar_run, tmp_path, capsys) -> None:
    out = tmp_path / "x.mp4"
    for args, needle in (
        (["--camera", "sideways"], "training, orbit"),
        (["--camera", str(tmp_path / "missing.json")], "no such file"),
        (["--stereo", "0"], "interpupillary"),
        (["--stereo", "nan"], "interpupillary"),
    ):
        assert main(["render", str(tiny_avatar_run[0]), "--text", "hi", *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err, err
    assert main(["render", str(tiny_avatar_run[0]), "--motion-from", str(tmp_path), "--rgba", str(tmp_path / "r"),
                 "-o", str(out)]) == 2  # fmt: skip
    assert "only with --audio/--text" in capsys.readouterr().err
    assert not out.exists()


def test_cli_orbit_with_stereo_and_compositing_outputs(tiny_avatar_run, tmp_path, capsys) -> None:
    out, rgba, depth = tmp_path / "orbit.mp4", tmp_path / "rgba", tmp_path / "depth"
    speech = synthesize("Hi.", sample_rate=16000)
    wav = write_wav(tmp_path / "hi.wav", speech[:int(0.3 * 16000)], 16000)  # 0.3 s: 8 frames, 16 views at 32²
    assert main(["render", str(tiny_avatar_run[0]), "--audio", str(wav), "--motion-model", str(DEFAULT_MODEL_PATH),
                 "--camera", "orbit", "--stereo", "63", "--rgba", str(rgba), "--depth", str(depth), "--size", "32",
                 "-o", str(out)]) == 0  # fmt: skip
    log = capsys.readouterr().out
    assert "libvpx-vp9" in log and "side by side" in log
    info = probe_video(out)
    frames = list(read_video(out))
    assert (info.width, info.height) == (64, 32) and len(frames) == round(0.3 * info.fps)
    assert len(list(rgba.glob("frame_*.png"))) == len(frames) == len(list(depth.glob("depth_*.png")))
    assert (rgba / "rgba.webm").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp folders remain"
    left, right = frames[0][:, :32].astype(float), frames[0][:, 32:].astype(float)
    assert np.abs(left - right).mean() > 2.0, "the two halves are two different eyes"


def _best_shift(left: np.ndarray, right: np.ndarray, mask: np.ndarray, shifts: np.ndarray) -> tuple[float, float, float]:
    """(shift, mismatch there, mismatch at 0): the x-shift s for which right(x - s) best matches left(x) on mask."""
    from scipy.ndimage import map_coordinates

    yy, xx = np.nonzero(mask)

    def error(s: float) -> float:
        return float(np.mean([np.abs(map_coordinates(right[..., c], [yy, xx - s], order=1, mode="nearest")
                                     - left[..., c][mask]).mean() for c in range(3)]))  # fmt: skip

    errors = np.array([error(s) for s in shifts])
    return float(shifts[np.argmin(errors)]), float(errors.min()), error(0.0)


def test_torso_and_plate_move_with_the_camera_as_planes_behind_the_head(avatar) -> None:
    """A sideways camera move shifts the flat layers with parallax: the torso like a plane just behind the
    head origin, the plate like one a metre behind (f * baseline / depth), measured on rendered pixels."""
    model, bundle = avatar
    i = int(bundle.train_ids[3])
    size, baseline = 64, 0.08
    K = torch.as_tensor(np.asarray(bundle.K), dtype=torch.float32) * size / int(bundle.resolution)
    K[2, 2] = 1.0
    bg = torch.from_numpy(np.asarray(bundle.background, np.float32) / 255.0)
    bg = torch.nn.functional.interpolate(bg.permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                                         align_corners=False)[0].permute(1, 2, 0)  # fmt: skip
    R, t = torch.from_numpy(np.asarray(bundle.R)[i]).float(), torch.from_numpy(np.asarray(bundle.t)[i]).float()
    motion = torch.from_numpy(np.concatenate([bundle.expression[i], bundle.blink[i]]).astype(np.float32))
    views = [model.render_view(K, R, t, motion, bg, size, torso_R=R, torso_t=t, eye_offset_m=off)
             for off in (-baseline / 2, baseline / 2)]  # fmt: skip
    left, right = (v["rgb"].numpy().astype(np.float64) for v in views)
    alpha, head = views[0]["alpha"].numpy(), views[0]["head_alpha"].numpy()
    from scipy.ndimage import binary_erosion

    plate = binary_erosion(alpha < 0.01, iterations=3)
    torso = binary_erosion((alpha > 0.99) & (head < 0.01), iterations=2)
    plate[:, : size // 4] = False  # keep clear of the image border, where the warped plate is clamped
    f, depth, planes = float(K[0, 0]), float(t[2]), LayerPlanes()
    shifts = np.arange(0.0, 12.01, 0.05)
    for name, mask, d in (("plate", plate, depth + planes.background_behind_head_m),
                          ("torso", torso, depth + planes.torso_behind_head_m)):
        expected = f * baseline / d
        best, err, err0 = _best_shift(left, right, mask, shifts)
        print(f"{name}: {mask.sum()} px, shift {best:.2f} px, expected f*b/d = {expected:.2f} px "
              f"(mismatch {err * 255:.1f}/255 there, {err0 * 255:.1f}/255 unshifted)")  # fmt: skip
        assert mask.sum() > 50
        assert abs(best - expected) <= max(0.15 * expected, 0.3), f"the {name} moves like a plane at {d:.2f} m"
    assert f * baseline / (depth + planes.torso_behind_head_m) > 2 * f * baseline / (depth + 1.0), "parallax"
