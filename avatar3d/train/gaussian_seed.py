"""Where the Gaussian head starts: the subject's fitted face mesh, the visual hull and the frames' colours.

Why seeded, not random: on a CPU budget of a few thousand steps, Gaussians must start where the
head is.  Face Gaussians start on the tracked face mesh (the subject's identity and depth scale,
as the tracker fitted them); hair, ears and neck start on the surface of the visual hull the
parsing masks carve (train/hull.py), away from the face mesh; the mouth interior starts as a
dark blob behind the lips, its part below the lip line bound to the jaw; every Gaussian starts with the mean colour of the pixels it projects
to in a few training frames.
"""
from __future__ import annotations

import numpy as np
import torch

from avatar3d.dataset.contract import TRACKING
from avatar3d.dataset.reader import SubjectData
from avatar3d.errors import Avatar3DError
from avatar3d.face import landmark_sets as lm
from avatar3d.face.model import MorphableModel
from avatar3d.face.motion_regions import face_motion_regions
from avatar3d.gaussians.head import GaussianHead, GaussianHeadConfig, rgb_to_sh_dc
from avatar3d.nerf.occupancy import OccupancyGrid
from avatar3d.train.hull import carve_head_hull

BLINK_SHAPES = ("eyeBlinkLeft", "eyeBlinkRight")  # the shapes the motion vector's blink pair (left, right) drives
FACE_CLEARANCE_M = 0.012  # hull cells nearer the face mesh than this are the face Gaussians' job
JAW_BLEND_M = 0.002  # mouth-interior Gaussians go from upper-teeth rigid to jaw-bound over ~this height at the lip line


def subject_face(data: SubjectData, model: MorphableModel) -> tuple[np.ndarray, np.ndarray]:
    """(rest vertices [V, 3], expression basis [Ke, V, 3]) of the subject as tracked: identity and depth scale applied."""
    path = data.root / TRACKING
    with np.load(path, allow_pickle=False) as z:
        identity = z["identity"].astype(np.float64) if "identity" in z.files else np.zeros(model.n_identity)
        depth = float(z["depth_scale"]) if "depth_scale" in z.files else 1.0
    if identity.shape[0] != model.n_identity:
        raise Avatar3DError(f"{path}: {identity.shape[0]} identity coefficients but face model {model.name!r} has "
                            f"{model.n_identity}; train with the face model the clip was tracked with")
    base = model.mean.astype(np.float64) + np.tensordot(identity, model.identity_basis, axes=1)
    basis = model.expression_basis.astype(np.float64).copy()
    base[:, 2] *= depth
    basis[..., 2] *= depth
    return base.astype(np.float32), basis.astype(np.float32)


def motion_map(expression_names: list[str], n_blink: int, model: MorphableModel) -> np.ndarray:
    """float32 [Ke + n_blink, model Ke]: motion vector -> blendshape weights.

    Tracked channels drive the shape of the same name; the blink pair (the eyelid measure the
    avatar is driven by) replaces the tracker's own eyeBlink channels, which landmark fitting
    barely moves (max 0.014 on the 16 s synthetic subject while the blink pair reaches 0.94).
    """
    names = list(model.expression_names)
    m = np.zeros((len(expression_names) + n_blink, len(names)), np.float32)
    for j, name in enumerate(expression_names):
        if name in names and not (n_blink and name in BLINK_SHAPES):
            m[j, names.index(name)] = 1.0
    for k, name in enumerate(BLINK_SHAPES[:n_blink]):
        if name in names:
            m[len(expression_names) + k, names.index(name)] = 1.0
    return m


def _uniform_barycentric(n: int, rng: np.random.Generator) -> np.ndarray:
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    return np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1).astype(np.float32)


def _hull_surface(config: GaussianHeadConfig, data: SubjectData, neck_px: int) -> tuple[np.ndarray, float]:
    """Centres [M, 3] of the visual hull's surface cells, and the cell size (metres)."""
    grid = OccupancyGrid(config.head_aabb, config.hull_resolution)
    hull = carve_head_hull(grid, data.R, data.t, data.K, data.labels, data.train_ids, neck_px=neck_px)
    grid.set_occupancy(hull)
    idx = torch.nonzero(hull).squeeze(1)
    centres = grid.cell_points(idx)
    cell = float(grid.geometry.tables()["mip_cell"][0].min())
    inside = torch.ones(len(idx), dtype=torch.bool)
    for axis in range(3):
        for sign in (-1.0, 1.0):
            step = torch.zeros(3)
            step[axis] = sign * cell
            inside &= grid.occupied(centres + step)
    return centres[~inside].numpy(), cell


