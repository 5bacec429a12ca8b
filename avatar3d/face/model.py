"""Linear morphable face model: mean + identity basis + expression blendshapes.

``vertices = mean + sum_i a_i * identity_basis[i] + sum_e w_e * expression_basis[e]``

Identity coefficients ``a`` are unit-variance (1 = one standard deviation);
expression weights ``w`` are ARKit-style, in [0, 1]. Landmarks are embedded
barycentrically in the model's triangles, so any model with the same
interface (the open default, or a user's own BFM/FLAME conversion) yields the
same 468 MediaPipe landmarks for the tracker.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import save_npz_atomic

_ARRAY_KEYS = ("mean", "triangles", "identity_basis", "expression_basis",
               "landmark_faces", "landmark_bary")
_KEYS = ("name", "expression_names") + _ARRAY_KEYS


@dataclass(frozen=True)
class MorphableModel:
    """An immutable linear face model in canonical head space (metres)."""

    name: str
    mean: np.ndarray  # [V, 3] float32
    triangles: np.ndarray  # [F, 3] int32
    identity_basis: np.ndarray  # [Ki, V, 3] float32, per unit-variance coefficient
    expression_basis: np.ndarray  # [Ke, V, 3] float32, metres at weight 1
    expression_names: tuple[str, ...]
    landmark_faces: np.ndarray  # [L] int32
    landmark_bary: np.ndarray  # [L, 3] float32

    def __post_init__(self) -> None:
        v = self.mean.shape[0]
        problems = []
        if self.mean.shape != (v, 3):
            problems.append(f"mean {self.mean.shape}")
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3:
            problems.append(f"triangles {self.triangles.shape}")
        elif self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= v):
            problems.append("triangle index out of range")
        if self.identity_basis.ndim != 3 or self.identity_basis.shape[1:] != (v, 3):
            problems.append(f"identity_basis {self.identity_basis.shape}")
        if self.expression_basis.ndim != 3 or self.expression_basis.shape[1:] != (v, 3):
            problems.append(f"expression_basis {self.expression_basis.shape}")
        if len(self.expression_names) != self.expression_basis.shape[0]:
            problems.append("expression_names length")
        if self.landmark_bary.shape != (self.landmark_faces.shape[0], 3):
            problems.append(f"landmark_bary {self.landmark_bary.shape}")
        if self.landmark_faces.size and (self.landmark_faces.min() < 0
                                         or self.landmark_faces.max() >= len(self.triangles)):
            problems.append("landmark face index out of range")
        if problems:
            raise ValueError(f"inconsistent MorphableModel {self.name!r}: {', '.join(problems)}")

    # --- sizes -------------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def n_landmarks(self) -> int:
        return int(self.landmark_faces.shape[0])

    # --- evaluation --------------------------------------------------------
    def vertices(self, identity: np.ndarray | None = None,
                 expression: np.ndarray | None = None) -> np.ndarray:
        """[V, 3] float32 vertices; ``None`` means all-zero coefficients."""
        v = self.mean.astype(np.float32).copy()
        if identity is not None:
            a = np.asarray(identity, dtype=np.float32).reshape(-1)
            if a.shape[0] != self.n_identity:
                raise ValueError(f"identity has {a.shape[0]} coefficients, model needs {self.n_identity}")
            v += np.tensordot(a, self.identity_basis, axes=1)
        if expression is not None:
            w = np.asarray(expression, dtype=np.float32).reshape(-1)
            if w.shape[0] != self.n_expression:
                raise ValueError(f"expression has {w.shape[0]} weights, model needs {self.n_expression}")
            v += np.tensordot(w, self.expression_basis, axes=1)
        return v

    def landmarks_from_vertices(self, vertices: np.ndarray) -> np.ndarray:
        """[..., V, 3] -> [..., L, 3] through the barycentric embedding."""
        corners = vertices[..., self.triangles[self.landmark_faces], :]  # [..., L, 3, 3]
        return np.einsum("...lkc,lk->...lc", corners, self.landmark_bary)

    def landmarks(self, identity: np.ndarray | None = None,
                  expression: np.ndarray | None = None) -> np.ndarray:
        """[L, 3] float32 MediaPipe landmarks of the posed-free model."""
        return self.landmarks_from_vertices(self.vertices(identity, expression)).astype(np.float32)

    def expression_index(self, name: str) -> int:
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"expression {name!r} not in model {self.name!r}; "
                           f"known: {', '.join(self.expression_names)}") from None

    def expression_vector(self, **weights: float) -> np.ndarray:
        """[Ke] weights from keyword arguments, e.g. ``expression_vector(jawOpen=1.0)``."""
        w = np.zeros(self.n_expression, dtype=np.float32)
        for k, val in weights.items():
            w[self.expression_index(k)] = val
        return w

    # --- persistence -------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed .npz atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAY_KEYS}
        arrays["name"] = np.array(self.name)
        arrays["expression_names"] = np.array(list(self.expression_names))
        save_npz_atomic(path, compress=True, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MorphableModel":
        """Read a model written by :meth:`save`; one-line Avatar3DError if unusable."""
        path = Path(path)
        if not path.is_file():
            raise Avatar3DError(f"{path}: face model file not found; pass 'default' or the path "
                                "of a .npz written by MorphableModel.save")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in _KEYS if k not in z.files]
                if missing:
                    raise Avatar3DError(f"{path}: not a face model, missing keys {', '.join(missing)}; "
                                        "re-export it with MorphableModel.save")
                d = {k: z[k] for k in _KEYS}
        except Avatar3DError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise Avatar3DError(f"{path}: cannot read face model ({type(e).__name__}: {e}); "
                                "re-export it with MorphableModel.save") from None
        try:
            return cls(
                name=str(d["name"]),
                mean=d["mean"].astype(np.float32),
                triangles=d["triangles"].astype(np.int32),
                identity_basis=d["identity_basis"].astype(np.float32),
                expression_basis=d["expression_basis"].astype(np.float32),
                expression_names=tuple(str(s) for s in d["expression_names"]),
                landmark_faces=d["landmark_faces"].astype(np.int32),
                landmark_bary=d["landmark_bary"].astype(np.float32),
            )
        except ValueError as e:
            raise Avatar3DError(f"{path}: corrupt face model ({e}); "
                                "re-export it with MorphableModel.save") from None

    def replace(self, **changes) -> "MorphableModel":
        return dataclasses.replace(self, **changes)

    def to_torch(self):
        """A differentiable ``TorchMorphableModel`` (torch.nn.Module) with this model as buffers."""
        return TorchMorphableModel(self)


class TorchMorphableModel(torch.nn.Module):
    """Batched, autograd-friendly evaluation of a MorphableModel (float32 buffers)."""

    def __init__(self, model: MorphableModel):
        super().__init__()
        self.name = model.name
        self.expression_names = model.expression_names
        self.n_vertices = model.n_vertices
        self.n_identity = model.n_identity
        self.n_expression = model.n_expression
        self.register_buffer("mean", torch.from_numpy(np.ascontiguousarray(model.mean, np.float32)))
        self.register_buffer("identity_basis", torch.from_numpy(
            np.ascontiguousarray(model.identity_basis, np.float32).reshape(model.n_identity, -1)))
        self.register_buffer("expression_basis", torch.from_numpy(
            np.ascontiguousarray(model.expression_basis, np.float32).reshape(model.n_expression, -1)))
        self.register_buffer("triangles", torch.from_numpy(model.triangles.astype(np.int64)))
        lm_vidx = model.triangles[model.landmark_faces].astype(np.int64)  # [L, 3]
        self.register_buffer("landmark_vidx", torch.from_numpy(lm_vidx))
        self.register_buffer("landmark_bary", torch.from_numpy(model.landmark_bary.astype(np.float32)))

    def forward(self, identity: torch.Tensor | None, expression: torch.Tensor | None) -> torch.Tensor:
        """identity [B, Ki] or None, expression [B, Ke] or None -> vertices [B, V, 3]."""
        ref = expression if expression is not None else identity
        batch = 1 if ref is None else ref.shape[0]
        flat = self.mean.reshape(1, -1).expand(batch, -1)
        if identity is not None:
            flat = flat + identity.to(self.mean.dtype) @ self.identity_basis
        if expression is not None:
            flat = flat + expression.to(self.mean.dtype) @ self.expression_basis
        return flat.reshape(batch, self.n_vertices, 3)

    def landmarks_from_vertices(self, vertices: torch.Tensor) -> torch.Tensor:
        """[B, V, 3] -> [B, L, 3] through the barycentric embedding."""
        corners = vertices[:, self.landmark_vidx, :]  # [B, L, 3, 3]
        return (corners * self.landmark_bary[None, :, :, None]).sum(dim=2)

    def landmarks(self, identity: torch.Tensor | None, expression: torch.Tensor | None) -> torch.Tensor:
        """identity [B, Ki] or None, expression [B, Ke] or None -> landmarks [B, L, 3]."""
        return self.landmarks_from_vertices(self.forward(identity, expression))
