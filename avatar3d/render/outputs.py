"""Where rendered frames go: the mp4, an RGBA PNG sequence + alpha movie, 16-bit depth PNGs.

Why: studios composite the avatar over their own plates and relight or defocus it by depth;
an mp4 over the training background is not enough for that.  Each sink takes the same
:class:`Frame` (both eyes side by side for stereo, so every output has the mp4's layout).

* RGBA (``--rgba DIR``): ``DIR/frame_00000.png`` ... 8-bit RGBA with *straight* (not
  premultiplied) colour; alpha = head opacity composited over torso alpha, the background
  plate excluded.  The matte gets a keyer's clip (below ``clip_black`` -> 0, above
  ``clip_white`` -> 1, linear between): the learned torso alpha is a sigmoid that never reaches
  0, which would leave a faint veil over the whole plate.  Beside the PNGs an alpha movie:
  ``DIR/rgba.webm`` (VP9, yuva420p) when this FFmpeg has libvpx-vp9, else ``DIR/rgba.mov``
  (ProRes 4444).  Note that many players (and FFmpeg's own vp9 decoder) ignore VP9 alpha:
  decode with libvpx-vp9 (``ffmpeg -c:v libvpx-vp9 -i rgba.webm``) to get it.
* Depth (``--depth DIR``): ``DIR/depth_00000.png`` 16-bit grey, **millimetres along the
  camera's optical axis** (z, not distance along the ray) to the head surface; 0 where the head
  is less than half opaque (the torso is a 2D layer and has no depth).
* Folders are written to a hidden sibling and renamed into place when the render finishes, so
  a crash leaves no half sequence; an existing folder is replaced only if it holds nothing but
  files these sinks write.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import cv2
import numpy as np

from avatar3d.errors import Avatar3DError, OutputError
from avatar3d.io.atomic import check_parent_writable
from avatar3d.io.video import VideoWriter

RGBA_PATTERN = re.compile(r"^(frame_\d{5,}\.png|rgba\.webm|rgba\.mov)$")
DEPTH_PATTERN = re.compile(r"^depth_\d{5,}\.png$")
DEPTH_UNIT_M = 0.001  # one depth count is a millimetre


@dataclass
class Frame:
    """One output frame (both eyes side by side for stereo), numpy, float32."""

    rgb: np.ndarray  # [H, W, 3] in [0, 1]: the composite over the background plate
    premult: np.ndarray  # [H, W, 3]: head + torso colour times their coverage (no plate)
    alpha: np.ndarray  # [H, W]: coverage of head over torso
    head_alpha: np.ndarray  # [H, W]
    depth_z: np.ndarray  # [H, W] metres along the optical axis, 0 where the head is transparent

    @classmethod
    def from_views(cls, views: list[dict[str, Any]]) -> "Frame":
        """Side by side, left to right, from :func:`avatar3d.render.camera.render_view` outputs."""
        def cat(key: str) -> np.ndarray:
            return np.concatenate([v[key].detach().cpu().numpy() for v in views], axis=1).astype(np.float32)

        return cls(cat("rgb"), cat("premult"), cat("alpha"), cat("head_alpha"), cat("depth_z"))


@dataclass(frozen=True)
class MatteConfig:
    """How the RGBA matte and the depth mask are cut."""

    clip_black: float = 0.02
    """Alpha at or below this becomes 0 (the torso sigmoid's faint veil over the plate)."""
    clip_white: float = 0.98
    """Alpha at or above this becomes 1 (a face interior that is 99% opaque is opaque)."""
    depth_min_alpha: float = 0.5
    """Head opacity below which a pixel has no depth (0 in the PNG)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_black < self.clip_white <= 1.0:
            raise Avatar3DError(f"matte settings: need 0 <= clip_black < clip_white <= 1, got "
                                f"{self.clip_black}, {self.clip_white}")  # fmt: skip


def straight_rgba(frame: Frame, matte: MatteConfig = MatteConfig()) -> np.ndarray:
    """uint8 [H, W, 4]: straight colour (premult / raw alpha) and the clipped matte."""
    raw = frame.alpha
    colour = np.where(raw[..., None] > 1e-4, frame.premult / np.maximum(raw, 1e-4)[..., None], 0.0)
    alpha = np.clip((raw - matte.clip_black) / (matte.clip_white - matte.clip_black), 0.0, 1.0)
    rgba = np.concatenate([np.clip(colour, 0.0, 1.0), alpha[..., None]], axis=-1)
    return (rgba * 255.0).round().astype(np.uint8)


def depth_mm(frame: Frame, matte: MatteConfig = MatteConfig()) -> np.ndarray:
    """uint16 [H, W]: head depth in millimetres (z), 0 where there is no head."""
    mm = np.round(frame.depth_z / DEPTH_UNIT_M)
    mm = np.where(frame.head_alpha >= matte.depth_min_alpha, np.clip(mm, 1, 65535), 0)
    return mm.astype(np.uint16)


def _png_bytes(image: np.ndarray, where: Path) -> bytes:
    if image.ndim == 3:  # RGBA -> OpenCV's BGRA
        image = image[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise Avatar3DError(f"{where}: PNG encoding failed for a {image.dtype} image of shape {image.shape}")
    return buf.tobytes()


# ------------------------------------------------------------------ staged output folders


def check_output_dir(path: Path, pattern: re.Pattern[str], flag: str) -> None:
    """Fails early (before rendering) when ``path`` cannot become this output folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file, not a folder; give a folder for the frames")
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not pattern.match(p.name))
        if foreign:
            raise OutputError(f"{flag} {path}: the folder holds other files ({', '.join(foreign[:3])}"
                                f"{', ...' if len(foreign) > 3 else ''}); give a new or empty folder")  # fmt: skip
    check_parent_writable(path, flag)


