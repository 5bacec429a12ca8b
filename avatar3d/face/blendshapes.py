"""Procedural ARKit-style expression blendshapes on the MediaPipe 468-vertex mesh.

We cannot ship scanned blendshapes, so each expression is written down as a
smooth, local displacement field built on the mean shape: handle vertices
(lip contours, eyelids, brows, mouth corners) get an anatomically sized
displacement and the rest of the face follows through either a smooth
geodesic falloff or a harmonic fill (Laplace equation on the mesh graph, which
never overshoots its handle values). Everything is linear: a weight ``w`` in
[0, 1] adds ``w * basis[k]`` to the mean, with no runtime nonlinearity.

Left/Right shapes are built once for the subject's left (+x) and mirrored
(x -> -x through the vertex mirror map), so the pairs are exact mirror images
when the mean is symmetric (the default mean is).

Magnitudes (displacement at weight 1): jawOpen is a 20 degree jaw rotation
about a temporomandibular pivot 2 cm below and 1 cm in front of the origin,
linearised, with the lower lip following the jaw at 80 %; eyeBlink moves the
upper lid onto the lower lid; smiles move the mouth corner ~8 mm out, ~7 mm
up, ~3 mm back; brows move 6-8 mm.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import dijkstra
from scipy.sparse.linalg import spsolve

from avatar3d.face.blendshape_names import ARKIT_NAMES
from avatar3d.face.landmark_sets import (BROW_INNER, BROW_LEFT, CHEEKS, CHIN, EYE_LEFT_LOWER, EYE_LEFT_UPPER, FACE_OVAL,
                                         LIP_INNER_LOWER, LIP_INNER_UPPER, LIP_OUTER_LOWER, LIP_OUTER_UPPER,
                                         MOUTH_CORNERS_INNER, MOUTH_CORNERS_OUTER, SUBNASALE)
from avatar3d.face.topology import triangles

# --- landmarks, named for the side the basis is built on (the subject's left, +x) ---------
MOUTH_CORNER_R, MOUTH_CORNER_L = MOUTH_CORNERS_OUTER
INNER_CORNER_R, INNER_CORNER_L = MOUTH_CORNERS_INNER
# Subject's left eye (+x), inner corner 362 to outer corner 263: index k pairs upper and lower lid.
LEFT_UPPER_LID = tuple(EYE_LEFT_UPPER[::-1])
LEFT_LOWER_LID = tuple(EYE_LEFT_LOWER[::-1])
LEFT_CHEEK = CHEEKS[1]

JAW_PIVOT = np.array([0.0, -0.02, 0.01])  # metres, canonical head space
JAW_OPEN_RAD = np.deg2rad(20.0)
LOWER_LIP_JAW_FOLLOW = 0.8

_FLIP = np.array([-1.0, 1.0, 1.0])


# --- mesh helpers (shared with identity.py and default_model.py) ------------
def mirror_map(vertices: np.ndarray) -> np.ndarray:
    """[V] int: index of each vertex's mirror partner (x -> -x), an involution.

    Found by optimal assignment of the mirrored cloud onto itself, so it needs
    a roughly frontal, centred shape (|x| symmetric within a few mm).
    """
    v = np.asarray(vertices, dtype=np.float64)
    m = v * _FLIP
    cost = ((v[:, None, :] - m[None, :, :]) ** 2).sum(-1)
    _, col = linear_sum_assignment(cost)
    if not np.array_equal(col[col], np.arange(len(v))):
        raise RuntimeError("mirror assignment is not an involution; is the shape frontal?")
    return col.astype(np.int64)


def mirror_field(field: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Mirror image of a [..., V, 3] field: value at v comes from mirror[v] with x negated."""
    return field[..., mirror, :] * _FLIP


def edge_graph(vertices: np.ndarray) -> sp.csr_matrix:
    """Symmetric sparse [V, V] matrix of mesh edge lengths."""
    tri = triangles()
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    e = np.unique(np.sort(e, axis=1), axis=0)
    length = np.linalg.norm(vertices[e[:, 0]] - vertices[e[:, 1]], axis=1)
    n = len(vertices)
    g = sp.coo_matrix((length, (e[:, 0], e[:, 1])), shape=(n, n))
    return (g + g.T).tocsr()


def geodesic(vertices: np.ndarray, sources) -> np.ndarray:
    """[V] shortest edge-path distance (metres) to the nearest source vertex."""
    return dijkstra(edge_graph(vertices), indices=np.atleast_1d(sources), min_only=True)


