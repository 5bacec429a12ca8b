"""Lift the source photo into a textured, rigged 3D head (the generator's own rig).

Geometry: MediaPipe's 468 landmarks back-projected to metric camera space (their z
scaled by ``depth_scale``), expressed in canonical head space.  Around the face
oval a ring of extra vertices carries hair, ears and neck; the eye holes are filled
with photo-textured fans; behind the mouth hole sits a dark cavity with teeth.
Every textured vertex samples the photo where it projects at the photo's own pose,
so rendered at that pose the head reproduces the photo.

The rig (:mod:`avatar3d.synth.rig`) is deliberately not the tracker's linear face
model: the jaw is a rotation blended by skinning weights and the lips are driven by
their own displacement fields, so tracking is not judged on an inverse crime.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avatar3d.face import landmark_sets as rg
from avatar3d.face.default_model import FACE_WIDTH_M, ORIGIN_BEHIND  # same canonical frame as the face model
from avatar3d.face.topology import triangles as face_triangles
from avatar3d.synth.camera import Intrinsics
from avatar3d.synth.photo import SourcePhoto

JAW_MAX_DEG = 20.0  # jawOpen = 1 rotates the jaw by this much


@dataclass
class HeadMesh:
    """Render mesh + rig data in canonical head space (metres)."""

    rest: np.ndarray  # [V,3] vertices with the photo's own mouth
    uv: np.ndarray  # [V,2] source-image pixel each vertex samples
    triangles: np.ndarray  # [F,3]
    color: np.ndarray  # [V,3] flat colour of untextured parts (mouth cavity, teeth)
    textured: np.ndarray  # [V] 1 = sample the photo, 0 = use ``color``
    alpha: np.ndarray  # [V] opacity multiplier (feathered neck edge)
    jaw_weight: np.ndarray  # [V] skinning weight of the jaw rotation
    lip_weight: np.ndarray  # [V] how much mouthClose cancels the jaw here
    jaw_pivot: np.ndarray  # [3]
    closure: np.ndarray  # [V,3] brings the photo's parted lips together (the rig's rest)
    shapes: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [V,3] displacement at weight 1
    photo_rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # canonical -> camera at the photo pose
    photo_translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    _triangle_uva: np.ndarray | None = field(default=None, repr=False)
    n_face: int = 468

    @property
    def n_vertices(self) -> int:
        return self.rest.shape[0]

    @property
    def triangle_uva(self) -> np.ndarray:
        """[F,3,3] float32 (u, v, alpha) at each triangle corner, for the renderer."""
        if self._triangle_uva is None:
            uva = np.concatenate([self.uv, self.alpha[:, None]], axis=1).astype(np.float32)
            self._triangle_uva = uva[self.triangles]
        return self._triangle_uva

    @property
    def triangle_textured(self) -> np.ndarray:
        """[F] bool: the triangle samples the photo (else it has a flat colour)."""
        return self.textured[self.triangles[:, 0]] > 0.5

    @property
    def triangle_color_u8(self) -> np.ndarray:
        """[F,3] uint8 flat colour of untextured triangles."""
        return np.clip(self.color[self.triangles[:, 0]] * 255.0 + 0.5, 0, 255).astype(np.uint8)


def lift_landmarks(landmarks: np.ndarray, intr: Intrinsics, depth_scale: float) -> np.ndarray:
    """[468,3] MediaPipe pixels -> camera-space metres, face width fixed to ``FACE_WIDTH_M``."""
    pts = landmarks[:468].astype(np.float64)
    width_px = np.linalg.norm(pts[454, :2] - pts[234, :2])
    depth0 = intr.fx * FACE_WIDTH_M / width_px
    z = depth0 + depth_scale * (pts[:, 2] - pts[[234, 454], 2].mean()) * depth0 / intr.fx
    x = (pts[:, 0] - intr.cx) * z / intr.fx
    y = (pts[:, 1] - intr.cy) * z / intr.fy
    return np.stack([x, y, z], axis=1)


def face_frame(points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical -> camera (R, t) of a face given in camera space.

    x: mean right->left vector of symmetric landmark pairs; y: chin -> forehead,
    orthogonalised; z = x × y (out of the face).  Origin: midpoint of 234 and 454
    moved back by ``ORIGIN_BEHIND`` (as in the face model), near the ear canals.
    """
    pairs = np.array(rg.SYMMETRIC_PAIRS)
    x_axis = (points_cam[pairs[:, 1]] - points_cam[pairs[:, 0]]).mean(axis=0)
    x_axis /= np.linalg.norm(x_axis)
    up = points_cam[rg.FOREHEAD] - points_cam[rg.CHIN]
    up -= x_axis * (up @ x_axis)
    up /= np.linalg.norm(up)
    out = np.cross(x_axis, up)
    rotation = np.stack([x_axis, up, out], axis=1)
    origin = 0.5 * (points_cam[234] + points_cam[454]) - ORIGIN_BEHIND * out
    return rotation, origin


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def propagate(points: np.ndarray, controls: list[int], displacement: np.ndarray, radius: float,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Smooth displacement field from control vertices (exact at the controls), fading with distance."""
    ctrl = points[controls]
    d2 = ((points[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1)
    g = np.exp(-d2 / (2.0 * radius**2))
    total = g.sum(axis=1, keepdims=True)
    field_ = (g @ displacement) / np.maximum(total, 1e-12) * np.minimum(total, 1.0)
    if mask is not None:
        field_ *= mask[:, None]
    field_[controls] = displacement
    return field_


def _ring(face: np.ndarray, uv_face: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int]], np.ndarray, np.ndarray]:
    """Extra vertices outside the face oval (hair, ears, neck) in canonical space.

    Returns (vertices [R,3], triangles over [face ++ ring] indices, level [R], source oval vertex [R]).
    """
    oval = rg.FACE_OVAL
    centre = face[oval].mean(axis=0)
    steps_side = np.array([0.012, 0.028, 0.05, 0.075])
    steps_neck = np.array([0.02, 0.05, 0.085, 0.12])
    verts, level, origin = [], [], []
    for k, idx in enumerate(oval):
        p = face[idx]
        radial = p[:2] - centre[:2]
        radial /= np.linalg.norm(radial)
        downness = _smoothstep((-radial[1] - 0.3) / 0.5)  # 1 under the chin, 0 at the sides and top
        direction = (1 - downness) * radial + downness * np.array([0.35 * radial[0], -1.0])
        direction /= np.linalg.norm(direction)
        steps = (1 - downness) * steps_side + downness * steps_neck
        for j, s in enumerate(steps):
            recede = (1 - downness) * 0.55 * s + downness * (0.045 * min(1.0, s / 0.03))
            verts.append([p[0] + direction[0] * s, p[1] + direction[1] * s, p[2] - recede])
            level.append(j + 1)
            origin.append(idx)
    verts = np.array(verts)
    n_face = face.shape[0]
    n_levels = len(steps_side)
    tris: list[tuple[int, int, int]] = []

    def vid(k: int, j: int) -> int:
        k %= len(oval)
        return oval[k] if j == 0 else n_face + k * n_levels + (j - 1)

    for k in range(len(oval)):
        for j in range(n_levels):
            a, b, c, d = vid(k, j), vid(k + 1, j), vid(k + 1, j + 1), vid(k, j + 1)
            tris += [(a, c, b), (a, d, c)]
    return verts, tris, np.array(level), np.array(origin)


def _orient_outward(tris: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Flip triangles whose normal points into the head (towards -z relative to the head centre)."""
    p = verts[tris]
    normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    centre = p.mean(axis=1) - np.array([0.0, 0.0, -0.05])
    flip = (normal * centre).sum(axis=1) < 0
    out = tris.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out


def build_head_mesh(source: SourcePhoto, intr: Intrinsics, depth_scale: float = 1.0) -> HeadMesh:
    """Lift ``source`` into a rigged head mesh seen by camera ``intr``."""
    cam = lift_landmarks(source.landmarks, intr, depth_scale)
    rot, origin = face_frame(cam)
    face = (cam - origin) @ rot  # canonical
    uv_face = source.landmarks[:468, :2].astype(np.float64)

    ring, ring_tris, ring_level, ring_origin = _ring(face, uv_face)
    verts = [face, ring]
    tris = [face_triangles().astype(np.int64), np.array(ring_tris)]
    n = face.shape[0] + ring.shape[0]

    # Eye fans: a centre vertex slightly behind each eye opening.
    eye_centres = []
    for upper, lower in ((rg.EYE_RIGHT_UPPER, rg.EYE_RIGHT_LOWER), (rg.EYE_LEFT_UPPER, rg.EYE_LEFT_LOWER)):
        contour = rg.loop(upper, lower)
        c = face[contour].mean(axis=0) - np.array([0.0, 0.0, 0.002])
        eye_centres.append(c)
        fan = [(n, contour[i], contour[(i + 1) % len(contour)]) for i in range(len(contour))]
        tris.append(np.array(fan))
        n += 1
    verts.append(np.array(eye_centres))

    # Mouth cavity: dark back wall, upper teeth (skull) and lower teeth + tongue (jaw).
    inner = rg.loop(rg.LIP_INNER_UPPER, rg.LIP_INNER_LOWER)
    mouth = face[inner].mean(axis=0)
    half_w = 0.5 * np.abs(face[rg.MOUTH_CORNERS_OUTER[1], 0] - face[rg.MOUTH_CORNERS_OUTER[0], 0])
    upper_y = face[13, 1]
    lower_y = face[14, 1]
    lip_low = min(lower_y, upper_y)
    teeth_w = 0.6 * half_w
    cav_quads = [  # (x0, x1, y0, y1, z, colour, on_jaw)
        (-0.75 * half_w, 0.75 * half_w, mouth[1] - 0.022, mouth[1] + 0.008, mouth[2] - 0.014, (0.16, 0.04, 0.05), 0.0),
        (-teeth_w, teeth_w, upper_y - 0.006, upper_y + 0.005, mouth[2] - 0.008, (0.86, 0.84, 0.78), 0.0),
        (-0.9 * teeth_w, 0.9 * teeth_w, lip_low - 0.010, lip_low - 0.004, mouth[2] - 0.009, (0.80, 0.77, 0.70), 1.0),
        (-0.65 * half_w, 0.65 * half_w, mouth[1] - 0.02, lip_low - 0.009, mouth[2] - 0.012, (0.45, 0.12, 0.13), 1.0),
    ]
    cav_verts, cav_colors, cav_jaw = [], [], []
    cav_tris = []
    for x0, x1, y0, y1, z, colour, on_jaw in cav_quads:
        base = n + len(cav_verts)
        cav_verts += [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]
        cav_colors += [colour] * 4
        cav_jaw += [on_jaw] * 4
        cav_tris += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    verts.append(np.array(cav_verts))
    tris.append(np.array(cav_tris))

    rest = np.concatenate(verts, axis=0)
    n_total = rest.shape[0]
    n_face = face.shape[0]
    n_ring = ring.shape[0]
    n_textured = n_face + n_ring + 2
    all_tris = np.concatenate(tris, axis=0).astype(np.int32)
    all_tris[n_face * 0:] = all_tris  # keep dtype
    face_and_ring = all_tris[: len(face_triangles()) + len(ring_tris)]
    all_tris[: len(face_and_ring)] = _orient_outward(face_and_ring, rest)

    photo_cam = rest[:n_textured] @ rot.T + origin
    uv = np.zeros((n_total, 2))
    uv[:n_textured] = intr.project(photo_cam)[:, :2]
    uv[:n_face] = uv_face  # exact landmark pixels
    textured = np.zeros(n_total)
    textured[:n_textured] = 1.0
    color = np.zeros((n_total, 3))
    color[n_textured:] = np.array(cav_colors)
    alpha = np.ones(n_total)
    neck_feather = np.where(ring_level >= 4, 0.0, np.where(ring_level == 3, 0.6, 1.0))
    downness = _smoothstep((face[rg.FACE_OVAL].mean(axis=0)[1] - ring[:, 1] - 0.04) / 0.05)
    alpha[n_face:n_face + n_ring] = 1.0 - downness * (1.0 - neck_feather)

    # Jaw skinning: lower lip and chin follow the jaw; upper lip and cheeks above the corners do not.
    corner_y = face[list(rg.MOUTH_CORNERS_OUTER), 1].mean()
    jaw = _smoothstep((corner_y - 0.004 - rest[:, 1]) / 0.02)
    jaw *= 1.0 - _smoothstep((np.abs(rest[:, 0]) - 0.045) / 0.025)
    jaw[rg.LIP_OUTER_LOWER[1:-1] + rg.LIP_INNER_LOWER[1:-1]] = 1.0
    jaw[rg.LIP_OUTER_UPPER[1:-1] + rg.LIP_INNER_UPPER[1:-1]] = 0.0
    jaw[list(rg.MOUTH_CORNERS_OUTER) + list(rg.MOUTH_CORNERS_INNER)] = 0.5
    ring_jaw = jaw[ring_origin] * np.array([0.0, 0.7, 0.4, 0.15, 0.0])[ring_level]
    jaw[n_face:n_face + n_ring] = ring_jaw
    jaw[n_face + n_ring:n_textured] = 0.0
    jaw[n_textured:] = np.array(cav_jaw)
    lower_mask = jaw.copy()
    upper_mask = 1.0 - _smoothstep((corner_y - 0.002 - rest[:, 1]) / 0.006)
    upper_mask[rg.LIP_OUTER_LOWER[1:-1] + rg.LIP_INNER_LOWER[1:-1]] = 0.0
    lips = rg.LIP_OUTER_UPPER + rg.LIP_OUTER_LOWER + rg.LIP_INNER_UPPER + rg.LIP_INNER_LOWER
    lip_dist = np.min(np.linalg.norm(rest[:, None, :] - rest[None, lips, :], axis=-1), axis=1)
    lip_weight = 1.0 - _smoothstep(lip_dist / 0.012)
    lip_weight[n_textured:] = 0.0
    ear_mid = 0.5 * (rest[234] + rest[454])
    pivot = np.array([0.0, ear_mid[1] - 0.01, ear_mid[2] - 0.01])

    face_mask = np.zeros(n_total)
    face_mask[:n_textured] = 1.0
    shapes, closure = _expression_fields(rest, face_mask, upper_mask * face_mask, lower_mask * face_mask)
    # Eye-fan centres follow the mean of their contour.
    for e, (upper, lower) in enumerate(((rg.EYE_RIGHT_UPPER, rg.EYE_RIGHT_LOWER),
                                        (rg.EYE_LEFT_UPPER, rg.EYE_LEFT_LOWER))):
        contour = rg.loop(upper, lower)
        for name in list(shapes):
            shapes[name][n_face + n_ring + e] = shapes[name][contour].mean(axis=0)
        closure[n_face + n_ring + e] = closure[contour].mean(axis=0)
    return HeadMesh(rest=rest, uv=uv, triangles=all_tris, color=color, textured=textured, alpha=alpha,
                    jaw_weight=jaw, lip_weight=lip_weight, jaw_pivot=pivot, closure=closure, shapes=shapes,
                    photo_rotation=rot, photo_translation=origin, n_face=n_face)


def _expression_fields(rest: np.ndarray, face_mask: np.ndarray, upper: np.ndarray, lower: np.ndarray
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Displacement fields (metres at weight 1) of the rig's expressions, and the lip closure field."""
    ou, ol, iu, il = rg.LIP_OUTER_UPPER, rg.LIP_OUTER_LOWER, rg.LIP_INNER_UPPER, rg.LIP_INNER_LOWER
    side_left = _smoothstep((rest[:, 0] + 0.004) / 0.008)
    side_right = 1.0 - side_left
    mouth_centre = rest[iu + il].mean(axis=0)

    # Closure: inner lips meet at their midline; outer lips follow by 70 %.
    mid = 0.5 * (rest[iu[1:-1]] + rest[il[1:-1]])
    ctrl = iu[1:-1] + il[1:-1] + ou[1:-1] + ol[1:-1]
    d_inner_u = mid - rest[iu[1:-1]]
    d_inner_l = mid - rest[il[1:-1]]
    disp = np.concatenate([d_inner_u, d_inner_l, 0.7 * d_inner_u, 0.7 * d_inner_l])
    closure_u = propagate(rest, iu[1:-1] + ou[1:-1], np.concatenate([d_inner_u, 0.7 * d_inner_u]), 0.008, upper)
    closure_l = propagate(rest, il[1:-1] + ol[1:-1], np.concatenate([d_inner_l, 0.7 * d_inner_l]), 0.008, lower)
    closure = (closure_u + closure_l) * face_mask[:, None]
    closure[ctrl] = disp

    shapes: dict[str, np.ndarray] = {}

    def lip_field(controls: list[int], vectors: np.ndarray, radius: float, mask: np.ndarray) -> np.ndarray:
        return propagate(rest, controls, np.asarray(vectors, dtype=float), radius, mask) * face_mask[:, None]

    for side, sign, corner_o, corner_i in (("Left", 1.0, 291, 308), ("Right", -1.0, 61, 78)):
        s = side_left if side == "Left" else side_right
        shapes[f"mouthSmile{side}"] = lip_field([corner_o, corner_i], [[sign * 0.005, 0.006, -0.003]] * 2, 0.014, face_mask)
        shapes[f"mouthStretch{side}"] = lip_field([corner_o, corner_i], [[sign * 0.006, -0.002, -0.001]] * 2, 0.014, face_mask)
        half_ou = [i for i in ou[1:-1] if sign * rest[i, 0] > -0.002]
        half_ol = [i for i in ol[1:-1] if sign * rest[i, 0] > -0.002]
        half_iu = [i for i in iu[1:-1] if sign * rest[i, 0] > -0.002]
        half_il = [i for i in il[1:-1] if sign * rest[i, 0] > -0.002]
        press = lip_field(half_ou + half_ol, [[0, -0.0015, -0.0005]] * len(half_ou) + [[0, 0.0015, -0.0005]] * len(half_ol),
                          0.008, face_mask) * s[:, None]
        shapes[f"mouthPress{side}"] = press
        shapes[f"mouthUpperUp{side}"] = lip_field(half_ou + half_iu, [[0, 0.004, 0.001]] * (len(half_ou) + len(half_iu)),
                                                  0.01, upper) * s[:, None]
        shapes[f"mouthLowerDown{side}"] = lip_field(half_ol + half_il, [[0, -0.004, 0.001]] * (len(half_ol) + len(half_il)),
                                                    0.01, lower) * s[:, None]
    lips_o = ou[1:-1] + ol[1:-1]
    inward = (mouth_centre[None, :] - rest[lips_o]) * np.array([0.25, 0.0, 0.0])
    funnel = inward + np.array([0.0, 0.0, 0.006])
    funnel_open = np.concatenate([np.tile([0.0, 0.002, 0.005], (len(iu) - 2, 1)), np.tile([0.0, -0.003, 0.005], (len(il) - 2, 1))])
    shapes["mouthFunnel"] = lip_field(lips_o + iu[1:-1] + il[1:-1], np.concatenate([funnel, funnel_open]), 0.01, face_mask)
    corners = [61, 291, 78, 308]
    pucker_c = (mouth_centre[None, :] - rest[corners]) * np.array([0.3, 0.0, 0.0]) + np.array([0.0, 0.0, 0.006])
    pucker_l = (mouth_centre[None, :] - rest[lips_o]) * np.array([0.3, 0.0, 0.0]) + np.array([0.0, 0.0, 0.008])
    shapes["mouthPucker"] = lip_field(lips_o + corners, np.concatenate([pucker_l, pucker_c]), 0.01, face_mask)
    shapes["mouthRollLower"] = lip_field(ol[1:-1] + il[1:-1], [[0, 0.003, -0.003]] * (len(ol) - 2) + [[0, 0.001, -0.004]] * (len(il) - 2), 0.008, lower)
    shapes["mouthRollUpper"] = lip_field(ou[1:-1] + iu[1:-1], [[0, -0.003, -0.003]] * (len(ou) - 2) + [[0, -0.001, -0.004]] * (len(iu) - 2), 0.008, upper)
    shapes["mouthClose"] = np.zeros_like(rest)  # acts by cancelling the jaw on the lips (see rig)

    for side, upper_lid, lower_lid in (("Left", rg.EYE_LEFT_UPPER, rg.EYE_LEFT_LOWER),
                                       ("Right", rg.EYE_RIGHT_UPPER, rg.EYE_RIGHT_LOWER)):
        gap = rest[lower_lid[1:-1]] - rest[upper_lid[1:-1]]
        eye_centre = rest[upper_lid + lower_lid].mean(axis=0)
        above = _smoothstep((rest[:, 1] - eye_centre[1] + 0.001) / 0.003)
        below = 1.0 - above
        up_field = propagate(rest, upper_lid[1:-1], 0.85 * gap, 0.005, above * face_mask)
        low_field = propagate(rest, lower_lid[1:-1], -0.15 * gap, 0.004, below * face_mask)
        shapes[f"eyeBlink{side}"] = up_field + low_field
    brow_up = np.tile([0.0, 0.006, 0.0], (len(rg.BROW_INNER), 1))
    shapes["browInnerUp"] = propagate(rest, rg.BROW_INNER, brow_up, 0.012, face_mask)
    shapes["browDownLeft"] = propagate(rest, rg.BROW_LEFT, np.tile([-0.001, -0.004, 0.0], (len(rg.BROW_LEFT), 1)), 0.012, face_mask)
    shapes["browDownRight"] = propagate(rest, rg.BROW_RIGHT, np.tile([0.001, -0.004, 0.0], (len(rg.BROW_RIGHT), 1)), 0.012, face_mask)
    return shapes, closure
