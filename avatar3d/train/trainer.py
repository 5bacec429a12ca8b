"""`avatar3d train`: fit the avatar to a prepared subject.

One loop, three ingredients that matter on a CPU budget:
* rays are drawn from a few frames per step, with a share forced into the head region and
  another into the mouth box (the mouth is small but is what viewers watch);
* the head is sampled only in occupied cells of an occupancy grid refreshed from the field
  every few steps (at the motion of a random frame, keeping the max over motions);
* losses: photometric MSE on the composite, head-opacity and torso-alpha against the
  parsing masks (the neck seam is learned), a small L1 on the region attention (motion
  stays local) and on the torso deformation.

Everything the next step depends on is checkpointed atomically, so `--resume` continues
exactly (same rays, same updates) after a crash or a kill. SIGINT / SIGTERM end the loop
between two steps and write a checkpoint at that step first: an interrupted run loses nothing.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AVATAR_FILE, AvatarBundle
from avatar3d.avatar.nerf_avatar import NerfAvatar
from avatar3d.config import to_dict
from avatar3d.dataset.reader import LIP_IDS, SubjectData, load_subject
from avatar3d.errors import Avatar3DError, Interrupted
from avatar3d.eval.image_metrics import frame_metrics, mean_metrics
from avatar3d.face.default_model import load_face_model
from avatar3d.face.motion_regions import face_motion_regions
from avatar3d.interrupts import deferred_interrupts
from avatar3d.io.atomic import write_json_atomic, write_text_atomic
from avatar3d.nerf.backend import load_extension, requested_backend
from avatar3d.nerf.encoding import HASHGRID_SPEC
from avatar3d.nerf.model import AvatarModel
from avatar3d.nerf.raymarch import RAYMARCH_SPEC
from avatar3d.train.checkpoint import CHECKPOINT_NAME, load_state, restore, save_checkpoint
from avatar3d.train.config import OptimConfig, TrainConfig, TrainEvalConfig, config_from_yaml, config_to_yaml, plain
from avatar3d.train.guard import check_train_resources
from avatar3d.train.hull import carve_head_hull
from avatar3d.train.losses import losses
from avatar3d.train.pose_fit import fit_poses
from avatar3d.train.sampler import RaySampler

CONFIG_NAME = "config.yaml"
HISTORY_NAME = "history.json"


def motion_mask(expression_names: list[str], n_blink: int, channels: tuple[str, ...]) -> np.ndarray:
    """float32 [Ke + n_blink]: 1 for the motion channels the head field sees (all when ``channels`` is empty)."""
    mask = np.ones(len(expression_names) + n_blink, np.float32)
    if not channels:
        return mask
    unknown = sorted(set(channels) - set(expression_names) - {"blink"})
    if unknown:
        raise Avatar3DError(f"motion_channels (train config YAML): unknown channel(s) {', '.join(unknown)}; use the "
                            f"tracker's expression names ({', '.join(expression_names[:4])}, ...) or 'blink'")
    mask[:] = 0.0
    for j, name in enumerate(expression_names):
        mask[j] = float(name in channels)
    mask[len(expression_names):] = float("blink" in channels)
    return mask


def evaluate_frames(avatar: Avatar, data: SubjectData, ids: np.ndarray) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean full/head/mouth PSNR + SSIM over frames ``ids`` and the rendered images."""
    rows, images = [], []
    for i in ids:
        pred = avatar.render_subject_frame(data, int(i))["rgb"].numpy()
        ref = data.image(int(i))
        rows.append(frame_metrics(pred, ref, np.asarray(data.labels[int(i)]), data.landmarks[int(i)][LIP_IDS]))
        images.append(pred)
    return mean_metrics(rows), images


