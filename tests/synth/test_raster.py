"""Tests for the vectorised rasterizer against a slow, obviously-correct reference."""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.synth.raster import Fragments, interpolate, project, rasterize


def reference_rasterize(xy, depth, tris, H, W, cull=False, near=1e-3):
    """Per-pixel loop over all triangles: exact edge tests, perspective z-buffer.

    Ties in depth go to the later triangle (``<=``), like the rasterizer.
    Samples exactly on an edge are treated as outside; random tests avoid them.
    """
    tri_id = np.full((H, W), -1, dtype=np.int64)
    bary = np.zeros((H, W, 3))
    zbuf = np.full((H, W), np.inf)
    faces = []  # plain Python floats: the loop below is the whole algorithm
    for a, b, c in tris.tolist():
        (x0, y0), (x1, y1), (x2, y2) = xy[a].tolist(), xy[b].tolist(), xy[c].tolist()
        z = (float(depth[a]), float(depth[b]), float(depth[c]))
        faces.append((x0, y0, x1, y1, x2, y2, z))
    for i in range(H):
        for j in range(W):
            px, py = j + 0.5, i + 0.5
            for f, (x0, y0, x1, y1, x2, y2, z) in enumerate(faces):
                if min(z) <= near:
                    continue
                area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
                if area == 0 or (cull and area > 0):
                    continue
                w0 = ((x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)) / area
                w1 = ((x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)) / area
                w2 = ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) / area
                if min(w0, w1, w2) <= 0:
                    continue
                u = (w0 / z[0], w1 / z[1], w2 / z[2])
                pz = 1.0 / (u[0] + u[1] + u[2])
                if pz <= zbuf[i, j]:
                    zbuf[i, j] = pz
                    tri_id[i, j] = f
                    bary[i, j] = (u[0] * pz, u[1] * pz, u[2] * pz)
    return tri_id, bary, zbuf


def random_scene(seed, H=30, W=40, F=20):
    rng = np.random.default_rng(seed)
    V = 3 * F
    xy = np.stack([rng.uniform(-8, W + 8, V), rng.uniform(-8, H + 8, V)], axis=1)
    depth = rng.uniform(1.0, 10.0, V)  # per-vertex: slanted, interpenetrating
    tris = np.arange(V).reshape(F, 3)
    return xy, depth, tris


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cull", [False, True])
def test_matches_reference(seed, cull):
    H, W = 30, 40
    xy, depth, tris = random_scene(seed, H, W)
    fr = rasterize(xy, depth, tris, H, W, cull_backfaces=cull)
    ref_id, ref_bary, ref_z = reference_rasterize(xy, depth, tris, H, W, cull=cull)
    assert fr.triangle.dtype == np.int32 and fr.bary.dtype == np.float32 and fr.depth.dtype == np.float32
    assert fr.mask.sum() > 0.3 * H * W  # the scene actually overlaps the frame
    same = fr.triangle == ref_id
    assert (~same).mean() <= 0.002
    np.testing.assert_allclose(fr.bary[same], ref_bary[same], atol=1e-4)
    np.testing.assert_allclose(fr.depth[same], ref_z[same], rtol=1e-5)
    assert np.all(np.isinf(fr.depth[~fr.mask])) and np.all(fr.bary[~fr.mask] == 0)
    np.testing.assert_allclose(fr.bary[fr.mask].sum(-1), 1.0, atol=1e-5)


