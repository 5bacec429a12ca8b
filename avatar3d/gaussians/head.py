"""The Gaussian head: splats bound to the face model's triangles plus splats bound rigidly to the head.

Why bound to triangles (GaussianAvatars' idea): the tracked expression already says how the face
moves, through the face model's own blendshapes.  Deforming the mesh with a frame's motion and
placing each face Gaussian on its parent triangle (barycentric point + an offset in the triangle's
local frame, its rotation composed with the triangle's) makes the mouth open and the eyes close
with no learned motion at all; only appearance is learned.  Hair, ears, neck and the mouth interior
are not on the face mesh: those Gaussians ("rigid") live in canonical head space and turn with the
head pose only -- except the lower part of the mouth interior (tongue, lower teeth), which follows
the jaw: each rigid Gaussian has a jaw weight (0 for hair, ears, neck and the upper teeth), and the
jaw's motion in a frame is the rigid fit of the deformed mesh's jaw vertices to their rest places.

Everything is a plain torch op on [N, ...] tensors, so autograd carries the rasterizer's gradients
to every parameter.  The mesh (identity and depth scale of the subject applied), its blendshapes
and the map from the motion vector to blendshape weights are buffers: an avatar file renders
without the face model or the subject.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from avatar3d.gaussians.mirror import SH_C0
from avatar3d.gaussians.residual import EVERYWHERE, ResidualChange, ResidualConfig, ResidualDeformation

FACE, RIGID = "face", "rigid"
GROUP_PARAMS = {  # per-Gaussian tensors of each group (parameters, then buffers), sliced together by density control
    FACE: ("face_offset", "face_quat", "face_log_scale", "face_opacity_logit", "face_sh", "face_tri", "face_bary"),
    RIGID: ("rigid_means", "rigid_quat", "rigid_log_scale", "rigid_opacity_logit", "rigid_sh", "rigid_jaw"),
}
PER_GAUSSIAN_BUFFERS = ("face_tri", "face_bary", "rigid_jaw")
MIN_GAIN, MAX_GAIN = 0.25, 4.0  # bounds of the learned motion gain


@dataclass
class GaussianHeadConfig:
    """Shape of the Gaussian head (counts at the start; density control changes them during training)."""

    sh_degree: int = 1  # view-dependent colour: 0 (flat) .. 3
    per_triangle: int = 4  # face Gaussians per face-model triangle at the start
    n_rigid: int = 4000  # hair / ears / neck Gaussians seeded on the visual hull's surface
    n_mouth: int = 300  # mouth-interior Gaussians seeded behind the lips (those below the lip line follow the jaw)
    init_opacity: float = 0.5
    head_aabb: tuple[float, ...] = (-0.17, -0.22, -0.14, 0.17, 0.20, 0.17)
    """Canonical box (metres) the rigid Gaussians are seeded in: head, hair, ears, the top of the neck."""
    hull_resolution: int = 48  # visual-hull cells per axis over that box (seeding only)
    motion_gain: bool = False
    """Learn a gain per motion channel (around the training frames' mean) before the blendshapes: the tracker's
    fitted mouth channels move 0.4-0.5x as far as the lips do on real clips, and a mesh that opens too little
    cannot open the face Gaussians' mouth; the images set how far each channel really moves the face."""
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    """The learned motion-conditioned offset of the face Gaussians (avatar3d/gaussians/residual.py)."""


@dataclass
class GaussianSet:
    """Gaussians of one frame in canonical head space, the rasterizer's inputs."""

    means: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4] (w, x, y, z), any norm
    scales: torch.Tensor  # [N, 3] linear
    opacities: torch.Tensor  # [N]
    sh: torch.Tensor  # [N, K, 3]
    residual: torch.Tensor | None = None
    """[N_face, 10] the residual field's change this frame in units of its bounds (None: no residual field)."""


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """The degree-0 SH coefficient that renders colour ``rgb`` (the rasterizer adds 0.5)."""
    return (rgb - 0.5) / SH_C0


def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] rotations -> [..., 4] unit quaternions (w, x, y, z); the best-conditioned of four forms."""
    m = R
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    t = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    cands = torch.stack([
        torch.stack([t[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, t[..., 1], m01 + m10, m02 + m20], -1),
        torch.stack([m02 - m20, m01 + m10, t[..., 2], m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, t[..., 3]], -1),
    ], -2)  # fmt: skip  # [..., 4 forms, 4]: form k is quaternion * 4 q_k
    best = t.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    return nn.functional.normalize(q, dim=-1)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of [..., 4] (w, x, y, z): the rotation R(a) R(b)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)  # fmt: skip


def rigid_fit(rest: torch.Tensor, moved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R [3, 3], t [3]): the rotation and translation that best map points ``rest`` [J, 3] onto ``moved`` (Kabsch)."""
    pc, qc = rest.mean(0), moved.mean(0)
    u, _, vt = torch.linalg.svd((rest - pc).T @ (moved - qc))
    d = torch.sign(torch.linalg.det(vt.T @ u.T))
    R = vt.T @ torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d])) @ u.T
    return R, qc - R @ pc


