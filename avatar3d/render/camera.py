"""Camera control for `avatar3d render`: the training camera, an orbit, or a nerfstudio camera path.

Why it works: the head field lives in canonical head space and the renderer only needs the
head -> camera pose, so a camera moved around the head is the same as the head posed
differently in front of the training camera: head -> new camera = (training -> new camera)
after (head -> training camera).  Every camera mode therefore becomes a per-frame head pose.

What the flat layers do: the torso is a 2D field on the training image plane (a hash grid
deformed by where four head anchor points project) and the background is a plate of the
training view; neither has depth.  A moved camera sees each as a fronto-parallel plane --
the torso 3 cm behind the head origin, the plate 1 m behind it (:class:`LayerPlanes`; both
choices, the clip has no depth for them) -- so they shift and turn with parallax against the
head (a plane homography).  That is exact for a zoom and right to first order for the small
moves the supported range allows; a real torso is not flat, so a large orbit would show it
as a card.  The torso's *pose code* stays the training view's (how the neck bends is a
property of the head pose, not of the camera).

Supported range: a NeRF only knows the views it was trained on.  The range is the spread of
directions from which the training camera saw the head, in head space -- yaw (azimuth about
the head's up axis, + = the camera toward the head's +x) and pitch (elevation, + = camera
above the face) -- between the 1st and 99th percentile over the training frames, and a
camera distance from half the nearest to twice the farthest training distance (that last is
a choice, not a measurement).  The orbit stays inside; a camera path outside it is clamped,
with one warning line.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.errors import Avatar3DError

CAMERA_MODES = ("training", "orbit")
RANGE_PERCENTILES = (1.0, 99.0)
DISTANCE_FACTORS = (0.5, 2.0)  # nearest / farthest camera distance, relative to the training ones
ORBIT_PERIOD_S = 8.0  # about one orbit per 8 s, rounded so the orbit closes at the last frame
CLAMP_EPS_DEG = 0.01
# nerfstudio cameras are OpenGL-style (x right, y up, looking down -z); ours are OpenCV (y down, +z).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


# ------------------------------------------------------------------ view angles


def view_angles(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(yaw°, pitch°, distance m) of the camera seen from the head origin; R [..., 3, 3], t [..., 3] head -> camera."""
    centre = -np.einsum("...ji,...j->...i", R, t)  # camera centre in head space: -R^T t
    dist = np.linalg.norm(centre, axis=-1)
    v = centre / np.maximum(dist, 1e-12)[..., None]
    yaw = np.degrees(np.arctan2(v[..., 0], v[..., 2]))
    pitch = np.degrees(np.arcsin(np.clip(v[..., 1], -1.0, 1.0)))
    return yaw, pitch, dist


