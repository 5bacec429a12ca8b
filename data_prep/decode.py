"""Stage 1 of ``avatar3d prep``: any clip -> upright, fixed-fps, square-cropped frames + 16 kHz audio.

Outputs in ``out_dir`` (each written atomically: temp name + rename):

* ``frames.mp4`` - RGB frames at ``fps``, ``size`` x ``size``, H.264 crf 16
  (plus the audio as AAC, so the file is a playable preview).  One mp4 rather
  than a folder of JPEGs because every later stage reads frames in order
  (streaming), it is a single file that appears atomically with one rename,
  and at crf 16 it is visually lossless and ~5x smaller than JPEG q95.
* ``audio.wav`` - 16 kHz mono PCM, exactly ``n_frames / fps`` seconds long,
  aligned to the first video frame (absent when ``audio=False``).
* ``decode.json`` - the :class:`DecodeResult` record (crop box, orientation,
  source fps/size, frame counts).  Written last: its presence marks a
  finished stage, so it is deleted first when a run starts.

Two passes over the video, so memory stays bounded by one frame:

1. *scan*: decode every frame, keep only its time stamp; every
   ``sample_every_s`` run MediaPipe face mesh (static mode) on the upright
   frame to collect face boxes (small faces in wide shots: MediaPipe's
   full-range face detector first, then the mesh on a crop) -> crop plan.
2. *write*: decode again, pick for each output time ``t0 + k / fps`` the source
   frame whose time stamp is nearest (ties go to the earlier frame), rotate it
   upright, crop, resize, encode.  Variable frame rate therefore becomes
   constant by duplicating / dropping whole frames - no blending, so a frame
   never mixes two mouth shapes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

import av
import cv2
import numpy as np
from tqdm import tqdm

from avatar3d.dataset.contract import AUDIO, FRAMES
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import write_json_atomic
from avatar3d.io.audio import write_wav
from avatar3d.io.video import VideoWriter, probe_video, read_audio
from avatar3d.vision.face_mesh import FaceMeshDetector

PathLike = Union[str, Path]

__all__ = ["DecodeConfig", "Orientation", "CropBox", "DecodeResult", "decode", "plan_crop", "frame_map"]

FRAMES_NAME = FRAMES
AUDIO_NAME = AUDIO
RECORD_NAME = "decode.json"


@dataclass
class DecodeConfig:
    """How to turn a clip into dataset frames and audio."""

    fps: Union[int, float] = 25
    """Output frame rate (constant)."""
    size: int = 512
    """Output frames are ``size`` x ``size`` (even)."""
    audio_rate: int = 16000
    """Output audio sample rate (mono)."""
    crop_margin: float = 3.0
    """Side of the square crop in face sizes (face size = landmark box of the mesh, forehead to chin).
    3 keeps head, neck and the top of the shoulders."""
    crop_shift: float = 0.4
    """Crop centre sits this many face sizes below the centre of the face boxes (shows the shoulders)."""
    crop_hair: float = 0.5
    """Room kept above the face boxes for the hair, in face sizes (the mesh box ends at the forehead)."""
    crop_box: Optional[tuple[int, int, int]] = None
    """Fixed crop ``(x0, y0, side)`` in upright source pixels; skips the face pass (and its no-face check)."""
    sample_every_s: float = 0.5
    """Face-detection sampling interval of the scan pass."""
    max_samples: int = 240
    """Upper bound on sampled frames (the interval grows for long clips)."""
    audio: bool = True
    """Require and extract audio; ``False`` builds a silent dataset without ``audio.wav`` (not usable for training)."""
    min_duration_s: float = 1.0
    """Shorter clips are refused."""
    silence_peak: float = 1e-4
    """Audio whose peak |sample| is below this (-80 dBFS) is treated as silent."""
    crf: int = 16
    """H.264 quality of ``frames.mp4`` (lower = better; 16 is visually lossless)."""

    def fps_fraction(self) -> Fraction:
        """The output rate as an exact fraction (29.97 -> 30000/1001)."""
        fps = Fraction(self.fps).limit_denominator(1001) if isinstance(self.fps, float) else Fraction(self.fps)
        if fps <= 0:
            raise Avatar3DError(f"the output frame rate (--fps, or decode.fps in a --config YAML) must be positive, "
                                f"got {self.fps!r}")
        return fps

    def check(self) -> None:
        """One-line error for values no clip can satisfy, so prep refuses them before it creates anything."""
        self.fps_fraction()
        if int(self.size) <= 0 or int(self.size) % 2:
            raise Avatar3DError(f"the output size (--size, or decode.size in a --config YAML) must be a positive even "
                                f"number of pixels, got {self.size}")
        if self.crop_box is not None and int(self.crop_box[2]) <= 0:
            raise Avatar3DError(f"the crop side (decode.crop_box: [x0, y0, side] in a --config YAML) must be "
                                f"positive, got {list(self.crop_box)}")


# ---------------------------------------------------------------------------
# orientation
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Orientation:
    """How a stored frame maps to the upright (displayed) frame: optional transpose, then flips.

    Every display matrix that is a multiple of 90 degrees, with or without a
    mirror (the 8 EXIF orientations), is a signed permutation of (x, y); we
    read the signs straight off FFmpeg's matrix, where a stored pixel (x, y)
    is displayed at (a*x + c*y, b*x + d*y) with y pointing down.
    """

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    rotation: int = 0
    """Counter-clockwise degrees the player rotates the stored frame (for the record)."""
    source: str = "none"
    """Where it came from: ``displaymatrix``, ``rotate-tag`` or ``none``."""

    @staticmethod
    def from_matrix(m: np.ndarray, rotation: float, source: str = "displaymatrix") -> "Orientation":
        a, b, c, d = (float(m[0]), float(m[1]), float(m[3]), float(m[4]))
        if abs(a) + abs(d) >= abs(b) + abs(c):  # 0 or 180 degrees (+ mirror): no transpose
            return Orientation(False, a < 0, d < 0, int(round(rotation)), source)
        return Orientation(True, c < 0, b < 0, int(round(rotation)), source)

    @staticmethod
    def from_rotation(ccw_degrees: float, source: str) -> "Orientation":
        theta = math.radians(ccw_degrees)
        m = np.array([math.cos(theta), -math.sin(theta), 0, math.sin(theta), math.cos(theta), 0, 0, 0, 1])
        return Orientation.from_matrix(m, ccw_degrees, source)

    def upright_size(self, width: int, height: int) -> tuple[int, int]:
        return (height, width) if self.transpose else (width, height)

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Stored frame [H, W, C] -> upright frame (a view; no copy)."""
        if self.transpose:
            img = img.transpose(1, 0, 2)
        if self.flip_y:
            img = img[::-1]
        if self.flip_x:
            img = img[:, ::-1]
        return img

    def apply_points(self, points: np.ndarray, width: int, height: int) -> np.ndarray:
        """Stored-frame pixel coordinates [..., >=2] (continuous convention) -> upright-frame ones."""
        out = np.array(points, dtype=np.float64, copy=True)
        if self.transpose:
            out[..., [0, 1]] = out[..., [1, 0]]
        uw, uh = self.upright_size(width, height)
        if self.flip_x:
            out[..., 0] = uw - out[..., 0]
        if self.flip_y:
            out[..., 1] = uh - out[..., 1]
        return out


