"""Vectorised numpy z-buffer rasterizer for the synthetic-subject generator.

Why this exists: the generator renders a textured head mesh thousands of times
on CPU-only machines, so it needs a rasterizer with no GPU/OpenGL dependency
that still runs in a few milliseconds per 512x512 frame.

How it stays fast without a Python loop over triangles:

1. Per-triangle setup (vertex sort by y, edge slopes, the affine plane of 1/z in
   screen space) is done on whole arrays.
2. Every (triangle, pixel row) pair inside the image becomes a *span*; the exact
   x-interval of the triangle on that row's centre line gives the first and last
   covered column, so no pixel outside the triangle is ever enumerated (unlike a
   bounding-box scan, which wastes about half its work).
3. Spans are expanded into (pixel, span, 1/z) candidates; 1/z is packed with
   the span index into one int64 key whose integer order is the depth order,
   and a single ``np.maximum.at`` resolves the z-buffer (numpy >= 1.25 makes
   that a fast scatter).
4. Perspective-correct barycentrics are computed only for the winning pixels,
   from per-span affine weights (interpolating w_k / z_k and 1/z in screen
   space is exact under perspective).
5. Per-pixel work uses 1-D gathers/arithmetic into reusable per-thread scratch
   buffers: on the target VMs page faults on fresh temporaries cost as much as
   the arithmetic.  Pass ``out=`` to reuse the output arrays as well.

Measured (tools/bench/raster.py, shared 2-core VM): ~1,200-triangle head
covering ~100k px of 512x512, back faces culled: ~11 ms rasterize + ~4.5 ms
interpolate(uv) per frame on one core, ~8x faster than a per-triangle loop.

Conventions (shared with :func:`project`):

* ``xy`` is in pixels, continuous: column ``j`` spans ``[j, j+1)``, its centre
  is ``x = j + 0.5``; rows likewise with y pointing down.  Pixel ``(i, j)`` is
  sampled at ``(j + 0.5, i + 0.5)``.
* ``depth`` is camera-space z > 0, larger is farther.
* Fill rule: a sample is covered when ``x_left <= x < x_right`` on its row and
  ``y_top <= y < y_bottom`` (top-left rule).  Shared edges are evaluated with
  bit-identical arithmetic by both neighbours, so a mesh has no cracks and no
  doubly covered samples.
* Winding: with ``s = (x1-x0)*(y2-y0) - (x2-x0)*(y1-y0)`` computed from the
  screen coordinates (y down), ``s < 0`` means the vertices run
  counter-clockwise as seen on screen; those are *front* faces.  This is what a
  right-handed mesh with outward normals (counter-clockwise seen from outside)
  gives under the OpenCV-style camera of :func:`project` (x right, y down,
  z forward).  ``cull_backfaces=True`` drops triangles with ``s > 0``.
* Depth is compared on 1/z with 52 minus log2(#spans) mantissa bits (~38 for
  a head; the low key bits hold the span index), so surfaces within ~1e-11
  relative depth are a deterministic tie that the later triangle wins.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

__all__ = ["Fragments", "rasterize", "interpolate", "project"]

# Candidate (pixel, triangle) pairs expanded per pass: bounds the scratch
# memory to roughly 40 bytes x this (~40 MB) however large the triangles are.
_CHUNK = 1 << 20
# Triangles with |twice the screen area| below this (px^2) are degenerate.
_MIN_AREA2 = 1e-12


# Indices handed to np.take/np.put below are valid by construction; their
# mode="clip" skips the bounds check and, for take(out=), a hidden buffer copy.


class _Scratch(threading.local):
    """Per-thread reusable work arrays.

    Why: on the target VMs a fresh multi-megabyte temporary costs a page fault
    per 4 KiB on first touch (~3 us each), which measured as ~half the frame
    time; reusing buffers across calls (``out=`` everywhere) removes that.
    Retained memory is bounded by the largest frame (and ``_CHUNK``).
    """

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}
        self.arange = np.arange(0, dtype=np.intp)

    def get(self, name: str, n: int, dtype: type) -> np.ndarray:
        buf = self.bufs.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            size = max(n, int(1.25 * buf.size) if buf is not None else 0)
            buf = self.bufs[name] = np.empty(size, dtype=dtype)
        return buf[:n]

    def range(self, n: int) -> np.ndarray:
        """0..n-1 (read-only use)."""
        if self.arange.size < n:
            self.arange = np.arange(max(n, int(1.25 * self.arange.size)), dtype=np.intp)
        return self.arange[:n]


_SCRATCH = _Scratch()


def _covered(flat: np.ndarray, empty_below: int) -> np.ndarray:
    """Flat indices where ``flat >= empty_below``."""
    S = _SCRATCH
    mask = S.get("mask", flat.size, np.bool_)
    np.greater_equal(flat, empty_below, out=mask)
    return np.flatnonzero(mask)


@dataclass
class Fragments:
    """Per-pixel result of :func:`rasterize`.

    ``triangle`` is the visible triangle index (-1 where empty), ``bary`` its
    perspective-correct barycentric weights (zeros where empty) and ``depth``
    the camera-space z of the visible surface (inf where empty).
    """

    triangle: np.ndarray  # [H, W] int32
    bary: np.ndarray  # [H, W, 3] float32
    depth: np.ndarray  # [H, W] float32

    @property
    def mask(self) -> np.ndarray:
        """[H, W] bool: pixels covered by some triangle."""
        return self.triangle >= 0


def project(
    points_cam: np.ndarray, fx: float, fy: float, cx: float, cy: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection into the rasterizer's continuous pixel convention.

    ``x = fx * X / Z + cx`` and ``y = fy * Y / Z + cy`` with ``(cx, cy)``
    continuous coordinates, so ``cx = W / 2`` is the image centre.  Points with
    ``Z <= 0`` get non-finite or meaningless ``xy``; :func:`rasterize` drops
    every triangle touching them through its ``near`` test on ``depth = Z``.
    """
    p = np.asarray(points_cam, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points_cam must be [N, 3], got shape {p.shape}")
    z = p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / z
    xy = np.empty((p.shape[0], 2), dtype=np.float64)
    xy[:, 0] = fx * p[:, 0] * inv + cx
    xy[:, 1] = fy * p[:, 1] * inv + cy
    return xy, z.copy()


def _empty(height: int, width: int, out: Fragments | None) -> Fragments:
    """Fresh empty fragments, or ``out`` cleared after checking it fits."""
    if out is None:
        return Fragments(
            triangle=np.full((height, width), -1, dtype=np.int32),
            bary=np.zeros((height, width, 3), dtype=np.float32),
            depth=np.full((height, width), np.inf, dtype=np.float32),
        )
    for name, shape, dtype in (
        ("triangle", (height, width), np.int32),
        ("bary", (height, width, 3), np.float32),
        ("depth", (height, width), np.float32),
    ):
        a = getattr(out, name)
        if a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError(f"out.{name} must be a C-contiguous {np.dtype(dtype)} array of shape {shape}")
    out.triangle.fill(-1)
    out.bary.fill(0.0)
    out.depth.fill(np.inf)
    return out


def rasterize(
    xy: np.ndarray,
    depth: np.ndarray,
    triangles: np.ndarray,
    height: int,
    width: int,
    *,
    cull_backfaces: bool = False,
    near: float = 1e-3,
    out: Fragments | None = None,
) -> Fragments:
    """Z-buffer rasterize screen-space triangles (see the module doc for conventions).

    Triangles with any vertex at ``depth <= near`` (or non-finite), degenerate
    triangles and, with ``cull_backfaces``, clockwise-on-screen triangles are
    dropped; the rest are clipped to the ``height x width`` image.

    ``out``: a previous result to overwrite and return.  Rendering frame after
    frame into the same arrays avoids the page faults of fresh output memory,
    which cost several milliseconds per 512x512 frame.
    """
    H, W = int(height), int(width)
    xy = np.asarray(xy, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64).reshape(-1)
    tris = np.asarray(triangles)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must be [V, 2], got shape {xy.shape}")
    if depth.shape[0] != xy.shape[0]:
        raise ValueError(f"depth has {depth.shape[0]} values for {xy.shape[0]} vertices")
    if tris.ndim != 2 or tris.shape[1] != 3 or not np.issubdtype(tris.dtype, np.integer):
        raise ValueError(f"triangles must be an integer [F, 3] array, got {tris.dtype} {tris.shape}")
    if H < 0 or W < 0:
        raise ValueError(f"image size must be non-negative, got {H}x{W}")
    out = _empty(H, W, out)
    if tris.shape[0] == 0 or H == 0 or W == 0:
        return out
    if tris.min() < 0 or tris.max() >= xy.shape[0]:
        raise ValueError(f"triangle indices must lie in [0, {xy.shape[0]})")

    setup = _setup(xy, depth, tris, H, W, cull_backfaces, near)
    if setup is None:
        return out
    keys, n_bits, spans = _zbuffer(setup, H, W)
    if spans is not None:
        _resolve(keys, n_bits, spans, out)
    return out


@dataclass
class _Setup:
    """Per-triangle arrays for the triangles that survive culling/clipping."""

    ids: np.ndarray  # original triangle index
    xs: np.ndarray  # [3, n] vertex x sorted by y
    ys: np.ndarray  # [3, n] vertex y sorted by y
    slope: np.ndarray  # [3, n] dx/dy of edges a->b, b->c, a->c
    row0: np.ndarray  # first covered row (inclusive)
    row1: np.ndarray  # last covered row (exclusive)
    # [11, n] (C0..2, A0..2, B0..2, x0, y0): the perspective weight of vertex k
    # is u_k = C_k + A_k (x - x0) + B_k (y - y0), an affine function of the
    # screen position (C1 = C2 = 0).
    planes: np.ndarray


def _setup(
    xy: np.ndarray, depth: np.ndarray, tris: np.ndarray, H: int, W: int, cull: bool, near: float
) -> _Setup | None:
    v = xy[tris]  # [F, 3, 2]
    z = depth[tris]  # [F, 3]
    x, y = v[..., 0], v[..., 1]
    with np.errstate(invalid="ignore", over="ignore"):
        area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
        keep = np.isfinite(area2) & (np.abs(area2) > _MIN_AREA2)
        keep &= np.all(z > near, axis=1) & np.all(np.isfinite(z), axis=1)
        if cull:
            keep &= area2 < 0
        # Rows/columns whose centres can be covered; clip in float before the
        # integer cast so huge off-screen coordinates cannot overflow.
        ymin, ymax = y.min(axis=1), y.max(axis=1)
        xmin, xmax = x.min(axis=1), x.max(axis=1)
        row0 = np.clip(np.ceil(ymin - 0.5), 0, H)
        row1 = np.clip(np.ceil(ymax - 0.5), 0, H)
        col0 = np.clip(np.ceil(xmin - 0.5), 0, W)
        col1 = np.clip(np.ceil(xmax - 0.5), 0, W)
        keep &= (row1 > row0) & (col1 > col0)
    ids = np.flatnonzero(keep)
    if ids.size == 0:
        return None
    v, z, x, y, area2 = v[ids], z[ids], x[ids], y[ids], area2[ids]
    iz = 1.0 / z

    order = np.argsort(y, axis=1, kind="stable")
    ys = np.take_along_axis(y, order, axis=1).T.copy()
    xs = np.take_along_axis(x, order, axis=1).T.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        # Each edge is evaluated as x_top + (y - y_top) * slope with its upper
        # endpoint first, exactly as the neighbour sharing it does, so shared
        # edges split samples without cracks or double cover.  Flat edges give
        # nan/inf slopes but are never evaluated.
        slope = np.stack(
            [
                (xs[1] - xs[0]) / (ys[1] - ys[0]),
                (xs[2] - xs[1]) / (ys[2] - ys[1]),
                (xs[2] - xs[0]) / (ys[2] - ys[0]),
            ]
        )
    # u_k = l_k / z_k with l_k the screen-space weight: l_k is vertex k's
    # edge function of the opposite edge (k+1 -> k+2) divided by area2.
    xn, yn = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)  # vertex k+1
    xnn, ynn = np.roll(x, -2, axis=1), np.roll(y, -2, axis=1)  # vertex k+2
    planes = np.zeros((11, ids.size))
    planes[0] = iz[:, 0]  # at vertex 0 the weights are (1, 0, 0)
    planes[3:6] = ((yn - ynn) * iz / area2[:, None]).T
    planes[6:9] = ((xnn - xn) * iz / area2[:, None]).T
    planes[9] = x[:, 0]
    planes[10] = y[:, 0]
    return _Setup(
        ids=ids,
        xs=xs,
        ys=ys,
        slope=slope,
        row0=row0[ids].astype(np.int64),
        row1=row1[ids].astype(np.int64),
        planes=planes,
    )


