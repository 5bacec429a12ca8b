"""MediaPipe face-mesh topology: triangles and named landmark regions.

The triangles are recovered from ``FACEMESH_TESSELATION`` (an edge list) as
3-cliques, minus two spurious nostril caps, and oriented consistently so that
normals point out of the face (towards +z in canonical head space).
"""
from __future__ import annotations

import collections
import functools

import numpy as np

N_VERTICES = 468
# Two 3-cliques of the edge graph that are not faces of the surface.
_SPURIOUS_TRIANGLES = {(49, 64, 129), (279, 294, 358)}
# A triangle beside the nose tip and the winding that faces out of the face
# (checked on MediaPipe landmarks of a real photo); it fixes the global sign.
_SEED_SORTED = (1, 4, 44)
_SEED_ORDER = (1, 4, 44)


def _edges(name: str) -> list[tuple[int, int]]:
    from mediapipe.python.solutions import face_mesh_connections as fmc  # lazy: heavy (~1-2 s) import

    return [tuple(e) for e in getattr(fmc, name)]


@functools.lru_cache(maxsize=1)
def triangles() -> np.ndarray:
    """[852, 3] int32 triangles of the 468-vertex mesh, consistently wound, outward normals."""
    edges = _edges("FACEMESH_TESSELATION")
    adj: dict[int, set[int]] = collections.defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    tris = set()
    for a, b in edges:
        for c in adj[a] & adj[b]:
            tris.add(tuple(sorted((a, b, c))))
    tris -= _SPURIOUS_TRIANGLES
    tris = sorted(tris)
    oriented = _orient_consistently(tris)
    return np.asarray(oriented, dtype=np.int32)


def _orient_consistently(tris: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Flip triangles so that every shared edge is traversed in opposite directions."""
    edge_to_tris: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for i, (a, b, c) in enumerate(tris):
        for u, v in ((a, b), (b, c), (c, a)):
            edge_to_tris[(min(u, v), max(u, v))].append(i)
    out: list[tuple[int, int, int] | None] = [None] * len(tris)
    seed = tris.index(_SEED_SORTED)
    out[seed] = _SEED_ORDER
    queue = collections.deque([seed])
    while queue:
        i = queue.popleft()
        a, b, c = out[i]
        for u, v in ((a, b), (b, c), (c, a)):
            for j in edge_to_tris[(min(u, v), max(u, v))]:
                if out[j] is not None:
                    continue
                x, y, z = tris[j]
                cand = (x, y, z)
                # neighbour must traverse edge as (v, u)
                cyc = [(cand[0], cand[1]), (cand[1], cand[2]), (cand[2], cand[0])]
                if (u, v) in cyc:
                    cand = (x, z, y)
                out[j] = cand
                queue.append(j)
    missing = [i for i, t in enumerate(out) if t is None]
    if missing:
        raise RuntimeError(f"face mesh is not connected: {len(missing)} triangles unreached")
    return out  # type: ignore[return-value]
