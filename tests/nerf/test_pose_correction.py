"""Learned head-pose corrections: the rays the field is trained on and the poses saved for rendering agree."""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from avatar3d.nerf.model import pixel_dirs, to_head_space
from avatar3d.nerf.pose_correction import PoseCorrection
from avatar3d.rotation import so3_exp


def test_so3_exp_matches_scipy_for_small_and_large_angles():
    rng = np.random.default_rng(0)
    omegas = np.concatenate([rng.normal(size=(20, 3)), 1e-5 * rng.normal(size=(5, 3)), np.zeros((1, 3))])
    got = so3_exp(torch.from_numpy(omegas)).numpy()
    np.testing.assert_allclose(got, Rotation.from_rotvec(omegas).as_matrix(), atol=1e-12)


def _corrections(n_frames: int, knot_frames: int, seed: int = 0) -> PoseCorrection:
    pc = PoseCorrection(n_frames, knot_frames)
    with torch.no_grad():
        pc.knots.copy_(0.02 * torch.randn(pc.knots.shape, generator=torch.Generator().manual_seed(seed)))
    return pc


def test_corrected_rays_are_the_rays_of_the_saved_corrected_poses():
    """Training sees rays through exp(w), v; rendering uses R exp(w), t + R v: the same rays."""
    n = 30
    rng = np.random.default_rng(1)
    R = Rotation.from_rotvec(0.2 * rng.normal(size=(n, 3))).as_matrix()
    t = np.column_stack([rng.normal(0, 0.02, n), rng.normal(0, 0.02, n), rng.uniform(0.5, 0.7, n)])
    pc = _corrections(n, 4)
    R2, t2 = pc.corrected_poses(R, t)
    K = torch.tensor([[120.0, 0, 64], [0, 120.0, 64], [0, 0, 1]])
    pix = torch.rand(64, 2, generator=torch.Generator().manual_seed(2)) * 128
    dirs_cam = pixel_dirs(K, pix)
    for i in (0, 7, n - 1):
        o, d = to_head_space(torch.tensor(R[i:i + 1]).float(), torch.tensor(t[i:i + 1]).float(), dirs_cam)
        got_o, got_d = pc.correct_rays(o, d, torch.full((len(pix),), i))
        want_o, want_d = to_head_space(torch.tensor(R2[i:i + 1]).float(), torch.tensor(t2[i:i + 1]).float(), dirs_cam)
        torch.testing.assert_close(got_o, want_o, atol=2e-6, rtol=0)
        torch.testing.assert_close(got_d, want_d, atol=2e-6, rtol=0)


def test_correction_has_zero_mean_over_training_frames_and_is_smooth():
    n, k = 50, 4
    pc = _corrections(n, k, seed=3)
    train_ids = np.arange(0, 40)
    pc.set_gauge(train_ids)
    with torch.no_grad():
        rot, shift = pc(torch.arange(n))
    omega = Rotation.from_matrix(rot.double().numpy()).as_rotvec()
    assert np.abs(omega[train_ids].mean(0)).max() < 1e-3 * np.abs(omega).max() + 1e-6
    assert np.abs(shift[train_ids].numpy().mean(0)).max() < 1e-7
    # piecewise linear between knots: second differences vanish away from the knots
    inner = [i for i in range(1, n - 1) if i % k != 0]
    second = shift[2:] - 2 * shift[1:-1] + shift[:-2]
    assert second[[i - 1 for i in inner]].abs().max() < 1e-7


def test_corrections_receive_gradients_through_the_rays():
    pc = _corrections(12, 4)
    o = torch.randn(16, 3)
    d = torch.nn.functional.normalize(torch.randn(16, 3), dim=-1)
    co, cd = pc.correct_rays(o, d, torch.arange(16) % 12)
    (co.sum() + cd.sum()).backward()
    assert pc.knots.grad is not None and pc.knots.grad.abs().sum() > 0
