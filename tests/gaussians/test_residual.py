"""The residual deformation of the face Gaussians (avatar3d/gaussians/residual.py) on a hand-built head:
it starts as the identity, stays within its bound, moves only face Gaussians, learns from the image, and
an avatar saved without it still loads (old files)."""
from __future__ import annotations

import dataclasses

import torch

from avatar3d.gaussians.head import GaussianHead, GaussianHeadConfig
from avatar3d.gaussians.residual import ResidualConfig


def _head(residual: bool, seed: int = 0) -> GaussianHead:
    """One triangle face whose single blendshape lifts a corner, 20 face and 5 rigid Gaussians."""
    torch.manual_seed(seed)
    config = GaussianHeadConfig(sh_degree=0, residual=ResidualConfig(enabled=residual))
    head = GaussianHead(config, motion_dim=2, n_vertices=3, n_expression=1, n_triangles=1, n_face=20, n_rigid=5)
    head.base_vertices.copy_(torch.tensor([[-0.05, -0.05, 0.1], [0.05, -0.05, 0.1], [0.0, 0.05, 0.1]]))
    head.expression_basis.copy_(torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.02, 0.0]]]))
    head.triangles.copy_(torch.tensor([[0, 1, 2]]))
    head.motion_map.copy_(torch.tensor([[1.0], [0.0]]))
    gen = torch.Generator().manual_seed(seed)  # the same Gaussians whether or not the residual drew its own init
    bary = torch.rand(20, 3, generator=gen)
    head.face_bary.copy_(bary / bary.sum(1, keepdim=True))
    with torch.no_grad():
        head.rigid_means.copy_(torch.randn(5, 3, generator=gen) * 0.05)
    return head


def test_a_fresh_residual_is_the_identity_and_old_heads_load() -> None:
    plain, with_residual = _head(False), _head(True)
    with_residual.load_state_dict(plain.state_dict(), strict=False)  # the Gaussians of a head saved without it
    motion = torch.tensor([0.7, 0.0])
    a, b = plain(motion), with_residual(motion)
    torch.testing.assert_close(a.means, b.means)
    assert a.residual is None and b.residual is not None and float(b.residual.detach().abs().max()) == 0.0
    # a head saved without a residual loads into a config without one (every avatar file before this field)
    GaussianHead.sized_like(GaussianHeadConfig(sh_degree=0), plain.state_dict()).load_state_dict(plain.state_dict())


def test_the_residual_learns_a_motion_dependent_offset_of_face_gaussians_only() -> None:
    """Asked (through the means) to lift every face Gaussian 4 mm more when the expression is on, it learns
    that, within its bound, and leaves the rigid Gaussians where they are."""
    head = _head(True)
    residual = head.residual
    opt = torch.optim.Adam(residual.parameters(), lr=1e-2)
    on, off = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    lift = torch.tensor([0.0, 0.004, 0.0])
    base_on, base_off = _head(False)(on).means.detach(), _head(False)(off).means.detach()
    for _ in range(300):
        opt.zero_grad()
        g_on, g_off = head(on), head(off)
        loss = ((g_on.means[:20] - (base_on[:20] + lift)) ** 2).sum() + ((g_off.means[:20] - base_off[:20]) ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        moved = head(on).means - base_on
        still = head(off).means - base_off
    assert float((moved[:20, 1] - 0.004).abs().max()) < 0.001  # learned to within 1 mm
    assert float(still[:20].abs().max()) < 0.001  # and only where the motion asks for it
    assert float(moved[20:].abs().max()) == 0.0  # rigid Gaussians never move with speech
    big = dataclasses.replace(head.config.residual, max_offset_m=0.002)
    head.residual.config = big
    with torch.no_grad():
        assert float(head(on).residual.abs().max()) <= 0.002 + 1e-9  # bounded
