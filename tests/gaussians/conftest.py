"""Shared pieces of the Gaussian rasterizer tests: the CPU build and random scenes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from avatar3d.gaussians.camera import PinholeCamera
from avatar3d.gaussians.rasterize import GAUSSIANS_SPEC
from avatar3d.nerf.backend import load_extension


@dataclass
class Scene:
    """Inputs of rasterize_gaussians (canonical frame + pose), all leaves."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor
    view_rot: torch.Tensor
    view_trans: torch.Tensor
    camera: PinholeCamera

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.means, self.quats, self.scales, self.opacities, self.sh, self.view_rot, self.view_trans

    def leaves(self) -> "Scene":
        """A copy whose tensors are fresh leaves that require grad."""
        return Scene(*(t.detach().clone().requires_grad_() for t in self.tensors()), self.camera)


def rotation(axis_angle: torch.Tensor) -> torch.Tensor:
    """[3] axis-angle -> [3, 3] (Rodrigues), in the input's dtype."""
    theta = axis_angle.norm()
    k = axis_angle / theta
    kx = torch.zeros(3, 3, dtype=axis_angle.dtype)
    kx[0, 1], kx[0, 2], kx[1, 0], kx[1, 2], kx[2, 0], kx[2, 1] = -k[2], k[1], k[2], -k[0], -k[1], k[0]
    return torch.eye(3, dtype=axis_angle.dtype) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx


def random_scene(n: int, seed: int, width: int = 72, height: int = 40, *, dtype: torch.dtype = torch.float32,
                 sh_k: int = 16, scale_range: tuple[float, float] = (0.01, 0.12), z_range: tuple[float, float] = (1.0, 4.0),
                 opacity_range: tuple[float, float] = (0.05, 0.95)) -> Scene:  # fmt: skip
    """Gaussians spread over the view frustum (some off-screen), seen through a rotated, shifted head pose."""
    gen = torch.Generator().manual_seed(seed)
    cam = PinholeCamera(fx=0.9 * width, fy=0.95 * width, cx=0.5 * width + 1.3, cy=0.5 * height - 0.7, width=width,
                        height=height, near=0.05)  # fmt: skip
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    z = z_range[0] + (z_range[1] - z_range[0]) * rand(n)
    u = -8 + (width + 16) * rand(n)
    v = -8 + (height + 16) * rand(n)
    cam_pts = torch.stack([(u - cam.cx) / cam.fx * z, (v - cam.cy) / cam.fy * z, z], -1)
    view_rot = rotation(torch.tensor([0.1, -0.25, 0.05], dtype=torch.float64))
    view_trans = torch.tensor([0.02, -0.03, 0.1], dtype=torch.float64)
    means = (cam_pts - view_trans) @ view_rot  # canonical points that land on cam_pts
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(lo + (hi - lo) * rand(n, 3))
    quats = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    opac = opacity_range[0] + (opacity_range[1] - opacity_range[0]) * rand(n)
    sh = 0.4 * torch.randn(n, sh_k, 3, generator=gen, dtype=torch.float64)
    tensors = (means, quats, scales, opac, sh, view_rot, view_trans)
    return Scene(*(t.to(dtype) for t in tensors), cam)


@pytest.fixture(scope="session")
def gaussians_ops():
    """The CPU build of the rasterizer (JIT-compiled once into build/torch_extensions, then cached)."""
    record = load_extension(GAUSSIANS_SPEC, "cpu")
    if record.module is None:
        pytest.fail(f"CPU build failed: {record.error}")
    return record.module


@pytest.fixture(scope="session")
def make_scene():
    """``random_scene`` as a fixture (test modules import nothing from conftest)."""
    return random_scene
