"""`avatar3d train` for the Gaussian backend: fit the Gaussian head and the torso field to a prepared subject.

One step renders whole training frames (the rasterizer draws the full image anyway) and scores
the pixels around the head plus a share of the rest (the torso field runs per scored pixel):
L1 on the composite weighted towards head and mouth, BCE of the head's coverage against the
head label and of the torso alpha against the neck/torso label, and two shape terms (no
Gaussian larger than ``max_scale_m``, face Gaussians near their triangle).  Density control
(train/gaussian_density.py) adds and removes Gaussians under a hard cap.

Checkpoints are atomic and hold everything the next step depends on (weights of every size the
run has reached, Adam moments, step, random states), so `--resume` continues the run; SIGINT /
SIGTERM write one first.  The closing held-out score renders through the avatar API, as eval does.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from avatar3d.avatar.bundle import AVATAR_FILE, AvatarBundle
from avatar3d.avatar.gaussian_avatar import GaussianAvatar
from avatar3d.config import to_dict
from avatar3d.dataset.reader import SubjectData, load_subject
from avatar3d.errors import Avatar3DError, Interrupted
from avatar3d.face.default_model import load_face_model
from avatar3d.gaussians.avatar_model import GaussianAvatarModel
from avatar3d.gaussians.head import GaussianHead
from avatar3d.gaussians.rasterize import GAUSSIANS_SPEC
from avatar3d.interrupts import deferred_interrupts
from avatar3d.io.atomic import write_json_atomic, write_text_atomic
from avatar3d.nerf.backend import load_extension, requested_backend
from avatar3d.nerf.encoding import HASHGRID_SPEC
from avatar3d.nerf.model import image_pixels
from avatar3d.nerf.pose_correction import PoseCorrection
from avatar3d.train.checkpoint import CHECKPOINT_NAME, restore, save_checkpoint
from avatar3d.train.config import plain
from avatar3d.train.gaussian_config import (GaussianOptimConfig, GaussianTrainConfig, gaussian_config_from_yaml,
                                            gaussian_config_to_yaml)
from avatar3d.train.gaussian_density import GradientStats, densify
from avatar3d.train.gaussian_pose import corrected_pose, fit_gaussian_poses
from avatar3d.train.guard import check_train_resources
from avatar3d.train.gaussian_seed import seed_head
from avatar3d.train.hull import neck_band
from avatar3d.train.losses import opacity_bce
from avatar3d.train.sampler import label_edges
from avatar3d.train.trainer import (CONFIG_NAME, HISTORY_NAME, eval_ids, evaluate_frames, final_line, final_scores,
                                    interrupted_message, prepare_run, resolve_device)

HEAD_BOX_PAD_PX = 4  # every pixel within this of the head label's box is scored each step


def _lr_groups(model: GaussianAvatarModel, config: GaussianOptimConfig,
               correction: PoseCorrection | None) -> list[dict[str, Any]]:  # fmt: skip
    """One Adam group per kind of tensor, each with its own base rate (``name`` finds it again after density control)."""
    h = model.head
    rates = {"face_offset": config.lr_position, "rigid_means": config.lr_position,
             "face_log_scale": config.lr_scale, "rigid_log_scale": config.lr_scale,
             "face_quat": config.lr_rotation, "rigid_quat": config.lr_rotation,
             "face_opacity_logit": config.lr_opacity, "rigid_opacity_logit": config.lr_opacity,
             "face_sh": config.lr_sh, "rigid_sh": config.lr_sh}  # fmt: skip
    groups = [{"params": [getattr(h, name)], "lr": lr, "base_lr": lr, "name": name} for name, lr in rates.items()]
    grid = [model.torso.encoding.table]
    nets = [p for p in model.torso.parameters() if p is not model.torso.encoding.table]
    groups += [{"params": grid, "lr": config.lr_grid, "base_lr": config.lr_grid, "name": "torso_grid"},
               {"params": nets, "lr": config.lr_net, "base_lr": config.lr_net, "name": "torso_net"}]
    if h.residual is not None:
        table = h.residual.encoding.table
        groups += [{"params": [table], "lr": config.lr_grid, "base_lr": config.lr_grid, "name": "residual_grid"},
                   {"params": [p for p in h.residual.parameters() if p is not table], "lr": config.lr_net,
                    "base_lr": config.lr_net, "name": "residual_net"}]  # fmt: skip
    if h.config.motion_gain:
        groups.append({"params": [h.motion_gain], "lr": config.lr_gain, "base_lr": config.lr_gain, "name": "motion_gain"})
    if correction is not None:
        groups.append({"params": [correction.knots], "lr": config.lr_pose, "base_lr": config.lr_pose, "name": "pose"})
    return groups


def _optimizer(model: GaussianAvatarModel, config: GaussianOptimConfig,
               correction: PoseCorrection | None = None) -> torch.optim.Optimizer:  # fmt: skip
    return torch.optim.Adam(_lr_groups(model, config, correction), betas=(0.9, 0.999), eps=1e-15)


class FrameTargets:
    """What a step scores in one frame: the pixel set, its colours, labels and weights (CPU tensors)."""

    def __init__(self, data: SubjectData, i: int, config: GaussianTrainConfig, rng: np.random.Generator) -> None:
        r = data.resolution
        lab = np.asarray(data.labels[i])
        head = (lab == 1) | (lab == 3)
        pick = rng.random((r, r)) < config.loss.other_pixel_fraction
        ys, xs = np.nonzero(head)
        if len(ys):
            pad = HEAD_BOX_PAD_PX
            pick[max(0, ys.min() - pad): ys.max() + pad + 1, max(0, xs.min() - pad): xs.max() + pad + 1] = True
        idx = np.flatnonzero(pick)
        weight = np.ones((r, r), np.float32) + config.loss.head_weight * head
        x0, y0, x1, y1 = (int(v) for v in data.mouth_boxes[i])
        weight[y0:y1, x0:x1] += config.loss.mouth_weight
        ok = ~label_edges(lab)
        head_ok = ok & ~neck_band(lab, config.neck_band_px)
        self.idx = torch.from_numpy(idx)
        self.rgb = torch.from_numpy(np.asarray(data.frames[i]).reshape(-1, 3)[idx].astype(np.float32) / 255.0)
        self.weight = torch.from_numpy(weight.reshape(-1)[idx])
        self.head = torch.from_numpy(head.reshape(-1)[idx].astype(np.float32))
        self.head_ok = torch.from_numpy(head_ok.reshape(-1)[idx])
        self.torso_ok = torch.from_numpy((ok & ~head).reshape(-1)[idx])
        self.torso = torch.from_numpy((lab == 2).reshape(-1)[idx].astype(np.float32))


def frame_loss(model: GaussianAvatarModel, data: SubjectData, i: int, cache: dict[str, torch.Tensor],
               target: FrameTargets, config: GaussianTrainConfig,
               correction: PoseCorrection | None = None) -> tuple[dict[str, torch.Tensor], Any]:  # fmt: skip
    """Loss terms of training frame ``i`` and its raster output (for the density statistics).

    ``correction``: the learned pose corrections, applied to (and learning from) this frame's pose.
    """
    r, cfg = data.resolution, config.loss
    motion = torch.from_numpy(data.motion([i])[0])
    R, t = torch.from_numpy(data.R[i]).float(), torch.from_numpy(data.t[i]).float()
    if correction is not None:  # the learned correction of this frame's tracked head pose
        R, t = corrected_pose(correction, i, R, t)
    gaussians = model.head(motion)
    raster = model.splat(gaussians, cache["K"], R, t, r)
    rgb, head_a, torso_a, offset = model.composite_pixels(raster, cache["K"], R, t, cache["uv"], target.idx,
                                                          cache["bg"])  # fmt: skip
    photo = (target.weight * (rgb - target.rgb).abs().mean(-1)).sum() / target.weight.sum()
    head_mask = opacity_bce(head_a[target.head_ok], target.head[target.head_ok])
    torso_mask = opacity_bce(torso_a[target.torso_ok], target.torso[target.torso_ok])
    scale = torch.relu(gaussians.scales - cfg.max_scale_m).mean()
    surface = torch.relu(model.head.face_offset.norm(dim=-1) - cfg.surface_m).square().mean()
    residual = gaussians.residual.square().mean() if gaussians.residual is not None else torch.zeros(())
    gain = (model.head.motion_gain - 1).square().mean() if model.head.config.motion_gain else torch.zeros(())
    total = (photo + cfg.head_mask_weight * head_mask + cfg.torso_mask_weight * torso_mask
             + cfg.offset_weight * offset.square().mean() + cfg.scale_weight * scale + cfg.surface_weight * surface
             + cfg.residual_weight * residual + cfg.gain_weight * gain)  # fmt: skip
    return {"total": total, "photo": photo, "head_mask": head_mask, "torso_mask": torso_mask, "scale": scale,
            "surface": surface, "residual": residual, "gain": gain}, raster  # fmt: skip


def train_gaussians(
    subject: str | Path, out: str | Path, config: GaussianTrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, log: Callable[[str], None] = print, data: SubjectData | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Trains (or resumes) a Gaussian avatar into ``out``; returns the final held-out metrics and timings."""
    out = Path(out)
    config, state = prepare_run(out, config, resume, gaussian_config_from_yaml, GaussianTrainConfig)
    if data is None:
        check_train_resources(Path(subject), out, config, resumed=state is not None)
    if config.threads:
        torch.set_num_threads(config.threads)
    dev = resolve_device(config.device)
    if dev.type != "cpu":
        raise Avatar3DError(f"device: {config.device} in a Gaussian train config: backend gaussians trains on the "
                            "CPU only in this version; use device: cpu")
    data = data or load_subject(subject, config.resolution, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG_NAME, gaussian_config_to_yaml(config))
    torch.manual_seed(config.seed)
    if state is None:
        head = seed_head(config.avatar.head, data, load_face_model(), neck_px=config.neck_band_px, seed=config.seed)
    else:
        head_state = {k[len("head."):]: v for k, v in state["model"].items() if k.startswith("head.")}
        head = GaussianHead.sized_like(config.avatar.head, head_state)
    model = GaussianAvatarModel(config.avatar, head)
    correction = PoseCorrection(data.n_frames, config.pose_knot_frames) if config.pose_knot_frames > 0 else None
    if correction is not None:
        correction.set_gauge(data.train_ids)  # the corrections' mean over the training frames stays zero
        if state is not None and "pose_knots" in state:
            correction.knots.data.copy_(state["pose_knots"])
    opt = _optimizer(model, config.optim, correction)
    torch_gen, np_gen = torch.Generator().manual_seed(config.seed), np.random.default_rng(config.seed)
    step, elapsed, history = 0, 0.0, []
    if state is not None:
        step = restore(state, model=model, optimizer=opt, torch_gen=torch_gen, np_gen=np_gen)
        elapsed, history = float(state.get("elapsed_s", 0.0)), list(state.get("history", []))
        log(f"[train] resumed at step {step} ({elapsed:.0f} s trained, {model.head.n_gaussians} Gaussians)")
    else:
        log(f"[train] Gaussian head seeded: {head.n_face} on the face mesh, {head.n_rigid} hair/ears/neck/mouth")
    _load_kernels(log)
    r = data.resolution
    cache = {"K": torch.from_numpy(data.K).float(), "uv": image_pixels(r) / r,
             "bg": torch.from_numpy(data.background.reshape(-1, 3)).float()}
    scorer = GaussianAvatar(model, None)
    writer = SummaryWriter(str(out / "tensorboard"))
    last_stop = config.steps if stop_after_steps is None else min(config.steps, step + stop_after_steps)
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", dynamic_ncols=True) if progress else None
    stats = GradientStats(model.head.n_gaussians)
    if state is not None and "density_total" in state:  # the gradient statistics since the last density round
        stats.total, stats.count = state["density_total"].clone(), state["density_count"].clone()
    dens = config.density
    saved_step = -1

    def checkpoint() -> None:
        nonlocal saved_step
        saved_step = step
        save_checkpoint(out / CHECKPOINT_NAME, model=model, optimizer=opt, step=step, torch_gen=torch_gen,
                        np_gen=np_gen, extra={"elapsed_s": elapsed, "history": history, "density_total": stats.total,
                                              "density_count": stats.count,
                                              **({"pose_knots": correction.knots.detach().clone()}
                                                 if correction is not None else {})})  # fmt: skip

    def evaluate() -> dict[str, float]:
        metrics, images = evaluate_frames(scorer, data, eval_ids(data, config.eval.frames))
        row = {"step": step, "elapsed_s": round(elapsed, 2), "gaussians": model.head.n_gaussians,
               **{k: round(v, 4) for k, v in metrics.items()}}  # fmt: skip
        history.append(row)
        write_json_atomic(out / HISTORY_NAME, history)
        for k, v in metrics.items():
            writer.add_scalar(f"val/{k}", v, step)
        return metrics

    budget_hit = False
    with deferred_interrupts() as stop:
        while step < last_stop and not budget_hit and not stop:
            t0 = time.perf_counter()
            progress_f = step / max(config.steps - 1, 1)
            if config.time_budget_s > 0:
                progress_f = max(progress_f, elapsed / config.time_budget_s)
            factor = config.optim.lr_final_factor ** min(progress_f, 1.0)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            frames = np_gen.choice(data.train_ids, config.frames_per_step)
            opt.zero_grad(set_to_none=True)
            rasters, terms = [], {}
            corr = correction if step >= config.optim.pose_refine_start else None
            for f in frames:
                target = FrameTargets(data, int(f), config, np_gen)
                terms, raster = frame_loss(model, data, int(f), cache, target, config, corr)
                (terms["total"] / len(frames)).backward()
                rasters.append(raster)
            for raster in rasters:
                stats.add(raster.means2d.grad, raster.radii)
            opt.step()
            step += 1
            if (dens.every and step >= dens.start and step % dens.every == 0 and progress_f < dens.stop_fraction):
                counts = densify(model.head, opt, stats, prune_opacity=dens.prune_opacity,
                                 max_gaussians=dens.max_gaussians, clone_fraction=dens.clone_fraction,
                                 split_scale_m=dens.split_scale_m, rng=np_gen)  # fmt: skip
                stats = GradientStats(model.head.n_gaussians)
                writer.add_scalar("train/gaussians", model.head.n_gaussians, step)
                writer.add_scalars("train/density", counts, step)
            elapsed += time.perf_counter() - t0
            budget_hit = config.time_budget_s > 0 and elapsed >= config.time_budget_s
            if step % 25 == 0:
                for k, v in terms.items():
                    writer.add_scalar(f"loss/{k}", float(v.detach()), step)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(l1=f"{float(terms['photo'].detach()):.4f}", n=model.head.n_gaussians, refresh=False)
            if config.eval.every and step % config.eval.every == 0 and step < config.steps:
                evaluate()
            if step % config.checkpoint_every == 0 or step == last_stop or budget_hit:
                checkpoint()
    if bar is not None:
        bar.close()
    if stop.signum is not None:
        if saved_step != step:
            checkpoint()
        writer.close()
        raise Interrupted(stop.signum, interrupted_message(subject, out, step, config.steps))
    finished = step >= config.steps or budget_hit
    result: dict[str, Any] = {"step": step, "elapsed_s": round(elapsed, 1), "finished": finished,
                              "gaussians": model.head.n_gaussians}  # fmt: skip
    if finished:
        try:  # the steps are all checkpointed: a signal here loses only the final evaluation
            evaluate()
            checkpoint()
            fit = config.eval.held_out_pose_fit
            scores, R, t = final_scores(scorer, data, config.eval, _training_poses(correction, data), log,
                                        None if fit is None else lambda ids: fit_gaussian_poses(model, data, ids, fit,
                                                                                                cache))  # fmt: skip
            result.update(scores)
            gaussian_bundle(model, data, config, poses=(R, t)).save(out / AVATAR_FILE)
        except Interrupted as exc:
            writer.close()
            raise Interrupted(exc.signum, interrupted_message(subject, out, step, config.steps)
                              + " (training was done; the final evaluation and the avatar file were not)") from None
        log(final_line(result, step, elapsed, f", {model.head.n_gaussians} Gaussians", out / AVATAR_FILE))
    writer.close()
    return result