def _spans(s: _Setup, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One span per (triangle, row): returns local triangle, row, first column, count."""
    nrows = s.row1 - s.row0
    t = np.repeat(np.arange(nrows.size), nrows)
    first = np.cumsum(nrows) - nrows
    row = np.arange(t.size) - np.repeat(first - s.row0, nrows)
    yc = row + 0.5
    xs, ys, sl = s.xs[:, t], s.ys[:, t], s.slope[:, t]
    with np.errstate(invalid="ignore"):
        x_long = xs[0] + (yc - ys[0]) * sl[2]
        upper = yc < ys[1]
        x_short = np.where(upper, xs[0] + (yc - ys[0]) * sl[0], xs[1] + (yc - ys[1]) * sl[1])
    left = np.minimum(x_long, x_short)
    right = np.maximum(x_long, x_short)
    c0 = np.clip(np.ceil(left - 0.5), 0, W).astype(np.int64)
    c1 = np.clip(np.ceil(right - 0.5), 0, W).astype(np.int64)
    count = c1 - c0
    ok = count > 0
    return t[ok], row[ok], c0[ok], count[ok]


def _zbuffer(s: _Setup, H: int, W: int) -> tuple[np.ndarray, int, "_Spans | None"]:
    """Resolve visibility.

    Returns flat int64 keys (-1 where empty; otherwise the winning span's index
    in the low ``n_bits``; a scratch buffer), ``n_bits`` and the per-span data.
    """
    S = _SCRATCH
    t, row, c0, count = _spans(s, W)
    keys = S.get("keys", H * W, np.int64)
    keys.fill(-1)
    if t.size == 0:
        return keys, 1, None
    sp = _Spans.build(s, t, row, c0, W)
    n_bits = max(1, int(t.size - 1).bit_length())
    low = np.int64((1 << n_bits) - 1)
    iz_start = sp.u0[0] + sp.u0[1] + sp.u0[2]  # 1/z at the first pixel of the span
    gx = sp.du[0] + sp.du[1] + sp.du[2]  # its step per pixel
    ends = np.cumsum(count)
    starts = ends - count  # first candidate of each span
    # Split spans into passes of at most ~_CHUNK candidates to bound memory.
    cuts = np.searchsorted(ends, np.arange(_CHUNK, int(ends[-1]), _CHUNK), side="left")
    bounds = [0, *np.unique(cuts + 1).tolist(), t.size]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        first = starts[a:b] - starts[a]
        n = int(ends[b - 1] - starts[a])
        # Span index of every candidate: a cumsum of +1 marks at span starts
        # (np.repeat has no out=, and fresh temporaries cost page faults).
        sid = S.get("sid", n, np.intp)
        sid.fill(0)
        sid[first[1:]] = 1
        sid[0] = a
        np.cumsum(sid, out=sid)
        k = S.get("k", n, np.intp)  # pixel offset within the span
        np.take(starts - starts[a], sid, out=k, mode="clip")
        np.subtract(S.range(n), k, out=k)
        pix = S.get("cand_pix", n, np.intp)
        np.take(sp.pix_start, sid, out=pix, mode="clip")
        pix += k
        invz = S.get("invz", n, np.float64)
        np.take(gx, sid, out=invz, mode="clip")
        invz *= k
        tmp = S.get("tmp", n, np.float64)
        invz += np.take(iz_start, sid, out=tmp, mode="clip")
        # Positive float64 bit patterns order like the values: keep the high
        # bits of 1/z and put the span index in the low bits, so the integer
        # max per pixel is the nearest surface and says where it came from.
        key = invz.view(np.int64)
        key &= ~low
        key |= sid
        np.maximum.at(keys, pix, key)
    return keys, n_bits, sp


@dataclass
class _Spans:
    """Per-span data: the perspective weights are u_k = u0_k + du_k * (x - x_first)."""

    pix_start: np.ndarray  # flat index of the span's first pixel
    tri: np.ndarray  # original triangle index (int32)
    u0: np.ndarray  # [3, S] weights (before normalisation) at the first pixel
    du: np.ndarray  # [3, S] their step per pixel

    @classmethod
    def build(cls, s: _Setup, t: np.ndarray, row: np.ndarray, c0: np.ndarray, W: int) -> "_Spans":
        p = s.planes[:, t]
        dx = (c0 + 0.5) - p[9]
        dy = (row + 0.5) - p[10]
        u0 = p[0:3] + p[3:6] * dx + p[6:9] * dy
        pix_start = (row * W + c0).astype(np.intp)
        return cls(pix_start=pix_start, tri=s.ids[t].astype(np.int32), u0=u0, du=p[3:6].copy())


def _resolve(keys: np.ndarray, n_bits: int, sp: _Spans, out: Fragments) -> None:
    """Fill ``out`` with ids, perspective-correct barycentrics and depth of winners."""
    S = _SCRATCH
    pix = _covered(keys, 0)
    n = pix.size
    if n == 0:
        return
    # All per-pixel work is 1-D gathers and in-place arithmetic into scratch:
    # broadcasting over a trailing axis of 3 is several times slower in numpy.
    sid = np.take(keys, pix, out=S.get("sid", n, np.intp), mode="clip")
    sid &= (1 << n_bits) - 1
    k = np.take(sp.pix_start, sid, out=S.get("k", n, np.intp), mode="clip")
    np.subtract(pix, k, out=k)  # offset of the pixel in its span
    tmp = S.get("tmp", n, np.float64)
    u = []
    for c in range(3):
        uc = np.take(sp.du[c], sid, out=S.get(f"u{c}", n, np.float64), mode="clip")
        uc *= k
        uc += np.take(sp.u0[c], sid, out=tmp, mode="clip")
        u.append(uc)
    dep = np.add(u[0], u[1], out=S.get("dep", n, np.float64))
    dep += u[2]
    np.divide(1.0, dep, out=dep)  # 1/z is the sum of the unnormalised weights
    out.triangle.reshape(-1)[pix] = np.take(sp.tri, sid, out=S.get("tri", n, np.int32), mode="clip")
    val = S.get("val32", n, np.float32)
    np.copyto(val, dep, casting="same_kind")
    out.depth.reshape(-1)[pix] = val
    rows = S.get("rows3", 3 * n, np.float32).reshape(n, 3)
    for c in range(3):
        np.multiply(u[c], dep, out=rows[:, c], casting="same_kind")
    _scatter_rows(out.bary.reshape(-1, 3), pix, rows)


def _scatter_rows(dst: np.ndarray, pix: np.ndarray, rows: np.ndarray) -> None:
    """``dst[pix] = rows`` for float32 [*, C] arrays, a whole row per element.

    Viewing rows as one opaque C*4-byte item makes this a 1-D scatter, several
    times faster than numpy's 2-D fancy assignment.
    """
    item = np.dtype((np.void, 4 * dst.shape[1]))
    dst.view(item).reshape(-1)[pix] = rows.view(item).reshape(-1)


def interpolate(
    fragments: Fragments,
    vertex_attributes: np.ndarray,
    triangles: np.ndarray,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Interpolate per-vertex attributes [V, C] with the fragments' barycentrics.

    Returns [H, W, C] float32 with zeros on empty pixels, written into ``out``
    when given (reusing it frame after frame avoids page faults).
    """
    attr = np.asarray(vertex_attributes)
    if attr.ndim != 2:
        raise ValueError(f"vertex_attributes must be [V, C], got shape {attr.shape}")
    H, W = fragments.triangle.shape
    C = attr.shape[1]
    if out is None:
        out = np.zeros((H * W, C), dtype=np.float32)
    else:
        if out.shape != (H, W, C) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {(H, W, C)}")
        out = out.reshape(H * W, C)
        out.fill(0.0)
    S = _SCRATCH
    pix = _covered(fragments.triangle.reshape(-1), 0)
    n = pix.size
    if n:
        t32 = np.take(fragments.triangle.reshape(-1), pix, out=S.get("i_tri32", n, np.int32), mode="clip")
        t = S.get("i_tri", n, np.intp)
        np.copyto(t, t32)  # take() would cast int32 indices into a fresh array
        item = np.dtype((np.void, 12))
        b3 = np.take(
            np.ascontiguousarray(fragments.bary).view(item).reshape(-1),
            pix,
            out=S.get("i_b3", n, item),
            mode="clip",
        ).view(np.float32).reshape(n, 3)
        b = [b3[:, 0], b3[:, 1], b3[:, 2]]
        # [3, C, F]: one contiguous 1-D gather per (corner, channel); 1-D
        # arithmetic is several times faster than broadcasting over C.
        fa = np.ascontiguousarray(attr.astype(np.float32, copy=False)[np.asarray(triangles)].transpose(1, 2, 0))
        rows = S.get("i_rows", n * C, np.float32).reshape(n, C)
        tmp = S.get("i_tmp", n, np.float32)
        for c in range(C):
            val = rows[:, c]
            np.take(fa[0, c], t, out=tmp, mode="clip")
            np.multiply(tmp, b[0], out=val)
            for k in (1, 2):
                np.take(fa[k, c], t, out=tmp, mode="clip")
                tmp *= b[k]
                val += tmp
        _scatter_rows(out, pix, rows)
    return out.reshape(H, W, C)
