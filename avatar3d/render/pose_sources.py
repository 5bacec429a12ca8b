"""Head-pose sources for `avatar3d render` beyond the training clip: a driving video, or a fitted motion model.

Why: ``--pose subject`` replays the training clip and ``static`` freezes it; a user may want
the head to move like someone in another video (``--pose VIDEO``), or to move on its own
without repeating the clip (``--pose generated``).  Both must keep the avatar inside the
poses it was trained on -- a NeRF head only knows those views, and its torso is conditioned
on where the head is -- so both are expressed *relative* to the avatar's mean training pose
and kept inside the 1st-99th percentile range of yaw, pitch, roll and translation its
training poses cover (:func:`pose_range`).

* **Driving video**: the video goes through the prep stages (decode, MediaPipe landmarks,
  face-model tracking) in a temporary folder; the tracked poses are kept (atomically, keyed
  by the video's sha256 and the settings) in ``$AVATAR3D_CACHE/driving-pose`` -- never in the
  avatar folder -- so rendering more speech with the same video does not track it again.
  Transfer: head-frame rotation relative to the clip's chordal-mean pose, applied to the
  avatar's mean pose; translation offsets from the clip's mean times the depth ratio (avatar
  depth / clip depth, so the head moves the same fraction of the picture); resampled to the
  avatar's fps (slerp), played forward and back when the video is shorter than the speech;
  frames outside the trained range are clamped to it and counted.
* **Generated**: a stationary AR(2) per axis of the 6-D offsets of the training poses from
  their mean (yaw, pitch, roll, translation), matched to each axis's variance and mean squared
  step (:func:`fit_head_motion`, on the process shared with ``--idle generated``:
  :mod:`avatar3d.render.ar2`), sampled with the render's seed from a real pair of consecutive
  training poses (no jump at frame 0).  It does not react to speech: nothing measured here
  ties the synthetic subjects' head motion to their speech, so a speech-energy modulation
  could not be checked and is left out.

Yaw/pitch/roll are those of the Live Link Face export (:func:`avatar3d.export.livelink.head_angles`),
taken relative to the mean pose instead of the frontal one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from avatar3d import resources
from avatar3d.dataset.contract import LANDMARK_FLAGS, LANDMARKS
from avatar3d.errors import Avatar3DError
from avatar3d.face.blendshape_names import UPPER_FACE_PREFIXES
from avatar3d.face.default_model import load_face_model
from avatar3d.io.atomic import save_npz_atomic
from avatar3d.io.hashing import file_sha256
from avatar3d.io.video import probe_video
from avatar3d.render.ar2 import StationaryAR2, consecutive_runs, critically_damped
from avatar3d.render.camera import RANGE_PERCENTILES
from avatar3d.render.frame_order import ping_pong
from data_prep.decode import DecodeConfig, decode
from data_prep.landmarks import DETECTED, INTERPOLATED, detect_landmarks
from data_prep.track import TrackConfig, track

CACHE_VERSION = 1
MIN_MODEL_FRAMES = 50  # consecutive training frames the head-motion model needs (2 s at 25 fps)


# ------------------------------------------------------------------ rotations and the trained range


def mean_rotation(R: np.ndarray) -> np.ndarray:
    """Chordal mean [3, 3] of rotations [N, 3, 3] (the rotation nearest their average matrix)."""
    u, _, vt = np.linalg.svd(np.asarray(R, np.float64).mean(axis=0))
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def relative_angles(R: np.ndarray, R_ref: np.ndarray) -> np.ndarray:
    """[N, 3] (yaw, pitch, roll) degrees of head-frame rotations ``R_ref^T R`` (Live Link Face signs)."""
    delta = np.einsum("ji,njk->nik", R_ref, np.asarray(R, np.float64))
    a = np.degrees(Rotation.from_matrix(delta).as_euler("YXZ"))  # delta = Ry(yaw) Rx(-pitch) Rz(-roll)
    return np.stack([a[:, 0], -a[:, 1], -a[:, 2]], axis=1)


def from_relative_angles(angles: np.ndarray, R_ref: np.ndarray) -> np.ndarray:
    """Inverse of :func:`relative_angles`: [N, 3] degrees -> rotations [N, 3, 3]."""
    a = np.asarray(angles, np.float64)
    delta = Rotation.from_euler("YXZ", np.stack([a[:, 0], -a[:, 1], -a[:, 2]], axis=1), degrees=True).as_matrix()
    return np.einsum("ij,njk->nik", R_ref, delta)


@dataclass(frozen=True)
class PoseRange:
    """The head poses an avatar was trained on, relative to their mean pose."""

    R_ref: np.ndarray  # [3, 3] head -> camera: the training poses' mean rotation
    t_ref: np.ndarray  # [3] metres: their mean translation
    angles: np.ndarray  # [2, 3] low/high (yaw, pitch, roll) degrees of R_ref^T R over the training frames
    offsets: np.ndarray  # [2, 3] low/high of t - t_ref (metres)

    def describe(self) -> str:
        (y0, p0, r0), (y1, p1, r1) = self.angles
        return f"yaw {y0:+.1f}..{y1:+.1f}°, pitch {p0:+.1f}..{p1:+.1f}°, roll {r0:+.1f}..{r1:+.1f}°"

    def clamp(self, R: np.ndarray, t: np.ndarray, tol_deg: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Poses moved into the range (per angle and per translation axis) and the [T] mask of moved frames."""
        ang = relative_angles(R, self.R_ref)
        held = np.clip(ang, self.angles[0], self.angles[1])
        off = np.asarray(t, np.float64) - self.t_ref
        held_off = np.clip(off, self.offsets[0], self.offsets[1])
        moved = (np.abs(held - ang) > tol_deg).any(axis=1) | (np.abs(held_off - off) > 1e-7).any(axis=1)
        R_out = np.where(moved[:, None, None], from_relative_angles(held, self.R_ref), R)
        return R_out, self.t_ref + held_off, moved