def grid_mesh(x0, y0, x1, y1, n, m, jitter=0.0, seed=0):
    """A rectangle split into n x m cells, each into two triangles (shared edges)."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.linspace(x0, x1, n + 1), np.linspace(y0, y1, m + 1))
    if jitter:
        inner = (slice(1, -1), slice(1, -1))
        gx[inner] += rng.uniform(-jitter, jitter, gx[inner].shape)
        gy[inner] += rng.uniform(-jitter, jitter, gy[inner].shape)
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
    idx = np.arange((n + 1) * (m + 1)).reshape(m + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    flip = rng.random(a.shape) < 0.5  # both diagonal directions
    t1 = np.where(flip[..., None], np.stack([a, c, b], -1), np.stack([a, c, d], -1))
    t2 = np.where(flip[..., None], np.stack([b, c, d], -1), np.stack([a, d, b], -1))
    tris = np.concatenate([t1.reshape(-1, 3), t2.reshape(-1, 3)])
    return xy, tris


@pytest.mark.parametrize(
    "case",
    [
        # vertices exactly on pixel centres and pixel corners: worst case for ties
        dict(x0=3.5, y0=2.5, x1=33.5, y1=26.5, n=10, m=8, jitter=0.0),
        dict(x0=3.0, y0=2.0, x1=33.0, y1=26.0, n=15, m=12, jitter=0.0),
        dict(x0=3.3, y0=2.7, x1=33.9, y1=26.1, n=9, m=7, jitter=1.2),
    ],
)
def test_no_cracks_or_double_cover(case):
    H, W = 30, 40
    xy, tris = grid_mesh(**case, seed=1)
    depth = np.full(len(xy), 2.0)
    cols, rows = np.arange(W) + 0.5, np.arange(H) + 0.5
    expected = (rows[:, None] >= case["y0"]) & (rows[:, None] < case["y1"])
    expected = expected & (cols[None] >= case["x0"]) & (cols[None] < case["x1"])
    fr = rasterize(xy, depth, tris, H, W)
    np.testing.assert_array_equal(fr.mask, expected)
    # Every sample is claimed by exactly one triangle when drawn one at a time.
    cover = np.zeros((H, W), dtype=int)
    for t in tris:
        cover += rasterize(xy, depth, t[None], H, W).mask
    np.testing.assert_array_equal(cover, expected.astype(int))


def test_perspective_correct_on_slanted_quad():
    H, W = 64, 80
    fx = fy = 70.0
    cx, cy = W / 2, H / 2
    # A plane receding steeply in depth (z from ~1.2 to ~6).
    corners = np.array([[-1.0, -0.8, 1.2], [1.0, -0.8, 1.2], [1.5, 1.4, 6.0], [-1.5, 1.4, 6.0]])
    normal = np.cross(corners[1] - corners[0], corners[3] - corners[0])
    offset = normal @ corners[0]
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    xy, depth = project(corners, fx, fy, cx, cy)
    fr = rasterize(xy, depth, tris, H, W)
    m = fr.mask
    assert m.sum() > 500
    pos = interpolate(fr, corners, tris)[m].astype(np.float64)
    assert np.abs(pos @ normal - offset).max() < 1e-5 * np.linalg.norm(normal)
    back, _ = project(pos, fx, fy, cx, cy)
    ii, jj = np.nonzero(m)
    np.testing.assert_allclose(back, np.stack([jj + 0.5, ii + 0.5], 1), atol=1e-3)
    np.testing.assert_allclose(fr.depth[m], pos[:, 2], rtol=1e-5)
    # Teeth: screen-space (affine) interpolation would be far off on this quad.
    w = fr.bary[m] / depth[tris[fr.triangle[m]]]
    affine = w / w.sum(1, keepdims=True)  # undo the perspective division
    pos_affine = np.einsum("nk,nkc->nc", affine, corners[tris[fr.triangle[m]]])
    assert np.abs(project(pos_affine, fx, fy, cx, cy)[0] - back).max() > 0.5


def test_backface_culling_winding():
    H, W = 20, 20
    xy = np.array([[2.0, 2.0], [2.0, 15.0], [15.0, 2.0]])  # down then right: CCW on screen (y down)
    depth = np.ones(3)
    ccw = np.array([[0, 1, 2]])
    cw = ccw[:, ::-1].copy()
    assert rasterize(xy, depth, ccw, H, W, cull_backfaces=True).mask.any()
    assert not rasterize(xy, depth, cw, H, W, cull_backfaces=True).mask.any()
    a = rasterize(xy, depth, ccw, H, W).mask
    np.testing.assert_array_equal(a, rasterize(xy, depth, cw, H, W).mask)
    # Same barycentric weights per vertex whatever the order.
    fa = rasterize(xy, depth, ccw, H, W)
    fb = rasterize(xy, depth, cw, H, W)
    np.testing.assert_allclose(fa.bary[a], fb.bary[a][:, ::-1], atol=1e-6)


def test_culling_a_closed_outward_mesh_matches_unculled():
    """Right-handed outward (CCW from outside) mesh seen by project(): culling is invisible."""
    # Octahedron with outward CCW winding.
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    faces = []
    for sx, a in ((1, 0), (-1, 1)):
        for sy, b in ((1, 2), (-1, 3)):
            for sz, c in ((1, 4), (-1, 5)):
                faces.append([a, b, c] if sx * sy * sz > 0 else [a, c, b])
    tris = np.array(faces)
    n = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    assert np.all(np.einsum("fc,fc->f", n, v[tris].mean(1)) > 0)  # outward, right-handed
    rot = np.array([[0.8, 0.0, 0.6], [0.36, 0.8, -0.48], [-0.48, 0.6, 0.64]])
    pts = v @ rot.T + [0.1, -0.05, 4.0]
    xy, depth = project(pts, 60.0, 60.0, 32.0, 32.0)
    full = rasterize(xy, depth, tris, 64, 64)
    culled = rasterize(xy, depth, tris, 64, 64, cull_backfaces=True)
    assert full.mask.sum() > 300
    np.testing.assert_array_equal(full.triangle, culled.triangle)
    # Faces pointing away from the camera are the culled ones, and they do cover pixels.
    centroid = pts[tris].mean(1)
    n_cam = n @ rot.T
    away = np.einsum("fc,fc->f", n_cam, centroid) > 0
    assert 0 < away.sum() < len(tris)
    for f in range(len(tris)):
        alone = rasterize(xy, depth, tris[f : f + 1], 64, 64, cull_backfaces=True).mask.any()
        assert alone != away[f]
        assert rasterize(xy, depth, tris[f : f + 1], 64, 64).mask.any()
    # Reversing the winding culls exactly the other set.
    rev = rasterize(xy, depth, tris[:, ::-1], 64, 64, cull_backfaces=True)
    assert set(np.unique(rev.triangle[rev.mask]).tolist()) <= set(np.flatnonzero(away).tolist())


def test_chunked_passes_match_single_pass(monkeypatch):
    import avatar3d.synth.raster as raster_mod

    H, W = 30, 40
    xy, depth, tris = random_scene(5, H, W)
    whole = rasterize(xy, depth, tris, H, W)
    monkeypatch.setattr(raster_mod, "_CHUNK", 97)  # many passes, spans split across them
    chunked = rasterize(xy, depth, tris, H, W)
    np.testing.assert_array_equal(whole.triangle, chunked.triangle)
    np.testing.assert_array_equal(whole.bary, chunked.bary)


def test_out_buffers_are_reused_and_cleared():
    H, W = 30, 40
    xy, depth, tris = random_scene(3, H, W)
    fresh = rasterize(xy, depth, tris, H, W)
    reuse = rasterize(xy[::-1].copy(), depth, tris, H, W)  # different content first
    again = rasterize(xy, depth, tris, H, W, out=reuse)
    assert again is reuse
    np.testing.assert_array_equal(again.triangle, fresh.triangle)
    np.testing.assert_array_equal(again.bary, fresh.bary)
    np.testing.assert_array_equal(again.depth, fresh.depth)
    attrs = np.random.default_rng(0).random((len(xy), 4))
    img = np.full((H, W, 4), 7.0, dtype=np.float32)
    res = interpolate(fresh, attrs, tris, out=img)
    assert res.base is img or res is img or np.shares_memory(res, img)
    np.testing.assert_array_equal(res, interpolate(fresh, attrs, tris))
    with pytest.raises(ValueError):
        rasterize(xy, depth, tris, H + 1, W, out=reuse)


def test_clipping_matches_crop_of_larger_canvas():
    H, W, pad = 30, 40, 50
    xy, depth, tris = random_scene(11, H, W)
    xy = xy * 1.8 - 10  # many triangles partly off-screen
    small = rasterize(xy, depth, tris, H, W)
    big = rasterize(xy + pad, depth, tris, H + 2 * pad, W + 2 * pad)
    crop = (slice(pad, pad + H), slice(pad, pad + W))
    np.testing.assert_array_equal(small.triangle, big.triangle[crop])
    np.testing.assert_allclose(small.bary, big.bary[crop], atol=1e-5)


def test_offscreen_behind_camera_degenerate_and_huge():
    H, W = 20, 30
    xy = np.array(
        [
            [2, 2], [2, 18], [25, 3],  # 0: visible
            [-50, -50], [-40, -45], [-45, -30],  # 1: fully off-screen
            [3, 3], [3, 17], [24, 4],  # 2: vertex behind the near plane
            [1, 1], [10, 10], [19, 19],  # 3: degenerate (collinear)
            [-1e9, -1e9], [-1e9, 1e9], [1e9, 0],  # 4: huge, covers everything, far
        ],
        dtype=float,
    )
    depth = np.ones(len(xy))
    depth[6:9] = [-1.0, 0.5, 0.5]
    depth[12:15] = 50.0
    tris = np.arange(15).reshape(5, 3)
    fr = rasterize(xy, depth, tris, H, W)
    ids = set(np.unique(fr.triangle).tolist())
    assert ids == {0, 4}
    assert fr.mask.all()
    np.testing.assert_allclose(fr.depth[fr.triangle == 4], 50.0, rtol=1e-5)
    only = rasterize(xy, depth, tris[1:4], H, W)
    assert not only.mask.any()
    # near is honoured: moving the near plane past the visible triangle drops it
    assert not (rasterize(xy, depth, tris[:1], H, W, near=1.0).mask.any())


def test_interpolate_and_empty_inputs():
    H, W = 16, 16
    xy = np.array([[1.0, 1.0], [1.0, 14.0], [14.0, 1.0]])
    depth = np.array([1.0, 2.0, 3.0])
    tris = np.array([[0, 1, 2]])
    fr = rasterize(xy, depth, tris, H, W)
    attrs = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, 5.0], [0.0, 0.0, 5.0]])
    img = interpolate(fr, attrs, tris)
    assert img.shape == (H, W, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[fr.mask][:, 2], 5.0, rtol=1e-6)
    np.testing.assert_allclose(img[fr.mask][:, :2], fr.bary[fr.mask][:, :2], atol=1e-6)
    assert np.all(img[~fr.mask] == 0)
    empty = rasterize(xy, depth, np.zeros((0, 3), int), H, W)
    assert isinstance(empty, Fragments) and not empty.mask.any()
    assert interpolate(empty, attrs, tris).sum() == 0


def test_project_convention():
    pts = np.array([[0.0, 0.0, 2.0], [1.0, -2.0, 4.0]])
    xy, z = project(pts, 100.0, 50.0, 32.0, 24.0)
    np.testing.assert_allclose(xy, [[32.0, 24.0], [57.0, -1.0]])
    np.testing.assert_allclose(z, [2.0, 4.0])