def _rot_x(deg: np.ndarray) -> np.ndarray:
    a = np.radians(np.asarray(deg, np.float64))
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_y(deg: np.ndarray) -> np.ndarray:
    a = np.radians(np.asarray(deg, np.float64))
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def move_view(R: np.ndarray, t: np.ndarray, yaw: np.ndarray, pitch: np.ndarray,
              distance: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Head poses seen from a camera moved around the head origin to (yaw°, pitch°[, distance m]).

    The camera is rotated rigidly about the head origin (so it keeps aiming at the same
    head-relative point) by G = Ry(yaw) Rx(-pitch) Rx(pitch0) Ry(-yaw0), which changes the
    view angles by exactly the requested amounts; as a head pose that is R G^T, t unchanged
    (or scaled along the line to the head origin when ``distance`` is given).
    """
    y0, p0, d0 = view_angles(R, t)
    G = _rot_y(yaw) @ _rot_x(-np.asarray(pitch)) @ _rot_x(p0) @ _rot_y(-y0)
    R2 = R @ np.swapaxes(G, -1, -2)
    scale = np.ones_like(d0) if distance is None else np.asarray(distance, np.float64) / np.maximum(d0, 1e-12)
    return R2, t * scale[..., None]


@dataclass(frozen=True)
class ViewRange:
    """Views of the head the avatar was trained on: yaw/pitch in degrees, distance in metres."""

    yaw: tuple[float, float]
    pitch: tuple[float, float]
    distance: tuple[float, float]
    typical_yaw: float  # median training view
    typical_pitch: float

    def describe(self) -> str:
        return (f"yaw {self.yaw[0]:+.1f}..{self.yaw[1]:+.1f}°, pitch {self.pitch[0]:+.1f}..{self.pitch[1]:+.1f}°, "
                f"distance {self.distance[0]:.2f}..{self.distance[1]:.2f} m")  # fmt: skip

    def clamp(self, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Poses moved (about the head origin) into the range; also the [T] mask of frames that were moved."""
        yaw, pitch, dist = view_angles(R, t)
        cy, cp = np.clip(yaw, *self.yaw), np.clip(pitch, *self.pitch)
        cd = np.clip(dist, *self.distance)
        moved = (np.abs(cy - yaw) > CLAMP_EPS_DEG) | (np.abs(cp - pitch) > CLAMP_EPS_DEG) | (np.abs(cd - dist) > 1e-6)
        R2, t2 = move_view(R, t, cy, cp, cd)
        return np.where(moved[..., None, None], R2, R), np.where(moved[..., None], t2, t), moved

    def contains(self, R: np.ndarray, t: np.ndarray, tol_deg: float = 0.05) -> np.ndarray:
        """[T] bool: whether each pose views the head from inside the range."""
        yaw, pitch, dist = view_angles(R, t)
        return ((yaw >= self.yaw[0] - tol_deg) & (yaw <= self.yaw[1] + tol_deg) & (pitch >= self.pitch[0] - tol_deg)
                & (pitch <= self.pitch[1] + tol_deg) & (dist >= self.distance[0] - 1e-6)
                & (dist <= self.distance[1] + 1e-6))  # fmt: skip


def supported_range(bundle: AvatarBundle) -> ViewRange:
    """The range of views the avatar's training frames cover (see the module docstring)."""
    ids = np.asarray(bundle.train_ids, dtype=np.int64)
    if len(ids) == 0:
        raise Avatar3DError("the avatar has no training frames; its view range is unknown -- retrain it")
    yaw, pitch, dist = view_angles(np.asarray(bundle.R, np.float64)[ids], np.asarray(bundle.t, np.float64)[ids])
    lo, hi = RANGE_PERCENTILES
    return ViewRange(yaw=(float(np.percentile(yaw, lo)), float(np.percentile(yaw, hi))),
                     pitch=(float(np.percentile(pitch, lo)), float(np.percentile(pitch, hi))),
                     distance=(float(dist.min() * DISTANCE_FACTORS[0]), float(dist.max() * DISTANCE_FACTORS[1])),
                     typical_yaw=float(np.median(yaw)), typical_pitch=float(np.median(pitch)))  # fmt: skip


# ------------------------------------------------------------------ camera tracks


@dataclass
class CameraTrack:
    """Per-frame rendered camera, as head poses (what the head field is rendered with)."""

    R: np.ndarray  # [T, 3, 3] head -> rendered camera
    t: np.ndarray  # [T, 3] metres
    focal_scale: np.ndarray  # [T] rendered focal length / training focal length
    clamped: int  # frames moved back into the supported range
    description: str


@dataclass(frozen=True)
class CameraPath:
    """A parsed nerfstudio camera path: OpenGL camera -> world (= the training camera) per keyframe."""

    source: Path
    c2w: np.ndarray  # [N, 4, 4]
    fov_deg: np.ndarray | None  # [N] vertical field of view, or None (keep the training focal)
    fps: float | None  # the path's own frame rate, when it states one


def _bad(path: Path, what: str) -> Avatar3DError:
    return Avatar3DError(f"{path}: {what}; give a nerfstudio camera path (a 'camera_path' list of "
                         "{'camera_to_world': 16 numbers, 'fov': degrees}) or --camera training|orbit")  # fmt: skip


def load_camera_path(path: str | Path) -> CameraPath:
    """Read and check a nerfstudio camera-path JSON (as the nerfstudio viewer exports it)."""
    path = Path(path)
    if not path.is_file():
        raise Avatar3DError(f"--camera {path}: no such file; give a camera-path .json, 'training' or 'orbit'")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _bad(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot be read ({exc})") from None
    cams = doc.get("camera_path") if isinstance(doc, dict) else None
    if not isinstance(cams, list) or not cams:
        raise _bad(path, "has no non-empty 'camera_path' list")
    c2w, fovs = [], []
    for k, cam in enumerate(cams):
        if not isinstance(cam, dict) or "camera_to_world" not in cam:
            raise _bad(path, f"camera_path[{k}] has no 'camera_to_world'")
        try:
            m = np.asarray(cam["camera_to_world"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise _bad(path, f"camera_path[{k}].camera_to_world is not a list of numbers") from None
        if m.size not in (12, 16):
            raise _bad(path, f"camera_path[{k}].camera_to_world needs 16 finite numbers (a row-major 4x4), "
                             f"got {m.size}")  # fmt: skip
        if not np.isfinite(m).all():
            j = int(np.flatnonzero(~np.isfinite(m))[0])
            raise _bad(path, f"camera_path[{k}].camera_to_world[{j}] is {m[j]}, not a finite number; "
                             "give finite numbers only")  # fmt: skip
        m = np.vstack([m.reshape(-1, 4)[:3], [0.0, 0.0, 0.0, 1.0]])
        rot = m[:3, :3]
        if np.abs(rot @ rot.T - np.eye(3)).max() > 1e-3 or np.linalg.det(rot) < 0:
            raise _bad(path, f"camera_path[{k}].camera_to_world is not a rigid transform (its rotation part is "
                             "not orthonormal: scaled scene?)")  # fmt: skip
        c2w.append(m)
        fov = cam.get("fov")
        if fov is not None:
            if not isinstance(fov, (int, float)) or not 1.0 <= float(fov) <= 170.0:
                raise _bad(path, f"camera_path[{k}].fov {fov!r} is not a vertical field of view in 1..170 degrees")
            fovs.append(float(fov))
    if fovs and len(fovs) != len(c2w):
        raise _bad(path, "'fov' is given for some cameras but not all")
    fps = doc.get("fps")
    if fps is not None and (not isinstance(fps, (int, float)) or not float(fps) > 0):
        raise _bad(path, f"'fps' {fps!r} is not a positive number")
    return CameraPath(path, np.stack(c2w), np.asarray(fovs) if fovs else None, None if fps is None else float(fps))


def parse_camera(spec: str | Path) -> str | CameraPath:
    """``training``, ``orbit`` or a loaded camera path; fails fast (before any rendering) on a bad path."""
    if str(spec) in CAMERA_MODES:
        return str(spec)
    if Path(spec).suffix.lower() != ".json":
        raise Avatar3DError(f"--camera {spec}: use training, orbit or a nerfstudio camera-path .json file")
    return load_camera_path(spec)


def orbit_offsets(n: int, fps: float, view: ViewRange, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """[n] yaw/pitch offsets (degrees) taking the view ``centre`` (yaw, pitch) around an ellipse filling the range.

    ``centre`` is the median view of the head poses being rendered, so a still head is orbited
    through exactly the trained range.  The ellipse starts at its point nearest no offset (the
    video opens close to the training camera) and closes at the last frame (a whole number of
    turns, ~ORBIT_PERIOD_S each).
    """
    turns = max(1, int(round(n / fps / ORBIT_PERIOD_S)))
    cy, cp = 0.5 * sum(view.yaw) - centre[0], 0.5 * sum(view.pitch) - centre[1]
    ay, ap = 0.5 * (view.yaw[1] - view.yaw[0]), 0.5 * (view.pitch[1] - view.pitch[0])
    grid = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
    start = grid[np.argmin((cy + ay * np.sin(grid)) ** 2 + (cp + ap * np.cos(grid)) ** 2)]
    phase = start + 2 * np.pi * turns * np.arange(n) / max(n, 1)
    return cy + ay * np.sin(phase), cp + ap * np.cos(phase)


def _path_frames(cam: CameraPath, n: int, fps: float) -> np.ndarray:
    """Index of the path camera for each of ``n`` frames: by time when the path has an fps, else stretched."""
    if cam.fps is not None:
        k = np.round(np.arange(n) / fps * cam.fps).astype(np.int64)
    else:
        k = np.round(np.arange(n) * (len(cam.c2w) - 1) / max(n - 1, 1)).astype(np.int64)
    return np.clip(k, 0, len(cam.c2w) - 1)


def camera_track(spec: str | CameraPath, R: np.ndarray, t: np.ndarray, bundle: AvatarBundle, *,
                 warn: Callable[[str], None] = _stderr) -> CameraTrack:  # fmt: skip
    """The rendered camera for head poses R [T, 3, 3], t [T, 3] (head -> training camera)."""
    R, t = np.asarray(R, np.float64), np.asarray(t, np.float64)
    n, fps = len(R), float(bundle.fps)
    ones = np.ones(n)
    if spec == "training":
        return CameraTrack(R.copy(), t.copy(), ones, 0, "training camera")
    view = supported_range(bundle)
    if spec == "orbit":
        yaw, pitch, _ = view_angles(R, t)
        dy, dp = orbit_offsets(n, fps, view, (float(np.median(yaw)), float(np.median(pitch))))
        ty, tp = np.clip(yaw + dy, *view.yaw), np.clip(pitch + dp, *view.pitch)
        held = int(((np.abs(ty - yaw - dy) > CLAMP_EPS_DEG) | (np.abs(tp - pitch - dp) > CLAMP_EPS_DEG)).sum())
        R2, t2 = move_view(R, t, ty, tp)
        return CameraTrack(R2, t2, ones, held, f"orbit within {view.describe()}")
    if not isinstance(spec, CameraPath):
        raise Avatar3DError(f"--camera {spec}: use training, orbit or a nerfstudio camera-path .json file")
    m = spec.c2w[_path_frames(spec, n, fps)]  # [T, 4, 4] OpenGL camera -> training camera (OpenGL axes)
    rot = _GL_TO_CV @ m[:, :3, :3] @ _GL_TO_CV  # new camera -> training camera, OpenCV axes
    pos = m[:, :3, 3] @ _GL_TO_CV  # new camera centre in the training camera (OpenCV)
    Rc = np.swapaxes(rot, -1, -2)  # training -> new camera
    R1 = Rc @ R
    t1 = np.einsum("nij,nj->ni", Rc, t - pos)
    R2, t2, moved = view.clamp(R1, t1)
    if moved.any():
        warn(f"warning: --camera {spec.source}: {int(moved.sum())} of {n} frames view the head from outside the "
             f"range this avatar was trained on ({view.describe()}); those views are clamped to it")  # fmt: skip
    focal = ones
    if spec.fov_deg is not None:
        r = float(bundle.resolution)
        f_train = float(np.asarray(bundle.K)[1, 1])
        focal = (r / 2.0) / np.tan(np.radians(spec.fov_deg[_path_frames(spec, n, fps)]) / 2.0) / f_train
    return CameraTrack(R2, t2, focal, int(moved.sum()), f"camera path {spec.source}")


@dataclass(frozen=True)
class Eye:
    """One rendered eye: the camera shifted along its own x axis by ``offset_m`` (0: the camera itself)."""

    offset_m: float = 0.0


def stereo_eyes(ipd_mm: float | None) -> tuple[Eye, ...]:
    """(centre,) without stereo; (left, right) eyes at -IPD/2 and +IPD/2 along the camera x axis."""
    if ipd_mm is None:
        return (Eye(),)
    if not (math.isfinite(ipd_mm) and 0.0 < ipd_mm <= 200.0):
        raise Avatar3DError(f"--stereo {ipd_mm}: give the interpupillary distance in millimetres, 0 < IPD <= 200 "
                            "(adults: ~54-74, typically 63)")  # fmt: skip
    half = ipd_mm / 2000.0
    return (Eye(-half), Eye(half))


class ViewRenderer:
    """Renders frame i of a track through a camera track, one image per eye (side by side for stereo)."""

    def __init__(self, avatar: Avatar, size: int, camera: CameraTrack, torso_R: np.ndarray,
                 torso_t: np.ndarray, motion: np.ndarray, eyes: tuple[Eye, ...] = (Eye(),)):  # fmt: skip
        dev = avatar.device
        self.avatar, self.size, self.eyes, self.camera = avatar, size, eyes, camera
        self.K = avatar.intrinsics(size)
        self.background = avatar.background(size)
        self.motion = torch.from_numpy(np.asarray(motion, np.float32)).to(dev)
        self.head_R = torch.from_numpy(camera.R).float().to(dev)
        self.head_t = torch.from_numpy(camera.t).float().to(dev)
        self.torso_R = torch.from_numpy(np.asarray(torso_R)).float().to(dev)
        self.torso_t = torch.from_numpy(np.asarray(torso_t)).float().to(dev)

    def __len__(self) -> int:
        return len(self.motion)

    def render(self, i: int) -> list[dict[str, torch.Tensor]]:
        """Views of frame ``i``, one per eye (left first)."""
        views = []
        scale = float(self.camera.focal_scale[i])
        for eye in self.eyes:
            views.append(self.avatar.render_view(self.K, self.head_R[i], self.head_t[i], self.motion[i],
                                                 self.background, self.size, torso_R=self.torso_R[i],
                                                 torso_t=self.torso_t[i], focal_scale=scale,
                                                 eye_offset_m=eye.offset_m))  # fmt: skip
        return views
