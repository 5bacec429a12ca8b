"""The residual deformation of the face Gaussians (avatar3d/gaussians/residual.py) and the jaw-bound mouth
interior (avatar3d/gaussians/head.py) on a hand-built head: the residual starts as the identity, stays
within its bounds, moves only face Gaussians inside its regions, learns position and opacity from a
target, is cached at inference without changing a pixel, and avatars saved without it (or with the
position-only residual) still load; jaw-weighted mouth Gaussians follow the jaw and the others do not; the
motion gain learns how much further the face moves than the tracked channel says."""
from __future__ import annotations

import dataclasses

import torch

from avatar3d.gaussians.head import GROUP_PARAMS, PER_GAUSSIAN_BUFFERS, RIGID, GaussianHead, GaussianHeadConfig, rigid_fit
from avatar3d.gaussians.residual import ResidualConfig
from avatar3d.nerf.fields import region_weight


def _head(residual: bool, seed: int = 0, regions: tuple[tuple[float, ...], ...] | None = None) -> GaussianHead:
    """One triangle face whose single blendshape lifts a corner, 20 face and 5 rigid Gaussians."""
    torch.manual_seed(seed)
    config = GaussianHeadConfig(sh_degree=0, residual=ResidualConfig(enabled=residual))
    head = GaussianHead(config, motion_dim=2, n_vertices=3, n_expression=1, n_triangles=1, n_face=20, n_rigid=5,
                        motion_regions=regions)  # fmt: skip
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
    small = dataclasses.replace(head.config.residual, max_offset_m=0.002)
    head.residual.config = small
    with torch.no_grad():
        assert float((head(on).means - base_on)[:20].abs().max()) <= 0.002 + 1e-7  # bounded


def test_the_residual_learns_opacity_and_acts_only_inside_its_regions() -> None:
    """Asked to fade the face when the expression is on, it does so where its region is and nowhere else."""
    centre = _head(False).rest_anchors()[0].tolist()
    head = _head(True, regions=((*centre, 0.008),))  # around the first Gaussian's rest point
    opt = torch.optim.Adam(head.residual.parameters(), lr=1e-2)
    on = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        plain = _head(False)(on)
    for _ in range(200):
        opt.zero_grad()
        head(on).opacities[:20].sum().backward()
        opt.step()
    with torch.no_grad():
        g = head(on)
        weight = region_weight(head.rest_anchors(), head.residual.regions)
    near, far = weight > 0.5, weight < 1e-3
    assert bool(near.any()) and bool(far.any())
    assert float(g.opacities[:20][near].max()) < 0.5 * float(plain.opacities[:20][near].min())  # learned to fade
    torch.testing.assert_close(g.opacities[:20][far], plain.opacities[:20][far], atol=1e-3, rtol=0)  # untouched
    bound = torch.sigmoid(torch.tensor(-head.config.residual.max_opacity_logit))  # 0.5 at logit 0, bounded fade
    assert float(g.opacities[:20].min()) >= float(bound) - 1e-6


def test_the_inference_cache_changes_nothing_and_follows_training() -> None:
    head = _head(True, seed=3)
    with torch.no_grad():
        head.residual.net[-1].weight.normal_(0.0, 0.5)
    motion = torch.tensor([0.4, 0.2])
    with torch.no_grad():
        first, second = head(motion), head(motion)  # the second reads the cached grid features
    fresh = head(motion)  # with autograd: no cache
    torch.testing.assert_close(first.means, fresh.means.detach(), rtol=0, atol=0)
    torch.testing.assert_close(second.opacities, fresh.opacities.detach(), rtol=0, atol=0)
    opt = torch.optim.SGD([head.residual.encoding.table], lr=10.0)
    fresh.means[:20].sum().backward()
    opt.step()
    with torch.no_grad():
        after = head(motion)
    assert float((after.means - first.means).abs().max()) > 0.0  # a stale cache would repeat the old frame


def test_a_position_only_residual_saved_before_loads_and_renders_the_same() -> None:
    head = _head(True, seed=4)
    with torch.no_grad():
        head.residual.net[-1].weight.normal_(0.0, 0.5)
        head.residual.net[-1].bias.normal_(0.0, 0.5)
    motion = torch.tensor([0.5, 0.1])
    state = head.state_dict()
    last = f"residual.net.{len(head.residual.net) - 1}."
    old = {k: v for k, v in state.items() if not k.startswith(("residual.regions", "residual.motion_", "jaw_", "rigid_jaw"))}
    old[last + "weight"], old[last + "bias"] = state[last + "weight"][:3], state[last + "bias"][:3]
    loaded = _head(True, seed=5, regions=((0.0, 0.0, 0.1, 0.01), (0.0, 0.0, 0.0, 0.01)))
    loaded.load_state_dict(old)
    with torch.no_grad():
        head.residual.net[-1].weight[3:] = 0.0
        head.residual.net[-1].bias[3:] = 0.0
        head.residual.regions = torch.tensor([[0.0, 0.0, 0.0, 1e3]])
        want, got = head(motion), loaded(motion)
    torch.testing.assert_close(got.means, want.means)
    torch.testing.assert_close(got.opacities, want.opacities)


