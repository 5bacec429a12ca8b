"""Identity basis of the open face model: smooth, low-frequency shape variation.

Without licensed scan data we cannot learn real face-shape statistics, so the
identity space is a generic smoothness prior that a tracker can fit to a
person: three global anisotropic scalings (head width, height, depth) plus the
lowest eigenfunctions of the cotangent Laplacian of the mean mesh, each used
as a displacement field along x, y and z. Each field is split into its
mirror-symmetric or antisymmetric part, rigid motions (3 translations, 3
linearised rotations, which the head pose already covers) are projected out,
and the fields are Gram-Schmidt orthonormalised in order of increasing
frequency.

Scaling (coefficient 1 = one standard deviation), quoted as the RMS vertex
displacement of the basis vector:

* global scalings: ``SIGMA_SCALE_M`` = 1.5 mm (the x scaling changes the
  234-454 face width by ~6 mm per std),
* symmetric Laplacian modes: ``SIGMA_MODE_M`` * (lambda_1 / lambda_k)^(1/4),
  1.5 mm for the lowest mode falling to ~0.7 mm for the 16th,
* antisymmetric (left/right asymmetry) fields: half of the above
  (0.75 mm down to ~0.36 mm).

With 16 modes this gives Ki = 51 components.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from avatar3d.face.blendshapes import mirror_map
from avatar3d.face.topology import triangles

N_LAPLACIAN_MODES = 16
SIGMA_SCALE_M = 1.5e-3
SIGMA_MODE_M = 1.5e-3
ASYMMETRY_FACTOR = 0.5


def cotangent_laplacian(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense (L [V, V] positive semi-definite cotangent Laplacian, lumped mass diagonal [V])."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = triangles()
    n = len(v)
    lap = np.zeros((n, n))
    mass = np.zeros(n)
    for k in range(3):
        i, j, o = tri[:, k], tri[:, (k + 1) % 3], tri[:, (k + 2) % 3]
        a, b = v[i] - v[o], v[j] - v[o]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        cot = (a * b).sum(1) / np.maximum(cross, 1e-12)
        np.add.at(lap, (i, j), -0.5 * cot)
        np.add.at(lap, (j, i), -0.5 * cot)
    p = v[tri]
    area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
    for k in range(3):
        np.add.at(mass, tri[:, k], area / 3.0)
    lap[np.diag_indices(n)] = -lap.sum(axis=1)
    return lap, mass


def uniform_laplacian(n_vertices: int | None = None) -> np.ndarray:
    """Dense graph Laplacian (degree - adjacency) of the mesh; used to measure smoothness."""
    tri = triangles()
    n = int(tri.max()) + 1 if n_vertices is None else n_vertices
    adj = np.zeros((n, n))
    for k in range(3):
        adj[tri[:, k], tri[:, (k + 1) % 3]] = 1.0
        adj[tri[:, (k + 1) % 3], tri[:, k]] = 1.0
    return np.diag(adj.sum(1)) - adj


def rigid_fields(vertices: np.ndarray) -> np.ndarray:
    """[6, V, 3] translations and linearised rotations about the origin."""
    v = np.asarray(vertices, dtype=np.float64)
    n = len(v)
    out = np.zeros((6, n, 3))
    for a in range(3):
        out[a, :, a] = 1.0
        axis = np.zeros(3)
        axis[a] = 1.0
        out[3 + a] = np.cross(axis, v)
    return out


def _mirror_op(field: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    return field[mirror] * np.array([-1.0, 1.0, 1.0])


def build_identity_basis(mean: np.ndarray, n_modes: int = N_LAPLACIAN_MODES) -> np.ndarray:
    """[Ki, V, 3] float32 identity basis; rows orthogonal, RMS per row = its std."""
    v = np.asarray(mean, dtype=np.float64)
    n = len(v)
    mirror = mirror_map(v)
    perm = np.eye(n)[mirror]
    lap, mass = cotangent_laplacian(v)
    lap = 0.5 * (lap + perm @ lap @ perm.T)  # exact left/right symmetry despite 6 odd edges
    mass = 0.5 * (mass + mass[mirror])
    # generalised problem L phi = lambda M phi via the symmetric M^-1/2 L M^-1/2
    inv_sqrt = 1.0 / np.sqrt(mass)
    evals, evecs = scipy.linalg.eigh(inv_sqrt[:, None] * lap * inv_sqrt[None, :],
                                     subset_by_index=[0, n_modes])
    evecs = inv_sqrt[:, None] * evecs
    evals, evecs = evals[1:], evecs[:, 1:]  # drop the constant mode

    candidates: list[tuple[np.ndarray, float]] = []  # (field, std)
    centred = v - v.mean(axis=0)
    for a in range(3):
        f = np.zeros((n, 3))
        f[:, a] = centred[:, a]
        candidates.append((f, SIGMA_SCALE_M))
    for k in range(evecs.shape[1]):
        sigma = SIGMA_MODE_M * (evals[0] / evals[k]) ** 0.25
        for a in range(3):
            f = np.zeros((n, 3))
            f[:, a] = evecs[:, k]
            candidates.append((f, sigma))

    accepted: list[np.ndarray] = [r.ravel() / np.linalg.norm(r) for r in _parity_split(rigid_fields(v), mirror)]
    accepted = _gram_schmidt(accepted, [])
    n_rigid = len(accepted)
    stds: list[float] = []
    for f, sigma in candidates:
        parts = [(0.5 * (f + _mirror_op(f, mirror)), sigma),
                 (0.5 * (f - _mirror_op(f, mirror)), sigma * ASYMMETRY_FACTOR)]
        for part, s in parts:
            if np.linalg.norm(part) < 0.2 * np.linalg.norm(f):
                continue
            before = len(accepted)
            accepted = _gram_schmidt([part.ravel() / np.linalg.norm(part)], accepted)
            if len(accepted) > before:
                stds.append(s)
    basis = np.stack(accepted[n_rigid:])
    # eigenvector signs are arbitrary: make the largest entry of each row positive
    rows = np.arange(len(basis))
    basis *= np.sign(basis[rows, np.abs(basis).argmax(axis=1)])[:, None]
    basis = basis.reshape(-1, n, 3)
    rms_unit = np.sqrt((basis ** 2).sum(axis=(1, 2)) / n)  # = 1/sqrt(V) for unit vectors
    basis = basis * (np.asarray(stds) / rms_unit)[:, None, None]
    return basis.astype(np.float32)


def _parity_split(fields: np.ndarray, mirror: np.ndarray) -> list[np.ndarray]:
    out = []
    for f in fields:
        for s in (1.0, -1.0):
            part = 0.5 * (f + s * _mirror_op(f, mirror))
            if np.linalg.norm(part) > 1e-6 * np.linalg.norm(f):
                out.append(part)
    return out


def _gram_schmidt(new: list[np.ndarray], basis: list[np.ndarray], tol: float = 0.05) -> list[np.ndarray]:
    """Append each new unit vector's component orthogonal to ``basis`` if it keeps > tol of its norm."""
    out = list(basis)
    for x in new:
        y = x.copy()
        for _ in range(2):  # re-orthogonalise for numerical safety
            for b in out:
                y -= (b @ y) * b
        norm = np.linalg.norm(y)
        if norm > tol * np.linalg.norm(x):
            out.append(y / norm)
    return out


def identity_std_mm(basis: np.ndarray) -> np.ndarray:
    """[Ki] RMS vertex displacement (mm) of each identity basis vector at coefficient 1."""
    b = np.asarray(basis, dtype=np.float64)
    return 1e3 * np.sqrt((b ** 2).sum(axis=(1, 2)) / b.shape[1])
