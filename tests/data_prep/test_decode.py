"""Decode stage on real media: the synthetic clip, rotated / variable-rate / 4:3 clips written with PyAV,
and every bad-input error.  No mocks."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import av
import cv2
import numpy as np
import pytest

from avatar3d.errors import Avatar3DError
from avatar3d.io.audio import read_wav
from avatar3d.io.video import VideoWriter, probe_video, read_audio, read_video
from data_prep.decode import CropBox, DecodeConfig, DecodeResult, decode, frame_map


def _write_clip(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    pts_ms: Optional[Sequence[int]] = None,
    rotation: Optional[int] = None,
    hflip: bool = False,
    rotate_tag: Optional[str] = None,
    fmt: str = "mp4",
) -> Path:
    """Write frames with PyAV directly: irregular time stamps (ms) and orientation metadata."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=fmt) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "12"}
        if pts_ms is not None:
            s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None or hflip:
            s.set_display_rotation(rotation or 0, hflip=hflip)
        if rotate_tag is not None:
            s.metadata["rotate"] = rotate_tag
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = int(pts_ms[i]), Fraction(1, 1000)
            else:
                f.pts, f.time_base = i, Fraction(1, 25)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def synth_frames(synth_clip: Path) -> list[np.ndarray]:
    """The first 2 s (50 frames) of the synthetic clip."""
    return [f for _, f in zip(range(50), read_video(synth_clip / "video.mp4"))]


@pytest.fixture(scope="module")
def native(synth_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DecodeResult]:
    out = tmp_path_factory.mktemp("decode-native")
    return out, decode(synth_clip / "video.mp4", out, DecodeConfig(fps=25, size=512), progress=False)


def test_native_decode_counts_audio_and_crop(native: tuple[Path, DecodeResult], synth_clip: Path) -> None:
    out, res = native
    gt = np.load(synth_clip / "groundtruth.npz")
    n_true = gt["landmarks"].shape[0]
    assert res.n_frames == n_true == probe_video(out / "frames.mp4").n_frames
    assert res.n_duplicated == 0 and res.n_dropped == 0 and not res.source_vfr
    # audio: 16 kHz mono, same duration as the frames (within one frame) and the same samples as the source
    audio, rate = read_wav(out / "audio.wav")
    assert rate == 16000
    assert abs(audio.size / rate - n_true / 25) <= 1 / 25
    src = read_audio(synth_clip / "video.mp4", 16000)
    n = min(src.size, audio.size)
    assert np.abs(audio[:n] - src[:n]).max() < 2e-3  # aligned: no shift, only 16-bit rounding
    # the crop keeps every ground-truth landmark of every frame inside the output frame
    mapped = res.map_points(gt["landmarks"])[..., :2]
    assert mapped.min() >= 0 and mapped.max() <= res.size
    assert json.loads((out / "decode.json").read_text())["n_frames"] == n_true
    assert DecodeResult.load(out).crop_box() == CropBox(res.crop["x0"], res.crop["y0"], res.crop["side"], 512)
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # no temp files left behind


@pytest.mark.parametrize(
    "case",
    ["displaymatrix-90", "displaymatrix-hflip", "mkv-rotate-tag"],
)
def test_rotated_clip_comes_out_upright(case: str, synth_frames: list[np.ndarray], tmp_path: Path) -> None:
    frames = synth_frames[:30]
    if case == "displaymatrix-90":  # stored turned 90 deg clockwise; the player turns it back (CCW 90)
        clip = _write_clip(tmp_path / "rot.mp4", [np.rot90(f, -1) for f in frames], rotation=90)
        expect_rotation, expect_source = 90, "displaymatrix"
    elif case == "displaymatrix-hflip":  # stored mirrored, EXIF-style flip in the display matrix
        clip = _write_clip(tmp_path / "flip.mp4", [f[:, ::-1] for f in frames], rotation=0, hflip=True)
        expect_rotation, expect_source = None, "displaymatrix"  # FFmpeg calls a mirror "-180": check the flags
    else:  # old phones: a 'rotate' tag = clockwise degrees for the player; stored turned CCW
        clip = _write_clip(tmp_path / "rot.mkv", [np.rot90(f, 1) for f in frames], rotate_tag="90", fmt="matroska")
        expect_rotation, expect_source = -90, "rotate-tag"
    res = decode(clip, tmp_path / "out", DecodeConfig(size=512, audio=False), progress=False)
    assert res.orientation["source"] == expect_source
    if expect_rotation is None:
        assert res.orientation["flip_x"] and not res.orientation["flip_y"] and not res.orientation["transpose"]
    else:
        assert res.rotation == expect_rotation and res.orientation["transpose"]
    assert res.upright_size == (512, 512) and res.n_frames == len(frames)
    assert res.crop["side"] == 512  # face is large: the crop is the whole frame, so frames compare 1:1
    decoded = list(read_video(tmp_path / "out" / "frames.mp4"))
    diff = np.mean([np.abs(d.astype(np.int16) - f.astype(np.int16)).mean() for d, f in zip(decoded, frames)])
    wrong = np.abs(decoded[0].astype(np.int16) - np.rot90(frames[0], 1).astype(np.int16)).mean()
    assert diff < 3.0 < wrong, (diff, wrong)


