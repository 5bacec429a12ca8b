"""CUDA build of the Gaussian rasterizer vs the torch mirror and the CPU build (same scenes, same upstream gradient).

Skipped on machines without a CUDA torch and a GPU (CI): there the CUDA sources are only
compile-checked (tests/nerf/test_hashgrid.py compiles every cuda_ext/cuda/*.cu with nvcc;
tests/nerf/test_cuda_bindings_compile.py type-checks every binding). Tolerances: forward as the
CPU suite (float32 rounding; the GPU may contract to FMA), gradients 1e-4 of their largest
magnitude (atomicAdd sums in a nondeterministic order).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from avatar3d.gaussians import rasterize_gaussians
from avatar3d.gaussians.rasterize import GAUSSIANS_SPEC
from avatar3d.nerf.backend import cuda_available, load_extension

pytestmark = pytest.mark.skipif(not cuda_available(), reason="no CUDA torch + GPU here: CUDA path compile-checked only")

NAMES = ("means", "quats", "scales", "opacities", "sh", "view_rot", "view_trans", "means2d")


@pytest.fixture(scope="module")
def cuda_build():
    record = load_extension(GAUSSIANS_SPEC, "cuda")
    if record.module is None:
        pytest.fail(f"CUDA build of gaussians failed: {record.error}")
    return record.module


def _run(scene, device: str, backend: str, seed: int = 5):
    leaves = [t.detach().to(device).clone().requires_grad_() for t in scene.tensors()]
    out = rasterize_gaussians(*leaves[:5], scene.camera, leaves[5], leaves[6], backend=backend)
    gen = torch.Generator().manual_seed(seed)
    ups = [torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device) for t in (out.color, out.alpha, out.depth)]
    sum((t * u).sum() for t, u in zip((out.color, out.alpha, out.depth), ups)).backward()
    grads = [t.grad.cpu() for t in leaves] + [out.means2d.grad.cpu()]
    host = dataclasses.replace(out, color=out.color.detach().cpu(), alpha=out.alpha.detach().cpu(),
                               depth=out.depth.detach().cpu(), radii=out.radii.cpu(), means2d=out.means2d.detach().cpu())  # fmt: skip
    return host, dict(zip(NAMES, grads))


@pytest.mark.parametrize("n,width,height,dtype", [(1, 16, 16, torch.float32), (700, 72, 40, torch.float32),
                                                  (20000, 256, 192, torch.float32), (300, 48, 40, torch.float64)])  # fmt: skip
def test_cuda_matches_cpu_build_and_mirror(cuda_build, make_scene, n, width, height, dtype) -> None:
    scene = make_scene(n, 3, width, height, dtype=dtype)
    a, ga = _run(scene, "cuda", "cuda")
    assert a.backend == "cuda"
    refs = [_run(scene, "cpu", "cpu")]
    if n <= 1000:  # the mirror on the CPU and on the GPU (the fallback when the CUDA build fails)
        refs += [_run(scene, "cpu", "torch"), _run(scene, "cuda", "torch")]
    atol = 1e-12 if dtype == torch.float64 else 3e-5
    g_tol = 1e-9 if dtype == torch.float64 else 1e-4
    for b, gb in refs:
        for name in ("color", "alpha", "depth", "means2d"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0)
        assert torch.equal(a.radii, b.radii)
        for name in NAMES:
            scale = max(float(gb[name].abs().max()), 1.0)
            torch.testing.assert_close(ga[name], gb[name], atol=g_tol * scale, rtol=0, msg=name)


def test_cuda_gradcheck_float64(cuda_build, make_scene) -> None:
    scene = make_scene(5, 21, 16, 16, dtype=torch.float64, sh_k=9, scale_range=(0.08, 0.2), z_range=(1.5, 2.5),
                       opacity_range=(0.3, 0.8))  # fmt: skip

    def fn(means, quats, scales, opac, sh, rot, trans):
        out = rasterize_gaussians(means, quats, scales, opac, sh, scene.camera, rot, trans, sh_degree=2, backend="cuda")
        return out.color, out.alpha, out.depth

    inputs = tuple(t.detach().cuda().requires_grad_() for t in scene.tensors())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_cuda_empty_scene_and_crowded_tile(cuda_build, make_scene) -> None:
    empty = make_scene(0, 1, 20, 17)
    out = rasterize_gaussians(*(t.cuda() for t in empty.tensors()[:5]), empty.camera, backend="cuda")
    assert float(out.alpha.abs().max()) == 0.0
    crowded = make_scene(3000, 2, 32, 32, z_range=(1.0, 1.2))  # > 1,000 splats on each of four tiles
    a, ga = _run(crowded, "cuda", "cuda")
    b, gb = _run(crowded, "cpu", "cpu")
    torch.testing.assert_close(a.color, b.color, atol=3e-5, rtol=0)
    for name in NAMES:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-4 * max(float(gb[name].abs().max()), 1.0), rtol=0)