def _orientation_of(frame: Any, stream: Any) -> Orientation:
    """Display matrix side data first (modern mp4/mov), else an old-style ``rotate`` tag (clockwise degrees)."""
    for sd in frame.side_data:
        if sd.type.name == "DISPLAYMATRIX":
            m = np.frombuffer(bytes(sd), dtype=np.int32)[:9].astype(np.float64)
            m[[0, 1, 3, 4]] /= 65536.0
            return Orientation.from_matrix(m, frame.rotation)
    tags = {str(k).lower(): v for k, v in (stream.metadata or {}).items()}
    if "rotate" in tags:
        try:
            clockwise = float(tags["rotate"])
        except ValueError:
            clockwise = 0.0
        if clockwise % 360:
            return Orientation.from_rotation(-clockwise, "rotate-tag")
    return Orientation()


# ---------------------------------------------------------------------------
# crop
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CropBox:
    """Square ``side`` x ``side`` box at (x0, y0) in upright source pixels, resized to ``size``.

    :func:`plan_crop` keeps the box inside the picture; only a hand-set ``crop_box``
    (``decode.crop_box``) may reach past the border, and there outside pixels are black.
    """

    x0: int
    y0: int
    side: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / self.side

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Upright frame -> cropped, resized, contiguous RGB uint8 [size, size, 3]."""
        h, w = img.shape[:2]
        x0, y0, s = self.x0, self.y0, self.side
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
        region = img[sy0:sy1, sx0:sx1]
        if region.shape[0] != s or region.shape[1] != s:
            canvas = np.zeros((s, s, img.shape[2]), img.dtype)
            canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = region
            region = canvas
        region = np.ascontiguousarray(region)
        if s != self.size:
            interp = cv2.INTER_AREA if s > self.size else cv2.INTER_CUBIC
            region = cv2.resize(region, (self.size, self.size), interpolation=interp)
        return region

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """Upright-source pixel coords [..., 2 or 3] -> output pixel coords (z scaled like x, y)."""
        out = np.array(points, dtype=np.float64, copy=True)
        out[..., 0] -= self.x0
        out[..., 1] -= self.y0
        out[..., :3] *= self.scale
        return out


def plan_crop(boxes: np.ndarray, width: int, height: int, config: DecodeConfig) -> tuple[CropBox, float]:
    """Square crop holding every sampled face box with head-and-shoulders margin, inside the picture.

    ``boxes`` [K, 4] (x0, y0, x1, y1) in upright pixels.  Side = ``crop_margin``
    x median face size, centred ``crop_shift`` face sizes below the centre of
    the union of boxes, grown if needed so the union fits with 1/4 face around it
    and ``crop_hair`` face above it (the mesh box ends at the forehead: the hair is
    above).  The side never exceeds the picture's short side and the box always lies
    inside the picture: the avatar never learns invented (black) pixels.  When the
    face fills the frame (tight HDTF-style crops) the margins shrink instead -- the
    crop is the whole short side, placed to keep the head: the union's top (hair)
    first, then its bottom; the shoulders are what is given up.  Returns (crop, face
    size in pixels).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    face = float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    ux0, uy0 = boxes[:, 0].min(), boxes[:, 1].min()
    ux1, uy1 = boxes[:, 2].max(), boxes[:, 3].max()
    pad = 0.25 * face
    ux0, uy0, ux1, uy1 = ux0 - pad, uy0 - pad, ux1 + pad, uy1 + pad
    cx = 0.5 * (ux0 + ux1)
    cy = 0.5 * (uy0 + uy1) + config.crop_shift * face
    uy0 = min(uy0, uy0 + pad - config.crop_hair * face)  # room for the hair (the centre stays as it was)
    half = max(0.5 * config.crop_margin * face, cx - ux0, ux1 - cx, cy - uy0, uy1 - cy)
    side = max(min(int(math.ceil(2 * half)), width, height), 2)

    def place(centre: float, lo: float, hi: float, dim: int, keep_top: bool) -> int:
        start = int(round(centre - side / 2))
        if hi - lo <= side:  # the union fits: keep it inside the box
            start = min(max(start, int(math.ceil(hi)) - side), int(math.floor(lo)))
        elif keep_top:  # it does not (the face fills the frame): keep the hair, give up the shoulders
            start = int(math.floor(lo))
        else:
            start = int(round(0.5 * (lo + hi) - side / 2))
        return min(max(start, 0), max(dim - side, 0))  # the box inside the picture, always

    crop = CropBox(place(cx, ux0, ux1, width, False), place(cy, uy0, uy1, height, True), side, int(config.size))
    return crop, face


