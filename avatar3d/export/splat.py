"""`avatar3d export AVATAR --splat out.ply`: the Gaussian avatar's neutral head as a standard 3DGS PLY.

Why this layout: splat viewers and editors (Inria's SIBR viewer, SuperSplat, antimatter15/splat,
nerfstudio's and gsplat's loaders) all read the PLY the original 3D Gaussian Splatting code
writes: one binary little-endian ``vertex`` element with float properties ``x y z``, ``nx ny nz``
(unused, zeros), ``f_dc_0..2`` (the degree-0 SH coefficient per channel), ``f_rest_*`` (higher
SH bands, **channel-major**: all of red's coefficients, then green's, then blue's), ``opacity``
(a logit), ``scale_0..2`` (natural logs) and ``rot_0..3`` (a quaternion, w first).  Our
rasterizer uses the same SH basis, the same +0.5 DC offset, (w, x, y, z) quaternions and view
directions in the Gaussians' own frame, so a viewer renders these Gaussians as we do.

What is written: the head at the neutral expression (the per-channel median of the training
frames' expressions, eyes open: the face the avatar shows most), face Gaussians placed on the
deformed face mesh, plus the rigid hair / ears / neck / mouth Gaussians.  The torso is a neural
field, not Gaussians, and is not in the file.  Axes: head space in metres (+x the subject's
left, +y up, +z out of the face), as ``export --mesh`` writes; the header says so in comments.

``zoom`` > 1 bakes :func:`avatar3d.gaussians.avatar_model.footprint_filter` for a viewer that
renders the head that many times larger than the training size (seen from the training
distance): splats fitted at 128² are often sub-pixel and break into dots at 1024² otherwise.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatar3d.avatar.bundle import avatar_file
from avatar3d.avatar.gaussian_avatar import GaussianAvatar
from avatar3d.avatar.loading import load_avatar
from avatar3d.errors import Avatar3DError, InputError
from avatar3d.export.mesh import neutral_motion
from avatar3d.gaussians.avatar_model import footprint_filter
from avatar3d.gaussians.head import GaussianSet
from avatar3d.io.atomic import atomic_path, check_writable

HEADER_COMMENTS = (
    "avatar3d Gaussian avatar, neutral head",
    "axes: head space, metres; +x subject's left, +y up, +z out of the face",
)


@dataclass
class SplatReport:
    """What `export --splat` wrote."""

    path: str
    n_gaussians: int
    sh_degree: int
    extent_m: tuple[float, float, float]
    seconds: float


def splat_fields(n_rest: int) -> list[str]:
    """The vertex properties of the 3DGS PLY, in the order viewers expect, for ``n_rest`` f_rest values."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])  # fmt: skip


def splat_table(gaussians: GaussianSet) -> np.ndarray:
    """[N, fields] float32 in the 3DGS PLY layout (logit opacity, log scale, channel-major f_rest)."""
    sh = gaussians.sh.detach().double().cpu()  # [N, K, 3]
    n = sh.shape[0]
    rest = sh[:, 1:, :].transpose(1, 2).reshape(n, -1)  # [N, 3 * (K - 1)]: red's bands, green's, blue's
    opacity = gaussians.opacities.detach().double().cpu().clamp(1e-7, 1 - 1e-7)
    quats = torch.nn.functional.normalize(gaussians.quats.detach().double().cpu(), dim=-1)
    columns = [gaussians.means.detach().double().cpu(), torch.zeros(n, 3, dtype=torch.float64), sh[:, 0, :], rest,
               torch.logit(opacity)[:, None], torch.log(gaussians.scales.detach().double().cpu()), quats]  # fmt: skip
    return torch.cat(columns, 1).float().numpy()


def write_splat_ply(gaussians: GaussianSet, out: str | Path) -> None:
    """Writes ``gaussians`` to ``out`` (binary little-endian 3DGS PLY), atomically."""
    table = splat_table(gaussians)
    names = splat_fields(table.shape[1] - 17)
    header = ["ply", "format binary_little_endian 1.0", *(f"comment {c}" for c in HEADER_COMMENTS),
              f"element vertex {table.shape[0]}", *(f"property float {name}" for name in names), "end_header"]  # fmt: skip
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(table, dtype="<f4").tobytes())


