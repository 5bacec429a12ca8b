"""The Gaussian avatar on a tiny run (64², configs/gaussians_tiny.yaml): quality, motion locality, geometry,
the avatar API and the commands, resume.

One avatar is trained once per module through `avatar3d train --config gaussians_tiny` on the
session's prepared synthetic subject; every check reads it through ``load_avatar``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.gaussian_avatar import GaussianAvatar
from avatar3d.avatar.loading import load_avatar
from avatar3d.cli import main
from avatar3d.config import load_config
from avatar3d.dataset.reader import load_subject
from avatar3d.errors import Avatar3DError
from avatar3d.eval.image_metrics import head_mask, psnr
from avatar3d.export.splat import neutral_gaussians, read_splat_ply, splat_fields
from avatar3d.io.video import probe_video, read_video
from avatar3d.train.checkpoint import CHECKPOINT_NAME, load_state
from avatar3d.train.gaussian_config import GaussianTrainConfig, gaussian_config_to_yaml
from avatar3d.nerf.model import image_pixels
from avatar3d.train.gaussian_pose import fit_gaussian_poses
from avatar3d.train.gaussian_trainer import train_gaussians
from avatar3d.train.pose_fit import PoseFitConfig
from avatar3d.train.trainer import evaluate_frames

from tests.checkpoint_kill import sigkill_while_checkpointing

STEPS = 250


@pytest.fixture(scope="module")
def gaussian_avatar(avatar_subject, tmp_path_factory):
    """(folder, avatar, subject data at 64²): trained through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("gaussian-avatar") / "run"
    assert main(["train", str(avatar_subject), "-o", str(out), "--config", "gaussians_tiny",
                 "--steps", str(STEPS)]) == 0  # fmt: skip
    return out, load_avatar(out), load_subject(avatar_subject, 64, progress=False)


def _frame(data, i: int):
    K = torch.from_numpy(data.K).float()
    R, t = torch.from_numpy(data.R[i]).float(), torch.from_numpy(data.t[i]).float()
    motion = torch.from_numpy(data.motion(np.array([i]))[0]).float()
    return K, R, t, motion, torch.from_numpy(data.background).float()


def test_the_file_records_the_backend_and_loads_through_the_avatar_api(gaussian_avatar) -> None:
    out, avatar, data = gaussian_avatar
    assert AvatarBundle.load(out).backend == "gaussians" and isinstance(avatar, GaussianAvatar)
    assert (out / "config.yaml").read_text().startswith("backend: gaussians")
    frame = avatar.render_subject_frame(data, int(data.val_ids[0]))
    assert frame["rgb"].shape == (64, 64, 3) and 0 <= float(frame["rgb"].min()) and float(frame["rgb"].max()) <= 1
    # The training camera through render_view is render_frame (the layers are planes seen from where they were learned).
    K, R, t, motion, bg = _frame(data, int(data.val_ids[0]))
    view = avatar.render_view(K, R, t, motion, bg, 64, torso_R=R, torso_t=t)
    torch.testing.assert_close(view["rgb"], avatar.render_frame(K, R, t, motion, bg, 64)["rgb"], atol=1e-5, rtol=0)