def _mean_colours(head: GaussianHead, data: SubjectData, n_frames: int = 12) -> torch.Tensor:
    """[N, 3]: each Gaussian's mean colour over the head pixels it projects to in a few training frames (0.5 if none)."""
    ids = data.train_ids[np.linspace(0, len(data.train_ids) - 1, min(n_frames, len(data.train_ids))).astype(int)]
    total, count = torch.zeros(head.n_gaussians, 3), torch.zeros(head.n_gaussians)
    r = data.resolution
    for i in ids:
        with torch.no_grad():
            means = head(torch.from_numpy(data.motion([int(i)])[0])).means.double().numpy()
        cam = means @ data.R[i].T + data.t[i]
        z = np.maximum(cam[:, 2], 1e-6)
        u = np.floor(data.K[0, 0] * cam[:, 0] / z + data.K[0, 2]).astype(np.int64)
        v = np.floor(data.K[1, 1] * cam[:, 1] / z + data.K[1, 2]).astype(np.int64)
        ok = (u >= 0) & (u < r) & (v >= 0) & (v < r)
        lab = np.asarray(data.labels[int(i)])
        ok[ok] &= (lab[v[ok], u[ok]] == 1) | (lab[v[ok], u[ok]] == 3)
        img = data.image(int(i))
        total[ok] += torch.from_numpy(img[v[ok], u[ok]])
        count[ok] += 1
    return torch.where(count[:, None] > 0, total / count.clamp_min(1)[:, None], torch.full_like(total, 0.5))


def seed_head(config: GaussianHeadConfig, data: SubjectData, model: MorphableModel, *, neck_px: int,
              seed: int) -> GaussianHead:  # fmt: skip
    """A Gaussian head for ``data`` at its starting point (see the module docstring)."""
    rng = np.random.default_rng(seed)
    base, basis = subject_face(data, model)
    tris = model.triangles.astype(np.int64)
    mmap = motion_map(list(data.expression_names), data.blink.shape[1], model)
    n_face = len(tris) * config.per_triangle
    surface, cell = _hull_surface(config, data, neck_px)
    dist = np.sqrt(((surface[:, None, :] - base[None, ::4, :]) ** 2).sum(-1)).min(1)  # every 4th vertex: coarse is enough
    surface = surface[dist > FACE_CLEARANCE_M]
    if len(surface) == 0:
        raise Avatar3DError(f"{data.root}: the head masks carve an empty hull around the tracked poses; check the "
                            "subject's parsing and tracking (`avatar3d prep` preview)")
    n_hair = config.n_rigid
    hair = surface[rng.integers(0, len(surface), n_hair)] + (rng.random((n_hair, 3)) - 0.5) * cell
    lips = model.landmarks_from_vertices(base)[lm.LIPS]
    centre = lips.mean(0) + np.array([0.0, 0.0, -0.012])
    mouth = centre + rng.normal(size=(config.n_mouth, 3)) * np.array([0.012, 0.006, 0.004])
    rigid = np.concatenate([hair, mouth]).astype(np.float32)
    head = GaussianHead(config, mmap.shape[0], base.shape[0], basis.shape[0], len(tris), n_face, len(rigid),
                        n_jaw=len(lm.JAW), motion_regions=face_motion_regions(model))  # fmt: skip
    with torch.no_grad():
        head.base_vertices.copy_(torch.from_numpy(base))
        head.expression_basis.copy_(torch.from_numpy(basis))
        head.triangles.copy_(torch.from_numpy(tris))
        head.motion_map.copy_(torch.from_numpy(mmap))
        head.face_tri.copy_(torch.arange(len(tris)).repeat_interleave(config.per_triangle))
        head.face_bary.copy_(torch.from_numpy(_uniform_barycentric(n_face, rng)))
        corners = base[tris]
        edge = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=-1).mean(1)  # [F] mean edge length
        s = np.log(np.maximum(edge, 1e-4) * 0.5 / np.sqrt(config.per_triangle)).astype(np.float32)
        s = torch.from_numpy(s).repeat_interleave(config.per_triangle)
        head.face_log_scale.copy_(torch.stack([s, s, s + np.log(0.3)], 1))
        head.rigid_means.copy_(torch.from_numpy(rigid))
        head.jaw_vertices.copy_(torch.tensor(lm.JAW))
        below = (centre[1] - mouth[:, 1]) / JAW_BLEND_M  # canonical y is up: tongue and lower teeth are below
        head.rigid_jaw[n_hair:] = torch.from_numpy(1.0 / (1.0 + np.exp(-below))).float()
        train_motion = torch.from_numpy(data.motion(data.train_ids)).float()
        head.motion_centre.copy_(train_motion.mean(0))
        if head.residual is not None:
            head.residual.set_motion_statistics(train_motion)
        head.rigid_log_scale.fill_(float(np.log(0.6 * cell)))
        mouth_scale = float(np.log(0.004))
        head.rigid_log_scale[n_hair:] = mouth_scale
        logit = float(np.log(config.init_opacity / (1 - config.init_opacity)))
        head.face_opacity_logit.fill_(logit)
        head.rigid_opacity_logit.fill_(logit)
        colours = _mean_colours(head, data)
        colours[head.n_face + n_hair:] = 0.15  # the mouth interior starts dark
        dc = rgb_to_sh_dc(colours)
        head.face_sh[:, 0] = dc[: head.n_face]
        head.rigid_sh[:, 0] = dc[head.n_face:]
    return head
