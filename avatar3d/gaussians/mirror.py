"""Pure-torch mirror of the Gaussian rasterizer: the reference in tests and the last-resort fallback.

Why: the compiled builds (``cuda_ext/include/gaussians.h``) must be checked against something
written independently of them, and a machine without a compiler must still render. Same
conventions, formula by formula (see the header); autograd gives the backward. Blending runs
tile by tile on dense ``[pixels, splats]`` tensors with a cumulative product, so it costs every
(pixel, splat) pair of a tile: slow, but exact in its rules (skip below 1/255, clamp at 0.99,
stop before T < 1e-4).
"""
from __future__ import annotations

import torch

from avatar3d.gaussians.camera import ALPHA_MAX, ALPHA_MIN, DILATION, MARGIN, SIGMAS, T_MIN, TILE, PinholeCamera

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)  # fmt: skip


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z), any norm (0 -> identity) -> [N, 3, 3] row-major rotations."""
    n2 = (quats * quats).sum(-1, keepdim=True)
    w, x, y, z = (quats / torch.sqrt(n2.clamp_min(1e-24))).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, -1).reshape(-1, 3, 3)


def sh_basis(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Real SH basis [N, (degree+1)^2] at unit directions [N, 3] (the 3DGS sign convention)."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
                SH_C2[4] * (xx - yy)]  # fmt: skip
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]  # fmt: skip
    return torch.stack(out, -1)


def sh_colors_torch(sh: torch.Tensor, dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """rgb [N, 3] = max(0, sum_k basis_k(dirs) sh[:, k] + 0.5) from sh [N, K, 3]."""
    n = (degree + 1) ** 2
    return ((sh_basis(degree, dirs)[:, :, None] * sh[:, :n]).sum(1) + 0.5).clamp_min(0.0)


def project_torch(
    means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, view_rot: torch.Tensor, camera: PinholeCamera
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of camera-frame Gaussians.

    Returns mean2d [N, 2], conic [N, 3] (differentiable), radius [N] (float, 0 where culled) and
    tile rectangles [N, 4] (x0, y0, x1, y1; half-open, int64), all without grad but mean2d/conic.
    """
    dt = means.dtype
    x, y, z = means.unbind(-1)
    in_front = z > camera.near
    zs = torch.where(in_front, z, torch.ones_like(z))  # culled rows stay finite (no NaN in backward)
    fx, fy, cx, cy = (torch.tensor(v, dtype=dt) for v in (camera.fx, camera.fy, camera.cx, camera.cy))
    w, h = torch.tensor(float(camera.width), dtype=dt), torch.tensor(float(camera.height), dtype=dt)
    mx, my = torch.tensor(MARGIN, dtype=dt) * w, torch.tensor(MARGIN, dtype=dt) * h
    u = (x / zs).clamp(float(-(cx + mx) / fx), float((w - cx + mx) / fx))
    v = (y / zs).clamp(float(-(cy + my) / fy), float((h - cy + my) / fy))
    rot = quat_to_rotmat(quats)
    m = (view_rot @ rot) * scales[:, None, :]  # [N, 3, 3]: V R diag(s)
    j00, j02, j11, j12 = fx / zs, -fx * u / zs, fy / zs, -fy * v / zs
    a0 = j00[:, None] * m[:, 0] + j02[:, None] * m[:, 2]  # rows of J M
    a1 = j11[:, None] * m[:, 1] + j12[:, None] * m[:, 2]
    ca = (a0 * a0).sum(-1) + DILATION
    cb = (a0 * a1).sum(-1)
    cc = (a1 * a1).sum(-1) + DILATION
    det = ca * cc - cb * cb
    ok = in_front & (det > 0)
    det_s = torch.where(ok, det, torch.ones_like(det))
    conic = torch.stack([cc / det_s, -cb / det_s, ca / det_s], -1)
    mean2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        mid = 0.5 * (ca + cc)
        radius = torch.ceil(SIGMAS * torch.sqrt(mid + torch.sqrt((mid * mid - det).clamp_min(0.1))))
        lo, hi = mean2d - radius[:, None], mean2d + radius[:, None]
        lim = torch.tensor([camera.tiles_x, camera.tiles_y], dtype=dt, device=means.device)
        r0 = torch.minimum(torch.floor(lo / TILE).clamp_min(0), lim)
        r1 = torch.minimum((torch.floor(hi / TILE) + 1).clamp_min(0), lim)
        ok = ok & (r1 > r0).all(-1)
        rect = torch.where(ok[:, None], torch.cat([r0, r1], -1), torch.zeros_like(torch.cat([r0, r1], -1))).long()
        radius = torch.where(ok, radius, torch.zeros_like(radius))
    keep = ok[:, None].to(dt)
    return mean2d * keep, conic * keep, radius, rect


