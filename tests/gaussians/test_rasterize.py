"""The Gaussian rasterizer: CPU build vs the torch mirror, gradcheck, edge cases, closed-form footprints.

Both paths run the header's formulas in the same precision, so forward outputs agree to float32
rounding (1e-5) and gradients to 1e-4 of their largest magnitude; in float64 to ~1e-10. The
upstream gradient is one random draw shared by both paths (colour, alpha and depth at once).
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from avatar3d.errors import Avatar3DError
from avatar3d.gaussians import PinholeCamera, rasterize_gaussians
from avatar3d.gaussians.camera import DILATION, T_MIN
from avatar3d.gaussians.mirror import bin_tiles_torch, project_torch
from avatar3d.nerf.backend import BackendUnavailable, cuda_available

GRAD_NAMES = ("means", "quats", "scales", "opacities", "sh", "view_rot", "view_trans", "means2d")


def render(scene, backend: str, sh_degree: int | None = None):
    return rasterize_gaussians(scene.means, scene.quats, scene.scales, scene.opacities, scene.sh, scene.camera,
                               scene.view_rot, scene.view_trans, sh_degree=sh_degree, backend=backend)  # fmt: skip


def render_and_grad(scene, backend: str, seed: int = 7, sh_degree: int | None = None):
    """(output, {name: grad}) for the loss sum(out * g) with a fixed random upstream g."""
    s = scene.leaves()
    out = render(s, backend, sh_degree)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out.color, out.alpha, out.depth))
    if loss.requires_grad:
        loss.backward()
    grads = dict(zip(GRAD_NAMES, [t.grad for t in s.tensors()] + [out.means2d.grad]))
    out = dataclasses.replace(out, color=out.color.detach(), alpha=out.alpha.detach(), depth=out.depth.detach(),
                              means2d=out.means2d.detach())  # fmt: skip
    return out, grads


def assert_parity(a, b, ga, gb, *, atol: float, grad_rtol: float) -> None:
    for name in ("color", "alpha", "depth", "means2d"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0, msg=name)
    assert torch.equal(a.radii, b.radii)
    for name in GRAD_NAMES:
        ref = gb[name]
        scale = max(float(ref.abs().max()), 1.0)
        torch.testing.assert_close(ga[name], ref, atol=grad_rtol * scale, rtol=0, msg=f"grad {name}")


@pytest.mark.parametrize("n,width,height,seed", [(1, 16, 16, 0), (60, 40, 24, 1), (700, 72, 40, 2), (1200, 64, 48, 3)])
def test_cpu_build_matches_mirror(gaussians_ops, make_scene, n, width, height, seed) -> None:
    scene = make_scene(n, seed, width, height)
    a, ga = render_and_grad(scene, "cpu")
    b, gb = render_and_grad(scene, "torch")
    assert a.backend == "cpu" and b.backend == "torch"
    assert_parity(a, b, ga, gb, atol=2e-5, grad_rtol=2e-5)
    assert float(a.alpha.detach().max()) > 0.3  # the scene is actually seen


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_lower_sh_degrees_match_and_ignore_higher_coefficients(gaussians_ops, make_scene, degree) -> None:
    scene = make_scene(80, 11, 40, 32, sh_k=(degree + 1) ** 2 + 2)
    a, ga = render_and_grad(scene, "cpu", sh_degree=degree)
    b, gb = render_and_grad(scene, "torch", sh_degree=degree)
    assert_parity(a, b, ga, gb, atol=2e-5, grad_rtol=2e-5)
    assert float(ga["sh"][:, (degree + 1) ** 2 :].abs().max()) == 0.0


def test_float64_parity_is_tight(gaussians_ops, make_scene) -> None:
    scene = make_scene(300, 5, 48, 40, dtype=torch.float64)
    a, ga = render_and_grad(scene, "cpu")
    b, gb = render_and_grad(scene, "torch")
    assert_parity(a, b, ga, gb, atol=1e-12, grad_rtol=1e-10)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_gradcheck_float64(gaussians_ops, make_scene, backend) -> None:
    """Every input, the pose included, against central differences on a tiny overlapping scene."""
    scene = make_scene(5, 21, 16, 16, dtype=torch.float64, sh_k=9, scale_range=(0.08, 0.2), z_range=(1.5, 2.5),
                       opacity_range=(0.3, 0.8))  # fmt: skip
    cam = scene.camera

    def fn(means, quats, scales, opac, sh, rot, trans):
        out = rasterize_gaussians(means, quats, scales, opac, sh, cam, rot, trans, sh_degree=2, backend=backend)
        return out.color, out.alpha, out.depth

    inputs = tuple(t.detach().clone().requires_grad_() for t in scene.tensors())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


def test_means2d_gradient_is_the_screen_space_gradient(gaussians_ops, make_scene) -> None:
    """dL/d mean2d (what density control reads) equals the chain rule's share through the pixel offset."""
    scene = make_scene(40, 4, 32, 32, dtype=torch.float64)
    out, grads = render_and_grad(scene, "cpu")
    visible = out.radii > 0
    assert visible.sum() > 10
    assert float(grads["means2d"][visible].abs().max()) > 0
    assert float(grads["means2d"][~visible].abs().sum()) == 0.0
    # the probe is the mirror's mean2d + probe - probe.detach(): the CPU build's value is compared in the parity tests


