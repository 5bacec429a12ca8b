"""The open default morphable face model, and loading of any saved face model.

The mean shape comes from MediaPipe face mesh (a registry package) run on
``skimage.data.astronaut()`` (a public-domain photo shipped with
scikit-image); nothing from BFM/FLAME is used. Steps and choices:

* Landmarks in image space (x right, y down, z away; z in x's pixel scale)
  are flipped to canonical head space (x = subject's left, y up, z out of
  the face) and scaled so the 234-454 face width is 0.145 m.
* Head pose of the photo is removed: the left-right axis is the mean
  left-minus-right difference over all mirror vertex pairs, the up axis is
  chin (152) -> upper forehead (10) made orthogonal to it. The photo's pose
  measured this way is about 0.4 deg yaw, 10.9 deg pitch (head tipped back),
  3.1 deg roll.
* Depth: no z scale is applied. After pose removal the nose tip (landmark 4,
  the most anterior point) lies 0.107 m in front of the 234-454 line (adult
  range ~9-11 cm) and 0.047 m in front of the inner eye corners, so this
  photo's MediaPipe depth is not visibly flattened. ``Z_SCALE`` documents
  the (unit) factor.
* Origin: the midpoint of 234 and 454 moved back by ``ORIGIN_BEHIND`` =
  0.01 m, because those silhouette points lie in front of the ear canals.
* The shape is made exactly mirror-symmetric by averaging it with its mirror
  image (raw asymmetry was < 1.5 mm).
* She smiles with the lips apart (11 mm inner-lip gap). The jaw is rotated
  closed to take ``JAW_CLOSE_SHARE`` of the gap, the inner lip contours are
  then brought together (harmonic carry of the nearby lip vertices), and a
  fraction ``DESMILE`` of the procedural smile is subtracted so the mouth
  corners come back to about the lip line.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from avatar3d.errors import Avatar3DError
from avatar3d.face import blendshapes as bs
from avatar3d.face.identity import build_identity_basis
from avatar3d.face.landmark_sets import CHIN, FOREHEAD
from avatar3d.face.model import MorphableModel
from avatar3d.face.topology import N_VERTICES, triangles

FACE_WIDTH_M = 0.145
Z_SCALE = 1.0
ORIGIN_BEHIND = 0.01
JAW_CLOSE_SHARE = 0.6
DESMILE = 0.6
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "data" / "open_face_model.npz"
MODEL_NAME = "open-face-mediapipe468-v1"
# A few unambiguous mirror pairs (right, left) to seed the pose estimate.
_SEED_PAIRS = ((234, 454), (33, 263), (133, 362), (61, 291), (127, 356), (132, 361),
               (58, 288), (172, 397), (70, 300), (105, 334), (48, 278), (129, 358))


def detect_astronaut_landmarks() -> np.ndarray:
    """[468, 3] MediaPipe landmarks of skimage's astronaut photo, in pixels (x, y down, z away)."""
    import mediapipe as mp  # lazy: heavy (~1-2 s); only rebuilding the face model needs it
    from skimage import data  # lazy: heavy (~0.5 s); the astronaut photo, only for that rebuild

    img = np.ascontiguousarray(data.astronaut())
    h, w = img.shape[:2]
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                         refine_landmarks=False) as fm:
        res = fm.process(img)
    if not res.multi_face_landmarks:
        raise RuntimeError("MediaPipe found no face in skimage.data.astronaut()")
    lm = res.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in lm[:N_VERTICES]], dtype=np.float64)