def resolve_device(name: str) -> torch.device:
    """"auto" -> the GPU when this torch sees one, else the CPU; "cuda" without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Avatar3DError("device: cuda in the train config, but torch sees no GPU: use device: auto or cpu")
    if name not in ("cpu", "cuda"):
        raise Avatar3DError(f"device: {name!r} in the train config: use auto, cpu or cuda")
    return torch.device(name)


def _optimizer(model: AvatarModel, config: OptimConfig) -> torch.optim.Optimizer:
    grids = [model.head.encoding.table, model.torso.encoding.table]
    grid_ids = {id(p) for p in grids}
    poses = [model.pose.knots] if model.pose is not None else []
    fixed = grid_ids | {id(p) for p in poses}
    nets = [p for p in model.parameters() if id(p) not in fixed]
    groups = [{"params": grids, "lr": config.lr_grid, "base_lr": config.lr_grid, "start": 0},
              {"params": nets, "lr": config.lr_net, "base_lr": config.lr_net, "start": 0}]
    if poses:
        groups.append({"params": poses, "lr": 0.0, "base_lr": config.lr_pose, "start": config.pose_refine_start})
    return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)


def eval_ids(data: SubjectData, n: int) -> np.ndarray:
    """``n`` evenly spaced held-out frames (the training frames when there are none)."""
    ids = data.val_ids if len(data.val_ids) else data.train_ids
    return ids[np.linspace(0, len(ids) - 1, max(1, min(n, len(ids)))).round().astype(int)]


AnyConfig = TypeVar("AnyConfig")


def prepare_run(out: Path, config: AnyConfig | None, resume: bool, from_yaml: Callable[[str, str], AnyConfig],
                default: Callable[[], AnyConfig]) -> tuple[AnyConfig, dict[str, Any] | None]:  # fmt: skip
    """Resolves a run's config and the checkpoint to resume from (None: fresh start), for either backend.

    ``from_yaml`` reads the config the run saved (its backend's); ``default`` makes one when none is given.
    """
    ckpt, saved = out / CHECKPOINT_NAME, out / CONFIG_NAME
    if resume:
        if not ckpt.is_file() or not saved.is_file():
            raise Avatar3DError(f"{out}: nothing to resume ({CHECKPOINT_NAME} missing): drop --resume to start a run")
        saved_cfg = from_yaml(saved.read_text(), str(saved))
        if config is not None and to_dict(config) != to_dict(saved_cfg):
            raise Avatar3DError(f"{saved}: the run was started with another config; drop --config to resume it, "
                                "or train into a new folder")  # fmt: skip
        return saved_cfg, load_state(ckpt)
    if ckpt.is_file():
        raise Avatar3DError(f"{out} already holds a training run: pass --resume to continue it, or choose a new folder")
    return config if config is not None else default(), None


def train(
    subject: str | Path, out: str | Path, config: TrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, log: Callable[[str], None] = print, data: SubjectData | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Trains (or resumes) an avatar into ``out``; returns the final held-out metrics and timings.

    ``data`` overrides the loaded subject (the benchmark swaps in ground-truth poses);
    ``stop_after_steps`` ends this call early (tests simulate an interrupted run).
    """
    out = Path(out)
    config, state = prepare_run(out, config, resume, config_from_yaml, TrainConfig)
    if data is None:
        check_train_resources(Path(subject), out, config, resumed=state is not None)
    if config.threads:
        torch.set_num_threads(config.threads)
    data = data or load_subject(subject, config.resolution, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / CONFIG_NAME, config_to_yaml(config))
    torch.manual_seed(config.seed)  # network initialisation
    dev = resolve_device(config.device)
    model = AvatarModel(config.avatar, data.motion(np.array([0])).shape[1], data.n_frames,
                        motion_regions=face_motion_regions(load_face_model())).to(dev)
    model.head.motion_mask.copy_(torch.from_numpy(motion_mask(list(data.expression_names), data.blink.shape[1],
                                                              config.motion_channels)).to(dev))  # fmt: skip
    if config.motion_std_floor > 0:
        model.head.set_motion_statistics(torch.from_numpy(data.motion(data.train_ids)).float().to(dev),
                                         config.motion_std_floor)
    opt = _optimizer(model, config.optim)
    torch_gen, np_gen = torch.Generator(device=dev).manual_seed(config.seed), np.random.default_rng(config.seed)
    step, elapsed, history = 0, 0.0, []
    if state is None:
        hull = carve_head_hull(model.grid, data.R, data.t, data.K, data.labels, data.train_ids,
                               neck_px=config.sampler.neck_band_px)
        model.set_hull(hull)
        if model.pose is not None:
            model.pose.set_gauge(data.train_ids)
        log(f"[train] head hull from the masks: {100 * float(hull.float().mean()):.1f}% of the head box")
    else:
        step = restore(state, model=model, optimizer=opt, torch_gen=torch_gen, np_gen=np_gen)
        elapsed, history = float(state.get("elapsed_s", 0.0)), list(state.get("history", []))
        log(f"[train] resumed at step {step} ({elapsed:.0f} s trained)")
    _load_kernels(dev, log)
    sampler = RaySampler(data, config.sampler)
    scorer = NerfAvatar(model, None)  # renders held-out frames through the avatar API, as eval does
    scored_ids = eval_ids(data, config.eval.frames)
    writer = _tensorboard(out)
    last_stop = config.steps if stop_after_steps is None else min(config.steps, step + stop_after_steps)
    bar = _progress(progress, config.steps, step)

    saved_step = -1

    def checkpoint() -> None:
        nonlocal saved_step
        saved_step = step
        save_checkpoint(out / CHECKPOINT_NAME, model=model, optimizer=opt, step=step, torch_gen=torch_gen,
                        np_gen=np_gen, extra={"elapsed_s": elapsed, "history": history})  # fmt: skip

    def evaluate() -> dict[str, float]:
        model.eval()
        metrics, images = evaluate_frames(scorer, data, scored_ids)
        model.train()
        row = {"step": step, "elapsed_s": round(elapsed, 2), **{k: round(v, 4) for k, v in metrics.items()}}
        history.append(row)
        write_json_atomic(out / HISTORY_NAME, history)
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, step)
            grid = np.concatenate([np.concatenate([p, data.image(int(i))], 1) for p, i in zip(images, scored_ids)], 0)
            writer.add_image("val/pred_vs_truth", grid.clip(0, 1), step, dataformats="HWC")
        return metrics

    budget_hit = False
    with deferred_interrupts() as stop:
        while step < last_stop and not budget_hit and not stop:
            t0 = time.perf_counter()
            progress = step / max(config.steps - 1, 1)
            if config.time_budget_s > 0:  # a timed run decays on time, so it ends at the final rate too
                progress = max(progress, elapsed / config.time_budget_s)
            factor = config.optim.lr_final_factor ** min(progress, 1.0)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor if step >= g.get("start", 0) else 0.0
            if step % config.grid_update_every == 0:
                f = int(np_gen.choice(data.train_ids))
                model.update_grid(torch.from_numpy(data.motion(np.array([f]))[0]).float().to(dev), step, torch_gen,
                                  config.grid_warmup_steps, config.grid_threshold)  # fmt: skip
            batch, target = sampler.sample(model, np_gen)
            out_rays = model.render_rays(batch)
            terms = losses(out_rays, target, config.loss)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            step += 1
            elapsed += time.perf_counter() - t0
            budget_hit = config.time_budget_s > 0 and elapsed >= config.time_budget_s
            if writer is not None and step % 25 == 0:
                for k, v in terms.items():
                    writer.add_scalar(f"loss/{k}", float(v.detach()), step)
                writer.add_scalar("train/samples_per_ray", float(out_rays["n_samples"]) / config.sampler.rays_per_step, step)
                writer.add_scalar("train/occupancy", model.grid.occupancy_fraction(), step)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(psnr=f"{-10 * math.log10(max(float(terms['photo'].detach()), 1e-10)):.1f}", refresh=False)
            if config.eval.every and step % config.eval.every == 0 and step < config.steps:
                evaluate()
            if step % config.checkpoint_every == 0 or step == last_stop or budget_hit:
                checkpoint()
    if bar is not None:
        bar.close()
    if stop.signum is not None:
        if saved_step != step:
            checkpoint()
        if writer is not None:
            writer.close()
        raise Interrupted(stop.signum, interrupted_message(subject, out, step, config.steps))
    finished = step >= config.steps or budget_hit
    result: dict[str, Any] = {"step": step, "elapsed_s": round(elapsed, 1), "finished": finished}
    if finished:
        try:  # the steps are all checkpointed: a signal here loses only the final evaluation
            evaluate()  # the history's last point
            checkpoint()
            model.eval()
            fit = config.eval.held_out_pose_fit
            scores, R, t = final_scores(scorer, data, config.eval, _training_poses(model, data), log,
                                        None if fit is None else lambda ids: fit_poses(model, data, ids, config.sampler,
                                                                                       fit))  # fmt: skip
            result.update(scores)
            model.train()
            nerf_bundle(model, data, config, poses=(R, t)).save(out / AVATAR_FILE)
            log(final_line(result, step, elapsed, "", out / AVATAR_FILE))
        except Interrupted as exc:
            raise Interrupted(exc.signum, interrupted_message(subject, out, step, config.steps)
                              + " (training was done; the final evaluation and the avatar file were not)") from None
    if writer is not None:
        writer.close()
    return result


