"""Compositing outputs of `avatar3d render`: RGBA PNGs + alpha movie, 16-bit depth, side-by-side stereo.

The session's tiny avatar (64²) re-renders three of its own training frames with their tracked
pose and motion, so the parsing labels of those frames say where the background and the face
are; the tests read back what the sinks wrote.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import binary_erosion, distance_transform_edt, map_coordinates

from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.loading import load_avatar
from avatar3d.cli import main
from avatar3d.dataset.reader import load_subject
from avatar3d.errors import Avatar3DError
from avatar3d.io.video import probe_video, read_video
from avatar3d.render.drive import DriveTracks
from avatar3d.render.outputs import RGBA_PATTERN, StagedDir
from avatar3d.render.speech import render_tracks

FRAMES = 3
BG_MARGIN_PX = 8  # at 64²: the tiny avatar's soft edge reaches ~6 px beyond the labelled person
FACE_ERODE_PX = 3


def _own_tracks(bundle: AvatarBundle, ids: np.ndarray) -> DriveTracks:
    """The avatar's training frames ``ids`` with their own tracked pose and motion."""
    return DriveTracks(R=np.asarray(bundle.R)[ids], t=np.asarray(bundle.t)[ids],
                       expression=np.asarray(bundle.expression, np.float32)[ids],
                       blink=np.asarray(bundle.blink, np.float32)[ids], source_frames=ids,
                       expression_names=list(bundle.expression_names))  # fmt: skip


@pytest.fixture(scope="module")
def avatar(tiny_avatar_run):
    return load_avatar(tiny_avatar_run[0])


@pytest.fixture(scope="module")
def composited(avatar, avatar_subject, tmp_path_factory):
    """(folder, ids, labels [3, 64, 64]): mp4, RGBA and depth of three training frames, training camera."""
    bundle = avatar.bundle
    ids = np.asarray(bundle.train_ids)[:FRAMES]
    folder = tmp_path_factory.mktemp("outputs")
    logs: list[str] = []
    render_tracks(avatar, _own_tracks(bundle, ids), folder / "out.mp4", None, 64, progress=False,
                  rgba=folder / "rgba", depth=folder / "depth", log=logs.append)  # fmt: skip
    labels = np.asarray(load_subject(avatar_subject, 64, progress=False).labels)[ids]
    print("\n".join(logs))
    return folder, ids, labels


def _png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image[..., [2, 1, 0, 3]] if image.ndim == 3 else image


def test_rgba_alpha_is_0_on_the_background_and_255_on_the_face(composited) -> None:
    folder, ids, labels = composited
    names = sorted(p.name for p in (folder / "rgba").iterdir())
    assert names == [f"frame_{i:05d}.png" for i in range(FRAMES)] + ["rgba.webm"]
    mp4 = list(read_video(folder / "out.mp4"))
    for k in range(FRAMES):
        rgba = _png(folder / "rgba" / f"frame_{k:05d}.png")
        assert rgba.shape == (64, 64, 4) and rgba.dtype == np.uint8
        far_bg = distance_transform_edt(labels[k] == 0) >= BG_MARGIN_PX
        face = binary_erosion(labels[k] == 1, iterations=FACE_ERODE_PX)
        alpha = rgba[..., 3]
        print(f"frame {ids[k]}: alpha on {far_bg.sum()} background px max {alpha[far_bg].max()}, "
              f"on {face.sum()} face px min {alpha[face].min()}")
        assert far_bg.sum() > 500 and face.sum() > 150
        assert alpha[far_bg].max() == 0
        assert alpha[face].min() == 255
        # Where the matte is opaque the colour is the composite the mp4 shows (H.264 aside).
        diff = np.abs(rgba[..., :3][face].astype(float) - mp4[k][face].astype(float)).mean()
        assert diff < 6.0, f"face colour differs from the mp4 by {diff:.1f}/255"


def test_alpha_movie_decodes_with_its_alpha_plane(composited) -> None:
    import av

    folder, _, _ = composited
    movie = folder / "rgba" / "rgba.webm"
    frames = []
    with av.open(str(movie)) as container:
        stream = container.streams.video[0]
        decoder = av.CodecContext.create("libvpx-vp9", "r")  # FFmpeg's native vp9 decoder drops the alpha
        for packet in container.demux(stream):
            frames += [f.to_ndarray(format="rgba") for f in decoder.decode(packet)]
    assert len(frames) == FRAMES
    for k, movie_frame in enumerate(frames):
        png = _png(folder / "rgba" / f"frame_{k:05d}.png")
        err = np.abs(movie_frame[..., 3].astype(float) - png[..., 3]).mean()
        print(f"alpha movie frame {k}: mean |alpha - PNG alpha| {err:.2f}/255")
        assert np.ptp(movie_frame[..., 3]) == 255 and err < 4.0