def bin_tiles_torch(rect: torch.Tensor, depth: torch.Tensor, camera: PinholeCamera) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile lists: offsets [n_tiles + 1] and Gaussian ids [n_instances], by tile, then depth, then index."""
    w = rect[:, 2] - rect[:, 0]
    counts = w * (rect[:, 3] - rect[:, 1])  # [N]
    dev = rect.device
    gid = torch.repeat_interleave(torch.arange(rect.shape[0], device=dev), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(gid.shape[0], device=dev) - start[gid]
    tile = (rect[gid, 1] + local // w[gid]) * camera.tiles_x + rect[gid, 0] + local % w[gid]
    order = torch.sort(depth.detach()[gid], stable=True).indices
    order = order[torch.sort(tile[order], stable=True).indices]
    n_tiles = camera.tiles_x * camera.tiles_y
    offsets = torch.zeros(n_tiles + 1, dtype=torch.long, device=dev)
    offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=n_tiles), 0)
    return offsets, gid[order]


def blend_torch(
    mean2d: torch.Tensor, conic: torch.Tensor, opacities: torch.Tensor, rgb: torch.Tensor, depth: torch.Tensor,
    offsets: torch.Tensor, ids: torch.Tensor, camera: PinholeCamera,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Front-to-back blending, one tile at a time: colour [H, W, 3], alpha [H, W], depth [H, W]."""
    dt, width, height = mean2d.dtype, int(camera.width), int(camera.height)
    color = mean2d.new_zeros(camera.tiles_y * TILE, camera.tiles_x * TILE, 3)
    trans_out = mean2d.new_ones(camera.tiles_y * TILE, camera.tiles_x * TILE)
    depth_out = mean2d.new_zeros(camera.tiles_y * TILE, camera.tiles_x * TILE)
    dev = mean2d.device
    local = torch.arange(TILE, dtype=dt, device=dev) + 0.5
    bounds = offsets.tolist()
    tile_rows, tile_cols, tile_c, tile_t, tile_d = [], [], [], [], []
    for t in range(camera.tiles_x * camera.tiles_y):
        s, e = bounds[t], bounds[t + 1]
        if s == e:
            continue
        tx, ty = t % camera.tiles_x, t // camera.tiles_x
        g = ids[s:e]
        py, px = torch.meshgrid(local + ty * TILE, local + tx * TILE, indexing="ij")
        dx = px.reshape(-1, 1) - mean2d[g, 0][None]  # [256, n]
        dy = py.reshape(-1, 1) - mean2d[g, 1][None]
        ca, cb, cc = conic[g].unbind(-1)
        power = ca * dx * dx + 2 * cb * dx * dy + cc * dy * dy
        alpha = (opacities[g][None] * torch.exp(-0.5 * power)).clamp(max=ALPHA_MAX)
        with torch.no_grad():
            keep = alpha >= ALPHA_MIN
            t_incl = torch.cumprod(1 - torch.where(keep, alpha, torch.zeros_like(alpha)), 1)
            use = keep & (t_incl >= T_MIN)  # T only falls: once below, every later splat is dropped too
        a = torch.where(use, alpha, torch.zeros_like(alpha))
        one_minus = 1 - a
        t_excl = torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), one_minus[:, :-1]], 1), 1)
        w = a * t_excl  # [256, n]
        tile_rows.append(ty)
        tile_cols.append(tx)
        tile_c.append((w @ rgb[g]).reshape(TILE, TILE, 3))
        tile_t.append(torch.prod(one_minus, 1).reshape(TILE, TILE))
        tile_d.append((w @ depth[g]).reshape(TILE, TILE))
    if tile_rows:  # one differentiable scatter of all tiles
        span = torch.arange(TILE, device=dev)
        rows = torch.tensor(tile_rows, device=dev)[:, None, None] * TILE + span[None, :, None]
        cols = torch.tensor(tile_cols, device=dev)[:, None, None] * TILE + span[None, None, :]
        rows, cols = rows.expand(-1, TILE, TILE), cols.expand(-1, TILE, TILE)
        color = color.index_put((rows, cols), torch.stack(tile_c))
        trans_out = trans_out.index_put((rows, cols), torch.stack(tile_t))
        depth_out = depth_out.index_put((rows, cols), torch.stack(tile_d))
    return color[:height, :width], (1 - trans_out)[:height, :width], depth_out[:height, :width]


def rasterize_torch(
    means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor, sh: torch.Tensor,
    dirs: torch.Tensor, view_rot: torch.Tensor, camera: PinholeCamera, sh_degree: int,
    means2d_probe: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Camera-frame Gaussians -> (colour [H, W, 3], alpha [H, W], depth [H, W], mean2d [N, 2], radii int32 [N]).

    ``means2d_probe`` [N, 2] (zeros, requires_grad) receives dL/d mean2d, as the compiled path's does.
    """
    mean2d, conic, radius, rect = project_torch(means, quats, scales, view_rot, camera)
    if means2d_probe is not None:
        mean2d = mean2d + (means2d_probe - means2d_probe.detach())
    rgb = sh_colors_torch(sh, dirs, sh_degree)
    offsets, ids = bin_tiles_torch(rect, means[:, 2], camera)
    color, alpha, depth = blend_torch(mean2d, conic, opacities, rgb, means[:, 2], offsets, ids, camera)
    return color, alpha, depth, mean2d.detach(), radius.clamp(max=float(1 << 30)).to(torch.int32)  # as the kernels