# ---------------------------------------------------------------------------
# time stamps
# ---------------------------------------------------------------------------
def frame_map(times: np.ndarray, end_time: float, fps: Fraction) -> np.ndarray:
    """Source frame index (decode order) shown at each output time ``t0 + k / fps``.

    Nearest time stamp wins, ties go to the earlier frame; the result is made
    non-decreasing so a single in-order decode can emit it.  The output covers
    ``[t0, end_time)``: ``round((end_time - t0) * fps)`` frames.
    """
    times = np.asarray(times, dtype=np.float64)
    t0 = float(times.min())
    n_out = max(int(round((end_time - t0) * float(fps))), 1)
    targets = t0 + np.arange(n_out, dtype=np.float64) * (fps.denominator / fps.numerator)
    order = np.argsort(times, kind="stable")
    sorted_t = times[order]
    right = np.clip(np.searchsorted(sorted_t, targets, side="left"), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    use_left = np.abs(targets - sorted_t[left]) <= np.abs(sorted_t[right] - targets) + 1e-9
    chosen = order[np.where(use_left, left, right)]
    return np.maximum.accumulate(chosen)


# ---------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------
@dataclass
class DecodeResult:
    """What the decode stage did, saved as ``decode.json`` (paths are relative to ``out_dir``)."""

    source: str
    frames: str
    audio: Optional[str]
    fps: float
    fps_fraction: str
    size: int
    n_frames: int
    source_size: tuple[int, int]
    """(width, height) as stored in the file."""
    upright_size: tuple[int, int]
    """(width, height) after applying the orientation."""
    source_fps: float
    """Average source rate (frames / duration)."""
    source_vfr: bool
    n_source_frames: int
    n_duplicated: int
    n_dropped: int
    rotation: int
    orientation: dict[str, Any]
    crop: dict[str, Any]
    """x0, y0, side (upright source pixels) and scale (output px per source px)."""
    face_size_px: Optional[float]
    face_samples: int
    face_found: int
    audio_rate: Optional[int]
    audio_offset_s: float
    """Audio start minus first video frame time in the source (corrected in ``audio.wav``)."""
    wall_s: float
    timings: dict[str, float] = field(default_factory=dict)

    def crop_box(self) -> CropBox:
        return CropBox(self.crop["x0"], self.crop["y0"], self.crop["side"], self.size)

    def orient(self) -> Orientation:
        return Orientation(**self.orientation)

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Stored-source pixel coords [..., 2 or 3] -> output-frame pixel coords."""
        w, h = self.source_size
        return self.crop_box().apply_points(self.orient().apply_points(points, w, h))

    @staticmethod
    def load(out_dir: PathLike) -> "DecodeResult":
        path = Path(out_dir) / RECORD_NAME
        if not path.is_file():
            raise Avatar3DError(f"{path}: not found; run the decode stage (avatar3d prep) first")
        data = json.loads(path.read_text())
        data["source_size"] = tuple(data["source_size"])
        data["upright_size"] = tuple(data["upright_size"])
        return DecodeResult(**data)


# ---------------------------------------------------------------------------
# passes
# ---------------------------------------------------------------------------
@dataclass
class _Scan:
    times: np.ndarray
    end_time: float
    width: int
    height: int
    orientation: Orientation
    boxes: list[tuple[float, float, float, float]]
    n_sampled: int


def _open(path: Path) -> tuple[Any, Any]:
    container = av.open(str(path), mode="r")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


class _FaceBoxes:
    """Face mesh box on a full frame; for small faces (wide shots) that the mesh's short-range
    detector misses, MediaPipe's full-range detector finds the face and the mesh runs on a crop around it."""

    def __init__(self) -> None:
        self._mesh = FaceMeshDetector(video=False)
        self._far: Any = None

    def __call__(self, img: np.ndarray) -> Optional[tuple[float, float, float, float]]:
        found = self._mesh(img)
        offset = np.zeros(2)
        if found is None:
            if self._far is None:
                from mediapipe.python.solutions import face_detection  # lazy: heavy (~1-2 s) import

                self._far = face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
            result = self._far.process(img)
            if not result.detections:
                return None
            h, w = img.shape[:2]
            best = max(result.detections, key=lambda d: d.score[0]).location_data.relative_bounding_box
            cx, cy = (best.xmin + best.width / 2) * w, (best.ymin + best.height / 2) * h
            half = 1.25 * max(best.width * w, best.height * h)
            x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
            x1, y1 = int(min(cx + half, w)), int(min(cy + half, h))
            if x1 - x0 < 8 or y1 - y0 < 8:
                return None
            found = self._mesh(np.ascontiguousarray(img[y0:y1, x0:x1]))
            if found is None:
                return None
            offset = np.array([x0, y0], np.float64)
        xy = found[:, :2].astype(np.float64) + offset
        return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())

    def close(self) -> None:
        self._mesh.close()
        if self._far is not None:
            self._far.close()


