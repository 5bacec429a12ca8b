"""Multi-resolution hash encoding of points in [0,1]^d (2D or 3D) into learned features.

Why: a NeRF head's density/colour MLP is tiny when it reads trainable features
from a pyramid of grids; coarse levels are dense grids, fine levels share a fixed
size table through a spatial hash (collisions are resolved by training).

One math, three builds: ``cuda_ext/include/hashgrid.h`` (compiled into the CPU
C++/OpenMP and CUDA builds) and :func:`hashgrid_encode_torch`, the pure-torch
mirror that is both the reference in tests and the last-resort fallback.
Inputs outside [0,1] are clamped onto the boundary (NaN -> 0); their gradient is
zero along each clamped axis, like ``torch.clamp``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from avatar3d.errors import Avatar3DError
from avatar3d.nerf.backend import (
    CUDA_EXT_DIR,
    Backend,
    ExtensionSpec,
    ensure_backend,
    requested_backend,
    resolve_backend,
)

HASHGRID_SPEC = ExtensionSpec(
    name="hashgrid",
    cpu_sources=(CUDA_EXT_DIR / "cpu" / "hashgrid_cpu.cpp",),
    cuda_sources=(CUDA_EXT_DIR / "bindings" / "hashgrid_cuda_bind.cpp", CUDA_EXT_DIR / "cuda" / "hashgrid.cu"),
)
HASH_PRIMES = (1, 2654435761, 805459861)  # same as a3d_hash_prime in hashgrid.h
MAX_LEVELS, MAX_FEATURES = 32, 8


@dataclass
class HashGridConfig:
    """Shape of the encoding; ``finest_resolution`` (if set) replaces ``per_level_scale``."""

    n_dims: Literal[2, 3]
    n_levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.5
    finest_resolution: int | None = None
    backend: Backend = "auto"
    table_dtype: Literal["float32", "float16"] = "float32"  # float16: half the memory traffic, fp32 math
    init_scale: float = 1e-4  # table ~ U(-init_scale, init_scale)

    def __post_init__(self) -> None:
        checks = [
            (self.n_dims in (2, 3), f"n_dims={self.n_dims} must be 2 or 3"),
            (1 <= self.n_levels <= MAX_LEVELS, f"n_levels={self.n_levels} must be in 1..{MAX_LEVELS}"),
            (
                1 <= self.features_per_level <= MAX_FEATURES,
                f"features_per_level={self.features_per_level} must be in 1..{MAX_FEATURES}",
            ),
            (1 <= self.log2_table_size <= 30, f"log2_table_size={self.log2_table_size} must be in 1..30"),
            (self.base_resolution >= 1, f"base_resolution={self.base_resolution} must be >= 1"),
            (self.per_level_scale >= 1.0, f"per_level_scale={self.per_level_scale} must be >= 1"),
            (
                self.finest_resolution is None or self.finest_resolution >= self.base_resolution,
                f"finest_resolution={self.finest_resolution} must be >= base_resolution={self.base_resolution}",
            ),
            (self.table_dtype in ("float32", "float16"), f"table_dtype={self.table_dtype!r}: use float32 or float16"),
        ]
        for ok, message in checks:
            if not ok:
                raise Avatar3DError(f"hash grid config (avatar: head/torso: grid: in the YAML): {message}")

    def level_scale(self) -> float:
        """Growth factor between levels, from ``finest_resolution`` when given."""
        if self.finest_resolution is None or self.n_levels == 1:
            return float(self.per_level_scale)
        return math.exp(math.log(self.finest_resolution / self.base_resolution) / (self.n_levels - 1))


@dataclass(frozen=True)
class HashGridLayout:
    """Per-level resolutions and table rows; identical to ``a3d_make_layout`` in hashgrid.h."""

    n_dims: int
    n_levels: int
    n_features: int
    log2_table_size: int
    base_resolution: float
    per_level_scale: float
    resolutions: tuple[int, ...]  # cells per axis
    offsets: tuple[int, ...]  # first row of each level, then the total
    hashed: tuple[bool, ...]  # level uses the spatial hash (its grid does not fit the table)

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def ext_args(self) -> tuple[int, int, float, float]:
        """Arguments after (x, table) of the compiled ``fwd``/``bwd``."""
        return self.n_levels, self.log2_table_size, self.base_resolution, self.per_level_scale


def make_layout(
    n_dims: int, n_levels: int, n_features: int, log2_table_size: int, base_resolution: float, per_level_scale: float
) -> HashGridLayout:
    """Python twin of ``a3d_make_layout``: repeated float64 multiplication, floor(s + 1e-6)."""
    table_size = 1 << log2_table_size
    resolutions, offsets, hashed = [], [0], []
    s = float(base_resolution)
    for _ in range(n_levels):
        r = max(1, math.floor(s + 1e-6))
        s *= float(per_level_scale)
        vertices = (r + 1) ** n_dims
        resolutions.append(r)
        hashed.append(vertices > table_size)
        offsets.append(offsets[-1] + min(vertices, table_size))
    return HashGridLayout(
        n_dims, n_levels, n_features, log2_table_size, float(base_resolution), float(per_level_scale),
        tuple(resolutions), tuple(offsets), tuple(hashed),
    )  # fmt: skip


def layout_from_config(config: HashGridConfig) -> HashGridLayout:
    return make_layout(
        config.n_dims, config.n_levels, config.features_per_level, config.log2_table_size,
        config.base_resolution, config.level_scale(),
    )  # fmt: skip


def _normalize_dtypes(x: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Supported pairs (x, table): (f32, f32|f16) and (f64, f64); anything else is cast (differentiably)."""
    if x.dtype == torch.float64 or table.dtype == torch.float64:
        return x.double(), table.double()
    if table.dtype not in (torch.float32, torch.float16):
        table = table.float()
    return x.float(), table