class StagedDir:
    """A folder written under a hidden sibling name and renamed onto ``final`` on :meth:`commit`."""

    def __init__(self, final: Path, pattern: re.Pattern[str], flag: str):
        check_output_dir(final, pattern, flag)
        self.final, self.pattern, self.flag = Path(final), pattern, flag
        self.tmp = self.final.with_name(f".{self.final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            self.tmp.mkdir(parents=True)
        except OSError as exc:
            raise OutputError(f"{flag} {final}: cannot create {self.tmp} ({exc.strerror or exc}); "
                                "choose a writable location") from None  # fmt: skip

    def write(self, name: str, data: bytes) -> None:
        try:
            (self.tmp / name).write_bytes(data)
        except OSError as exc:
            raise OutputError(f"{self.flag} {self.final}: cannot write {name} ({exc.strerror or exc}); "
                                "check free space and permissions") from None  # fmt: skip

    def commit(self) -> None:
        """Replace ``final`` (if it holds only this sink's files) with the finished folder."""
        check_output_dir(self.final, self.pattern, self.flag)  # it may have changed during the render
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------ sinks


def alpha_movie_codec() -> tuple[str, str, str, dict[str, str]] | None:
    """(encoder, file suffix, pixel format, options) for a movie with alpha, or None if FFmpeg has neither."""
    if "libvpx-vp9" in av.codecs_available:
        return "libvpx-vp9", ".webm", "yuva420p", {"crf": "18", "b": "0", "deadline": "good", "cpu-used": "4",
                                                    "row-mt": "1"}  # fmt: skip
    if "prores_ks" in av.codecs_available:
        return "prores_ks", ".mov", "yuva444p10le", {"profile": "4", "alpha_bits": "16"}
    return None


class RgbaSink:
    """PNG sequence with alpha plus an alpha movie, in one folder (see the module docstring)."""

    def __init__(self, folder: Path, fps: float, matte: MatteConfig = MatteConfig(),
                 log: Callable[[str], None] = print):  # fmt: skip
        self.dir = StagedDir(Path(folder), RGBA_PATTERN, "--rgba")
        self.fps, self.matte, self.log = Fraction(fps).limit_denominator(1001), matte, log
        self.codec = alpha_movie_codec()
        self.n = 0
        self._container: Any = None
        self._stream: Any = None
        self.movie: Path | None = None

    def _start(self, width: int, height: int) -> None:
        if self.codec is None:
            self.log("[render] this FFmpeg has neither libvpx-vp9 nor prores_ks: no alpha movie, PNGs only")
            return
        name, suffix, pix_fmt, options = self.codec
        self.movie = self.dir.final / f"rgba{suffix}"
        self._container = av.open(str(self.dir.tmp / f"rgba{suffix}"), mode="w")
        self._stream = self._container.add_stream(name, rate=self.fps)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        self._stream.options = options

    def write(self, frame: Frame) -> None:
        rgba = straight_rgba(frame, self.matte)
        if self.n == 0:
            self._start(rgba.shape[1], rgba.shape[0])
        self.dir.write(f"frame_{self.n:05d}.png", _png_bytes(rgba, self.dir.final))
        if self._stream is not None:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgba), format="rgba")
            vf.pts = self.n
            for packet in self._stream.encode(vf):
                self._container.mux(packet)
        self.n += 1

    def close(self) -> None:
        if self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
        self.dir.commit()
        if self.movie is not None:
            self.log(f"[render] RGBA: {self.n} PNGs + {self.movie.name} ({self.codec[0]}, {self.codec[2]}) "
                     f"-> {self.dir.final}")  # fmt: skip

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the folder is deleted anyway
                pass
            self._container = None
        self.dir.abort()


class DepthSink:
    """16-bit PNG per frame: head depth in millimetres along the optical axis, 0 = no head."""

    def __init__(self, folder: Path, matte: MatteConfig = MatteConfig()):
        self.dir = StagedDir(Path(folder), DEPTH_PATTERN, "--depth")
        self.matte = matte
        self.n = 0

    def write(self, frame: Frame) -> None:
        self.dir.write(f"depth_{self.n:05d}.png", _png_bytes(depth_mm(frame, self.matte), self.dir.final))
        self.n += 1

    def close(self) -> None:
        self.dir.commit()

    def abort(self) -> None:
        self.dir.abort()


class Mp4Sink:
    """The composite over the plate, H.264 + AAC (``avatar3d.io.video.VideoWriter``).

    ``audio``: the whole track, or an iterator of chunks the writer pulls as frames arrive (a long
    track is never held; sound and picture stay in step sample for sample).
    """

    def __init__(self, path: Path, fps: float, audio: np.ndarray | Iterator[np.ndarray] | None, sample_rate: int):
        self.writer = VideoWriter(path, fps, audio=audio, sample_rate=sample_rate if audio is not None else None)
        self.writer.__enter__()

    def write(self, frame: Frame) -> None:
        self.writer.write((np.clip(frame.rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8))

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.abort()


class Outputs:
    """All sinks of one render: every frame goes to each; all are kept only if every one finishes."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def __enter__(self) -> "Outputs":
        return self

    def write(self, frame: Frame) -> None:
        for sink in self.sinks:
            sink.write(frame)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                for sink in self.sinks:
                    sink.close()
                return
            except BaseException:
                self._abort()
                raise
        self._abort()

    def _abort(self) -> None:
        for sink in self.sinks:
            try:
                sink.abort()
            except Exception:  # noqa: BLE001 - clean up the others regardless
                pass