def read_splat_ply(path: str | Path) -> GaussianSet:
    """A 3DGS PLY (binary little-endian, float properties) back as a :class:`GaussianSet` (linear scales, opacities)."""
    path = Path(path)
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise InputError(f"{path}: not a PLY file (no 'ply' ... 'end_header' header)")
    names, count = [], 0
    for line in raw[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if parts[:1] == ["format"] and parts[1:2] != ["binary_little_endian"]:
            raise InputError(f"{path}: only binary little-endian splat PLYs are read (this is {parts[1]})")
        if parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["property"]:
            if parts[1] != "float":
                raise InputError(f"{path}: property {parts[-1]} is {parts[1]}; a 3DGS PLY stores floats")
            names.append(parts[2])
    missing = [k for k in splat_fields(0) if k not in names]
    if missing:
        raise InputError(f"{path}: not a 3DGS splat PLY (missing {', '.join(missing)})")
    body = np.frombuffer(raw, dtype="<f4", offset=end + len(b"end_header\n"), count=count * len(names))
    table = torch.from_numpy(body.reshape(count, len(names)).astype(np.float32))
    col = {name: table[:, i] for i, name in enumerate(names)}
    n_rest = sum(name.startswith("f_rest_") for name in names)
    rest = torch.stack([col[f"f_rest_{i}"] for i in range(n_rest)], 1).reshape(count, 3, n_rest // 3).transpose(1, 2)
    dc = torch.stack([col[f"f_dc_{i}"] for i in range(3)], 1)[:, None, :]
    return GaussianSet(means=torch.stack([col[k] for k in ("x", "y", "z")], 1),
                       quats=torch.stack([col[f"rot_{i}"] for i in range(4)], 1),
                       scales=torch.exp(torch.stack([col[f"scale_{i}"] for i in range(3)], 1)),
                       opacities=torch.sigmoid(col["opacity"]), sh=torch.cat([dc, rest], 1))  # fmt: skip


def neutral_gaussians(avatar: GaussianAvatar, zoom: float = 1.0) -> GaussianSet:
    """The avatar's Gaussians at its neutral expression; ``zoom`` > 1 widens them as the module docstring says."""
    bundle = avatar.saved_bundle()
    head = avatar.model.head
    with torch.no_grad():
        gaussians = head(torch.from_numpy(neutral_motion(bundle)).to(head.base_vertices.device))
        if zoom > 1.0:
            ids = np.asarray(bundle.train_ids if len(bundle.train_ids) else np.arange(len(bundle.R)), dtype=np.int64)
            middle = int(ids[len(ids) // 2])  # a typical training view: only the Gaussians' distances matter
            R, t = (torch.from_numpy(np.asarray(a[middle])).float() for a in (bundle.R, bundle.t))
            K = avatar.intrinsics(int(round(bundle.resolution * zoom)))
            scales = footprint_filter(gaussians.means, gaussians.scales, K, R, t, zoom)
            gaussians = GaussianSet(gaussians.means, gaussians.quats, scales, gaussians.opacities, gaussians.sh)
    return gaussians


def check_splat_path(path: Path) -> None:
    """Fails before any work when ``path`` is not a writable .ply."""
    if path.suffix.lower() != ".ply":
        raise Avatar3DError(f"{path}: --splat writes the 3DGS PLY layout; give a .ply path")
    check_writable(path)


def export_splat(avatar: str | Path, out: str | Path, zoom: float = 1.0) -> SplatReport:
    """Writes the neutral head of the Gaussian avatar folder ``avatar`` to ``out`` (3DGS PLY), atomically."""
    out = Path(out)
    check_splat_path(out)
    start = time.perf_counter()
    loaded = load_avatar(avatar)
    if not isinstance(loaded, GaussianAvatar):
        raise Avatar3DError(f"{avatar_file(avatar)}: --splat writes 3D Gaussians and this is a {loaded.backend} "
                            "avatar; train one with --config gaussians_cpu, or export this one with --mesh OUT.glb")
    gaussians = neutral_gaussians(loaded, zoom)
    write_splat_ply(gaussians, out)
    extent = (gaussians.means.max(0).values - gaussians.means.min(0).values).tolist()
    return SplatReport(path=str(out), n_gaussians=int(gaussians.means.shape[0]),
                       sh_degree=int(loaded.model.head.config.sh_degree), extent_m=tuple(extent),  # type: ignore[arg-type]
                       seconds=round(time.perf_counter() - start, 2))  # fmt: skip