Poses = tuple[np.ndarray, np.ndarray]  # R [N, 3, 3], t [N, 3]


def final_scores(scorer: Avatar, data: SubjectData, eval_config: TrainEvalConfig, poses: Poses,
                 log: Callable[[str], None],
                 refit: Callable[[np.ndarray], Poses] | None) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:  # fmt: skip
    """A finished run's held-out scores, for either backend: with the landmark-tracked poses, then, when the
    config re-tracks them, with the held-out poses ``refit`` returns (the avatar frozen).

    ``poses``: the subject's poses with the training frames as the avatar saw them; returned with the
    held-out frames re-tracked, as the avatar file keeps them.  Entries: ``val`` (the last scores),
    ``val_tracked`` (the landmark-tracked ones, when re-tracked), ``val_frames``.
    """
    final_ids = eval_ids(data, eval_config.final_frames or len(data.val_ids) or len(data.train_ids))
    scores: dict[str, Any] = {"val": evaluate_frames(scorer, data, final_ids)[0], "val_frames": len(final_ids)}
    R, t = poses
    if refit is not None and len(data.val_ids):
        log(f"[train] re-tracking the {len(data.val_ids)} held-out frames' head poses photometrically")
        R[data.val_ids], t[data.val_ids] = refit(data.val_ids)
        scores["val_tracked"] = scores["val"]
        scores["val"] = evaluate_frames(scorer, dataclasses.replace(data, R=R, t=t), final_ids)[0]
    return scores, R, t