def test_variable_frame_rate_resamples_to_nearest_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    intervals = rng.choice([15, 25, 40, 55, 80], size=39)
    pts = np.concatenate([[0], np.cumsum(intervals)]).astype(int)  # 40 frames over ~1.7 s
    levels = 10 + 6 * np.arange(pts.size)  # frame i is flat grey 10 + 6 i
    frames = [np.full((64, 64, 3), v, np.uint8) for v in levels]
    clip = _write_clip(tmp_path / "vfr.mp4", frames, pts_ms=pts)
    res = decode(clip, tmp_path / "out", DecodeConfig(fps=25, size=64, audio=False, crop_box=(0, 0, 64)),
                 progress=False)
    times = pts / 1000.0
    end = times[-1] + np.median(np.diff(times))  # the last frame lasts the median interval (documented)
    n_expected = int(round(end * 25))
    assert res.source_vfr and res.n_source_frames == pts.size
    assert res.n_frames == n_expected == probe_video(tmp_path / "out" / "frames.mp4").n_frames
    expected = np.array([np.argmin(np.abs(times - k / 25) + 1e-9 * np.arange(times.size)) for k in range(n_expected)])
    got = np.array([int(round((f.mean() - 10) / 6)) for f in read_video(tmp_path / "out" / "frames.mp4")])
    np.testing.assert_array_equal(got, expected)
    assert res.n_duplicated + pts.size - res.n_dropped == n_expected


def test_frame_map_nearest_and_monotone() -> None:
    times = np.array([0.0, 0.03, 0.05, 0.2, 0.21])
    m = frame_map(times, 0.25, Fraction(25))
    # targets 0, .04 (tie .03/.05 -> the earlier), .08, .12 (.05 is nearer than .2), .16, .20
    assert m.tolist() == [0, 1, 2, 2, 3, 3]
    assert np.all(np.diff(m) >= 0) and m.size == 6


def test_downscale_640x480_to_256(synth_clip: Path, synth_frames: list[np.ndarray], tmp_path: Path) -> None:
    frames = []
    for f in synth_frames:
        canvas = np.full((480, 640, 3), 90, np.uint8)
        canvas[:, 80:560] = cv2.resize(f, (480, 480), interpolation=cv2.INTER_AREA)
        frames.append(canvas)
    clip = _write_clip(tmp_path / "vga.mp4", frames)
    res = decode(clip, tmp_path / "out", DecodeConfig(size=256, audio=False), progress=False)
    assert res.source_size == (640, 480) and res.n_frames == len(frames)
    out = list(read_video(tmp_path / "out" / "frames.mp4"))
    assert out[0].shape == (256, 256, 3)
    # ground truth: 512 -> 480 scale, +80 px x offset, then the crop
    gt = np.load(synth_clip / "groundtruth.npz")["landmarks"][: len(frames)].astype(np.float64)
    gt[..., :2] = gt[..., :2] * (480 / 512) + [80, 0]
    mapped = res.map_points(gt)[..., :2]
    assert mapped.min() >= 0 and mapped.max() <= 256
    crop = res.crop_box()
    assert crop.side <= 480 and 0 <= crop.x0 and crop.x0 + crop.side <= 640
    ref = crop.apply(frames[10])
    assert np.abs(out[10].astype(np.int16) - ref.astype(np.int16)).mean() < 3.0