def triangle_frames(vertices: torch.Tensor, triangles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per triangle: rotation [F, 3, 3] (columns: first edge, in-plane normal to it, face normal) and corners [F, 3, 3]."""
    corners = vertices[triangles]  # [F, 3 corners, 3]
    e1 = corners[:, 1] - corners[:, 0]
    e2 = corners[:, 2] - corners[:, 0]
    n = nn.functional.normalize(torch.cross(e1, e2, dim=-1), dim=-1, eps=1e-12)
    x = nn.functional.normalize(e1, dim=-1, eps=1e-12)
    y = torch.cross(n, x, dim=-1)
    return torch.stack([x, y, n], -1), corners


class GaussianHead(nn.Module):
    """Face Gaussians on the deformed face mesh + rigid Gaussians; :meth:`forward` gives one frame's set."""

    def __init__(self, config: GaussianHeadConfig, motion_dim: int, n_vertices: int, n_expression: int,
                 n_triangles: int, n_face: int, n_rigid: int, n_jaw: int = 0,
                 motion_regions: tuple[tuple[float, ...], ...] | None = None) -> None:  # fmt: skip
        """Zero-initialised tensors of these sizes: the seeding code (training) or a state dict (loading) fills them.

        ``n_jaw``: how many face-model vertices define the jaw's motion; ``motion_regions``: where the
        residual field may act (:func:`avatar3d.face.motion_regions.face_motion_regions`; a loaded state
        brings its own)."""
        super().__init__()
        self.config = config
        self.motion_dim = motion_dim
        k = (config.sh_degree + 1) ** 2
        self.register_buffer("base_vertices", torch.zeros(n_vertices, 3))  # the subject's rest face (metres)
        self.register_buffer("expression_basis", torch.zeros(n_expression, n_vertices, 3))
        self.register_buffer("triangles", torch.zeros(n_triangles, 3, dtype=torch.long))
        self.register_buffer("motion_map", torch.zeros(motion_dim, n_expression))  # motion vector -> blendshape weights
        self.register_buffer("motion_centre", torch.zeros(motion_dim))  # the training frames' mean motion
        self.motion_gain = nn.Parameter(torch.ones(motion_dim), requires_grad=config.motion_gain)
        self.register_buffer("face_tri", torch.zeros(n_face, dtype=torch.long))
        self.register_buffer("face_bary", torch.full((n_face, 3), 1.0 / 3.0))
        self.face_offset = nn.Parameter(torch.zeros(n_face, 3))  # in the triangle's frame (metres)
        self.face_quat = nn.Parameter(torch.tensor([1.0, 0, 0, 0]).repeat(n_face, 1))  # in the triangle's frame
        self.face_log_scale = nn.Parameter(torch.full((n_face, 3), -6.0))
        self.face_opacity_logit = nn.Parameter(torch.zeros(n_face))
        self.face_sh = nn.Parameter(torch.zeros(n_face, k, 3))
        self.rigid_means = nn.Parameter(torch.zeros(n_rigid, 3))
        self.rigid_quat = nn.Parameter(torch.tensor([1.0, 0, 0, 0]).repeat(n_rigid, 1))
        self.rigid_log_scale = nn.Parameter(torch.full((n_rigid, 3), -6.0))
        self.rigid_opacity_logit = nn.Parameter(torch.zeros(n_rigid))
        self.rigid_sh = nn.Parameter(torch.zeros(n_rigid, k, 3))
        self.register_buffer("rigid_jaw", torch.zeros(n_rigid))  # how much each rigid Gaussian follows the jaw
        self.register_buffer("jaw_vertices", torch.zeros(n_jaw, dtype=torch.long))
        regions = motion_regions if motion_regions else (EVERYWHERE,)
        self.residual = (ResidualDeformation(config.residual, motion_dim, config.head_aabb, regions)
                         if config.residual.enabled else None)  # fmt: skip

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Heads saved before the jaw binding kept the whole mouth interior rigid.
        state_dict.setdefault(prefix + "rigid_jaw", torch.zeros_like(self.rigid_jaw))
        state_dict.setdefault(prefix + "jaw_vertices", torch.zeros_like(self.jaw_vertices))
        # ...and before the motion gain, drove the blendshapes with the tracked motion as it is.
        state_dict.setdefault(prefix + "motion_centre", torch.zeros_like(self.motion_centre))
        state_dict.setdefault(prefix + "motion_gain", torch.ones_like(self.motion_gain))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def sized_like(cls, config: GaussianHeadConfig, state: dict[str, torch.Tensor]) -> "GaussianHead":
        """An empty head whose tensor sizes match ``state`` (keys relative to the head), ready for load_state_dict."""
        v, ke = state["expression_basis"].shape[1], state["expression_basis"].shape[0]
        jaw = state.get("jaw_vertices")
        return cls(config, state["motion_map"].shape[0], v, ke, state["triangles"].shape[0],
                   state["face_tri"].shape[0], state["rigid_means"].shape[0],
                   n_jaw=0 if jaw is None else int(jaw.shape[0]))  # fmt: skip

    @property
    def n_face(self) -> int:
        return int(self.face_tri.shape[0])

    @property
    def n_rigid(self) -> int:
        return int(self.rigid_means.shape[0])

    @property
    def n_gaussians(self) -> int:
        return self.n_face + self.n_rigid

    def mesh(self, motion: torch.Tensor) -> torch.Tensor:
        """Face-model vertices [V, 3] deformed by one motion vector [motion_dim] through the blendshapes."""
        m = motion.to(self.motion_map.dtype)
        m = self.motion_centre + self.motion_gain.clamp(MIN_GAIN, MAX_GAIN) * (m - self.motion_centre)
        weights = m @ self.motion_map  # [Ke]
        return self.base_vertices + torch.einsum("e,evc->vc", weights, self.expression_basis)

    def forward(self, motion: torch.Tensor) -> GaussianSet:
        """The Gaussians of a frame with this motion vector, in canonical head space."""
        vertices = self.mesh(motion)
        frames, corners = triangle_frames(vertices, self.triangles)
        rot = frames[self.face_tri]  # [Nf, 3, 3]
        anchor = (corners[self.face_tri] * self.face_bary[:, :, None]).sum(1)
        face_means = anchor + (rot @ self.face_offset[:, :, None]).squeeze(-1)
        face_quats = quat_multiply(rotmat_to_quat(rot), nn.functional.normalize(self.face_quat, dim=-1))
        face_log_scale, face_opacity = self.face_log_scale, self.face_opacity_logit
        change: ResidualChange | None = None
        if self.residual is not None:
            change = self.residual(self.rest_anchors(), motion)
            face_means = face_means + change.offset
            face_quats = quat_multiply(change.rotation, face_quats)
            face_log_scale = face_log_scale + change.log_scale
            face_opacity = face_opacity + change.opacity_logit
        rigid_means, rigid_quats = self._rigid_with_jaw(vertices)
        return GaussianSet(
            means=torch.cat([face_means, rigid_means]),
            quats=torch.cat([face_quats, rigid_quats]),
            scales=torch.exp(torch.cat([face_log_scale, self.rigid_log_scale])),
            opacities=torch.sigmoid(torch.cat([face_opacity, self.rigid_opacity_logit])),
            sh=torch.cat([self.face_sh, self.rigid_sh]),
            residual=None if change is None else change.unit,
        )

    def jaw_motion(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R [3, 3], t [3]): the jaw's rigid motion from rest to the deformed mesh ``vertices`` [V, 3]."""
        jaw = self.jaw_vertices
        return rigid_fit(self.base_vertices[jaw].double(), vertices[jaw].detach().double())

    def _rigid_with_jaw(self, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rigid Gaussians' means and rotations, the jaw-weighted ones moved with the jaw."""
        if self.jaw_vertices.numel() < 3:
            return self.rigid_means, self.rigid_quat
        R, t = (x.float() for x in self.jaw_motion(vertices))
        w = self.rigid_jaw[:, None]
        moved = self.rigid_means @ R.T + t
        q = nn.functional.normalize(self.rigid_quat, dim=-1)
        turned = quat_multiply(rotmat_to_quat(R).expand_as(q), q)
        return self.rigid_means + w * (moved - self.rigid_means), (1 - w) * q + w * turned

    def rest_anchors(self) -> torch.Tensor:
        """[N_face, 3] each face Gaussian's point on the undeformed mesh (what the residual field is read at)."""
        with torch.no_grad():
            return (self.base_vertices[self.triangles][self.face_tri] * self.face_bary[:, :, None]).sum(1)