MIN_FACE_PX = 32
"""Smallest face (forehead to chin, pixels) the face detector finds in a frame: measured on the astronaut
photo shrunk into a 512-pixel frame, a 37 px face is found and a 27 px one is not."""
_SMALL_FACE_FRAMES = 4  # frames of the clip's first seconds enlarged to look for a face too small to detect
_ENLARGED_SIDE = 1024  # ... to this short side (at least 4x)


def _face_too_small(src: Path, face_px: int, short_side: int) -> Avatar3DError:
    """The one-line error for a face below :data:`MIN_FACE_PX` (``face_px`` = the frame's side when none was found)."""
    what = f"{face_px} px" if face_px < short_side else f"at most {face_px} px: the frames are that small"
    return Avatar3DError(f"face too small ({what}; needs >= {MIN_FACE_PX} px) in {src}: film closer or at a higher "
                         "resolution, so the face is at least that tall in the frame")


def _small_face_px(path: Path, orientation: Orientation) -> Optional[int]:
    """The face height in original pixels when a face is found only in enlarged frames; None if not even then.

    Why: "no face found" for a 17x17 clip sends the user looking for a lighting problem; the fix is a
    closer shot. Only called after the scan found no face, so it costs nothing on a good clip.
    """
    detector = _FaceBoxes()
    container, stream = _open(path)
    try:
        for i, frame in enumerate(container.decode(stream)):
            if i >= 25 * _SMALL_FACE_FRAMES:
                break
            if i % 25:  # one frame a second (at 25 fps) of the first seconds
                continue
            img = np.ascontiguousarray(orientation.apply(frame.to_ndarray(format="rgb24")))
            scale = max(4.0, _ENLARGED_SIDE / max(min(img.shape[:2]), 1))
            big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
            box = detector(big)
            if box is not None:
                return max(1, int(round(max(box[2] - box[0], box[3] - box[1]) / scale)))
    except av.FFmpegError:
        return None
    finally:
        container.close()
        detector.close()
    return None