def test_pose_translation_moves_the_splat_by_f_delta_over_z(gaussians_ops) -> None:
    """A head translation dx moves a Gaussian's alpha centroid by fx * dx / z pixels."""
    cam = PinholeCamera(fx=80.0, fy=80.0, cx=32.0, cy=32.0, width=64, height=64)
    one = dict(means=torch.tensor([[0.0, 0.0, 2.0]]), quats=torch.tensor([[1.0, 0, 0, 0]]),
               scales=torch.full((1, 3), 0.05), opacities=torch.tensor([0.9]), sh_coeffs=torch.zeros(1, 1, 3))  # fmt: skip
    cols = torch.arange(64, dtype=torch.float32) + 0.5

    def centroid_x(dx: float) -> float:
        out = rasterize_gaussians(**one, camera=cam, view_trans=torch.tensor([dx, 0.0, 0.0]), backend="cpu")
        a = out.alpha
        return float((a.sum(0) * cols).sum() / a.sum())

    assert centroid_x(0.0) == pytest.approx(32.0, abs=1e-3)
    assert centroid_x(0.25) - centroid_x(0.0) == pytest.approx(80.0 * 0.25 / 2.0, abs=0.05)


def test_single_gaussian_matches_closed_form_footprint(gaussians_ops) -> None:
    """Isotropic Gaussian on the axis: alpha = o exp(-r^2 / (2 ((f s / z)^2 + 0.3))), depth = alpha z, colour = alpha rgb."""
    f, s, z, o = 50.0, 0.04, 2.0, 0.8
    cam = PinholeCamera(fx=f, fy=f, cx=20.0, cy=12.0, width=40, height=24)
    sh = torch.zeros(1, 1, 3, dtype=torch.float64)
    sh[0, 0] = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64) / 0.28209479177387814  # rgb = 0.5 + (.3, -.2, .1)
    out = rasterize_gaussians(torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
                              torch.tensor([[0.3, -0.1, 0.7, 0.2]], dtype=torch.float64),  # isotropic: rotation irrelevant
                              torch.full((1, 3), s, dtype=torch.float64), torch.tensor([o], dtype=torch.float64), sh,
                              cam, backend="cpu")  # fmt: skip
    var = (f * s / z) ** 2 + DILATION
    ys, xs = torch.meshgrid(torch.arange(24, dtype=torch.float64) + 0.5, torch.arange(40, dtype=torch.float64) + 0.5,
                            indexing="ij")  # fmt: skip
    expect = o * torch.exp(-((xs - 20) ** 2 + (ys - 12) ** 2) / (2 * var))
    expect = torch.where(expect >= 1 / 255, expect, torch.zeros_like(expect))
    radius = math.ceil(3 * math.sqrt(var))
    assert radius == 4 and float(expect[:, :16].abs().max()) == 0.0  # every visible pixel lies in the covered tiles
    torch.testing.assert_close(out.alpha, expect, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.depth, expect * z, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.color, expect[..., None] * torch.tensor([0.8, 0.3, 0.6], dtype=torch.float64),
                               atol=1e-12, rtol=0)  # fmt: skip
    assert int(out.radii[0]) == radius