def pose_range(R: np.ndarray, t: np.ndarray, train_ids: np.ndarray) -> PoseRange:
    """The training poses' mean (chordal-mean rotation, mean translation) and their 1st-99th
    percentile range around it (the percentiles :mod:`avatar3d.render.camera` uses).

    The mean, not the most average *frame* (``--pose static``), is the anchor: relative motion
    is measured from a mean on the source side too, and on the 16 s test avatar the most
    average frame sits 2.2° (mostly roll) from the mean, which pushed a driving clip's motion
    against one side of the range (57 % of the frames of the avatar's own clip clamped).
    """
    ids = np.asarray(train_ids, dtype=np.int64)
    if len(ids) == 0:
        raise Avatar3DError("the avatar has no training frames to take a pose range from; retrain it")
    R, t = np.asarray(R, np.float64)[ids], np.asarray(t, np.float64)[ids]
    R_ref, t_ref = mean_rotation(R), t.mean(axis=0)
    lo, hi = RANGE_PERCENTILES
    return PoseRange(R_ref, t_ref, np.percentile(relative_angles(R, R_ref), [lo, hi], axis=0),
                     np.percentile(t - t_ref, [lo, hi], axis=0))  # fmt: skip


@dataclass
class PoseTrack:
    """Per-frame head pose from a pose source, with what it brings besides the pose."""

    R: np.ndarray  # [T, 3, 3] head -> camera
    t: np.ndarray  # [T, 3] metres
    clamped: int  # frames moved back into the trained range
    description: str  # one line for the log
    blink: np.ndarray | None = None  # [T, 2] the source's own blinks (driving video), if it has any
    upper: dict[str, np.ndarray] = field(default_factory=dict)  # upper-face channels in the avatar's scale


# ------------------------------------------------------------------ resampling