def _check_shapes(x: torch.Tensor, table: torch.Tensor, layout: HashGridLayout) -> None:
    if x.shape[-1] != layout.n_dims:
        raise Avatar3DError(f"hashgrid: points have {x.shape[-1]} coordinates, the layout expects {layout.n_dims}")
    if tuple(table.shape) != (layout.n_rows, layout.n_features):
        raise Avatar3DError(
            f"hashgrid: table shape {tuple(table.shape)} != layout ({layout.n_rows}, {layout.n_features})"
        )


def hashgrid_encode_torch(x: torch.Tensor, table: torch.Tensor, layout: HashGridLayout) -> torch.Tensor:
    """Pure-torch mirror: [..., n_dims] in [0,1] -> [..., n_levels * n_features]; autograd gives both grads.

    Vectorised over levels; per-axis corner terms are combined by broadcasting so the
    [levels, points, corners] integer tensors are built once (integer work is ~half the
    forward). Gather with int64 ``index_select``: its backward is a scatter-add (profiled:
    the largest single cost, random writes into the table; level-major order keeps
    each level's rows in cache). Avoid int32 ``embedding`` here: ~15x slower backward.
    """
    _check_shapes(x, table, layout)
    lead = x.shape[:-1]
    x, table = _normalize_dtypes(x.reshape(-1, layout.n_dims), table)
    n, d, n_levels, n_feat = x.shape[0], layout.n_dims, layout.n_levels, layout.n_features
    dev = x.device
    res_i = torch.tensor(layout.resolutions, dtype=torch.int64, device=dev)  # [L]
    res_f = res_i.to(x.dtype)
    xc = x.clamp(0.0, 1.0).nan_to_num(0.0)  # [N, D]
    # Level-major [L, N, ...] so the gather and its scatter backward sweep one level's rows at a time.
    p = res_f[:, None, None] * xc[None, :, :]  # [L, N, D]
    c = torch.minimum(p.floor(), (res_f - 1.0)[:, None, None])  # [L, N, D]
    w = p - c  # [L, N, D]
    ci = c.to(torch.int64)
    hashed = torch.tensor(layout.hashed, device=dev)  # [L]
    # Per-axis multiplier: hash prime on hashed levels, dense stride (R+1)^axis on dense ones.
    stride = (res_i[:, None] + 1) ** torch.arange(d, device=dev)[None, :]  # [L, D]
    primes = torch.tensor(HASH_PRIMES[:d], dtype=torch.int64, device=dev)[None, :]  # [1, D]
    mult = torch.where(hashed[:, None], primes, stride)  # [L, D]
    terms = (ci[..., None] + torch.arange(2, device=dev)) * mult[:, None, :, None]  # [L, N, D, 2]
    terms = terms & 0xFFFFFFFF  # uint32 products, as in C++
    ones = (1,) * d
    # Corner c = sum_i b_i 2^i: axis 0 is the fastest-varying corner axis, like the C++ loop.
    dense_rows = hashed_rows = weights = None
    for axis in range(d):
        shape = [n_levels, n, *ones]
        shape[2 + (d - 1 - axis)] = 2
        t = terms[:, :, axis, :].reshape(shape)  # [L, N, 2 or 1, ...]
        a = torch.stack((1.0 - w[:, :, axis], w[:, :, axis]), -1).reshape(shape)
        dense_rows = t if dense_rows is None else dense_rows + t
        hashed_rows = t if hashed_rows is None else hashed_rows ^ t
        weights = a if weights is None else weights * a
    k = 1 << d
    mask = (1 << layout.log2_table_size) - 1
    hashed_rows = hashed_rows & mask
    level_sel = hashed[:, None, None]
    offsets = torch.tensor(layout.offsets[:-1], dtype=torch.int64, device=dev)[:, None, None]  # [L, 1, 1]
    rows = torch.where(level_sel, hashed_rows.reshape(n_levels, n, k), dense_rows.reshape(n_levels, n, k)) + offsets
    emb = table.index_select(0, rows.reshape(-1)).to(x.dtype).view(n_levels, n, k, n_feat)  # [L, N, K, F]
    out = (weights.reshape(n_levels, n, k, 1) * emb).sum(2).transpose(0, 1)  # [N, L, F]
    return out.reshape(*lead, n_levels * n_feat)


