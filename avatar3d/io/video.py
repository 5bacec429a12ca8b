"""Streaming mp4 I/O on PyAV (no ffmpeg CLI needed): write H.264+AAC, read frames/audio.

Why streaming: talking-head clips run for minutes at 512x512; holding every frame
in memory (several GB) is not an option, so frames go to the encoder one at a
time and come back from the decoder one at a time.

Why atomic: the writer encodes into a hidden temp file next to the target and
renames it on a clean close, so an interrupted render never leaves a truncated
mp4 that a later stage would mistake for a finished one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

from avatar3d.errors import Avatar3DError, InputError, MissingToolError
from avatar3d.io.atomic import atomic_path

PathLike = Union[str, "os.PathLike[str]"]
FpsLike = Union[int, Fraction, float]

__all__ = ["VideoWriter", "VideoInfo", "probe_video", "media_duration", "read_video", "read_audio", "import_av", "open_input",
           "first_stream", "decode_error"]

_PIP_FIX = "pip install 'av<19' (its wheels bundle FFmpeg with libx264 and aac)"
# Sample rates AAC (MPEG-4 audio) can signal; others would fail inside the encoder.
_AAC_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350})


def import_av() -> Any:
    """Import PyAV lazily so that modules importing this one load without it."""
    try:
        import av  # lazy: the one place PyAV loads, so a broken install gets the pip fix in one line
    except ImportError as exc:  # pragma: no cover - av is a hard dependency
        raise MissingToolError(f"PyAV is not installed; run {_PIP_FIX}") from exc
    return av


def _require_encoder(name: str) -> None:
    av = import_av()
    try:
        av.codec.Codec(name, "w")
    except Exception as exc:  # UnknownCodecError is a ValueError subclass
        raise MissingToolError(
            f"the {name} encoder is not available in the installed PyAV {av.__version__}; run {_PIP_FIX}"
        ) from exc


def _as_fps(fps: FpsLike) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, Fraction, float)):
        raise Avatar3DError(f"fps must be an int or Fraction, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001) if isinstance(fps, float) else Fraction(fps)
    if rate <= 0:
        raise Avatar3DError(f"fps must be positive, got {fps!r}")
    return rate


def _as_mono_audio(audio: Any, what: str) -> np.ndarray:
    """Validate/convert audio to float32 [N] in [-1, 1]; [N, 1] is accepted too."""
    arr = np.asarray(audio)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise Avatar3DError(
            f"{what}: audio must be mono with shape [N] (got shape {arr.shape}); average the channels first"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise Avatar3DError(f"{what}: audio must be float in [-1, 1] (got dtype {arr.dtype}); divide int16 by 32768")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise Avatar3DError(f"{what}: audio contains NaN or inf samples; fix the audio source")
    return np.clip(arr, -1.0, 1.0)


class VideoWriter:
    """Stream RGB uint8 frames [H, W, 3] (+ optional mono audio) into an H.264/AAC mp4.

    Usage::

        with VideoWriter("out.mp4", fps=25, audio=wave, sample_rate=16000) as w:
            for frame in frames:
                w.write(frame)

    * Video: libx264, yuv420p, ``crf`` (default 18) and ``preset`` (default
      "veryfast"). Width and height must be even (yuv420p subsamples chroma by 2);
      odd sizes raise Avatar3DError rather than being silently padded/cropped,
      because that would shift the image relative to landmarks computed upstream.
      The size is fixed by ``size=(width, height)`` or by the first frame.
    * Audio (optional): AAC mono at ``sample_rate``. Give the whole track as
      ``audio=`` at open, or an *iterator* of chunks as ``audio=`` (pulled only
      as the frames written so far need them, so an hour-long track is never
      held: e.g. :func:`avatar3d.motion.streaming.iter_audio_chunks`), or only
      ``sample_rate=`` and feed chunks with :meth:`write_audio` (an array and
      :meth:`write_audio` may be combined). Audio is encoded interleaved with
      the video as frames arrive, so memory stays bounded.
    * Duration: on close the audio is trimmed or zero-padded to exactly
      ``round(n_frames / fps * sample_rate)`` samples, so both tracks end together
      (within one AAC frame as stored; :func:`read_audio` trims the codec padding).
    * Crash safety: everything is written to a hidden temp file beside ``path``
      and renamed onto ``path`` only on a clean exit; an exception inside the
      ``with`` (or a failed close) removes the temp file and leaves ``path`` as it was.
    """

    def __init__(
        self,
        path: PathLike,
        fps: FpsLike,
        *,
        audio: Optional[Union[np.ndarray, Iterable[np.ndarray]]] = None,
        sample_rate: Optional[int] = None,
        crf: int = 18,
        preset: str = "veryfast",
        size: Optional[tuple[int, int]] = None,
    ) -> None:
        self.path = Path(path)
        self.fps = _as_fps(fps)
        self.crf = int(crf)
        self.preset = str(preset)
        if not 0 <= self.crf <= 51:
            raise Avatar3DError(f"{self.path}: crf must be in 0..51 (got {crf}); 18 is visually lossless")
        if audio is not None and sample_rate is None:
            raise Avatar3DError(f"{self.path}: audio given without sample_rate; pass sample_rate=<Hz>")
        self.sample_rate: Optional[int] = None if sample_rate is None else int(sample_rate)
        if self.sample_rate is not None and self.sample_rate not in _AAC_RATES:
            raise Avatar3DError(
                f"{self.path}: AAC cannot store audio at {self.sample_rate} Hz; resample to 16000, 44100 or 48000 Hz"
            )
        self._size: Optional[tuple[int, int]] = None
        if size is not None:
            self._size = self._check_size(int(size[0]), int(size[1]))
        _require_encoder("libx264")
        if self.sample_rate is not None:
            _require_encoder("aac")

        self._audio_chunks: list[np.ndarray] = []  # pending, not yet encoded
        self._audio_pending = 0
        self._audio_sent = 0  # samples handed to the encoder
        self.n_frames = 0
        self._atomic: Any = None
        self._tmp: Optional[Path] = None
        self._container: Any = None
        self._vstream: Any = None
        self._astream: Any = None
        self._closed = False
        self._audio_source: Optional[Iterator[np.ndarray]] = None  # chunks pulled as frames need them
        if isinstance(audio, Iterator):
            self._audio_source = audio
        elif audio is not None:
            self.write_audio(audio)

    # -- context management -------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        self._open_temp()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)

    def _open_temp(self) -> None:
        if self._atomic is None:
            self._atomic = atomic_path(self.path)
            self._tmp = self._atomic.__enter__()

    # -- writing -------------------------------------------------------------
    def _check_size(self, width: int, height: int) -> tuple[int, int]:
        if width <= 0 or height <= 0:
            raise Avatar3DError(f"{self.path}: invalid frame size {width}x{height}")
        if width % 2 or height % 2:
            raise Avatar3DError(
                f"{self.path}: H.264 yuv420p needs even width and height, got {width}x{height}; "
                f"crop or pad frames to {width + width % 2}x{height + height % 2} (or {width - width % 2}x{height - height % 2})"
            )
        return width, height

    def _start(self, width: int, height: int) -> None:
        """Create the container and streams (needs the frame size, so done at the first frame)."""
        av = import_av()
        self._open_temp()
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            v = self._container.add_stream("libx264", rate=self.fps)
            v.width, v.height, v.pix_fmt = width, height, "yuv420p"
            v.options = {"crf": str(self.crf), "preset": self.preset}
            self._vstream = v
            if self.sample_rate is not None:
                a = self._container.add_stream("aac", rate=self.sample_rate)
                a.layout = "mono"
                self._astream = a
        except av.FFmpegError as exc:
            raise Avatar3DError(f"{self.path}: cannot start the encoder ({exc}); check crf/preset values") from exc

    def write(self, frame: np.ndarray) -> None:
        """Encode one RGB uint8 frame of shape [H, W, 3]."""
        if self._closed:
            raise Avatar3DError(f"{self.path}: write() after close(); open a new VideoWriter")
        arr = np.asarray(frame)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise Avatar3DError(f"{self.path}: frames must be RGB with shape [H, W, 3], got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise Avatar3DError(
                f"{self.path}: frames must be uint8 (got {arr.dtype}); use (np.clip(x, 0, 1) * 255).round().astype(np.uint8)"
            )
        height, width = arr.shape[:2]
        if self._vstream is None:
            if self._size is None:
                self._size = self._check_size(width, height)
            self._start(*self._size)
        if (width, height) != self._size:
            raise Avatar3DError(
                f"{self.path}: frame {self.n_frames} is {width}x{height} but the video is "
                f"{self._size[0]}x{self._size[1]}; resize all frames to one size"
            )
        av = import_av()
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        vf.pts = self.n_frames
        vf.time_base = 1 / self.fps
        self._mux(self._vstream.encode(vf))
        self.n_frames += 1
        if self._astream is not None:
            self._encode_audio_upto(self._audio_target())

    def write_audio(self, audio: np.ndarray) -> None:
        """Append mono float audio (continues where the previous chunk ended)."""
        if self.sample_rate is None:
            raise Avatar3DError(f"{self.path}: no audio track; pass sample_rate=<Hz> when opening the VideoWriter")
        if self._closed:
            raise Avatar3DError(f"{self.path}: write_audio() after close(); open a new VideoWriter")
        self._queue_audio(audio, copy=True)
        if self._astream is not None:
            self._encode_audio_upto(self._audio_target())

    def _queue_audio(self, audio: np.ndarray, copy: bool) -> None:
        arr = _as_mono_audio(audio, str(self.path))
        if arr.size:
            self._audio_chunks.append(arr.copy() if copy else arr)
            self._audio_pending += arr.size

    def _pull_audio(self, need: int) -> None:
        """Take chunks from the audio iterator until ``need`` samples are pending or it ends."""
        while self._audio_source is not None and self._audio_pending < need:
            chunk = next(self._audio_source, None)
            if chunk is None:
                self._drop_audio_source()
            else:
                self._queue_audio(chunk, copy=False)

    def _drop_audio_source(self) -> None:
        source, self._audio_source = self._audio_source, None
        close = getattr(source, "close", None)  # a generator: release the file it decodes
        if close is not None:
            close()

    def _audio_target(self) -> int:
        """Samples covered by the frames written so far."""
        assert self.sample_rate is not None
        return round(self.n_frames * self.sample_rate / self.fps)

    def _take_audio(self, n: int) -> np.ndarray:
        out = np.empty(n, np.float32)
        filled = 0
        while filled < n and self._audio_chunks:
            chunk = self._audio_chunks[0]
            k = min(n - filled, chunk.size)
            out[filled:filled + k] = chunk[:k]
            filled += k
            if k == chunk.size:
                self._audio_chunks.pop(0)
            else:
                self._audio_chunks[0] = chunk[k:]
        self._audio_pending -= filled
        out[filled:] = 0.0  # zero-pad a short track
        return out

    def _encode_audio_upto(self, target: int, pad: bool = False) -> None:
        """Encode pending audio up to sample ``target`` (zero-padding only if ``pad``)."""
        n = target - self._audio_sent
        self._pull_audio(n)
        if not pad:
            n = min(n, self._audio_pending)
        if n <= 0:
            return
        av = import_av()
        samples = self._take_audio(n)
        af = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        af.sample_rate = self.sample_rate
        af.pts = self._audio_sent
        af.time_base = Fraction(1, self.sample_rate)
        self._mux(self._astream.encode(af))
        self._audio_sent += n

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self._container.mux(packet)

    # -- finishing -----------------------------------------------------------
    def close(self) -> None:
        """Flush encoders, fit audio to the video length, and rename into place."""
        if self._closed:
            return
        try:
            if self._vstream is None:
                raise Avatar3DError(f"{self.path}: no frames were written; nothing to save")
            self._mux(self._vstream.encode(None))
            if self._astream is not None:
                self._encode_audio_upto(self._audio_target(), pad=True)
                self._mux(self._astream.encode(None))
                self._audio_chunks.clear()  # audio beyond the last frame is dropped
                self._audio_pending = 0
            self._drop_audio_source()
            self._container.close()
            self._container = None
        except BaseException as exc:
            self.abort(exc)
            raise
        self._closed = True
        self._atomic.__exit__(None, None, None)

    def abort(self, exc: Optional[BaseException] = None) -> None:
        """Drop the partial output: close the container and delete the temp file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drop_audio_source()
        except Exception:
            pass
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        if self._atomic is not None:
            err = exc if exc is not None else Avatar3DError("aborted")
            try:
                self._atomic.__exit__(type(err), err, err.__traceback__)
            except BaseException as raised:
                if raised is not err:
                    raise


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What a stage needs to know about a clip before decoding it."""

    width: int
    height: int
    fps: Fraction
    n_frames: int
    duration: float  # seconds of the video stream
    has_audio: bool
    audio_sample_rate: Optional[int]


def open_input(path: PathLike) -> Any:
    """Open a media file for reading, turning every failure into a one-line Avatar3DError."""
    av = import_av()
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a media file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty (0 bytes); re-export it")
    try:
        return av.open(str(p), mode="r")
    except av.FFmpegError as exc:
        raise InputError(
            f"{p}: not a readable media file ({exc.strerror or type(exc).__name__}); re-export it as mp4"
        ) from exc


def first_stream(container: Any, kind: str, path: PathLike) -> Any:
    """The first ``kind`` ("video" or "audio") stream of an opened container; closes it and says so if none."""
    streams = container.streams.video if kind == "video" else container.streams.audio
    if not streams:
        container.close()
        raise InputError(f"{path}: has no {kind} stream; give a file that contains {kind}")
    return streams[0]


def decode_error(path: PathLike, exc: Exception) -> Avatar3DError:
    """The one-line error for an FFmpeg failure while decoding ``path`` (raise it ``from exc``)."""
    return InputError(f"{path}: corrupt media data ({exc.strerror or type(exc).__name__}); re-export the file")


def probe_video(path: PathLike) -> VideoInfo:
    """Read size, rate, frame count and audio presence from the headers (decodes nothing
    unless the container lacks a frame count, in which case packets are counted)."""
    av = import_av()
    container = open_input(path)
    try:
        v = first_stream(container, "video", path)
        rate = v.average_rate or v.guessed_rate or v.base_rate
        if not rate:
            raise Avatar3DError(f"{path}: video stream has no frame rate; re-export it with a constant frame rate")
        fps = Fraction(rate)
        n_frames = int(v.frames or 0)
        if n_frames <= 0:  # mkv/webm/raw streams: count packets (cheap, no decoding)
            try:
                n_frames = sum(1 for pkt in container.demux(v) if pkt.size)
            except av.FFmpegError as exc:
                raise decode_error(path, exc) from exc
        if v.duration is not None and v.time_base is not None:
            duration = float(v.duration * v.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = float(n_frames / fps)
        a = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            width=int(v.codec_context.width),
            height=int(v.codec_context.height),
            fps=fps,
            n_frames=n_frames,
            duration=duration,
            has_audio=a is not None,
            audio_sample_rate=int(a.codec_context.sample_rate) if a is not None else None,
        )
    finally:
        container.close()


def media_duration(path: PathLike) -> float:
    """Seconds of a file's first audio stream (else its container) from the headers; 0.0 when unknown or unreadable.

    Why never raising: callers use it for estimates made before the real decode, which reports a bad file itself.
    """
    av = import_av()
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError):
        return 0.0
    try:
        for stream in container.streams.audio:
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
        return container.duration / 1_000_000 if container.duration else 0.0
    finally:
        container.close()


def read_video(path: PathLike) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames [H, W, 3] one at a time (the clip is never held in memory).

    The file is opened and checked immediately, so a missing/corrupt file or one
    without video raises here, not at the first ``next()``.
    """
    container = open_input(path)
    stream = first_stream(container, "video", path)
    stream.thread_type = "AUTO"
    return _iter_frames(container, stream, path)


def _iter_frames(container: Any, stream: Any, path: PathLike) -> Iterator[np.ndarray]:
    av = import_av()
    try:
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise decode_error(path, exc) from exc
    finally:
        container.close()


def read_audio(path: PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decode the first audio stream of any media file to float32 mono at ``sample_rate``.

    Channels are downmixed and resampled by FFmpeg's resampler; the AAC end
    padding is trimmed using the stream's stored duration so the length
    matches what was written.
    """
    av = import_av()
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise Avatar3DError(f"{path}: sample_rate must be positive, got {sample_rate}")
    container = open_input(path)
    try:
        stream = first_stream(container, "audio", path)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples; avoids gaps from odd pts
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise decode_error(path, exc) from exc
        audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
        if stream.duration is not None and stream.time_base is not None:
            expected = int(round(float(stream.duration * stream.time_base) * sample_rate))
            if 0 < expected < audio.size:
                audio = audio[:expected]
        return audio
    finally:
        container.close()
