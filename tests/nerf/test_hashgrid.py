"""Hash-grid encoding: CPU build vs the pure-torch mirror, gradients, edge cases, backend choice.

Tolerances (float32, table ~ U(-1, 1), so features are O(1)):
  forward          atol 1e-5, rtol 1e-5  (same rows and weights bit for bit; only the corner-sum order differs)
  v_table          atol 1e-5 * max|ref| + rtol 1e-5 (scatter order differs)
  v_x              atol 1e-5 * max|ref| + rtol 1e-4 (scaled by the finest resolution, ~1e3)
gradcheck runs in float64 on tiny cases with points kept >= 0.05 cell from cell faces
(trilinear interpolation is only piecewise smooth).

The nvcc test compiles cuda_ext/cuda/*.cu for sm_90 (~10 s here); it is skipped without nvcc.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from avatar3d.errors import Avatar3DError
from avatar3d.nerf import backend as backend_mod
from avatar3d.nerf import encoding as enc
from avatar3d.nerf.backend import BackendUnavailable, ExtensionSpec, load_extension
from avatar3d.nerf.encoding import (
    HashGridConfig,
    HashGridEncoding,
    hashgrid_encode,
    hashgrid_encode_cpu,
    hashgrid_encode_torch,
    make_layout,
)

REPO = Path(__file__).resolve().parents[2]
CU_SOURCES = sorted((REPO / "cuda_ext" / "cuda").glob("*.cu"))

@pytest.fixture(scope="module")
def cpu_ops():
    """The CPU build (JIT-compiled once into build/torch_extensions, then cached)."""
    record = load_extension(enc.HASHGRID_SPEC, "cpu")
    if record.module is None:
        pytest.fail(f"CPU build failed: {record.error}")
    return record.module


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _case(d: int, levels: int, feats: int, log2_t: int, n: int, seed: int, *, dtype=torch.float32, base=4.0,
          scale=1.5, lo=0.0, hi=1.0):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    lay = make_layout(d, levels, feats, log2_t, base, scale)
    x = lo + (hi - lo) * torch.rand(n, d, generator=gen, dtype=dtype)
    table = torch.rand(lay.n_rows, feats, generator=gen, dtype=dtype) * 2 - 1
    return lay, x, table, gen


CONFIGS = [  # (n_dims, n_levels, features, log2_table_size, n_points, base, scale)
    (2, 8, 2, 12, 3000, 16.0, 1.5),
    (3, 16, 2, 19, 4000, 16.0, 1.5),
    (3, 4, 4, 10, 2500, 8.0, 2.0),
    (2, 3, 1, 6, 700, 4.0, 2.0),
    (3, 2, 8, 14, 1025, 32.0, 1.3),
]


def test_layout_matches_header(cpu_ops) -> None:
    for d, levels, feats, log2_t, _, base, scale in CONFIGS + [(3, 16, 2, 19, 0, 16.0, 1.3819), (2, 1, 2, 4, 0, 1, 1)]:
        lay = make_layout(d, levels, feats, log2_t, base, scale)
        res, off, mask = cpu_ops.layout(d, levels, feats, log2_t, float(base), float(scale))
        assert (tuple(res), tuple(off)) == (lay.resolutions, lay.offsets)
        assert tuple(bool((mask >> l) & 1) for l in range(levels)) == lay.hashed


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"d{c[0]}-L{c[1]}-F{c[2]}-T{c[3]}")
def test_cpu_matches_torch_forward_backward(cpu_ops, cfg) -> None:
    d, levels, feats, log2_t, n, base, scale = cfg
    seed = _seed()
    lay, x, table, gen = _case(d, levels, feats, log2_t, n, seed, base=base, scale=scale)
    outs, grads = [], []
    v_out = torch.randn(n, lay.out_dim, generator=gen)
    for fn in (hashgrid_encode_cpu, hashgrid_encode_torch):
        xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
        out = fn(xr, tr, lay)
        outs.append(out.detach())
        grads.append(torch.autograd.grad(out, (xr, tr), v_out))
    msg = f"seed={seed} cfg={cfg}"
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5, msg=lambda m: f"{msg} forward: {m}")
    (vx_c, vt_c), (vx_t, vt_t) = grads
    torch.testing.assert_close(vt_c, vt_t, atol=1e-5 * vt_t.abs().max().item(), rtol=1e-5,
                               msg=lambda m: f"{msg} v_table: {m}")  # fmt: skip
    torch.testing.assert_close(vx_c, vx_t, atol=1e-5 * vx_t.abs().max().item(), rtol=1e-4,
                               msg=lambda m: f"{msg} v_x: {m}")  # fmt: skip


def test_cpu_is_deterministic(cpu_ops) -> None:
    lay, x, table, gen = _case(3, 6, 2, 8, 3000, _seed())  # small table: many collisions per row
    v_out = torch.randn(3000, lay.out_dim, generator=gen)
    runs = []
    for _ in range(2):
        xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
        runs.append(torch.autograd.grad(hashgrid_encode_cpu(xr, tr, lay), (xr, tr), v_out))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def _interior_points(lay, n: int, gen: torch.Generator, margin: float = 0.05) -> torch.Tensor:
    """float64 points whose fractional cell offset is in [margin, 1 - margin] at every level."""
    res = torch.tensor(lay.resolutions, dtype=torch.float64)
    keep = []
    while sum(len(k) for k in keep) < n:
        x = torch.rand(4096, lay.n_dims, generator=gen, dtype=torch.float64)
        frac = torch.frac(x[:, None, :] * res[None, :, None])
        keep.append(x[((frac > margin) & (frac < 1 - margin)).flatten(1).all(1)])
    return torch.cat(keep)[:n]


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("fn", [hashgrid_encode_cpu, hashgrid_encode_torch], ids=["cpu", "torch"])
def test_gradcheck_float64(cpu_ops, d: int, fn) -> None:
    gen = torch.Generator().manual_seed(_seed())
    lay = make_layout(d, 3, 2, 5 if d == 3 else 4, 2.0, 1.5)  # resolutions 2, 3, 4; coarse levels hashed
    x = _interior_points(lay, 4, gen).requires_grad_()
    table = (torch.rand(lay.n_rows, 2, generator=gen, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, lay), (x, table), eps=1e-6, atol=1e-6)


def test_outside_and_boundary_points(cpu_ops) -> None:
    lay, _, table, gen = _case(3, 5, 2, 10, 0, _seed())
    x = torch.tensor([[-0.5, 0.3, 1.7], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [2.0, -3.0, 0.25],
                      [float("nan"), 0.5, 0.5]])  # fmt: skip
    results = {}
    for name, fn in (("cpu", hashgrid_encode_cpu), ("torch", hashgrid_encode_torch)):
        xr = x.clone().requires_grad_()
        out = fn(xr, table, lay)
        (v_x,) = torch.autograd.grad(out.sum(), xr)
        results[name] = (out.detach(), v_x)
        assert torch.isfinite(out).all() and torch.isfinite(v_x).all()
        clamped = fn(x.nan_to_num(0.0).clamp(0, 1), table, lay)
        torch.testing.assert_close(out.detach(), clamped, atol=0, rtol=0)
        outside = (x < 0) | (x > 1) | x.isnan()
        assert (v_x[outside] == 0).all()
    torch.testing.assert_close(results["cpu"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results["cpu"][1], results["torch"][1], atol=1e-4, rtol=1e-4)


def test_table_smaller_than_coarsest_level(cpu_ops) -> None:
    lay, x, table, gen = _case(3, 4, 2, 4, 500, _seed(), base=16.0)  # 16 rows for 17^3 vertices: all hashed
    assert all(lay.hashed) and lay.n_rows == 4 * 16
    xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
    xs, ts = x.clone().requires_grad_(), table.clone().requires_grad_()
    out_c, out_t = hashgrid_encode_cpu(xr, tr, lay), hashgrid_encode_torch(xs, ts, lay)
    torch.testing.assert_close(out_c, out_t, atol=1e-5, rtol=1e-5)
    v = torch.randn(out_c.shape, generator=gen)
    g_c, g_t = torch.autograd.grad(out_c, (xr, tr), v), torch.autograd.grad(out_t, (xs, ts), v)
    torch.testing.assert_close(g_c[1], g_t[1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g_c[0], g_t[0], atol=1e-5 * g_t[0].abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("n", [0, 1])
def test_single_point_and_empty_batch(cpu_ops, n: int) -> None:
    lay, x, table, _ = _case(3, 4, 2, 8, n, _seed())
    for fn in (hashgrid_encode_cpu, hashgrid_encode_torch):
        xr, tr = x.clone().requires_grad_(), table.clone().requires_grad_()
        out = fn(xr, tr, lay)
        assert out.shape == (n, lay.out_dim)
        v_x, v_t = torch.autograd.grad(out.sum(), (xr, tr), allow_unused=True)
        assert v_x.shape == x.shape and v_t.shape == table.shape
        if n == 0:
            assert (v_t == 0).all()


def test_fp16_table_and_only_one_grad(cpu_ops) -> None:
    lay, x, table, gen = _case(3, 6, 2, 12, 2000, _seed())
    half = table.half().requires_grad_()
    out_c = hashgrid_encode_cpu(x, half, lay)
    out_t = hashgrid_encode_torch(x, half, lay)
    assert out_c.dtype == torch.float32
    torch.testing.assert_close(out_c, out_t, atol=1e-5, rtol=1e-5)
    v = torch.randn(out_c.shape, generator=gen)
    (g_c,), (g_t,) = torch.autograd.grad(out_c, half, v), torch.autograd.grad(out_t, half, v)
    assert g_c.dtype == torch.float16
    torch.testing.assert_close(g_c.float(), g_t.float(), atol=2e-3, rtol=2e-3)  # both rounded to fp16 once
    # Only the input gradient (frozen table), leading batch dims kept.
    xr = x.view(40, 50, 3).clone().requires_grad_()
    out = hashgrid_encode_cpu(xr, table, lay)
    assert out.shape == (40, 50, lay.out_dim)
    (v_x,) = torch.autograd.grad(out.sum(), xr)
    assert v_x.shape == xr.shape


def test_module_and_config(monkeypatch, cpu_ops) -> None:
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    enc_mod = HashGridEncoding(HashGridConfig(n_dims=3, n_levels=4, log2_table_size=12, finest_resolution=128))
    assert enc_mod.layout.resolutions[-1] == 128 and enc_mod.out_dim == 8
    assert enc_mod.backend_for("cpu") == "cpu"
    out = enc_mod(torch.rand(10, 7, 3))
    assert out.shape == (10, 7, 8)
    out.square().sum().backward()
    assert enc_mod.table.grad is not None
    with pytest.raises(Avatar3DError, match="n_dims"):
        HashGridConfig(n_dims=4)
    with pytest.raises(Avatar3DError, match="table shape"):
        hashgrid_encode(torch.rand(3, 3), torch.zeros(5, 2), enc_mod.layout)


def test_env_var_forces_torch(monkeypatch) -> None:
    monkeypatch.setenv(backend_mod.ENV_VAR, "torch")
    m = HashGridEncoding(HashGridConfig(n_dims=2, n_levels=2, log2_table_size=8, backend="cpu"))
    assert m.backend == "torch" and m.backend_for("cpu") == "torch"
    monkeypatch.setenv(backend_mod.ENV_VAR, "gpu")
    with pytest.raises(Avatar3DError, match="AVATAR3D_BACKEND"):
        HashGridEncoding(HashGridConfig(n_dims=2))


@pytest.mark.skipif(backend_mod.cuda_available(), reason="this machine has CUDA")
def test_forcing_cuda_without_cuda_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    with pytest.raises(BackendUnavailable, match="cuda"):
        HashGridEncoding(HashGridConfig(n_dims=3, n_levels=2, log2_table_size=8, backend="cuda"))
    monkeypatch.setenv(backend_mod.ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailable, match="no usable CUDA"):
        lay = make_layout(2, 1, 2, 8, 4, 1)
        hashgrid_encode(torch.rand(4, 2), torch.zeros(lay.n_rows, 2), lay)


def test_auto_falls_back_with_one_warning_when_build_fails(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++;\n")
    spec = ExtensionSpec(name=f"broken{os.getpid()}", cpu_sources=(broken,), build_root=tmp_path / "build")
    monkeypatch.setattr(enc, "HASHGRID_SPEC", spec)
    lay = make_layout(2, 2, 2, 8, 4.0, 2.0)
    x, table = torch.rand(5, 2), torch.rand(lay.n_rows, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = hashgrid_encode(x, table, lay)
        out2 = hashgrid_encode(x, table, lay)
        assert HashGridEncoding(HashGridConfig(n_dims=2, n_levels=2)).backend_for("cpu") == "torch"
    ours = [w for w in caught if "pure-torch mirror" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    torch.testing.assert_close(out1, hashgrid_encode_torch(x, table, lay))
    torch.testing.assert_close(out1, out2)
    with pytest.raises(BackendUnavailable, match="build failed"):
        HashGridEncoding(HashGridConfig(n_dims=2, n_levels=2, backend="cpu"))


def test_cuda_sources_compile_with_nvcc(tmp_path: Path) -> None:
    """CI's proof that the CUDA kernels compile (no GPU needed); the torch binding is not compiled here."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not on PATH: CUDA sources not compile-checked")
    assert CU_SOURCES, "no .cu files found under cuda_ext/cuda"
    include = REPO / "cuda_ext" / "include"
    for src in CU_SOURCES:
        out = tmp_path / f"{src.stem}.o"
        cmd = [nvcc, "-c", "-arch=sm_90", "-std=c++17", "-I", str(include), str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}"