class _HashGridFunction(torch.autograd.Function):
    """Compiled forward/backward; ``ops`` is the loaded extension (CPU or CUDA build)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, table: torch.Tensor, layout: HashGridLayout, ops
    ) -> torch.Tensor:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, table)
        ctx.layout, ctx.ops = layout, ops
        return ops.fwd(x, table, *layout.ext_args())  # [N, n_levels * n_features]

    @staticmethod
    @once_differentiable
    def backward(ctx, v_out: torch.Tensor | None):  # type: ignore[override]
        if v_out is None:
            return None, None, None, None
        x, table = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        v_table, v_x = ctx.ops.bwd(v_out, x, table, *ctx.layout.ext_args(), need_table, need_x)
        return v_x, v_table, None, None


def _encode_compiled(x: torch.Tensor, table: torch.Tensor, layout: HashGridLayout, ops) -> torch.Tensor:
    _check_shapes(x, table, layout)
    lead = x.shape[:-1]
    x, table = _normalize_dtypes(x.reshape(-1, layout.n_dims), table)
    out = _HashGridFunction.apply(x, table, layout, ops)
    return out.reshape(*lead, layout.out_dim)


def hashgrid_encode_cpu(x: torch.Tensor, table: torch.Tensor, layout: HashGridLayout) -> torch.Tensor:
    """The C++/OpenMP build (raises BackendUnavailable if it cannot be built)."""
    _, ops = resolve_backend(HASHGRID_SPEC, "cpu", x.device)
    return _encode_compiled(x, table, layout, ops)


def hashgrid_encode_cuda(x: torch.Tensor, table: torch.Tensor, layout: HashGridLayout) -> torch.Tensor:
    """The CUDA build (raises BackendUnavailable without a CUDA torch or on CPU tensors)."""
    _, ops = resolve_backend(HASHGRID_SPEC, "cuda", x.device)
    return _encode_compiled(x, table, layout, ops)


def hashgrid_encode(
    x: torch.Tensor, table: torch.Tensor, layout: HashGridLayout, *, backend: str = "auto"
) -> torch.Tensor:
    """Dispatches to the build for ``x.device`` (env ``AVATAR3D_BACKEND`` overrides ``backend``)."""
    kind, ops = resolve_backend(HASHGRID_SPEC, requested_backend(backend), x.device)
    if ops is None:
        return hashgrid_encode_torch(x, table, layout)
    return _encode_compiled(x, table, layout, ops)


class HashGridEncoding(torch.nn.Module):
    """Trainable hash-grid features: [..., n_dims] in [0,1] -> [..., n_levels * features_per_level].

    Points outside [0,1]^d are clamped onto the boundary (zero gradient along the
    clamped axes). A forced backend that cannot run here fails at construction.
    """

    def __init__(self, config: HashGridConfig):
        super().__init__()
        self.config = config
        self.layout = layout_from_config(config)
        self.backend = requested_backend(config.backend)
        ensure_backend(HASHGRID_SPEC, self.backend)
        dtype = torch.float16 if config.table_dtype == "float16" else torch.float32
        table = torch.empty(self.layout.n_rows, self.layout.n_features, dtype=torch.float32)
        table.uniform_(-config.init_scale, config.init_scale)
        self.table = torch.nn.Parameter(table.to(dtype))  # [n_rows, n_features]

    @property
    def out_dim(self) -> int:
        return self.layout.out_dim

    def backend_for(self, device: torch.device | str) -> str:
        """Which backend runs inputs on ``device`` ("cuda", "cpu" or "torch")."""
        return resolve_backend(HASHGRID_SPEC, self.backend, torch.device(device))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hashgrid_encode(x, self.table, self.layout, backend=self.backend)

    def extra_repr(self) -> str:
        lay = self.layout
        return (
            f"n_dims={lay.n_dims}, levels={lay.n_levels}x{lay.n_features}, resolutions={lay.resolutions[0]}.."
            f"{lay.resolutions[-1]}, rows={lay.n_rows}, backend={self.backend}"
        )