def _face_frame(p: np.ndarray, pairs) -> np.ndarray:
    """[3, 3] columns = face x (subject's left), y (up), z (out) in the input frame."""
    d = np.sum([p[l] - p[r] for r, l in pairs], axis=0)
    x = d / np.linalg.norm(d)
    u = p[FOREHEAD] - p[CHIN]
    u = u - x * (u @ x)
    y = u / np.linalg.norm(u)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def canonicalise(points_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-space landmarks -> (canonical metric shape [468, 3], photo rotation [3, 3]).

    The rotation's columns are the face axes expressed in the flipped camera
    frame, so ``shape = (p - origin) @ R``.
    """
    p = np.asarray(points_px, dtype=np.float64) * np.array([1.0, -1.0, -Z_SCALE])
    p = p * (FACE_WIDTH_M / np.linalg.norm(p[234] - p[454]))
    origin = 0.5 * (p[234] + p[454])
    rot = _face_frame(p, _SEED_PAIRS)
    for _ in range(2):  # refine the left-right axis with every mirror pair
        q = (p - origin) @ rot
        mir = bs.mirror_map(q)
        pairs = [(i, int(mir[i])) for i in range(len(q)) if q[i, 0] < q[mir[i], 0]]
        rot = _face_frame(p, pairs)
    q = (p - origin) @ rot
    q[:, 2] += ORIGIN_BEHIND
    return q, rot


def symmetrise(shape: np.ndarray) -> np.ndarray:
    """Average with the mirror image; midline vertices get x = 0 exactly."""
    mir = bs.mirror_map(shape)
    return 0.5 * (shape + bs.mirror_field(shape, mir))


def inner_lip_gap(shape: np.ndarray) -> float:
    """Distance between the inner lip midpoints 13 and 14 (metres)."""
    return float(np.linalg.norm(shape[13] - shape[14]))


def close_mouth(shape: np.ndarray) -> np.ndarray:
    """Close the lips: jaw rotation for part of the gap, then the lip contours meet."""
    v = shape.copy()
    r14 = v[14] - bs.JAW_PIVOT
    gap_y = v[13, 1] - v[14, 1]
    # the lower lip follows the jaw at LOWER_LIP_JAW_FOLLOW; linearised dy = -angle * r_z
    angle = -JAW_CLOSE_SHARE * gap_y / (bs.LOWER_LIP_JAW_FOLLOW * r14[2])
    v = v + bs.jaw_rotation_field(v, angle)
    v = v + bs.lips_meet_field(v, upper_share=0.5)
    return v


def neutralise_smile(shape: np.ndarray) -> np.ndarray:
    """Subtract DESMILE of the procedural smile on both sides."""
    mir = bs.mirror_map(shape)
    left = bs.left_shapes(shape)["mouthSmileLeft"]
    return shape - DESMILE * (left + bs.mirror_field(left, mir))


def build_mean_shape(points_px: np.ndarray | None = None) -> np.ndarray:
    """[468, 3] float64 neutral, symmetric, metric mean shape."""
    if points_px is None:
        points_px = detect_astronaut_landmarks()
    shape, _ = canonicalise(points_px)
    shape = symmetrise(shape)
    shape = close_mouth(shape)
    shape = neutralise_smile(shape)
    return symmetrise(shape)


def build_default_model() -> MorphableModel:
    """Build the open default model from scratch (about a second on CPU)."""
    mean = build_mean_shape()
    expr, names = bs.build_expression_basis(mean)
    ident = build_identity_basis(mean)
    n = len(mean)
    return MorphableModel(
        name=MODEL_NAME,
        mean=mean.astype(np.float32),
        triangles=triangles().astype(np.int32),
        identity_basis=ident.astype(np.float32),
        expression_basis=expr.astype(np.float32),
        expression_names=tuple(names),
        landmark_faces=_own_vertex_faces(n),
        landmark_bary=_own_vertex_bary(n),
    )


def _own_vertex_faces(n: int) -> np.ndarray:
    """For each vertex, one triangle containing it (the landmark is that vertex)."""
    tri = triangles()
    faces = np.full(n, -1, dtype=np.int32)
    for f in range(len(tri) - 1, -1, -1):
        faces[tri[f]] = f
    return faces


def _own_vertex_bary(n: int) -> np.ndarray:
    tri = triangles()
    faces = _own_vertex_faces(n)
    bary = (tri[faces] == np.arange(n)[:, None]).astype(np.float32)
    return bary


def load_face_model(spec: str = "default") -> MorphableModel:
    """``"default"`` -> the shipped open model; anything else is a path to a saved .npz."""
    if spec == "default":
        if not DEFAULT_MODEL_PATH.is_file():
            raise Avatar3DError(
                f"{DEFAULT_MODEL_PATH}: shipped face model is missing; "
                "rebuild it with `python tools/build_face_model.py` or reinstall avatar3d")
        return MorphableModel.load(DEFAULT_MODEL_PATH)
    path = Path(os.path.expanduser(str(spec)))
    if path.is_dir() or (path.suffix and path.suffix != ".npz"):
        raise Avatar3DError(
            f"{path}: not a face model file; pass 'default' or a .npz saved by MorphableModel.save")
    return MorphableModel.load(path)