def _scan(path: Path, config: DecodeConfig, header_duration: float, progress: bool) -> _Scan:
    """Pass 1: every frame's time stamp, the orientation, and face boxes on a subsample."""
    detector = _FaceBoxes() if config.crop_box is None else None
    interval = max(config.sample_every_s, header_duration / max(config.max_samples, 1))
    times: list[float] = []
    boxes: list[tuple[float, float, float, float]] = []
    orientation = Orientation()
    width = height = 0
    first_duration = 0.0
    n_sampled = 0
    next_sample = -math.inf
    container, stream = _open(path)
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    try:
        bar = tqdm(desc="decode: scan", unit="frame", disable=not progress, leave=False)
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else i / float(rate)
            if i == 0:
                orientation = _orientation_of(frame, stream)
                width, height = frame.width, frame.height
            times.append(t)
            if i == 0 and frame.duration and frame.time_base is not None:
                first_duration = float(frame.duration * frame.time_base)
            if detector is not None and t >= next_sample:
                next_sample = t + interval
                n_sampled += 1
                upright = np.ascontiguousarray(orientation.apply(frame.to_ndarray(format="rgb24")))
                box = detector(upright)
                if box is not None:
                    boxes.append(box)
            bar.update(1)
        bar.close()
    except av.FFmpegError as exc:
        raise Avatar3DError(
            f"{path}: corrupt video data at frame {len(times)} ({exc.strerror or type(exc).__name__}); re-export the file"
        ) from exc
    finally:
        container.close()
        if detector is not None:
            detector.close()
    if not times:
        raise Avatar3DError(f"{path}: the video stream holds no decodable frames; re-export the file")
    arr = np.asarray(times, dtype=np.float64)
    # The last frame is shown for the median frame interval: packet durations are
    # unreliable in variable-rate files (x264 + mp4 gives the last frame 10 ms).
    diffs = np.diff(np.sort(arr))
    last_duration = float(np.median(diffs)) if diffs.size else (first_duration or 1.0 / float(rate))
    end_time = float(arr.max()) + last_duration
    return _Scan(arr, end_time, width, height, orientation, boxes, n_sampled)