def final_line(result: dict[str, Any], step: int, elapsed: float, extra: str, avatar_file: Path) -> str:
    """The log line a finished run ends with: steps, time, held-out PSNR (re-tracked and landmark-tracked)."""
    val = result["val"]
    return (f"[train] {step} steps in {elapsed:.0f} s{extra}; held-out PSNR ({result['val_frames']} frames) full "
            f"{val['psnr_full']:.2f} / head {val['psnr_head']:.2f} / mouth {val['psnr_mouth']:.2f} dB"
            + (f" (re-tracked poses; landmark-tracked: head {result['val_tracked']['psnr_head']:.2f} dB)"
               if "val_tracked" in result else "") + f" -> {avatar_file}")


def interrupted_message(subject: str | Path, out: Path, step: int, steps: int) -> str:
    """What an interrupted run kept and the exact command that continues it."""
    command = f"avatar3d train {shlex.quote(str(subject))} -o {shlex.quote(str(out))} --resume"
    return (f"interrupted at step {step} of {steps}: the checkpoint {out / CHECKPOINT_NAME} holds that step; "
            f"continue with `{command}`")


def _training_poses(model: AvatarModel, data: SubjectData) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the subject's poses with the training frames as the field saw them (learned corrections)."""
    R, t = data.R.copy(), data.t.copy()
    if model.pose is not None:
        ids = data.train_ids
        R[ids], t[ids] = (a[ids] for a in model.pose.corrected_poses(data.R, data.t))
    return R, t


def nerf_bundle(model: AvatarModel, data: SubjectData, config: TrainConfig,
                poses: tuple[np.ndarray, np.ndarray] | None = None) -> AvatarBundle:  # fmt: skip
    """The inference bundle: weights, model config, camera, plate, the subject's poses and motion (for `render`).

    ``poses``: the refined poses (learned on training frames, re-tracked on held-out ones) saved as
    ``R``/``t``; the landmark-tracked ones are kept as ``R_tracked``/``t_tracked``.
    """
    R, t = poses if poses is not None else _training_poses(model, data)
    return AvatarBundle(
        backend=NerfAvatar.backend, config=plain(to_dict(config.avatar)), state=model.state_dict(),
        motion_dim=model.motion_dim, n_frames=data.n_frames, resolution=data.resolution, K=data.K,
        background=(data.background * 255).round().astype(np.uint8), expression_names=list(data.expression_names),
        R=R, t=t, R_tracked=data.R, t_tracked=data.t, fps=data.fps, expression=data.expression, blink=data.blink,
        train_ids=data.train_ids, val_ids=data.val_ids, subject=str(data.root))


def _load_kernels(dev: torch.device, log: Callable[[str], None]) -> None:
    """Loads (on first use: compiles, ~1-2 min) the compiled kernels before the clock starts, so a timed run
    (``time_budget_s``, the demo's 2 minutes) trains for its whole budget on a fresh install."""
    if requested_backend() == "torch" or dev.type not in ("cpu", "cuda"):
        return
    kind = "cuda" if dev.type == "cuda" else "cpu"
    records = [load_extension(spec, kind) for spec in (HASHGRID_SPEC, RAYMARCH_SPEC)]  # type: ignore[arg-type]
    built = sum(r.seconds for r in records if r.source == "jit")
    if built:
        log(f"[train] compiled the {kind} kernels in {built:.0f} s (first use; not counted as training time)")


def _tensorboard(out: Path) -> SummaryWriter:
    return SummaryWriter(str(out / "tensorboard"))


def _progress(enabled: bool, total: int, initial: int) -> tqdm | None:
    if not enabled:
        return None
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
