"""``transforms_train.json`` / ``transforms_val.json``: the subject's poses in the RAD-NeRF / ER-NeRF layout.

Why: those tools (and the many forks built on them) read a dataset through these two
files, so writing them lets a subject prepared here be trained there and back.

Layout (what their loaders read): top-level ``focal_len`` (px), ``cx``, ``cy`` and
``frames``, a list of ``{"img_id", "aud_id", "transform_matrix"}``.  ``img_id`` and
``aud_id`` are both the frame index (frame i of ``frames.mp4``, row i of the audio
features).  ``transform_matrix`` is camera-to-head: the inverse of the tracked head pose
(canonical head -> OpenCV camera), i.e. ``[R^T, -R^T t]``, expressed for an OpenGL-style
camera (x right, y up, z backward) as those tools expect:
``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)``.

Units are metres, as in RAD-NeRF's / ER-NeRF's own files (their tracker fits in decimetres and
divides translations by 10 when it writes them); a top-level ``"avatar3d"`` block states units,
camera convention and how the matrix was made (their loaders ignore unknown keys).  Frames the landmark stage excluded (flag 0) are left out.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np

from avatar3d.dataset.contract import LANDMARK_FLAGS, MANIFEST, TRANSFORMS_TRAIN, TRANSFORMS_VAL
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import write_json_atomic
from data_prep.fitted import load_tracking

PathLike = Union[str, Path]

__all__ = ["TRANSFORMS_FORMAT", "OPENCV_TO_OPENGL", "head_pose_to_c2w", "c2w_to_head_pose", "write_transforms",
           "read_transforms"]

TRANSFORMS_FORMAT = 1
TRAIN_NAME, VAL_NAME = TRANSFORMS_TRAIN, TRANSFORMS_VAL
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplied onto a camera-to-world matrix: flips the camera's y and z axes (its own inverse)."""


def head_pose_to_c2w(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[N,3,3], [N,3] head pose (head -> OpenCV camera) -> [N,4,4] OpenGL camera-to-head."""
    n = len(R)
    c2w = np.zeros((n, 4, 4))
    rt = np.transpose(R, (0, 2, 1))
    c2w[:, :3, :3] = rt
    c2w[:, :3, 3] = -np.einsum("nij,nj->ni", rt, t)
    c2w[:, 3, 3] = 1.0
    return c2w @ OPENCV_TO_OPENGL


def c2w_to_head_pose(c2w_gl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`head_pose_to_c2w`: [N,4,4] -> (R [N,3,3], t [N,3])."""
    c2w = np.asarray(c2w_gl, dtype=np.float64) @ OPENCV_TO_OPENGL
    R = np.transpose(c2w[:, :3, :3], (0, 2, 1))
    t = -np.einsum("nij,nj->ni", R, c2w[:, :3, 3])
    return R, t


def _split_and_intrinsics(subject: Path) -> tuple[dict, dict, dict]:
    """Split, intrinsics and size from ``manifest.json`` (standalone use on a finished subject)."""
    path = subject / MANIFEST
    if not path.is_file():
        raise Avatar3DError(f"{path}: not found; run `avatar3d prep` on the clip to make the subject folder")
    manifest = json.loads(path.read_text())
    if "split" not in manifest or "intrinsics" not in manifest:
        raise Avatar3DError(f"{path}: has no split / intrinsics (prep was interrupted); re-run `avatar3d prep`")
    return manifest["split"], manifest["intrinsics"], {"width": manifest.get("width"),
                                                       "height": manifest.get("height"), "fps": manifest.get("fps")}


def write_transforms(subject_dir: PathLike, summary: Optional[dict] = None) -> tuple[Path, Path]:
    """Write ``transforms_train.json`` and ``transforms_val.json`` into ``subject_dir``; returns their paths.

    ``summary`` gives ``split``, ``intrinsics`` (and ``width``, ``height``, ``fps``) when the
    caller has them (the prep pipeline, before it writes the manifest's summary); without
    it they are read from ``manifest.json``.
    """
    subject = Path(subject_dir)
    if summary is None:
        split, intrinsics, extra = _split_and_intrinsics(subject)
    else:
        split, intrinsics = summary["split"], summary["intrinsics"]
        extra = {k: summary.get(k) for k in ("width", "height", "fps")}
    tracking = load_tracking(subject)
    flags_path = subject / LANDMARK_FLAGS
    if not flags_path.is_file():
        raise Avatar3DError(f"{flags_path}: not found; run the landmarks stage (`avatar3d prep`) first")
    flags = np.load(flags_path, allow_pickle=False)
    if len(flags) != tracking.n_frames:
        raise Avatar3DError(f"{flags_path}: {len(flags)} frames but tracking.npz has {tracking.n_frames}; "
                            "re-run `avatar3d prep` so both come from the same clip")
    c2w = head_pose_to_c2w(tracking.R, tracking.t)
    paths = []
    for name, file_name in (("train", TRAIN_NAME), ("val", VAL_NAME)):
        start, end = (int(v) for v in split[name])
        keep = [i for i in range(start, end) if flags[i] != 0]
        content = {
            "focal_len": float(intrinsics["fx"]), "cx": float(intrinsics["cx"]), "cy": float(intrinsics["cy"]),
            "avatar3d": {
                "format_version": TRANSFORMS_FORMAT, "units": "m", "camera": "opengl",
                "transform_matrix": "camera-to-head: inverse of tracking.npz's head pose (R, t), "
                                    "then right-multiplied by diag(1,-1,-1,1) (OpenCV -> OpenGL camera axes)",
                "head_space": "canonical head, metres, +y up, +z out of the face; the model's z is scaled "
                              "by tracking.npz depth_scale before the pose",
                "split": name, "frame_range": [start, end],
                "excluded_frames": [i for i in range(start, end) if flags[i] == 0],
                "images": "frames.mp4 (frame img_id)", "audio": "audio_features.npz (row aud_id)", **extra,
            },
            "frames": [{"img_id": i, "aud_id": i, "transform_matrix": c2w[i].tolist()} for i in keep],
        }
        paths.append(write_json_atomic(subject / file_name, content))
    return paths[0], paths[1]


def read_transforms(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame ids [M], R [M,3,3], t [M,3]) back from a transforms json: the OpenCV head pose, in the
    file's units (metres, here and in RAD-NeRF's / ER-NeRF's own files)."""
    path = Path(path)
    if not path.is_file():
        raise Avatar3DError(f"{path}: not found; run `avatar3d prep` (transforms stage) on the clip")
    data = json.loads(path.read_text())
    ids = np.array([f["img_id"] for f in data["frames"]], dtype=np.int64)
    c2w = np.array([f["transform_matrix"] for f in data["frames"]], dtype=np.float64).reshape(-1, 4, 4)
    R, t = c2w_to_head_pose(c2w)
    return ids, R, t