def frame_positions(n_src: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Fractional source-frame index of each output frame covering the same duration at ``dst_fps``."""
    n_out = max(1, int(round(n_src * dst_fps / src_fps)))
    return np.clip(np.arange(n_out) * (src_fps / dst_fps), 0.0, n_src - 1)


def interpolate_rows(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Rows of ``x`` [N, ...] linearly interpolated at fractional indices ``pos``."""
    x = np.asarray(x, np.float64)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(x) - 1)
    w = (pos - lo).reshape((-1,) + (1,) * (x.ndim - 1))
    return (1 - w) * x[lo] + w * x[hi]


def interpolate_rotations(R: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Rotations [N, 3, 3] slerped at fractional indices ``pos`` -> [len(pos), 3, 3]."""
    if len(R) == 1:
        return np.repeat(np.asarray(R, np.float64), len(pos), axis=0)
    return Slerp(np.arange(len(R)), Rotation.from_matrix(R))(pos).as_matrix()


# ------------------------------------------------------------------ driving video


@dataclass(frozen=True)
class VideoPoseConfig:
    """How a driving video is tracked (the prep stages' own settings)."""

    size: int = 512
    """Frames are cropped to the head and shoulders at this size; the tracker's pixel weights were tuned at 512."""
    max_fps: float = 60.0
    """Faster videos are decoded at this rate (the tracked poses are resampled to the avatar's fps anyway)."""
    track: TrackConfig = TrackConfig()
    """Face-model fit."""
    cache: bool = True
    """Keep the tracked poses in ``$AVATAR3D_CACHE/driving-pose`` (atomic, keyed by the video's sha256)."""


@dataclass
class DrivingTrack:
    """A driving video's tracked head: per frame at the video's own (decoded) rate."""

    source: Path
    fps: float
    R: np.ndarray  # [N, 3, 3] head -> the video's camera
    t: np.ndarray  # [N, 3] metres
    expression: np.ndarray  # [N, Ke] tracked coefficients
    expression_names: list[str]
    blink: np.ndarray  # [N, 2] eyelid closure, normalised by the clip's own open-eye ratio
    face: np.ndarray  # [N] bool: a face was detected (or interpolated over a short gap)
    track_seconds: float  # wall time of decode + landmarks + tracking when it was computed
    cached: bool = False

    @property
    def tracking_fps(self) -> float:
        return len(self.R) / max(self.track_seconds, 1e-9)


def cache_dir() -> Path:
    """The user cache (``$AVATAR3D_CACHE``, as the synthetic subject's calibration uses)."""
    return resources.cache_dir()


def check_driving_video(path: str | Path) -> Path:
    """One-line errors for a ``--pose`` path that is missing or not a video (header check only: cheap)."""
    path = Path(path)
    hint = "give a video of a face or one of subject, static, generated"
    if not path.exists():
        raise Avatar3DError(f"--pose {path}: no such file; {hint}")
    if not path.is_file():
        raise Avatar3DError(f"--pose {path}: is not a file; {hint}")
    try:
        info = probe_video(path)
    except Avatar3DError as exc:
        raise Avatar3DError(f"--pose {path}: not a video ({exc}); {hint}") from None
    if info.n_frames < 2:
        raise Avatar3DError(f"--pose {path}: has {info.n_frames} frame(s); give a video of a face, not a still")
    return path


def _settings_key(path: Path, config: VideoPoseConfig) -> str:
    settings = json.dumps([CACHE_VERSION, config.size, config.max_fps, dataclasses.asdict(config.track)],
                          sort_keys=True)  # fmt: skip
    return f"{file_sha256(path)[:24]}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


def _load_cached(path: Path, source: Path) -> DrivingTrack | None:
    try:
        with np.load(path) as z:
            return DrivingTrack(source, float(z["fps"]), z["R"], z["t"], z["expression"],
                                [str(n) for n in z["expression_names"]], z["blink"], z["face"].astype(bool),
                                float(z["track_seconds"]), cached=True)  # fmt: skip
    except (OSError, KeyError, ValueError):
        return None  # unreadable: track again (and replace it)


def _no_face(exc: Avatar3DError) -> bool:
    text = str(exc)
    return "no face" in text or "have a face" in text


def track_driving_video(path: str | Path, config: VideoPoseConfig = VideoPoseConfig(), *, progress: bool = False,
                        log: Callable[[str], None] = print) -> DrivingTrack:  # fmt: skip
    """Decode, landmark and track ``path`` with the prep stages in a temporary folder (or take the cached result)."""
    path = check_driving_video(path)
    cached = cache_dir() / "driving-pose" / f"{_settings_key(path, config)}.npz" if config.cache else None
    if cached is not None and cached.is_file():
        hit = _load_cached(cached, path)
        if hit is not None:
            return hit
    fps = min(Fraction(probe_video(path).fps), Fraction(config.max_fps).limit_denominator(1001))
    started = time.perf_counter()
    log(f"[render] tracking the head in {path} ({float(fps):.2f} fps)")
    try:
        with tempfile.TemporaryDirectory(prefix="avatar3d-pose-") as tmp:
            decode(path, tmp, DecodeConfig(fps=float(fps), size=config.size, audio=False), progress=progress)
            detect_landmarks(tmp, progress=progress)
            landmarks = np.load(Path(tmp) / LANDMARKS)
            flags = np.load(Path(tmp) / LANDMARK_FLAGS)
            result = track(landmarks, config.size, config.size, load_face_model("default"), config.track,
                           progress=progress)  # fmt: skip
    except Avatar3DError as exc:
        if _no_face(exc):
            raise Avatar3DError(f"--pose {path}: no face found in the driving video; give a video in which one "
                                "person faces the camera") from None  # fmt: skip
        raise Avatar3DError(f"--pose {path}: cannot track the driving video: {exc}") from None
    seconds = time.perf_counter() - started
    face = np.isin(flags, (DETECTED, INTERPOLATED))
    out = DrivingTrack(path, float(fps), result.rotation.astype(np.float64), result.translation.astype(np.float64),
                       result.expression.astype(np.float32), list(result.expression_names),
                       result.blink.astype(np.float32), face, seconds)  # fmt: skip
    if cached is not None:
        save_npz_atomic(cached, fps=np.float64(out.fps), R=out.R, t=out.t, expression=out.expression,
                        expression_names=np.array(out.expression_names), blink=out.blink, face=out.face,
                        track_seconds=np.float64(seconds))  # fmt: skip
    return out


def transfer_upper_face(drive_expr: np.ndarray, drive_names: list[str], subject_expr: np.ndarray,
                        names: list[str]) -> dict[str, np.ndarray]:  # fmt: skip
    """Upper-face channels (eyes, brows, cheeks) of a driving clip in the avatar's scale.

    Both clips are tracked with the same face model and tracker, so a coefficient means the
    same deformation in both; only each fit's resting value differs (one clip's resting
    eyeWide tracked at 0.27 and 0.13 with different solver settings).  So the driving clip's
    offsets from its own median are added to the avatar's median, then clipped to the
    1st-99th percentile the avatar was trained on.  ``subject_expr``: the training frames'.
    """
    out: dict[str, np.ndarray] = {}
    lo, hi = RANGE_PERCENTILES
    for j, name in enumerate(names):
        if not name.startswith(UPPER_FACE_PREFIXES) or name not in drive_names:
            continue
        d = np.asarray(drive_expr[:, drive_names.index(name)], np.float64)
        s = np.asarray(subject_expr[:, j], np.float64)
        curve = np.median(s) + (d - np.median(d))
        out[name] = np.clip(curve, np.percentile(s, lo), np.percentile(s, hi)).astype(np.float32)
    return out


def video_pose(drive: DrivingTrack, R: np.ndarray, t: np.ndarray, train_ids: np.ndarray, fps: float, n: int, *,
               expression: np.ndarray | None = None,
               expression_names: list[str] | None = None) -> PoseTrack:  # fmt: skip
    """``n`` frames at ``fps`` of the driving clip's relative head motion on the avatar (see the module doc).

    The avatar's own ``R``/``t`` (all frames) and ``train_ids`` give the mean pose and the
    trained range.  Blinks come from the driving clip (eyelid closure normalised by each clip's
    own open-eye ratio, so the scales agree); upper-face channels via :func:`transfer_upper_face`
    when the avatar's ``expression``/``expression_names`` are given.
    """
    rng = pose_range(R, t, train_ids)
    face = drive.face if drive.face.sum() >= 2 else np.ones(len(drive.R), bool)
    R_mean, t_mean = mean_rotation(drive.R[face]), drive.t[face].mean(axis=0)
    delta = np.einsum("ji,njk->nik", R_mean, drive.R)  # head-frame rotation from the clip's mean pose
    offset = (drive.t - t_mean) * (rng.t_ref[2] / max(float(t_mean[2]), 1e-6))
    pos = frame_positions(len(drive.R), drive.fps, fps)
    order = ping_pong(np.arange(len(pos)), n)
    R_out = np.einsum("ij,njk->nik", rng.R_ref, interpolate_rotations(delta, pos)[order])
    t_out = rng.t_ref + interpolate_rows(offset, pos)[order]
    R_out, t_out, moved = rng.clamp(R_out, t_out)
    blink = interpolate_rows(drive.blink, pos)[order].astype(np.float32)
    upper: dict[str, np.ndarray] = {}
    if expression is not None and expression_names is not None:
        ids = np.asarray(train_ids, dtype=np.int64)
        shifted = transfer_upper_face(drive.expression, drive.expression_names, np.asarray(expression)[ids],
                                      list(expression_names))  # fmt: skip
        upper = {k: interpolate_rows(v, pos)[order].astype(np.float32) for k, v in shifted.items()}
    loops = "" if len(pos) >= n else f", played forward and back ({len(pos)} frames for {n})"
    desc = (f"head pose from {drive.source.name} ({len(drive.R)} frames at {drive.fps:.2f} fps -> {fps:g} fps{loops}); "
            f"{int(moved.sum())} of {n} frames clamped to the trained range ({rng.describe()})")  # fmt: skip
    return PoseTrack(R_out, t_out, int(moved.sum()), desc, blink, upper)


# ------------------------------------------------------------------ generated head motion


def pose_offsets(R: np.ndarray, t: np.ndarray, R_ref: np.ndarray, t_ref: np.ndarray) -> np.ndarray:
    """[N, 6] (yaw, pitch, roll) degrees of ``R_ref^T R`` and translation offset ``t - t_ref`` in millimetres."""
    return np.concatenate([relative_angles(R, R_ref), 1000.0 * (np.asarray(t, np.float64) - t_ref)], axis=1)


def poses_from_offsets(x: np.ndarray, R_ref: np.ndarray, t_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pose_offsets`: [N, 6] -> (R [N, 3, 3], t [N, 3])."""
    return from_relative_angles(x[:, :3], R_ref), t_ref + np.asarray(x[:, 3:], np.float64) / 1000.0


@dataclass(frozen=True)
class HeadMotionModel:
    """A stationary AR(2) on 6-D pose offsets (:class:`avatar3d.render.ar2.StationaryAR2`, one latent per axis).

    Offsets are :func:`pose_offsets` (degrees, millimetres) from ``R_ref``/``t_ref``.  While
    sampling, each frame's step is limited to the largest step the subject made (rotation and
    translation separately), so a rare large innovation cannot make the head jump, and each
    axis is held inside the trained range *in the recursion* (the next frame continues from the
    held value).  Clipping only the finished track instead left the head resting on a range
    edge in 30-47 % of the frames of the 16 s test subject (its poses are flatter-tailed than a
    Gaussian: kurtosis ~2); in the recursion 4-6 % are held, at the price of a spread ~15-30 %
    below the subject's.
    """

    R_ref: np.ndarray  # [3, 3]
    t_ref: np.ndarray  # [3]
    process: StationaryAR2  # on the offsets; max_step: degrees (angle norm), millimetres (translation norm)

    @property
    def low(self) -> np.ndarray:
        """[6] trained range of the offsets (1st percentile)."""
        return self.process.low

    @property
    def high(self) -> np.ndarray:
        """[6] (99th percentile)."""
        return self.process.high

    @property
    def spectral_radius(self) -> float:
        """Largest |eigenvalue| of the companion matrix: < 1 means stationary (no drift, no blow-up)."""
        return self.process.spectral_radius

    def sample_offsets(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """[n, 6] offsets continuing a randomly chosen real pair of consecutive training frames, and the
        [n] mask of frames where an axis was held at the trained range."""
        return self.process.sample(n, rng)

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` head poses (R [n, 3, 3], t [n, 3]) and the held mask; the same seed gives the same poses."""
        rng = np.random.default_rng([int(seed), 0x9E5E])  # its own stream: independent of the blink sampler's
        x, held = self.sample_offsets(n, rng)
        R, t = poses_from_offsets(x, self.R_ref, self.t_ref)
        return R, t, held


def fit_head_motion(R: np.ndarray, t: np.ndarray, train_ids: np.ndarray, *,
                    max_radius: float = 0.999) -> HeadMotionModel:  # fmt: skip
    """A critically damped AR(2) per axis (:func:`avatar3d.render.ar2.critically_damped`), fitted to two moments.

    Per axis of the training poses' offsets from their mean pose, the process's variance and
    mean squared step (inside runs of consecutive training frames) equal the subject's, so the
    spread and the RMS speed are the subject's by construction, and the double pole gives
    smooth, non-oscillating sway.  Why not a full Yule–Walker VAR(2): on a 15 s clip its lag
    covariances are fragile (two trackings of the same test clip gave heads moving 1.0x and
    1.5-2x the subject's speed); axes are independent here (cross-axis correlation is not modelled).
    """
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64)
    runs = [r for r in consecutive_runs(np.asarray(train_ids)) if len(r) >= 3]
    total = sum(len(r) for r in runs)
    if total < MIN_MODEL_FRAMES:
        raise Avatar3DError(f"--pose generated: the avatar has only {total} consecutive training frames; the "
                            f"head-motion model needs at least {MIN_MODEL_FRAMES}; use --pose subject")  # fmt: skip
    trained = pose_range(R, t, train_ids)
    xs = [pose_offsets(R[r], t[r], trained.R_ref, trained.t_ref) for r in runs]
    allx = np.concatenate(xs)
    raw_steps = np.concatenate([np.diff(x, axis=0) for x in xs])
    phi1, phi2, sigma = critically_damped(allx.var(axis=0), (raw_steps ** 2).mean(axis=0), max_radius)
    max_step = np.array([np.linalg.norm(raw_steps[:, part], axis=1).max() for part in (slice(0, 3), slice(3, 6))])
    starts = np.concatenate([np.stack([x[:-1], x[1:]], axis=1) for x in xs])
    low = np.concatenate([trained.angles[0], 1000.0 * trained.offsets[0]])
    high = np.concatenate([trained.angles[1], 1000.0 * trained.offsets[1]])
    process = StationaryAR2(allx.mean(axis=0), phi1, phi2, sigma, low, high, max_step, starts,
                            groups=((0, 1, 2), (3, 4, 5)))  # fmt: skip
    return HeadMotionModel(trained.R_ref, trained.t_ref, process)


def generated_pose(R: np.ndarray, t: np.ndarray, train_ids: np.ndarray, n: int, seed: int) -> PoseTrack:
    """``n`` frames of head motion sampled from the subject's fitted model, inside the trained range."""
    model = fit_head_motion(R, t, train_ids)
    R_out, t_out, held = model.sample(n, seed)
    desc = (f"head pose generated (AR(2) per axis fitted to the subject's training poses, seed {seed}); "
            f"{int(held.sum())} of {n} frames held at the edge of the trained range "
            f"(yaw {model.low[0]:+.1f}..{model.high[0]:+.1f}°, pitch {model.low[1]:+.1f}..{model.high[1]:+.1f}°, "
            f"roll {model.low[2]:+.1f}..{model.high[2]:+.1f}°)")  # fmt: skip
    return PoseTrack(R_out, t_out, int(held.sum()), desc)