def falloff(d: np.ndarray, radius: float) -> np.ndarray:
    """Smooth bump: 1 at d=0, 0 from d=radius on, zero slope at both ends."""
    s = np.clip(np.asarray(d) / radius, 0.0, 1.0)
    return (1.0 - s * s) ** 2


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((np.asarray(x) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def harmonic_fill(vertices: np.ndarray, fixed: dict[int, np.ndarray], free: np.ndarray) -> np.ndarray:
    """Solve the graph Laplace equation (1/length weights) for the ``free`` vertices.

    ``fixed`` maps vertex -> value (scalar or vector); every vertex that is
    neither fixed nor free is held at zero. The result interpolates the handle
    values smoothly and stays within their range (maximum principle).
    """
    n = len(vertices)
    idx = np.fromiter(fixed.keys(), dtype=np.int64, count=len(fixed))
    vals = np.stack([np.atleast_1d(np.asarray(fixed[i], dtype=np.float64)) for i in idx])
    out = np.zeros((n, vals.shape[1]))
    out[idx] = vals
    free = np.asarray(free, dtype=bool).copy()
    free[idx] = False
    if not free.any():
        return out
    g = edge_graph(vertices)
    w = g.copy()
    w.data = 1.0 / np.maximum(w.data, 1e-9)
    lap = sp.diags(np.asarray(w.sum(axis=1)).ravel()) - w
    f = np.flatnonzero(free)
    c = np.flatnonzero(~free)
    a = lap[f][:, f].tocsc()
    b = -(lap[f][:, c] @ out[c])
    sol = spsolve(a, b)
    out[f] = sol.reshape(len(f), -1)
    return out


def _side_mask(vertices: np.ndarray, upper: Sequence[int], lower: Sequence[int]) -> np.ndarray:
    """True for vertices geodesically closer to the ``upper`` contour than to ``lower``."""
    core_u = [i for i in upper if i not in lower]
    core_l = [i for i in lower if i not in upper]
    return geodesic(vertices, core_u) < geodesic(vertices, core_l)


# --- the expression fields --------------------------------------------------
def jaw_weight(vertices: np.ndarray) -> np.ndarray:
    """[V] how much each vertex follows the mandible (1 chin/jaw line, 0 above the nose base)."""
    v = vertices
    fixed: dict[int, np.ndarray] = {}
    y_nose = v[SUBNASALE, 1]
    for i in np.flatnonzero(v[:, 1] > y_nose):
        fixed[int(i)] = np.array([0.0])
    for i in LIP_INNER_UPPER:
        fixed[i] = np.array([0.0])
    y_chin = v[CHIN, 1]
    y_mouth = v[MOUTH_CORNER_L, 1]
    # lower jaw border: the face-oval vertices well below the mouth
    for i in sorted(FACE_OVAL):
        if v[i, 1] < y_mouth - 0.4 * (y_mouth - y_chin):
            fixed[i] = np.array([1.0])
    for i in LIP_INNER_LOWER[1:-1]:
        fixed[i] = np.array([LOWER_LIP_JAW_FOLLOW])
    for i in (INNER_CORNER_L, INNER_CORNER_R):
        fixed[i] = np.array([0.5 * LOWER_LIP_JAW_FOLLOW])
    return harmonic_fill(v, fixed, np.ones(len(v), bool))[:, 0]


def jaw_rotation_field(vertices: np.ndarray, angle_rad: float) -> np.ndarray:
    """Linearised jaw rotation (about +x through JAW_PIVOT; positive opens) times the jaw weight."""
    r = vertices - JAW_PIVOT
    rot = angle_rad * np.stack([np.zeros(len(r)), -r[:, 2], r[:, 1]], axis=1)
    return jaw_weight(vertices)[:, None] * rot


def lips_meet_field(vertices: np.ndarray, upper_share: float = 0.5, radius: float = 0.025) -> np.ndarray:
    """Field that brings the inner lip contours together (upper lip moves ``upper_share`` of the gap)."""
    v = vertices
    fixed: dict[int, np.ndarray] = {}
    for u, lo in zip(LIP_INNER_UPPER, LIP_INNER_LOWER):  # MediaPipe's paired contour points
        if u != lo:
            fixed[u] = upper_share * (v[lo] - v[u])
            fixed[lo] = (1.0 - upper_share) * (v[u] - v[lo])
        else:
            fixed[u] = np.zeros(3)
    support = geodesic(v, list(LIP_INNER_UPPER) + list(LIP_INNER_LOWER)) < radius
    return harmonic_fill(v, fixed, support)


def _blob(v: np.ndarray, centre, radius: float, vec) -> np.ndarray:
    return falloff(geodesic(v, centre), radius)[:, None] * np.asarray(vec, dtype=np.float64)


def _left_half(v: np.ndarray, width: float = 0.006) -> np.ndarray:
    """Smooth [V] weight: 1 on the subject's left (+x), 0 on the right, 0.5 at the midline."""
    return smoothstep(v[:, 0], -width, width)


def _lid_field(v: np.ndarray, moving: Sequence[int], target_of: np.ndarray,
               still: Sequence[int], radius: float) -> np.ndarray:
    """Move one eyelid contour by ``target_of - v`` with a harmonic falloff on its side of the eye."""
    fixed: dict[int, np.ndarray] = {i: np.zeros(3) for i in still}
    for k, i in enumerate(moving):
        if i not in fixed:
            fixed[i] = target_of[k] - v[i]
    side = _side_mask(v, moving, still)
    support = side & (geodesic(v, list(moving)) < radius)
    return harmonic_fill(v, fixed, support)


def left_shapes(v: np.ndarray) -> dict[str, np.ndarray]:
    """Fields for the subject's left side; the right side is mirrored from these (the default
    model's builder also uses the smile to take the photo's smile out of the mean)."""
    mm = 1e-3
    out: dict[str, np.ndarray] = {}
    corner = [MOUTH_CORNER_L, INNER_CORNER_L]
    left = _left_half(v)[:, None]
    upper_side = _side_mask(v, LIP_INNER_UPPER, LIP_INNER_LOWER)[:, None]
    lips = list(LIP_OUTER_UPPER) + list(LIP_OUTER_LOWER) + list(LIP_INNER_UPPER) + list(LIP_INNER_LOWER)

    smile = _blob(v, corner, 0.032, [8 * mm, 7 * mm, -3 * mm])
    smile += _blob(v, LEFT_CHEEK, 0.03, [0.0, 3 * mm, 1 * mm])
    out["mouthSmileLeft"] = smile
    out["mouthFrownLeft"] = _blob(v, corner, 0.03, [1 * mm, -6 * mm, -1 * mm])
    out["mouthStretchLeft"] = _blob(v, corner, 0.035, [8 * mm, -2 * mm, -3 * mm])
    lip_w = falloff(geodesic(v, lips), 0.012)[:, None]
    toward = np.where(upper_side, -1.0, 1.0)  # upper lip down, lower lip up
    out["mouthPressLeft"] = left * lip_w * np.concatenate(
        [np.zeros_like(toward), 2.5 * mm * toward, np.full_like(toward, -1 * mm)], axis=1)
    lip_upper_half = [i for i in LIP_OUTER_UPPER + LIP_INNER_UPPER if v[i, 0] > -0.005]
    lip_lower_half = [i for i in LIP_OUTER_LOWER + LIP_INNER_LOWER if v[i, 0] > -0.005]
    upper_w = falloff(geodesic(v, lip_upper_half), 0.02)[:, None] * upper_side
    lower_w = falloff(geodesic(v, lip_lower_half), 0.02)[:, None] * ~upper_side
    out["mouthUpperUpLeft"] = left * upper_w * np.array([0.0, 5 * mm, 1 * mm])
    out["mouthLowerDownLeft"] = left * lower_w * np.array([0.0, -5 * mm, 1 * mm])
    out["eyeSquintLeft"] = _lid_field(
        v, LEFT_LOWER_LID, v[list(LEFT_LOWER_LID)] + np.array([0.0, 2 * mm, 0.5 * mm]),
        LEFT_UPPER_LID, 0.015)
    # blink: each upper-lid point lands on its MediaPipe partner on the lower lid
    target = v[list(LEFT_LOWER_LID)].copy()  # paired points: 386 -> 374, 385 -> 380, ...
    target[:, 2] += 0.5 * mm  # the closed lid lies on the cornea, slightly forward
    out["eyeBlinkLeft"] = _lid_field(v, LEFT_UPPER_LID, target, LEFT_LOWER_LID, 0.018)
    out["eyeWideLeft"] = _lid_field(
        v, LEFT_UPPER_LID, v[list(LEFT_UPPER_LID)] + np.array([0.0, 3 * mm, 0.0]),
        LEFT_LOWER_LID, 0.018)
    brow_outer = [283, 293, 276, 300]
    out["browDownLeft"] = _blob(v, BROW_LEFT, 0.025, [-2 * mm, -6 * mm, 0.0])
    out["browOuterUpLeft"] = _blob(v, brow_outer, 0.025, [0.0, 7 * mm, 0.0])
    out["cheekSquintLeft"] = _blob(v, LEFT_CHEEK, 0.025, [0.0, 4 * mm, 1 * mm])
    return out


def _bilateral_shapes(v: np.ndarray) -> dict[str, np.ndarray]:
    mm = 1e-3
    out: dict[str, np.ndarray] = {}
    out["jawOpen"] = jaw_rotation_field(v, JAW_OPEN_RAD)
    jw = jaw_weight(v)[:, None]
    out["jawForward"] = jw * np.array([0.0, 0.0, 6 * mm])
    out["jawLeft"] = jw * np.array([7 * mm, 0.0, 0.0])
    # mouthClose: cancels the lip part of jawOpen so the lips stay sealed with the jaw open
    opened = v + out["jawOpen"]
    close = lips_meet_field(opened, upper_share=0.5)
    out["mouthClose"] = close
    lips = list(LIP_OUTER_UPPER) + list(LIP_OUTER_LOWER) + list(LIP_INNER_UPPER) + list(LIP_INNER_LOWER)
    d_lips = geodesic(v, lips)
    lip_w = falloff(d_lips, 0.02)[:, None]
    upper_side = _side_mask(v, LIP_INNER_UPPER, LIP_INNER_LOWER)[:, None]
    sign_y = np.where(upper_side, 1.0, -1.0)
    to_mid = -np.clip(v[:, :1] / 0.03, -1.0, 1.0)  # corners inward, centre still
    out["mouthPucker"] = lip_w * np.concatenate(
        [8 * mm * to_mid, np.zeros_like(to_mid), np.full_like(to_mid, 6 * mm)], axis=1)
    out["mouthFunnel"] = lip_w * np.concatenate(
        [5 * mm * to_mid, 2.5 * mm * sign_y, np.full_like(to_mid, 5 * mm)], axis=1)
    mouth_w = falloff(geodesic(v, [MOUTH_CORNER_L, MOUTH_CORNER_R, 0, 17]), 0.03)[:, None]
    out["mouthLeft"] = np.maximum(mouth_w, lip_w) * np.array([8 * mm, 0.0, 0.0])
    upper_lip_w = falloff(geodesic(v, list(LIP_OUTER_UPPER[1:-1])), 0.012)[:, None] * upper_side
    lower_lip_w = falloff(geodesic(v, list(LIP_OUTER_LOWER[1:-1])), 0.012)[:, None] * ~upper_side
    out["mouthRollUpper"] = upper_lip_w * np.array([0.0, -3 * mm, -4 * mm])
    out["mouthRollLower"] = lower_lip_w * np.array([0.0, 3 * mm, -4 * mm])
    out["mouthShrugUpper"] = upper_lip_w * np.array([0.0, 3 * mm, 1 * mm])
    chin_w = falloff(geodesic(v, [17, 200, 199]), 0.025)[:, None] * ~upper_side
    out["mouthShrugLower"] = chin_w * np.array([0.0, 4 * mm, 2 * mm])
    out["browInnerUp"] = _blob(v, BROW_INNER, 0.03, [0.0, 8 * mm, 0.0])
    d = geodesic(v, list(CHEEKS))
    # puff along the outward surface normal, so it reads as volume
    out["cheekPuff"] = falloff(d, 0.035)[:, None] * 8 * mm * vertex_normals(v)
    return out


def vertex_normals(vertices: np.ndarray) -> np.ndarray:
    """[V, 3] unit area-weighted vertex normals (outward)."""
    tri = triangles()
    p = vertices[tri]
    fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    vn = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, tri[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def build_expression_basis(mean: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """[Ke, V, 3] float32 displacement basis (metres at weight 1) and its ARKit names."""
    v = np.asarray(mean, dtype=np.float64)
    mirror = mirror_map(v)
    fields: dict[str, np.ndarray] = {}
    for name, f in left_shapes(v).items():
        fields[name] = f
        fields[name[:-4] + "Right"] = mirror_field(f, mirror)
    bil = _bilateral_shapes(v)
    for name in ("jawLeft", "mouthLeft"):
        fields[name] = bil.pop(name)
        fields[name[:-4] + "Right"] = mirror_field(fields[name], mirror)
    for name, f in bil.items():
        fields[name] = 0.5 * (f + mirror_field(f, mirror))  # exactly symmetric
    missing = [n for n in ARKIT_NAMES if n not in fields]
    if missing:
        raise RuntimeError(f"blendshapes missing: {missing}")
    basis = np.stack([fields[n] for n in ARKIT_NAMES]).astype(np.float32)
    return basis, ARKIT_NAMES


__all__ = [
    "build_expression_basis", "mirror_map", "mirror_field", "geodesic",
    "falloff", "harmonic_fill", "jaw_rotation_field", "jaw_weight", "lips_meet_field",
    "vertex_normals", "edge_graph", "left_shapes",
]