def _training_poses(correction: PoseCorrection | None, data: SubjectData) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the subject's poses with the training frames as the Gaussians saw them (learned corrections)."""
    R, t = data.R.copy(), data.t.copy()
    if correction is not None:
        ids = data.train_ids
        R[ids], t[ids] = (a[ids] for a in correction.corrected_poses(data.R, data.t))
    return R, t


def gaussian_bundle(model: GaussianAvatarModel, data: SubjectData, config: GaussianTrainConfig,
                    poses: tuple[np.ndarray, np.ndarray] | None = None) -> AvatarBundle:  # fmt: skip
    """The inference bundle (``backend: gaussians``): weights, model config, camera, plate, the subject's poses and motion.

    ``poses``: the refined poses (learned on training frames, re-tracked on held-out ones) saved as
    ``R``/``t``; the landmark-tracked ones are kept as ``R_tracked``/``t_tracked``.
    """
    R, t = poses if poses is not None else (data.R, data.t)
    return AvatarBundle(
        backend=GaussianAvatar.backend, config=plain(to_dict(config.avatar)),
        state={k: v.detach().clone() for k, v in model.state_dict().items()}, motion_dim=model.motion_dim,
        n_frames=data.n_frames, resolution=data.resolution, K=data.K,
        background=(data.background * 255).round().astype(np.uint8), expression_names=list(data.expression_names),
        R=R, t=t, R_tracked=data.R, t_tracked=data.t, fps=data.fps, expression=data.expression,
        blink=data.blink, train_ids=data.train_ids, val_ids=data.val_ids, subject=str(data.root))


def _load_kernels(log: Callable[[str], None]) -> None:
    """Loads (on first use: compiles) the rasterizer and hash-grid CPU builds before the clock starts."""
    if requested_backend() == "torch":
        return
    records = [load_extension(spec, "cpu") for spec in (GAUSSIANS_SPEC, HASHGRID_SPEC)]  # type: ignore[arg-type]
    built = sum(r.seconds for r in records if r.source == "jit")
    if built:
        log(f"[train] compiled the cpu kernels in {built:.0f} s (first use; not counted as training time)")