def test_rigid_fit_recovers_a_rotation_and_jaw_weighted_mouth_gaussians_follow_it() -> None:
    gen = torch.Generator().manual_seed(0)
    rest = torch.randn(12, 3, generator=gen, dtype=torch.float64) * 0.03
    angle = torch.tensor(0.2, dtype=torch.float64)
    R = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    R[1, 1], R[1, 2], R[2, 1], R[2, 2] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    t = torch.tensor([0.0, -0.01, 0.002], dtype=torch.float64)
    R_fit, t_fit = rigid_fit(rest, rest @ R.T + t)
    torch.testing.assert_close(R_fit, R)
    torch.testing.assert_close(t_fit, t)
    # a head whose blendshape moves all three vertices down: the jaw translates by that
    head = GaussianHead(GaussianHeadConfig(sh_degree=0), motion_dim=1, n_vertices=3, n_expression=1, n_triangles=1,
                        n_face=2, n_rigid=3, n_jaw=3)  # fmt: skip
    head.base_vertices.copy_(torch.tensor([[-0.05, -0.05, 0.1], [0.05, -0.05, 0.1], [0.0, 0.05, 0.1]]))
    head.expression_basis.copy_(torch.tensor([[[0.0, -0.01, 0.0]] * 3]))
    head.triangles.copy_(torch.tensor([[0, 1, 2]]))
    head.motion_map.copy_(torch.tensor([[1.0]]))
    head.jaw_vertices.copy_(torch.tensor([0, 1, 2]))
    head.rigid_jaw.copy_(torch.tensor([0.0, 0.5, 1.0]))
    with torch.no_grad():
        head.rigid_means.copy_(torch.tensor([[0.0, 0.1, 0.0], [0.0, -0.03, 0.08], [0.0, -0.04, 0.08]]))
        moved = head(torch.tensor([1.0])).means[2:] - head(torch.tensor([0.0])).means[2:]
    torch.testing.assert_close(moved[:, 1], torch.tensor([0.0, -0.005, -0.01]), atol=1e-6, rtol=0)
    # density control's clone of a jaw-bound Gaussian stays jaw-bound (the weight is a per-Gaussian buffer)
    assert "rigid_jaw" in GROUP_PARAMS[RIGID] and "rigid_jaw" in PER_GAUSSIAN_BUFFERS


def test_the_motion_gain_learns_how_far_a_channel_really_moves_the_face() -> None:
    """Face Gaussians whose targets were made with the expression channel at twice its tracked swing (around
    the training mean): the gain learns ~2 for that channel and leaves the channel that moves nothing at 1."""
    truth = _head(False)
    head = _head(False)
    head.config = dataclasses.replace(head.config, motion_gain=True)
    head.motion_gain.requires_grad_(True)
    centre = torch.tensor([0.3, 0.0])
    truth.motion_centre.copy_(centre)
    head.motion_centre.copy_(centre)
    with torch.no_grad():
        truth.motion_gain.copy_(torch.tensor([2.0, 1.0]))
    motions = [torch.tensor([a, b]) for a in (0.1, 0.3, 0.6) for b in (0.0, 0.5)]
    targets = [truth(m).means.detach() for m in motions]
    unchanged = [head(m).means.detach() for m in motions[:1]]
    torch.testing.assert_close(head(motions[2]).means, truth(motions[2]).means)  # at the centre the gain does nothing
    assert float((unchanged[0] - targets[0]).abs().max()) > 1e-3
    opt = torch.optim.Adam([head.motion_gain], lr=2e-2)
    for _ in range(300):
        opt.zero_grad()
        sum(((head(m).means - t) ** 2).sum() for m, t in zip(motions, targets)).backward()
        opt.step()
    gain = head.motion_gain.detach()
    assert abs(float(gain[0]) - 2.0) < 0.05
    assert abs(float(gain[1]) - 1.0) < 1e-6  # the blendshapes ignore channel 2: no gradient, no change
    # a head saved before the gain loads with gain 1 (the tracked motion as it is)
    state = {k: v for k, v in truth.state_dict().items() if k not in ("motion_gain", "motion_centre")}
    fresh = _head(False, seed=9)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.motion_gain.detach(), torch.ones(2)) and torch.equal(fresh.motion_centre, torch.zeros(2))