def test_held_out_psnr_far_above_the_mean_image(gaussian_avatar) -> None:
    """The margins the NeRF avatar's tiny run must meet (tests/train/test_avatar.py)."""
    out, avatar, data = gaussian_avatar
    ids = data.val_ids[:: max(1, len(data.val_ids) // 8)]
    metrics, _ = evaluate_frames(avatar, data, ids)
    mean_image = np.mean([data.image(int(i)) for i in data.train_ids[::5]], axis=0)
    base_full = np.mean([psnr(mean_image, data.image(int(i))) for i in ids])
    base_head = np.mean([psnr(mean_image, data.image(int(i)), head_mask(np.asarray(data.labels[int(i)])))
                         for i in ids])  # fmt: skip
    print(f"tiny Gaussian avatar: full {metrics['psnr_full']:.2f} (mean image {base_full:.2f}), head "
          f"{metrics['psnr_head']:.2f} ({base_head:.2f}), mouth {metrics['psnr_mouth']:.2f}")
    assert metrics["psnr_full"] > base_full + 2.0
    assert metrics["psnr_head"] > base_head + 6.0


def test_jaw_open_changes_the_mouth_only(gaussian_avatar) -> None:
    _, avatar, data = gaussian_avatar
    jaw = list(data.expression_names).index("jawOpen")
    i = int(data.val_ids[len(data.val_ids) // 2])
    K, R, t, closed, bg = _frame(data, i)
    lo, hi = np.percentile(data.expression[data.train_ids, jaw], [2, 98])  # the range training saw
    closed[jaw] = float(lo)
    opened = closed.clone()
    opened[jaw] = float(hi)
    a, b = avatar.render_frame(K, R, t, closed, bg, 64), avatar.render_frame(K, R, t, opened, bg, 64)
    diff = (a["rgb"] - b["rgb"]).abs().mean(-1).numpy()
    x0, y0, x1, y1 = data.mouth_boxes[i]
    mouth = diff[y0:y1, x0:x1].mean()
    labels = np.asarray(data.labels[i])
    rows = np.arange(labels.shape[0])[:, None] * np.ones((1, labels.shape[1]))
    upper = ((labels == 1) | (labels == 3)) & (rows < data.landmarks[i][10, 1] + 1)  # hair + top of the forehead
    top = diff[upper].mean()
    outside = (a["head_alpha"] < 0.01) & (b["head_alpha"] < 0.01)
    print(f"jawOpen {lo:.2f} -> {hi:.2f}: mean |change| mouth {mouth:.5f}, hair/upper forehead {top:.5f}")
    assert mouth > 5e-4 and mouth > 4 * top
    assert diff[outside.numpy()].max() < 0.02  # background and torso untouched


def _alpha_centroid(alpha: torch.Tensor) -> np.ndarray:
    a = alpha.numpy()
    ys, xs = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(a * xs).sum(), (a * ys).sum()]) / a.sum()


def test_head_translation_moves_the_alpha_centroid_by_f_delta_over_z(gaussian_avatar) -> None:
    _, avatar, data = gaussian_avatar
    K, R, t, motion, bg = _frame(data, int(data.val_ids[0]))
    base = avatar.render_frame(K, R, t, motion, bg, 64)["head_alpha"]
    assert float(base.sum()) > 100  # the head is there
    for shift in (torch.tensor([0.03, 0.0, 0.0]), torch.tensor([0.0, -0.02, 0.0])):
        moved = avatar.render_frame(K, R, t + shift, motion, bg, 64)["head_alpha"]
        expected = (K[[0, 1], [0, 1]] * shift[:2] / t[2]).numpy()  # pixels, at the head's depth
        got = _alpha_centroid(moved) - _alpha_centroid(base)
        assert np.abs(got - expected).max() < 0.15 * np.abs(expected).max() + 0.3, (got, expected)


def test_render_eval_and_export_through_the_commands(gaussian_avatar, tmp_path, capsys) -> None:
    """The commands take a Gaussian avatar through the avatar API (`render --audio` is the same call per frame;
    its motion-model personalisation is covered by tests/render on the NeRF avatar); a NeRF-only one says so."""
    out, avatar, data = gaussian_avatar
    video = tmp_path / "val.mp4"
    assert main(["render", str(out), "--motion-from", str(data.root), "--split", "val", "-o", str(video)]) == 0
    info = probe_video(video)
    assert (info.width, info.height) == (64, 64) and info.n_frames == len(data.val_ids) and info.has_audio
    first = next(iter(read_video(video))).astype(np.float32) / 255
    ref = avatar.render_subject_frame(data, int(data.val_ids[0]))["rgb"].numpy()
    assert np.abs(first - ref).mean() < 0.03  # the frame written is the frame rendered (H.264 loss only)
    capsys.readouterr()
    code = main(["export", str(out), "--mesh", str(tmp_path / "head.glb")])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "gaussians" in err, err
    assert not (tmp_path / "head.glb").exists()


def test_eval_scores_refined_poses_and_on_request_the_landmark_tracked_ones(gaussian_avatar, tmp_path) -> None:
    """`eval` uses the avatar's refined (re-tracked) head poses on its own subject; `--tracked-poses` scores the
    landmark tracking instead (what a landmark-driven pipeline gets), and metrics.json says which."""
    import json

    out, _, data = gaussian_avatar
    scores = {}
    for flag in ([], ["--tracked-poses"]):
        report = tmp_path / ("tracked" if flag else "refined")
        assert main(["eval", str(out), str(data.root), "-o", str(report), "--frames", "4", *flag]) == 0
        metrics = json.loads((report / "metrics.json").read_text())
        scores[metrics["head_poses"]] = metrics["image"]["psnr_head"]
    assert set(scores) == {"refined", "landmark-tracked"} and scores["refined"] != scores["landmark-tracked"], scores


def test_a_render_larger_than_the_training_size_shows_the_surface_not_gaps(gaussian_avatar) -> None:
    """At 2x the training size the splats keep their trained footprint (footprint_filter): the 128² frame,
    area-averaged down to 64², is the 64² frame (measured 33.1 dB; without the filter 28.7: dots and gaps)."""
    import cv2

    _, avatar, data = gaussian_avatar
    values = []
    for i in data.val_ids[:: max(1, len(data.val_ids) // 4)]:
        small = avatar.render_subject_frame(data, int(i), 64)["rgb"].numpy()
        big = avatar.render_subject_frame(data, int(i), 128)["rgb"].numpy()
        values.append(psnr(cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA), small))
    print(f"128² render down to 64² vs the 64² render: {np.mean(values):.2f} dB")
    assert np.mean(values) > 31.0


def test_export_splat_writes_the_3dgs_layout_that_reads_back_and_renders_as_the_avatar(gaussian_avatar, tiny_avatar_run,
                                                                                          tmp_path, capsys) -> None:  # fmt: skip
    """`export --splat` writes what a splat viewer reads (checked with trimesh's PLY reader, not ours): the standard
    property order, logit opacity, log scale, channel-major f_rest; read back, the Gaussians splat to the avatar's
    own neutral head. A NeRF avatar is a one-line error naming its backend, and no file is left."""
    import trimesh

    out, avatar, data = gaussian_avatar
    ply = tmp_path / "head.ply"
    assert main(["export", str(out), "--splat", str(ply)]) == 0
    neutral = neutral_gaussians(avatar)
    n, k = neutral.sh.shape[:2]
    raw = trimesh.load(ply).metadata["_ply_raw"]["vertex"]["data"]
    assert list(raw.dtype.names) == splat_fields(3 * (k - 1)) and len(raw) == n == avatar.model.head.n_gaussians
    np.testing.assert_allclose(raw["f_rest_0"], neutral.sh[:, 1, 0], atol=1e-6)  # red's first band-1 coefficient
    np.testing.assert_allclose(raw[f"f_rest_{k - 1}"], neutral.sh[:, 1, 1], atol=1e-6)  # then green's
    np.testing.assert_allclose(raw["scale_2"], torch.log(neutral.scales[:, 2]), atol=1e-5)
    np.testing.assert_allclose(raw["opacity"], torch.logit(neutral.opacities.clamp(1e-7, 1 - 1e-7)), atol=1e-3)
    back = read_splat_ply(ply)
    torch.testing.assert_close(back.means, neutral.means)
    torch.testing.assert_close(back.sh, neutral.sh)
    K, R, t, _, _ = _frame(data, int(data.val_ids[0]))
    ours = avatar.model.splat(neutral, K, R, t, 64).color
    theirs = avatar.model.splat(back, K, R, t, 64).color
    assert float(ours.abs().mean()) > 0.05 and float((ours - theirs).abs().max()) < 1e-3
    wide = read_splat_ply(tmp_path / "wide.ply") if main(["export", str(out), "--splat", str(tmp_path / "wide.ply"),
                                                          "--splat-zoom", "4"]) == 0 else None  # fmt: skip
    assert wide is not None and bool((wide.scales >= back.scales - 1e-6).all()) and float(wide.scales.min()) > float(back.scales.min())
    capsys.readouterr()
    nerf = tiny_avatar_run[0]
    assert main(["export", str(nerf), "--splat", str(tmp_path / "nerf.ply")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nerf avatar" in err and "--mesh" in err, err
    assert not (tmp_path / "nerf.ply").exists()


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles (degrees) of the rotations a_i^T b_i."""
    cos = (np.einsum("nij,nij->n", a, b) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def test_pose_refinement_learns_training_poses_and_re_tracks_a_known_error(gaussian_avatar) -> None:
    """The saved poses are refined (training frames corrected, held-out re-tracked); the fit undoes a planted error."""
    out, avatar, data = gaussian_avatar
    bundle = AvatarBundle.load(out)
    assert np.allclose(bundle.R_tracked, data.R) and np.allclose(bundle.t_tracked, data.t)
    assert _rotation_deg(bundle.R[data.train_ids], data.R[data.train_ids]).max() > 1e-3  # learned, not copied
    assert _rotation_deg(bundle.R[data.val_ids], data.R[data.val_ids]).max() > 1e-3  # re-tracked
    # Plant 4 degrees of yaw and 6 mm of height on the held-out poses; the frozen avatar's fit must undo most of it
    # (measured: to 0.56 degrees and 1.0 mm).
    ids = data.val_ids
    yaw = np.radians(4.0)
    turn = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    R_true, t_true = bundle.R.copy(), bundle.t.copy()  # the poses the avatar renders these frames with
    R_bad, t_bad = R_true.copy(), t_true.copy()
    R_bad[ids] = R_true[ids] @ turn
    t_bad[ids] = t_true[ids] + np.array([0.0, 0.006, 0.0])
    r = data.resolution
    cache = {"K": torch.from_numpy(data.K).float(), "uv": image_pixels(r) / r,
             "bg": torch.from_numpy(data.background.reshape(-1, 3)).float()}
    fitted_R, fitted_t = fit_gaussian_poses(avatar.model, dataclasses.replace(data, R=R_bad, t=t_bad), ids,
                                            PoseFitConfig(steps=100, frames_per_step=2, lr=4e-3), cache)  # fmt: skip
    before = _rotation_deg(R_bad[ids], R_true[ids]).mean()
    after = _rotation_deg(fitted_R, R_true[ids]).mean()
    shift_before = np.linalg.norm(t_bad[ids] - t_true[ids], axis=1).mean()
    shift_after = np.linalg.norm(fitted_t - t_true[ids], axis=1).mean()
    print(f"planted pose error: {before:.2f} deg -> {after:.2f} deg, {shift_before * 1e3:.1f} -> {shift_after * 1e3:.1f} mm")
    assert after < 0.35 * before and shift_after < 0.35 * shift_before


def test_resume_continues_a_run_whose_gaussian_count_changed(avatar_subject, tmp_path) -> None:
    """With everything that learns on: density control, pose knots, the residual field and the motion gain."""
    cfg = load_config(GaussianTrainConfig, "gaussians_tiny")
    head = cfg.avatar.head
    head = dataclasses.replace(head, motion_gain=True, residual=dataclasses.replace(head.residual, enabled=True))
    cfg = dataclasses.replace(cfg, steps=24, checkpoint_every=6, optim=dataclasses.replace(cfg.optim, pose_refine_start=4),
                              density=dataclasses.replace(cfg.density, every=5, start=5, stop_fraction=1.0),
                              avatar=dataclasses.replace(cfg.avatar, head=head))  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    quiet = {"progress": False, "log": lambda s: None}
    done = train_gaussians(avatar_subject, straight, cfg, **quiet)
    first = train_gaussians(avatar_subject, split, cfg, stop_after_steps=12, **quiet)
    assert not first["finished"] and load_state(split / CHECKPOINT_NAME)["step"] == 12
    with pytest.raises(Avatar3DError, match="--resume"):
        train_gaussians(avatar_subject, split, cfg, **quiet)
    mid = load_state(split / CHECKPOINT_NAME)["model"]
    again = train_gaussians(avatar_subject, split, None, resume=True, **quiet)
    assert done["gaussians"] == again["gaussians"] != mid["head.face_tri"].shape[0] + mid["head.rigid_means"].shape[0]
    a, b = load_avatar(straight).model.state_dict(), load_avatar(split).model.state_dict()
    for k in a:  # multi-threaded CPU reductions differ by ~1e-6; a lost moment or random state by far more
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3, msg=lambda m: f"{k}: {m}")
    assert float((a["head.motion_gain"] - 1).abs().max()) > 1e-4  # the gain learned (and resumed) something
    assert float(a["head.residual.net.2.weight"].abs().max()) > 0.0  # the residual's last layer left zero
    ids = AvatarBundle.load(straight).train_ids  # the pose corrections continued too (their knots and moments)
    poses = [AvatarBundle.load(run).R[ids] for run in (straight, split)]
    assert _rotation_deg(poses[0], AvatarBundle.load(straight).R_tracked[ids]).max() > 1e-4
    np.testing.assert_allclose(poses[0], poses[1], atol=1e-5)


def test_sigkill_mid_checkpoint_write_then_resume_finishes(avatar_subject, tmp_path) -> None:
    """kill -9 while a checkpoint is being written (its size changes as density control adds Gaussians):
    the last complete checkpoint loads and `--resume` finishes the run."""
    cfg = load_config(GaussianTrainConfig, "gaussians_tiny")
    cfg = dataclasses.replace(cfg, steps=60, checkpoint_every=5,
                              density=dataclasses.replace(cfg.density, every=5, start=5, stop_fraction=1.0))
    run = tmp_path / "run"
    assert sigkill_while_checkpointing(avatar_subject, run, gaussian_config_to_yaml(cfg)), "never caught a checkpoint being written"
    state = load_state(run / CHECKPOINT_NAME)
    assert 5 <= state["step"] < 60
    result = train_gaussians(avatar_subject, run, None, resume=True, progress=False, log=lambda s: None)
    assert result["finished"] and result["step"] == 60 and load_avatar(run).backend == "gaussians"
