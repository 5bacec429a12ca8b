"""`avatar3d export AVATAR --mesh out.glb|ply|obj`: the canonical head as a coloured triangle mesh.

Why this way:
* **Neutral expression.** The head field is motion-conditioned; the mesh is extracted at the
  per-channel median of the training frames' expression coefficients with both blinks at 0
  (eyes open), i.e. the face the avatar shows most of the time.
* **Density, not opacity.** Marching cubes runs on the head field's density on a regular grid
  over ``AvatarConfig.head_aabb``; only cells the trained occupancy grid marks occupied (plus
  one cell of margin) are evaluated, because the renderer never samples the others either.
  Coarse to fine: a 4x sparser grid first, then the full resolution only near the level set
  (measured at 256 cells on the test avatar: 79 s -> 3 s of density, the same 83,054 triangles).
  The grid is padded with
  empty cells so the surface closes where the head box cuts the neck.
* **Iso-level.** Default: the density at which one finest ray-marching step (``dt_min``) is 50 %
  opaque, ``ln 2 / dt_min`` (1/m). A denser level shrinks the surface, a lighter one grows it.
* **Colour as rendered.** Each vertex gets the volume-rendered colour of a ray that looks at
  the surface along its inward normal, from 5 cm outside (so view-dependent colour is the frontal one).
* **Axes.** Head space is the face model's canonical frame, in metres: +x the subject's left,
  +y up, +z out of the face (the nose points to +z), origin near the centre of the head. That
  is already glTF's convention (right-handed, +Y up, the asset's front facing +Z), so every
  format is written in head space unchanged (the transform is the identity).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.loading import load_avatar
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import atomic_path, check_writable
from avatar3d.nerf.occupancy import unpack_bits

MESH_SUFFIXES = {".glb": "glb", ".ply": "ply", ".obj": "obj"}
DECIMATION_AGGRESSION = 3
"""fast-simplification's ``agg`` (its default 7 is faster and cruder): on the tests' head cut to 6,000
faces, 7 left 9 edges where two sheets pinch (4 faces on one edge), 3 left 1."""


@dataclass
class MeshExportConfig:
    """How the head surface is extracted and coloured."""

    resolution: int = 192
    """Grid cells along the longest side of the head box (192: ~2.1 mm cells on the default 0.4 m box)."""
    threshold: float | None = None
    """Density iso-level in 1/m; None: ln 2 / dt_min of the avatar (one finest marching step is 50 % opaque)."""
    chunk: int = 1 << 16
    """Points per field evaluation (bounds memory: ~chunk x hash features floats)."""
    color_samples: int = 40
    """Samples per vertex on the colour ray through the surface (1.5 mm apart by default)."""
    color_outside_m: float = 0.05
    """The colour ray starts this far outside the surface: the low-density haze a render looks through counts
    (measured on the tiny test avatar: starting 3 cm out left the colours 0.07 too bright, 5-10 cm ~0.02)."""
    color_inside_m: float = 0.01
    """... and ends this far inside it."""
    fill_holes: bool = True
    """Close small boundary loops (trimesh) so the mesh is watertight where possible."""
    max_faces: int | None = None
    """Decimate to at most this many triangles (quadric edge collapse, before colouring); None keeps marching
    cubes' count (~80k at 192 cells), which real-time engines and headsets rarely want for one head."""


@dataclass
class MeshReport:
    """What was written, for the CLI and the tests."""

    path: str
    n_vertices: int
    n_faces: int
    watertight: bool
    extent_m: tuple[float, float, float]  # bounding-box side lengths (x, y, z)
    threshold: float
    resolution: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def check_mesh_path(path: Path) -> str:
    """The trimesh file type of ``path``, or a one-line error before any work is done."""
    path = Path(path)
    file_type = MESH_SUFFIXES.get(path.suffix.lower())
    if file_type is None:
        raise Avatar3DError(f"{path}: unknown mesh format {path.suffix or '(no suffix)'!r}; "
                            f"use one of {', '.join(MESH_SUFFIXES)}")  # fmt: skip
    check_writable(path)
    return file_type