def test_gaussians_behind_camera_and_on_near_plane_are_culled(gaussians_ops, make_scene) -> None:
    cam = PinholeCamera(fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32, near=0.1)
    zs = torch.tensor([-1.0, 0.0, 0.1, 0.1 + 1e-6, 1.0])  # behind, at the centre, on near, just in front, in front
    n = zs.shape[0]
    means = torch.stack([torch.zeros(n), torch.zeros(n), zs], -1).requires_grad_()
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1).requires_grad_()
    scales = torch.full((n, 3), 0.01).requires_grad_()
    opac = torch.full((n,), 0.5).requires_grad_()
    sh = torch.zeros(n, 1, 3).requires_grad_()
    for backend in ("cpu", "torch"):
        out = rasterize_gaussians(means, quats, scales, opac, sh, cam, backend=backend)
        assert out.radii.tolist()[:3] == [0, 0, 0] and min(out.radii.tolist()[3:]) > 0
        (out.color.sum() + out.alpha.sum() + out.depth.sum()).backward()
        for t in (means, quats, scales, opac, sh):
            assert torch.isfinite(t.grad).all()
            assert float(t.grad[:3].abs().max()) == 0.0  # culled: no gradient
            t.grad = None
    # only culled Gaussians: an empty image
    with torch.no_grad():
        out = rasterize_gaussians(means[:3], quats[:3], scales[:3], opac[:3], sh[:3], cam, backend="cpu")
    assert float(out.alpha.abs().max()) == 0.0 and float(out.color.abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_degenerate_and_huge_scales(gaussians_ops, make_scene, dtype) -> None:
    """Zero scale renders the 0.3 px^2 low-pass footprint (radius from the 0.1 eigenvalue floor); a huge one
    covers the image; a 1e3 x 1e-6 needle and a zero quaternion (identity) stay finite. float64 matches the
    mirror tightly; in float32 the needle's ill-conditioned covariance only allows forward parity."""
    scene = make_scene(30, 8, 48, 32, dtype=dtype)
    scene.scales[:10] = 0.0
    scene.scales[10:12] = torch.tensor([[200.0, 150.0, 300.0], [1e3, 1e-6, 5.0]], dtype=dtype)
    scene.quats[12] = 0.0
    a, ga = render_and_grad(scene, "cpu")
    b, gb = render_and_grad(scene, "torch")
    if dtype == torch.float64:
        assert_parity(a, b, ga, gb, atol=1e-12, grad_rtol=1e-10)
    else:
        for name in ("color", "alpha", "depth", "means2d"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=2e-5, rtol=0, msg=name)
    assert all(torch.isfinite(g).all() for g in ga.values())
    tiles = scene.camera.tiles_x * scene.camera.tiles_y
    _, _, _, rect = project_torch(scene.means @ scene.view_rot.T + scene.view_trans, scene.quats, scene.scales,
                                  scene.view_rot, scene.camera)  # fmt: skip
    covered = (rect[:, 2] - rect[:, 0]) * (rect[:, 3] - rect[:, 1])
    assert int(covered[10]) == tiles  # huge: every tile
    zero_visible = a.radii[:10] > 0
    assert zero_visible.any() and int(a.radii[:10][zero_visible].max()) == math.ceil(3 * math.sqrt(DILATION + math.sqrt(0.1)))


def test_fully_transparent_gaussians_render_nothing(gaussians_ops, make_scene) -> None:
    scene = make_scene(200, 9, 32, 32)
    scene.opacities.zero_()
    a, ga = render_and_grad(scene, "cpu")
    assert float(a.alpha.abs().max()) == 0.0 and float(a.color.abs().max()) == 0.0
    assert all(float(g.abs().sum()) == 0.0 for g in ga.values())  # every splat skipped (< 1/255)


def test_more_than_a_thousand_gaussians_in_one_tile(gaussians_ops, make_scene) -> None:
    gen = torch.Generator().manual_seed(13)
    n = 1500
    scene = make_scene(n, 13, 48, 48)
    cam = scene.camera = PinholeCamera(fx=60.0, fy=60.0, cx=24.0, cy=24.0, width=48, height=48)
    z = 1.0 + 3.0 * torch.rand(n, generator=gen)
    px = 16.0 + 16.0 * torch.rand(n, 2, generator=gen)  # inside the centre tile
    scene.means = torch.cat([(px - 24.0) / 60.0 * z[:, None], z[:, None]], 1)
    scene.view_rot, scene.view_trans = torch.eye(3), torch.zeros(3)
    scene.scales = 0.02 + 0.04 * torch.rand(n, 3, generator=gen)
    scene.opacities = 0.01 + 0.03 * torch.rand(n, generator=gen)  # faint: pixels do not end early
    _, _, _, rect = project_torch(scene.means, scene.quats, scene.scales, scene.view_rot, cam)
    offsets, _ = bin_tiles_torch(rect, scene.means[:, 2], cam)
    centre = 1 * cam.tiles_x + 1
    assert int(offsets[centre + 1] - offsets[centre]) > 1000
    a, ga = render_and_grad(scene, "cpu")
    b, gb = render_and_grad(scene, "torch")
    assert_parity(a, b, ga, gb, atol=2e-5, grad_rtol=5e-5)
    assert float(a.alpha[16:32, 16:32].min()) > 0.3  # every pixel of the crowded tile is covered


def test_empty_scene(gaussians_ops) -> None:
    cam = PinholeCamera(fx=30.0, fy=30.0, cx=10.0, cy=8.0, width=20, height=17)
    means = torch.zeros(0, 3, requires_grad=True)
    for backend in ("cpu", "torch"):
        out = rasterize_gaussians(means, torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 1, 3), cam,
                                  backend=backend)  # fmt: skip
        assert out.color.shape == (17, 20, 3) and out.alpha.shape == (17, 20) and out.depth.shape == (17, 20)
        assert float(out.alpha.detach().abs().max()) == 0.0 and out.radii.shape == (0,)
        if backend == "cpu":  # the mirror's empty image is a constant: nothing to backpropagate
            (out.color.sum() + out.alpha.sum()).backward()
            assert means.grad.shape == (0, 3)