def test_wide_shot_small_face_is_found_and_cropped(synth_clip: Path, synth_frames: list[np.ndarray],
                                                   tmp_path: Path) -> None:
    """A 90 px face in a 1280x720 frame is below the mesh's short-range detector; the full-range
    detector finds it and the crop zooms in (head and shoulders, the face a third of the side)."""
    frames = []
    for f in synth_frames[:30]:
        canvas = np.full((720, 1280, 3), 60, np.uint8)
        canvas[300:556, 700:956] = cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA)
        frames.append(canvas)
    res = decode(_write_clip(tmp_path / "wide.mp4", frames), tmp_path / "out",
                 DecodeConfig(size=256, audio=False), progress=False)
    assert res.face_found == res.face_samples > 0
    assert 2.5 < res.crop["side"] / res.face_size_px < 3.5
    gt = np.load(synth_clip / "groundtruth.npz")["landmarks"][:30].astype(np.float64)
    gt[..., :2] = gt[..., :2] * 0.5 + [700, 300]
    mapped = res.map_points(gt)[..., :2]
    assert mapped.min() >= 0 and mapped.max() <= 256


# ---------------------------------------------------------------------------
# bad inputs: one-line Avatar3DError naming the file
# ---------------------------------------------------------------------------
def _grey_clip(path: Path, seconds: float, audio: Optional[str]) -> Path:
    n = int(round(seconds * 25))
    wave = None
    if audio == "noise":
        wave = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)
    elif audio == "zeros":
        wave = np.zeros(int(seconds * 16000), np.float32)
    with VideoWriter(path, 25, audio=wave, sample_rate=16000 if wave is not None else None) as w:
        for i in range(n):
            w.write(np.full((64, 64, 3), 100 + i % 20, np.uint8))
    return path


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "not found"),
        ("garbage", "not a readable media file"),
        ("truncated", "not a readable media file"),
        ("audio-only", "no video stream"),
        ("no-audio", "no audio track"),
        ("silent", "silent"),
        ("too-short", "only 0.60 s"),
        ("no-face", "no face found"),
    ],
)
def test_bad_inputs(case: str, needle: str, tmp_path: Path) -> None:
    if case == "missing":
        src = tmp_path / "nope.mp4"
    elif case == "garbage":
        src = tmp_path / "garbage.mp4"
        src.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    elif case == "truncated":
        full = _grey_clip(tmp_path / "full.mp4", 1.5, "noise")
        src = tmp_path / "truncated.mp4"
        src.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    elif case == "audio-only":
        from avatar3d.io.audio import write_wav

        src = write_wav(tmp_path / "speech.wav", np.sin(np.arange(16000) / 5).astype(np.float32) * 0.3, 16000)
    elif case == "no-audio":
        src = _grey_clip(tmp_path / "mute.mp4", 1.5, None)
    elif case == "silent":
        src = _grey_clip(tmp_path / "silent.mp4", 1.5, "zeros")
    elif case == "too-short":
        src = _grey_clip(tmp_path / "short.mp4", 0.6, "noise")
    else:
        src = _grey_clip(tmp_path / "noface.mp4", 1.5, "noise")
    with pytest.raises(Avatar3DError) as err:
        decode(src, tmp_path / "out", DecodeConfig(size=64), progress=False)
    msg = str(err.value)
    assert needle in msg and str(src) in msg and "\n" not in msg, msg
    assert not (tmp_path / "out" / "decode.json").exists()


def test_no_audio_opt_out(tmp_path: Path) -> None:
    src = _grey_clip(tmp_path / "mute.mp4", 1.2, None)
    res = decode(src, tmp_path / "out", DecodeConfig(size=64, audio=False, crop_box=(0, 0, 64)), progress=False)
    assert res.n_frames == 30 and res.audio is None
    assert not (tmp_path / "out" / "audio.wav").exists()
    assert (tmp_path / "out" / "decode.json").exists()