def test_depth_is_16_bit_millimetres_at_the_distance_of_the_face(composited, avatar) -> None:
    folder, ids, labels = composited
    bundle = avatar.bundle
    for k in range(FRAMES):
        depth = cv2.imread(str(folder / "depth" / f"depth_{k:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and depth.shape == (64, 64)
        far_bg = distance_transform_edt(labels[k] == 0) >= BG_MARGIN_PX
        face = binary_erosion(labels[k] == 1, iterations=FACE_ERODE_PX)
        head_origin_mm = float(np.asarray(bundle.t)[ids[k], 2]) * 1000.0
        face_mm = np.median(depth[face])
        print(f"frame {ids[k]}: face depth {face_mm:.0f} mm, head origin {head_origin_mm:.0f} mm from the camera")
        assert (depth[far_bg] == 0).all()
        assert (depth[face] > 0).mean() > 0.95
        # The face surface is a few centimetres in front of the head origin (the face model's centre).
        assert head_origin_mm - 120 < face_mm < head_origin_mm - 20


def test_stereo_disparity_matches_focal_times_ipd_over_depth(avatar, tmp_path) -> None:
    bundle = avatar.bundle
    ids = np.asarray(bundle.train_ids)[:1]
    ipd_mm = 64.0
    render_tracks(avatar, _own_tracks(bundle, ids), tmp_path / "sbs.mp4", None, 64, progress=False,
                  stereo_ipd_mm=ipd_mm, rgba=tmp_path / "rgba", depth=tmp_path / "depth", log=lambda s: None)  # fmt: skip
    assert probe_video(tmp_path / "sbs.mp4").width == 128
    rgba = _png(tmp_path / "rgba" / "frame_00000.png").astype(np.float64) / 255.0
    depth = cv2.imread(str(tmp_path / "depth" / "depth_00000.png"), cv2.IMREAD_UNCHANGED) / 1000.0
    left, right, z = rgba[:, :64, :3], rgba[:, 64:, :3], depth[:, :64]
    mask = binary_erosion(z > 0, iterations=2)
    yy, xx = np.nonzero(mask)
    f = float(np.asarray(bundle.K)[0, 0])
    expected = f * ipd_mm / 1000.0 / z[mask]  # pixels, per face pixel of the left eye

    def error(scale: float) -> float:
        """Colour mismatch when each left pixel is looked up ``scale`` x its expected disparity to the left."""
        cols = xx - scale * expected
        return float(np.mean([np.abs(map_coordinates(right[..., c], [yy, cols], order=1, mode="nearest")
                                     - left[..., c][mask]).mean() for c in range(3)]))  # fmt: skip

    scales = np.arange(0.0, 2.51, 0.02)
    errors = np.array([error(s) for s in scales])
    best = float(scales[np.argmin(errors)])
    print(f"stereo {ipd_mm:.0f} mm: expected disparity {expected.min():.2f}..{expected.max():.2f} px on "
          f"{mask.sum()} face px; best fit {best:.2f} x f*IPD/z (mismatch {errors.min() * 255:.1f}/255 there, "
          f"{error(0.0) * 255:.1f}/255 with no shift)")  # fmt: skip
    assert abs(best - 1.0) <= 0.1, "the face's disparity must be f*IPD/z within 10%"
    assert errors.min() < 0.5 * error(0.0)


def test_output_folders_appear_whole_or_not_at_all(tmp_path) -> None:
    target = tmp_path / "rgba"
    staged = StagedDir(target, RGBA_PATTERN, "--rgba")
    staged.write("frame_00000.png", b"x")
    staged.abort()
    assert not target.exists() and not list(tmp_path.iterdir()), "an aborted render leaves nothing behind"
    first = StagedDir(target, RGBA_PATTERN, "--rgba")
    for k in range(3):
        first.write(f"frame_{k:05d}.png", b"old")
    first.commit()
    second = StagedDir(target, RGBA_PATTERN, "--rgba")
    second.write("frame_00000.png", b"new")
    assert sorted(p.name for p in target.iterdir()) == [f"frame_{k:05d}.png" for k in range(3)], \
        "the previous sequence stays whole until the new one is finished"
    second.commit()
    assert sorted(p.name for p in target.iterdir()) == ["frame_00000.png"]
    assert (target / "frame_00000.png").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["rgba"], "no temp or old folders remain"
    (target / "notes.txt").write_text("mine")
    with pytest.raises(Avatar3DError, match="other files"):
        StagedDir(target, RGBA_PATTERN, "--rgba")


def test_unwritable_or_foreign_output_folders_fail_before_rendering(tiny_avatar_run, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    user_dir = tmp_path / "photos"
    user_dir.mkdir()
    (user_dir / "holiday.jpg").write_bytes(b"\xff\xd8")
    out = tmp_path / "x.mp4"
    for args, needle in (
        (["--rgba", str(blocker / "rgba")], "cannot create the folder"),
        (["--depth", str(blocker)], "is a file"),
        (["--rgba", str(user_dir)], "other files"),
    ):
        assert main(["render", str(tiny_avatar_run[0]), "--text", "hi", *args, "-o", str(out)]) == 4
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err, err
        assert not out.exists()
    assert sorted(p.name for p in user_dir.iterdir()) == ["holiday.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["a-file", "photos"], "nothing was written"
