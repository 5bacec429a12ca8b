"""Real encode/decode round trips through PyAV (libx264 + aac), plus WAV I/O."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from avatar3d.errors import Avatar3DError, MissingToolError
from avatar3d.io.audio import read_wav, write_wav
from avatar3d.io.video import VideoWriter, probe_video, read_audio, read_video

W, H, FPS, N, SR, TONE = 64, 48, 25, 50, 16000, 440.0


def pattern(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Smooth moving colour gradient (what a face crop looks like to the codec)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 60 * np.sin((x + 2 * i) / 12)
    g = 120 + 50 * np.cos((y - i) / 10)
    b = 90 + 0.8 * x - 0.5 * y
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def tone(seconds: float, sr: int = SR, freq: float = TONE) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(audio: np.ndarray, sr: int) -> float:
    a = audio[len(audio) // 10 : -len(audio) // 10 or None]
    spec = np.abs(np.fft.rfft(a * np.hanning(len(a)), n=8 * len(a)))
    return float(np.argmax(spec) * sr / (8 * len(a)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    # 2.5 s of audio for 2.0 s of video: the writer must trim it.
    with VideoWriter(path, FPS, audio=tone(2.5), sample_rate=SR) as w:
        for i in range(N):
            w.write(pattern(i))
    return path


def test_probe_exact(clip: Path) -> None:
    info = probe_video(clip)
    assert (info.width, info.height, info.n_frames) == (W, H, N)
    assert info.fps == Fraction(FPS)
    assert abs(info.duration - N / FPS) < 1 / FPS
    assert info.has_audio and info.audio_sample_rate == SR
    assert sorted(os.listdir(clip.parent)) == ["clip.mp4"]  # no temp file left


def test_frames_round_trip(clip: Path) -> None:
    frames = read_video(clip)
    count = 0
    for i, frame in enumerate(frames):
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        err = np.abs(frame.astype(np.int16) - pattern(i).astype(np.int16)).mean()
        assert err < 3.0, (i, err)
        count += 1
    assert count == N


def test_audio_round_trip(clip: Path) -> None:
    audio = read_audio(clip, sample_rate=SR)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SR - N / FPS) <= 1 / FPS
    assert abs(dominant_freq(audio, SR) - TONE) < 2.0
    assert 0.3 < np.abs(audio[SR // 2 : SR]).max() < 0.7
    hi = read_audio(clip, sample_rate=44100)  # resampled by FFmpeg
    assert abs(len(hi) / 44100 - N / FPS) <= 1 / FPS
    assert abs(dominant_freq(hi, 44100) - TONE) < 2.0


def test_appended_short_audio_is_padded(tmp_path: Path) -> None:
    path = tmp_path / "chunks.mp4"
    with VideoWriter(path, Fraction(30000, 1001), sample_rate=48000, size=(32, 32)) as w:
        chunks = np.array_split(tone(0.5, 48000), 7)  # only 0.5 s for 1.0 s of video
        for i in range(30):
            if i < len(chunks):
                w.write_audio(chunks[i])
            w.write(pattern(i, 32, 32))
    info = probe_video(path)
    assert info.fps == Fraction(30000, 1001) and info.n_frames == 30
    audio = read_audio(path, sample_rate=48000)
    assert abs(len(audio) / 48000 - 30 * 1001 / 30000) <= 1001 / 30000
    assert np.abs(audio[: 48000 // 3]).max() > 0.3 and np.abs(audio[-4800:]).max() < 0.05


def test_video_only(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with VideoWriter(path, 10, crf=30, preset="ultrafast") as w:
        for i in range(5):
            w.write(pattern(i))
    info = probe_video(path)
    assert not info.has_audio and info.audio_sample_rate is None and info.n_frames == 5
    with pytest.raises(Avatar3DError, match="no audio stream"):
        read_audio(path)


def test_odd_size_error(tmp_path: Path) -> None:
    with pytest.raises(Avatar3DError, match="63x48") as ei:
        with VideoWriter(tmp_path / "odd.mp4", FPS) as w:
            w.write(np.zeros((48, 63, 3), np.uint8))
    assert "even" in str(ei.value)
    assert os.listdir(tmp_path) == []
    with pytest.raises(Avatar3DError, match="63x47"):
        VideoWriter(tmp_path / "odd.mp4", FPS, size=(63, 47))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((48, 64), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((48, 64, 4), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((48, 64, 3), np.float32), "uint8"),
        (np.zeros((32, 64, 3), np.uint8), "64x32 but the video is 64x48"),
    ],
)
def test_bad_frames(tmp_path: Path, bad: np.ndarray, match: str) -> None:
    with pytest.raises(Avatar3DError, match=match):
        with VideoWriter(tmp_path / "bad.mp4", FPS) as w:
            w.write(pattern(0))
            w.write(bad)
    assert os.listdir(tmp_path) == []


def test_exception_inside_with_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="render crashed"):
        with VideoWriter(path, FPS, audio=tone(1.0), sample_rate=SR) as w:
            for i in range(10):
                w.write(pattern(i))
            raise RuntimeError("render crashed")
    assert os.listdir(tmp_path) == []


def test_failed_rewrite_keeps_old_file(clip: Path, tmp_path: Path) -> None:
    path = tmp_path / "keep.mp4"
    path.write_bytes(clip.read_bytes())
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path, FPS) as w:
            w.write(pattern(0))
            raise KeyboardInterrupt
    assert path.read_bytes() == clip.read_bytes()
    assert os.listdir(tmp_path) == ["keep.mp4"]


def test_no_frames_is_error(tmp_path: Path) -> None:
    with pytest.raises(Avatar3DError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4", FPS):
            pass
    assert os.listdir(tmp_path) == []


def test_missing_encoder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import av

    real = av.codec.Codec

    def fake(name: str, mode: str = "r"):
        if name == "aac":
            raise av.codec.codec.UnknownCodecError(name)
        return real(name, mode)

    monkeypatch.setattr(av.codec, "Codec", fake)
    with pytest.raises(MissingToolError, match=r"aac.*av<19"):
        VideoWriter(tmp_path / "x.mp4", FPS, sample_rate=SR)


def _assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and path.name in msg, msg


@pytest.mark.parametrize("reader", [probe_video, read_video, read_audio, read_wav])
def test_missing_file(tmp_path: Path, reader) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(Avatar3DError, match="not found") as ei:
        reader(path)
    _assert_one_line_naming(ei, path)


@pytest.mark.parametrize("reader", [probe_video, read_video, read_audio, read_wav])
def test_corrupt_file(tmp_path: Path, reader) -> None:
    path = tmp_path / "junk.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(Avatar3DError) as ei:
        reader(path)
    _assert_one_line_naming(ei, path)


@pytest.mark.parametrize("reader", [probe_video, read_video, read_audio])
def test_empty_media_file(tmp_path: Path, reader) -> None:
    path = tmp_path / "zero.mp4"
    path.write_bytes(b"")
    with pytest.raises(Avatar3DError, match="empty") as ei:
        reader(path)
    _assert_one_line_naming(ei, path)


def test_truncated_mp4(clip: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(Avatar3DError) as ei:
        probe_video(path)
    _assert_one_line_naming(ei, path)


def test_wav_round_trip_and_no_video(tmp_path: Path) -> None:
    path = tmp_path / "voice.wav"
    stereo = np.stack([tone(1.0, 22050), tone(1.0, 22050)], 1)
    write_wav(path, stereo * 1.5, 22050)  # clipped, not wrapped
    audio, sr = read_wav(path)
    assert sr == 22050 and audio.shape == (22050,) and audio.dtype == np.float32
    assert np.abs(audio - np.clip(tone(1.0, 22050) * 1.5, -1, 1)).max() < 1e-3
    audio16, sr16 = read_wav(path, sample_rate=16000)
    assert sr16 == 16000 and len(audio16) == 16000
    assert abs(dominant_freq(audio16, 16000) - TONE) < 2.0
    via_av = read_audio(path, sample_rate=16000)  # PyAV reads wav too
    assert abs(len(via_av) - 16000) <= 1
    with pytest.raises(Avatar3DError, match="no video stream") as ei:
        read_video(path)
    _assert_one_line_naming(ei, path)
    assert sorted(os.listdir(tmp_path)) == ["voice.wav"]


def test_wav_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(Avatar3DError, match="empty") as ei:
        read_wav(path)
    _assert_one_line_naming(ei, path)
    write_wav(path, np.zeros(0, np.float32), 16000)  # valid header, zero samples
    with pytest.raises(Avatar3DError, match="no audio samples"):
        read_wav(path)