def test_saturating_pixel_stops_before_transmittance_runs_out(gaussians_ops) -> None:
    """Forty wide splats (opacity 0.7) stacked on the axis: each pixel blends only the front ones and stops
    before T < 1e-4 (centre: 7 splats, T = 0.3^7 ~ 2.2e-4); the hidden ones get no gradient."""
    n = 40
    cam = PinholeCamera(fx=50.0, fy=50.0, cx=8.0, cy=8.0, width=16, height=16)
    z = torch.linspace(1.0, 3.0, n, dtype=torch.float64)
    zeros = torch.zeros(n, dtype=torch.float64)
    means = torch.stack([zeros, zeros, z], -1)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(n, 1)
    scales = torch.full((n, 3), 1.0, dtype=torch.float64)
    opac = torch.full((n,), 0.7, dtype=torch.float64)
    sh = torch.zeros(n, 1, 3, dtype=torch.float64)
    results = []
    for backend in ("cpu", "torch"):
        leaves = [t.clone().requires_grad_() for t in (means, quats, scales, opac, sh)]
        out = rasterize_gaussians(*leaves, cam, backend=backend)
        (out.alpha.sum() + out.depth.sum()).backward()
        results.append((dataclasses.replace(out, alpha=out.alpha.detach(), depth=out.depth.detach()),
                        [t.grad for t in leaves]))  # fmt: skip
    (a, ga), (b, gb) = results
    t_final = 1 - float(a.alpha[8, 8])
    assert T_MIN <= t_final < 3e-4
    assert float(a.alpha.min()) > 0.999  # saturated everywhere
    assert float(z[0]) * (1 - t_final) < float(a.depth[8, 8]) < float(z[6])  # only the front 7 count
    torch.testing.assert_close(a.alpha, b.alpha, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.depth, b.depth, atol=1e-12, rtol=0)
    for x, y in zip(ga, gb):  # the mirror leaves SH unconnected (alpha and depth do not read colour)
        torch.testing.assert_close(x, torch.zeros_like(x) if y is None else y, atol=1e-10, rtol=1e-9)
    assert float(ga[3][20:].abs().max()) == 0.0  # hidden behind the stack everywhere: no opacity gradient
    assert float(ga[3][:7].abs().min()) > 0.0


def test_thread_count_does_not_change_results(gaussians_ops, make_scene) -> None:
    scene = make_scene(800, 17, 64, 48)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a, ga = render_and_grad(scene, "cpu")
        torch.set_num_threads(2)
        b, gb = render_and_grad(scene, "cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.color, b.color) and torch.equal(a.depth, b.depth)
    for name in GRAD_NAMES[:5] + ("means2d",):
        assert torch.equal(ga[name], gb[name]), name


def test_env_forces_the_mirror(gaussians_ops, make_scene, monkeypatch) -> None:
    scene = make_scene(20, 3, 32, 16)
    monkeypatch.setenv("AVATAR3D_BACKEND", "torch")
    assert render(scene, "cpu").backend == "torch"


@pytest.mark.skipif(cuda_available(), reason="checks the error raised where CUDA is missing")
def test_forced_cuda_without_cuda_is_a_clear_error(make_scene) -> None:
    scene = make_scene(5, 3, 16, 16)
    with pytest.raises(BackendUnavailable, match="cuda"):
        render(scene, "cuda")


def test_bad_inputs_are_one_line_errors(make_scene) -> None:
    scene = make_scene(5, 3, 16, 16)
    with pytest.raises(Avatar3DError, match="quats must be"):
        rasterize_gaussians(scene.means, scene.quats[:, :3], scene.scales, scene.opacities, scene.sh, scene.camera)
    with pytest.raises(Avatar3DError, match="sh_coeffs must be"):
        rasterize_gaussians(scene.means, scene.quats, scene.scales, scene.opacities, scene.sh[:, :3], scene.camera,
                            sh_degree=2)  # fmt: skip
    with pytest.raises(Avatar3DError, match="fx=0"):
        PinholeCamera(fx=0, fy=1, cx=0, cy=0, width=4, height=4)