def _first_audio_time(path: Path) -> float:
    """Presentation time of the first decoded audio sample (0 when unknown)."""
    with av.open(str(path), mode="r") as container:
        try:
            for frame in container.decode(audio=0):
                return float(frame.time) if frame.time is not None else 0.0
        except av.FFmpegError:
            return 0.0
    return 0.0


def _audio(path: Path, config: DecodeConfig, video_start: float, n_frames: int, fps: Fraction) -> tuple[np.ndarray, float]:
    """The audio under the output frames: aligned to the first frame, exactly n_frames / fps long."""
    rate = int(config.audio_rate)
    audio = read_audio(path, rate)
    offset = _first_audio_time(path) - video_start
    shift = int(round(offset * rate))
    if shift > 0:
        audio = np.concatenate([np.zeros(shift, np.float32), audio])
    elif shift < 0:
        audio = audio[-shift:]
    n = int(round(n_frames * rate / fps))
    if audio.size < n:
        audio = np.concatenate([audio, np.zeros(n - audio.size, np.float32)])
    return np.ascontiguousarray(audio[:n], dtype=np.float32), offset


def decode(src: PathLike, out_dir: PathLike, config: Optional[DecodeConfig] = None, progress: bool = True) -> DecodeResult:
    """Decode ``src`` into ``out_dir`` (frames.mp4, audio.wav, decode.json); see the module docstring."""
    config = config or DecodeConfig()
    src, out = Path(src), Path(out_dir)
    config.check()
    fps = config.fps_fraction()
    size = int(config.size)
    started = time.perf_counter()

    info = probe_video(src)  # missing / not media / corrupt header / no video stream -> one-line errors
    if config.audio and not info.has_audio:
        raise Avatar3DError(
            f"{src}: has no audio track; the avatar is driven by speech, so record with sound "
            f"(or add a sound track: `ffmpeg -i {src.name} -i speech.wav -map 0:v -map 1:a -c:v copy with_audio.mp4`)"
        )
    record_path = out / RECORD_NAME
    record_path.unlink(missing_ok=True)  # the completion marker goes first

    t = time.perf_counter()
    scan = _scan(src, config, info.duration, progress)
    timings = {"scan_s": time.perf_counter() - t}
    t0 = float(scan.times.min())
    duration = scan.end_time - t0
    if duration < config.min_duration_s:
        raise Avatar3DError(
            f"{src}: video is only {duration:.2f} s long; give at least {config.min_duration_s:g} s "
            f"(a few minutes of speech for a good avatar)"
        )

    mapping = frame_map(scan.times, scan.end_time, fps)
    n_out = int(mapping.size)
    audio: Optional[np.ndarray] = None
    offset = 0.0
    if config.audio:
        t = time.perf_counter()
        audio, offset = _audio(src, config, t0, n_out, fps)
        timings["audio_s"] = time.perf_counter() - t
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        if peak < config.silence_peak:
            raise Avatar3DError(
                f"{src}: the audio track is silent (peak {peak:.1e}); the avatar learns from speech, so check the "
                f"microphone / mute setting and record again"
            )

    uw, uh = scan.orientation.upright_size(scan.width, scan.height)
    face_size: Optional[float] = None
    if config.crop_box is not None:
        x0, y0, side = (int(v) for v in config.crop_box)
        crop = CropBox(x0, y0, side, size)
    else:
        if not scan.boxes:
            small = _small_face_px(src, scan.orientation) if min(uw, uh) >= MIN_FACE_PX else min(uw, uh)
            if small is not None:
                raise _face_too_small(src, small, min(uw, uh))
            raise Avatar3DError(
                f"{src}: no face found in the {scan.n_sampled} sampled frames; film the person facing the camera "
                f"in good light, or set decode.crop_box: [x0, y0, side] in a --config YAML to crop by hand"
            )
        crop, face_size = plan_crop(np.asarray(scan.boxes), uw, uh, config)
        if face_size < MIN_FACE_PX:
            raise _face_too_small(src, int(round(face_size)), min(uw, uh))

    # pass 2: write frames (+ audio preview) and audio.wav
    t = time.perf_counter()
    audio_path = out / AUDIO_NAME
    if audio is not None:
        write_wav(audio_path, audio, config.audio_rate)
    else:
        audio_path.unlink(missing_ok=True)  # a stale track would not match the new frames
    written = 0
    with VideoWriter(out / FRAMES_NAME, fps, audio=audio, sample_rate=config.audio_rate if audio is not None else None,
                     crf=config.crf, size=(size, size)) as writer:
        container, stream = _open(src)
        bar = tqdm(total=n_out, desc="decode: write", unit="frame", disable=not progress, leave=False)
        try:
            for i, frame in enumerate(container.decode(stream)):
                if written >= n_out:
                    break
                if mapping[written] != i:
                    continue  # a dropped source frame: skip the RGB conversion
                img = crop.apply(scan.orientation.apply(frame.to_ndarray(format="rgb24")))
                while written < n_out and mapping[written] == i:
                    writer.write(img)
                    written += 1
                    bar.update(1)
        except av.FFmpegError as exc:
            raise Avatar3DError(
                f"{src}: corrupt video data on the second pass ({exc.strerror or type(exc).__name__}); re-export the file"
            ) from exc
        finally:
            container.close()
            bar.close()
        if written != n_out:
            raise Avatar3DError(
                f"{src}: the second decode pass gave fewer frames ({written} of {n_out}); re-export the file"
            )
    timings["write_s"] = time.perf_counter() - t

    used = np.unique(mapping)
    diffs = np.diff(np.sort(scan.times))
    vfr = bool(diffs.size > 1 and (diffs.max() - diffs.min()) > 0.02 * max(float(np.median(diffs)), 1e-9))
    o = scan.orientation
    result = DecodeResult(
        source=str(src.resolve()),
        frames=FRAMES_NAME,
        audio=AUDIO_NAME if audio is not None else None,
        fps=float(fps),
        fps_fraction=f"{fps.numerator}/{fps.denominator}",
        size=size,
        n_frames=n_out,
        source_size=(scan.width, scan.height),
        upright_size=(uw, uh),
        source_fps=len(scan.times) / duration,
        source_vfr=vfr,
        n_source_frames=len(scan.times),
        n_duplicated=n_out - int(used.size),
        n_dropped=len(scan.times) - int(used.size),
        rotation=o.rotation,
        orientation={"transpose": o.transpose, "flip_x": o.flip_x, "flip_y": o.flip_y,
                     "rotation": o.rotation, "source": o.source},
        crop={"x0": crop.x0, "y0": crop.y0, "side": crop.side, "scale": crop.scale},
        face_size_px=face_size,
        face_samples=scan.n_sampled,
        face_found=len(scan.boxes),
        audio_rate=int(config.audio_rate) if audio is not None else None,
        audio_offset_s=offset,
        wall_s=time.perf_counter() - started,
        timings=timings,
    )
    write_json_atomic(record_path, asdict(result))
    return result