def neutral_motion(bundle: AvatarBundle) -> np.ndarray:
    """[motion_dim] float32: per-channel median of the training frames' expressions, blinks 0."""
    bundle.require_motion()
    expression = np.asarray(bundle.expression, dtype=np.float32)
    ids = np.asarray(bundle.train_ids, dtype=np.int64)
    if ids.size == 0:
        ids = np.arange(len(expression))
    median = np.median(expression[ids], axis=0)
    n_blink = int(bundle.motion_dim) - median.shape[0]
    return np.concatenate([median, np.zeros(max(n_blink, 0), np.float32)]).astype(np.float32)


def default_threshold(model: Any) -> float:
    """ln 2 / dt_min: the density at which one finest marching step absorbs half the light."""
    return math.log(2.0) / float(model.config.dt_min)


REFINE = 4  # fine grid steps per coarse step


def _density_at(model: Any, code: torch.Tensor, pts: torch.Tensor, occ: torch.Tensor, chunk: int) -> torch.Tensor:
    """sigma [P] at points [P, 3]; 0 outside the head box and outside the (dilated) occupied cells."""
    aabb = torch.tensor(model.config.head_aabb, dtype=torch.float32).view(2, 3)
    r = occ.shape[0]
    ijk = ((pts - aabb[0]) / ((aabb[1] - aabb[0]) / r)).floor().long()
    inside = ((ijk >= 0) & (ijk < r)).all(1)
    ijk = ijk.clamp(0, r - 1)
    keep = inside & occ[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    values = torch.zeros(pts.shape[0])
    for part in keep.nonzero().squeeze(1).split(chunk):
        p = pts[part]
        values[part] = model.head.geometry(p, code.expand(p.shape[0], -1))[0].float()
    return values


def _points(origin: torch.Tensor, step: float, index: torch.Tensor) -> torch.Tensor:
    return origin + step * index.float()


@torch.no_grad()
def density_volume(model: Any, code: torch.Tensor, resolution: int, chunk: int,
                   threshold: float) -> tuple[np.ndarray, np.ndarray, float]:  # fmt: skip
    """(density [X, Y, Z] float32, grid origin [3], spacing in metres) over the head box, coarse to fine.

    A coarse grid (``REFINE`` times sparser) is evaluated in the occupied cells; the fine grid is
    evaluated only in coarse cells whose corners straddle ``threshold`` (plus one coarse cell of
    margin) and trilinearly interpolated elsewhere, where every corner lies on the same side of the
    level — so marching cubes sees the same surface at a fraction of the field evaluations.
    """
    aabb = np.asarray(model.config.head_aabb, dtype=np.float64)
    lo, hi = aabb[:3], aabb[3:]
    step = float((hi - lo).max()) / resolution
    coarse_step = step * REFINE
    n_coarse = [int(math.ceil((hi[i] - lo[i]) / coarse_step - 1e-6)) + 1 for i in range(3)]
    grid = model.grid
    r = grid.geometry.resolution
    occ = unpack_bits(grid.bitfield, grid.geometry.n_cells)[: r**3].view(1, 1, r, r, r).float()
    occ = torch.nn.functional.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0  # one cell of margin
    origin = torch.tensor(lo, dtype=torch.float32)
    # coarse pass
    cidx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in n_coarse], indexing="ij"), -1).reshape(-1, 3)
    coarse = _density_at(model, code, _points(origin, coarse_step, cidx), occ, chunk).view(*n_coarse)
    # coarse cells whose 8 corners straddle the level, dilated by one cell
    above = (coarse > threshold).float()[None, None]
    any_above = torch.nn.functional.max_pool3d(above, 2, stride=1)
    all_above = -torch.nn.functional.max_pool3d(-above, 2, stride=1)
    band = (any_above != all_above).float()
    band = torch.nn.functional.max_pool3d(band, 3, stride=1, padding=1)[0, 0] > 0  # [nc-1]^3 cells
    # fine grid: interpolate everywhere, then evaluate the band's fine points exactly
    n_fine = [REFINE * (n - 1) + 1 for n in n_coarse]
    fine = torch.nn.functional.interpolate(coarse[None, None], size=n_fine, mode="trilinear",
                                           align_corners=True)[0, 0]  # fmt: skip
    cells = band.nonzero()  # [B, 3] coarse cell index
    offsets = torch.stack(torch.meshgrid(*[torch.arange(REFINE + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    per = max(1, chunk // offsets.shape[0])
    for part in cells.split(per):
        fidx = (part[:, None, :] * REFINE + offsets[None]).reshape(-1, 3)
        fidx = torch.unique(fidx, dim=0)
        values = _density_at(model, code, _points(origin, step, fidx), occ, chunk)
        fine[fidx[:, 0], fidx[:, 1], fidx[:, 2]] = values
    return fine.numpy(), lo.astype(np.float32), step


@torch.no_grad()
def surface_colors(model: Any, code: torch.Tensor, vertices: np.ndarray, normals: np.ndarray,
                   config: MeshExportConfig) -> np.ndarray:  # fmt: skip
    """uint8 [V, 4] RGBA: the colour volume-rendered along a ray that looks at each vertex along -normal."""
    k = config.color_samples
    v = torch.from_numpy(np.ascontiguousarray(vertices, dtype=np.float32))
    n = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32)), dim=-1)
    dt = (config.color_outside_m + config.color_inside_m) / k
    offsets = config.color_outside_m - dt * (torch.arange(k, dtype=torch.float32) + 0.5)  # outside (+) -> inside (-)
    rgb_out = torch.empty(v.shape[0], 3)
    per = max(1, config.chunk // k)
    for s in range(0, v.shape[0], per):
        vv, nn_ = v[s:s + per], n[s:s + per]
        pts = (vv[:, None, :] + offsets[None, :, None] * nn_[:, None, :]).reshape(-1, 3)
        dirs = (-nn_)[:, None, :].expand(-1, k, -1).reshape(-1, 3)
        sigma, rgb, _ = model.head(pts, dirs, code.expand(pts.shape[0], -1))
        sigma, rgb = sigma.view(-1, k), rgb.view(-1, k, 3)
        alpha = 1 - torch.exp(-sigma.clamp_min(0) * dt)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
        w = alpha * trans
        opacity = w.sum(1, keepdim=True)
        color = (w[..., None] * rgb).sum(1) / opacity.clamp_min(1e-6)
        # a ray that barely hits anything (rare: the surface is at the iso-level) takes the colour at the vertex
        at_vertex = rgb[:, int(torch.argmin(offsets.abs()))]
        rgb_out[s:s + per] = torch.where(opacity > 1e-3, color, at_vertex)
    rgba = np.empty((v.shape[0], 4), np.uint8)
    rgba[:, :3] = (rgb_out.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    rgba[:, 3] = 255
    return rgba


def extract_head_mesh(model: Any, bundle: AvatarBundle,
                      config: MeshExportConfig = MeshExportConfig()) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """(trimesh.Trimesh in head space, metres, with vertex colours; info dict) at the neutral expression."""
    import trimesh  # lazy: heavy (~0.5 s); only `export --mesh` needs it
    from skimage.measure import marching_cubes  # lazy: heavy (~0.5 s); only `export --mesh`

    if config.resolution < 16 or config.resolution > 1024:
        raise Avatar3DError(f"mesh resolution {config.resolution}: use 16..1024 cells along the longest side")
    threshold = default_threshold(model) if config.threshold is None else float(config.threshold)
    if not threshold > 0:
        raise Avatar3DError(f"mesh threshold {threshold}: the density level must be positive (1/m)")
    motion = torch.from_numpy(neutral_motion(bundle))[None]
    code = model.head.motion_code(motion)
    t0 = time.perf_counter()
    volume, origin, step = density_volume(model, code, config.resolution, config.chunk, threshold)
    t_density = time.perf_counter() - t0
    vmax = float(volume.max())
    if vmax <= threshold:
        raise Avatar3DError(f"the head field's density never reaches the level {threshold:.3g}/m (max {vmax:.3g}): "
                            "pass a lower --threshold, or train the avatar longer")  # fmt: skip
    padded = np.pad(volume, 1)  # empty border: the surface closes where the box cuts the neck
    verts, faces, _, _ = marching_cubes(padded, level=threshold, spacing=(step, step, step))
    verts = verts - step + origin  # undo the padding offset, move to head space
    # skimage winds the triangles of a "higher inside" level set clockwise seen from outside: flip
    # them so face and vertex normals point out of the head (glTF front faces are counter-clockwise).
    mesh = trimesh.Trimesh(verts.astype(np.float64), faces[:, ::-1].astype(np.int64), process=True)
    parts = mesh.split(only_watertight=False)
    n_components = len(parts)
    if n_components > 1:
        mesh = max(parts, key=lambda m: len(m.faces))
    if config.fill_holes and not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
    n_marched = len(mesh.faces)
    if config.max_faces is not None and n_marched > config.max_faces:
        mesh = decimate(mesh, config.max_faces)
        if config.fill_holes and not mesh.is_watertight:
            trimesh.repair.fill_holes(mesh)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    t1 = time.perf_counter()
    colors = surface_colors(model, code, np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), config)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colors)
    info = {"threshold": threshold, "spacing_m": step, "grid_shape": list(volume.shape),
            "components": n_components, "marched_faces": n_marched,
            "density_s": round(t_density, 2), "color_s": round(time.perf_counter() - t1, 2)}  # fmt: skip
    return mesh, info


def decimate(mesh: Any, max_faces: int) -> Any:
    """``mesh`` reduced to at most ``max_faces`` triangles by quadric edge collapse (fast-simplification).

    Why quadric collapse: it removes vertices where the surface is flat and keeps them at the nose,
    lips and ears, so a 10x smaller head keeps its silhouette; colours are assigned afterwards
    from the field, so nothing has to be interpolated across collapsed edges.  The result stays
    closed (no hole), but where thin parts collapse two sheets may pinch on an edge, which trimesh
    then does not call watertight: the export reports it.
    """
    import fast_simplification  # lazy: only `export --mesh --max-faces` needs it
    import trimesh  # lazy: heavy (~0.5 s); only `export --mesh` needs it

    if max_faces < 4:
        raise Avatar3DError(f"--max-faces {max_faces}: a closed surface needs at least 4 triangles")
    verts, faces = fast_simplification.simplify(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64),
                                                target_count=int(max_faces), agg=DECIMATION_AGGRESSION)  # fmt: skip
    out = trimesh.Trimesh(verts, faces, process=True)
    for _ in range(3):  # the collapse may stop a few triangles short: ask for a little less
        if len(out.faces) <= max_faces:
            break
        target = int(0.98 * max_faces * len(faces) / len(out.faces))
        verts, faces = fast_simplification.simplify(verts, faces, target_count=target, agg=DECIMATION_AGGRESSION)
        out = trimesh.Trimesh(verts, faces, process=True)
    parts = out.split(only_watertight=False)
    return max(parts, key=lambda m: len(m.faces)) if len(parts) > 1 else out


def write_mesh(mesh: Any, out: str | Path, file_type: str | None = None) -> Path:
    """Writes a trimesh mesh atomically as .glb / .ply / .obj (by suffix unless ``file_type`` is given)."""
    out = Path(out)
    file_type = file_type or check_mesh_path(out)
    with atomic_path(out) as tmp:
        mesh.export(str(tmp), file_type=file_type)
    return out


def export_mesh(avatar: str | Path, out: str | Path, config: MeshExportConfig = MeshExportConfig()) -> MeshReport:
    """Extracts the neutral head of the avatar folder ``avatar`` and writes it atomically to ``out``."""

    out = Path(out)
    file_type = check_mesh_path(out)
    start = time.perf_counter()
    loaded = load_avatar(avatar)
    loaded.require_backend("nerf", "`export --mesh` (a density iso-surface)")
    mesh, info = extract_head_mesh(loaded.model, loaded.bundle, config)
    write_mesh(mesh, out, file_type)
    extent = tuple(float(v) for v in mesh.extents)
    return MeshReport(path=str(out), n_vertices=len(mesh.vertices), n_faces=len(mesh.faces),
                      watertight=bool(mesh.is_watertight), extent_m=extent,  # type: ignore[arg-type]
                      threshold=info["threshold"], resolution=config.resolution,
                      seconds=round(time.perf_counter() - start, 2), extra=info)  # fmt: skip
