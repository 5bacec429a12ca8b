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
exactly (same rays, same updates) after a crash or a kill.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import yaml

from avatar3d import __version__
from avatar3d.config import from_dict, to_dict
from avatar3d.errors import Avatar3DError
from avatar3d.eval.image_metrics import frame_metrics, mean_metrics
from avatar3d.face.default_model import load_face_model
from avatar3d.face.motion_regions import face_motion_regions
from avatar3d.io.atomic import atomic_path, write_json_atomic, write_text_atomic
from avatar3d.nerf.model import AvatarConfig, AvatarModel, RayBatch, pixel_dirs, to_head_space
from avatar3d.train.checkpoint import AVATAR_NAME, CHECKPOINT_NAME, FORMAT_VERSION, load_state, restore, save_checkpoint
from avatar3d.train.data import LIP_IDS, SubjectData, load_subject
from avatar3d.train.hull import carve_head_hull, neck_band, within_px
from avatar3d.train.pose_fit import PoseFitConfig, fit_poses

CONFIG_NAME = "config.yaml"
HISTORY_NAME = "history.json"


@dataclass
class TrainConfig:
    """Schedule and losses of `avatar3d train`; the model's shape is ``avatar``."""

    avatar: AvatarConfig = field(default_factory=AvatarConfig)
    resolution: int = 128  # square training image side (frames are downsampled once into a cache)
    steps: int = 4000
    time_budget_s: float = 0.0  # stop when this much training time has passed (0: run all steps)
    rays_per_step: int = 2048
    frames_per_step: int = 4
    head_fraction: float = 0.4  # share of rays drawn inside the head label
    mouth_fraction: float = 0.2  # share drawn inside the mouth box
    torso_fraction: float = 0.2  # share drawn inside the neck/torso label (its detail moves with the head)
    lr_grid: float = 1e-2
    lr_net: float = 2e-3
    lr_final_factor: float = 0.1  # exponential decay to this factor at the last step
    lr_pose: float = 5e-4  # the pose-correction knots (avatar.pose_knot_frames > 0), rad and 0.1 m units
    pose_refine_start: int = 500  # poses are corrected only once the field has a shape to align
    held_out_pose_fit: PoseFitConfig | None = None
    """Set: after training, the held-out frames' head poses are re-tracked photometrically with the
    trained avatar frozen (train.pose_fit; 6 numbers per knot, nothing else) and saved in the avatar;
    the final metrics report them ("val") next to the landmark-tracked poses ("val_tracked")."""
    head_mask_weight: float = 0.02
    torso_mask_weight: float = 0.02
    attention_weight: float = 1e-3
    offset_weight: float = 1e-2
    motion_noise: float = 0.0
    """Training only: Gaussian noise added to the motion vector, in units of each channel's spread over
    the training frames -- a frame's exact (noisy) tracked code cannot then serve as its identity."""
    motion_channels: tuple[str, ...] = ()
    """Expression channels the head field is conditioned on (the tracker's names; "blink" = both eyelid
    channels); empty = all.  Why: most tracked channels are landmark noise on a short clip (on the 60 s
    synthetic subject only jawOpen correlates > 0.5 with the truth) and a noisy per-frame code lets the
    field memorise training frames instead of learning motion."""
    motion_std_floor: float = 0.05
    """> 0: the head field sees each motion channel standardised by the training frames' mean and std
    (std floored here, so a channel the tracker holds still is not blown up into noise); 0: the raw vector."""
    torso_clearance_px: int = 0
    """> 0: head-labelled pixels farther than this many pixels (at training resolution) from the neck/torso
    label supervise the torso alpha to 0 -- the torso layer may not paint behind the head, where it can
    only hide head-silhouette errors per training pose (and fails on held-out poses). 0: unsupervised there."""
    neck_band_px: int = 0
    """Neck/torso pixels within this many pixels (at training resolution) of the head label are neither
    carved from the head's hull nor forced to zero head opacity, so the head field may own the neck where
    it moves with the head (train/hull.py: neck_band)."""
    grid_update_every: int = 16
    grid_warmup_steps: int = 64
    grid_threshold: float = 5.0  # occupancy: density (1/m) above min(mean, this); 5/m = 5% opacity per cm
    eval_every: int = 250  # held-out PSNR and TensorBoard images every this many steps (0: only at the end)
    eval_frames: int = 2  # frames of those periodic checks (history.json, TensorBoard): a cheap trend, not the score
    final_eval_frames: int = 40
    """Held-out frames (evenly spaced; 0 = all) scored once training ends: the figure the log and the result
    report.  Two frames read 39.2 dB where 40 read 39.0, and 35.4 where 40 read 33.8."""
    checkpoint_every: int = 250
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    device: str = "auto"  # "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu" or "cuda"

    def __post_init__(self) -> None:
        if self.resolution < 16 or self.steps < 1 or self.rays_per_step < self.frames_per_step:
            raise Avatar3DError("TrainConfig: need resolution >= 16, steps >= 1, rays_per_step >= frames_per_step")
        if not 0 <= self.head_fraction + self.mouth_fraction + self.torso_fraction <= 1:
            raise Avatar3DError("TrainConfig: head_fraction + mouth_fraction + torso_fraction must be in [0, 1]")


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML-safe)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(_plain(to_dict(config)), sort_keys=False)


def config_from_yaml(text: str, source: str) -> TrainConfig:
    return from_dict(TrainConfig, yaml.safe_load(text) or {}, source=source)


class RaySampler:
    """Draws the pixels of one step: a few frames, head/mouth-weighted pixels, everything as tensors."""

    def __init__(self, data: SubjectData, config: TrainConfig):
        self.data, self.config = data, config
        self.K = torch.from_numpy(data.K).float()
        self.R = torch.from_numpy(data.R).float()
        self.t = torch.from_numpy(data.t).float()
        self.background = torch.from_numpy(data.background.reshape(-1, 3)).float()
        spread = data.motion(data.train_ids).std(axis=0) if len(data.train_ids) > 1 else 0.0
        self.motion_spread = np.asarray(spread, np.float32)

    def pixels(self, frame: int, lab: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """n flat pixel indices of ``frame`` (label map ``lab`` [r*r]): mouth box, head, torso, then uniform."""
        r = self.data.resolution
        n_mouth = int(n * self.config.mouth_fraction)
        n_head = int(n * self.config.head_fraction)
        parts = []
        x0, y0, x1, y1 = (int(v) for v in self.data.mouth_boxes[frame])
        if n_mouth and x1 > x0 and y1 > y0:
            parts.append(rng.integers(y0, y1, n_mouth) * r + rng.integers(x0, x1, n_mouth))
        else:
            n_head += n_mouth
        for count, where in ((n_head, (lab == 1) | (lab == 3)), (int(n * self.config.torso_fraction), lab == 2)):
            if count:
                pool = np.flatnonzero(where)
                parts.append(rng.choice(pool, count) if pool.size else rng.integers(0, r * r, count))
        rest = n - sum(len(p) for p in parts)
        parts.append(rng.integers(0, r * r, rest))
        return np.concatenate(parts)

    def sample(self, model: AvatarModel, rng: np.random.Generator) -> tuple[RayBatch, dict[str, torch.Tensor]]:
        """Rays are built on the CPU (cheap) and moved to the model's device once."""
        cfg, data, r = self.config, self.data, self.data.resolution
        dev = model.hull.device
        frames = rng.choice(data.train_ids, cfg.frames_per_step)
        per = cfg.rays_per_step // cfg.frames_per_step
        maps = [np.asarray(data.labels[int(f)]) for f in frames]  # each label map read once per step
        idx = np.stack([self.pixels(int(f), m.reshape(-1), per, rng) for f, m in zip(frames, maps)])  # [F, per]
        rgb = np.stack([np.asarray(data.frames[int(f)]).reshape(-1, 3)[i] for f, i in zip(frames, idx)])
        lab = np.stack([m.reshape(-1)[i] for m, i in zip(maps, idx)])
        edge = np.stack([label_edges(m).reshape(-1)[i] for m, i in zip(maps, idx)])
        band = np.stack([neck_band(m, cfg.neck_band_px, at=i) for m, i in zip(maps, idx)])
        clear = np.stack([behind_head(m, cfg.torso_clearance_px, at=i) for m, i in zip(maps, idx)])
        idx_t = torch.from_numpy(idx.reshape(-1))
        local = torch.arange(len(frames)).repeat_interleave(per)
        fr = torch.from_numpy(frames.astype(np.int64))
        pix = torch.stack([idx_t % r, idx_t // r], -1).float() + 0.5
        origins, dirs = to_head_space(self.R[fr][local], self.t[fr][local], pixel_dirs(self.K, pix))
        motion_np = data.motion(frames)
        if cfg.motion_noise > 0:
            motion_np = motion_np + cfg.motion_noise * self.motion_spread * rng.standard_normal(motion_np.shape)
        motion = torch.from_numpy(motion_np).float().to(dev)
        local_d = local.to(dev)
        head_code = model.head.motion_code(motion)[local_d]
        torso_code = model.torso.pose_code(self.R[fr].to(dev), self.t[fr].to(dev), self.K.to(dev), r)[local_d]
        batch = RayBatch(origins.to(dev), dirs.to(dev), (pix / r).to(dev), head_code, torso_code,
                         self.background[idx_t].to(dev), fr[local].to(dev))  # fmt: skip
        labels = torch.from_numpy(lab.reshape(-1).astype(np.int64)).to(dev)
        target = {"rgb": (torch.from_numpy(rgb.reshape(-1, 3)).float() / 255.0).to(dev), "labels": labels,
                  "mask_ok": torch.from_numpy(~edge.reshape(-1)).to(dev),
                  "head_free": torch.from_numpy(band.reshape(-1)).to(dev),
                  "torso_clear": torch.from_numpy(clear.reshape(-1)).to(dev)}  # fmt: skip
        return batch, target


def motion_mask(expression_names: list[str], n_blink: int, channels: tuple[str, ...]) -> np.ndarray:
    """float32 [Ke + n_blink]: 1 for the motion channels the head field sees (all when ``channels`` is empty)."""
    mask = np.ones(len(expression_names) + n_blink, np.float32)
    if not channels:
        return mask
    unknown = sorted(set(channels) - set(expression_names) - {"blink"})
    if unknown:
        raise Avatar3DError(f"TrainConfig.motion_channels: unknown channel(s) {', '.join(unknown)}; use the "
                            f"tracker's expression names ({', '.join(expression_names[:4])}, ...) or 'blink'")
    mask[:] = 0.0
    for j, name in enumerate(expression_names):
        mask[j] = float(name in channels)
    mask[len(expression_names):] = float("blink" in channels)
    return mask


def label_edges(labels: np.ndarray, radius: int = 1) -> np.ndarray:
    """Bool [H, W]: pixels within ``radius`` of a change of parsing label."""
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)


def behind_head(labels: np.ndarray, px: int, at: np.ndarray | None = None) -> np.ndarray:
    """Bool [H, W] (or [len(at)] at flat pixel indices ``at``): head pixels farther than ``px`` from the
    neck/torso label (nothing of the torso shows there); none if px=0."""
    if px <= 0:
        return np.zeros(labels.shape if at is None else len(at), bool)
    head = (labels == 1) | (labels == 3)
    return (head if at is None else head.reshape(-1)[at]) & ~within_px(labels == 2, px, at)


def _bce(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of an opacity: unlike MSE it keeps pushing a 5% leak over the background to 0."""
    if alpha.numel() == 0:
        return alpha.new_zeros(())
    return torch.nn.functional.binary_cross_entropy(alpha.clamp(1e-4, 1 - 1e-4), target)


def losses(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor], config: TrainConfig) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted total (``"total"``)."""
    labels = target["labels"]
    ok = target["mask_ok"]  # masks are trusted away from label edges only (parsing is uncertain there)
    is_head = ((labels == 1) | (labels == 3)).float()
    photo = torch.mean((out["rgb"] - target["rgb"]) ** 2)
    head_ok = ok & ~target["head_free"] if "head_free" in target else ok
    head_mask = _bce(out["head_alpha"][head_ok], is_head[head_ok])
    torso_sup = (is_head == 0) & ok
    if "torso_clear" in target:
        torso_sup = torso_sup | target["torso_clear"]
    torso_mask = _bce(out["torso_alpha"][torso_sup], ((labels[torso_sup] == 2)).float())
    offset = torch.mean(out["offset"] ** 2)
    total = (photo + config.head_mask_weight * head_mask + config.torso_mask_weight * torso_mask
             + config.attention_weight * out["attention"] + config.offset_weight * offset)  # fmt: skip
    return {"total": total, "photo": photo, "head_mask": head_mask, "torso_mask": torso_mask,
            "attention": out["attention"], "offset": offset}  # fmt: skip


def render_subject_frame(model: AvatarModel, data: SubjectData, i: int, size: int | None = None) -> dict[str, torch.Tensor]:
    """Renders frame ``i`` of the subject with its tracked pose and motion (at ``size``, default training res)."""
    r = data.resolution
    size = size or r
    dev = model.hull.device
    K = (torch.from_numpy(data.K).float() * torch.tensor([[size / r], [size / r], [1.0]])).to(dev)
    bg = torch.from_numpy(data.background).float().to(dev)
    if size != r:
        bg = torch.nn.functional.interpolate(bg.permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                                             align_corners=False)[0].permute(1, 2, 0)  # fmt: skip
    motion = torch.from_numpy(data.motion(np.array([i]))[0]).float().to(dev)
    out = model.render_image(K, torch.from_numpy(data.R[i]).float().to(dev), torch.from_numpy(data.t[i]).float().to(dev),
                             motion, bg, size)  # fmt: skip
    return {k: v.cpu() for k, v in out.items()}


def evaluate_frames(model: AvatarModel, data: SubjectData, ids: np.ndarray) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean full/head/mouth PSNR + SSIM over frames ``ids`` and the rendered images."""
    rows, images = [], []
    for i in ids:
        pred = render_subject_frame(model, data, int(i))["rgb"].numpy()
        ref = data.image(int(i))
        rows.append(frame_metrics(pred, ref, np.asarray(data.labels[int(i)]), data.landmarks[int(i)][LIP_IDS]))
        images.append(pred)
    return mean_metrics(rows), images


def resolve_device(name: str) -> torch.device:
    """"auto" -> the GPU when this torch sees one, else the CPU; "cuda" without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise Avatar3DError("TrainConfig.device is 'cuda' but torch sees no GPU: use device: auto or cpu")
    if name not in ("cpu", "cuda"):
        raise Avatar3DError(f"TrainConfig.device={name!r}: use auto, cpu or cuda")
    return torch.device(name)


def _optimizer(model: AvatarModel, config: TrainConfig) -> torch.optim.Optimizer:
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


def _eval_ids(data: SubjectData, n: int) -> np.ndarray:
    ids = data.val_ids if len(data.val_ids) else data.train_ids
    return ids[np.linspace(0, len(ids) - 1, max(1, min(n, len(ids)))).round().astype(int)]


def _prepare_run(out: Path, config: TrainConfig | None, resume: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Resolves the run's config and the checkpoint to resume from (None: fresh start)."""
    ckpt, saved = out / CHECKPOINT_NAME, out / CONFIG_NAME
    if resume:
        if not ckpt.is_file() or not saved.is_file():
            raise Avatar3DError(f"{out}: nothing to resume ({CHECKPOINT_NAME} missing): drop --resume to start a run")
        saved_cfg = config_from_yaml(saved.read_text(), str(saved))
        if config is not None and to_dict(config) != to_dict(saved_cfg):
            raise Avatar3DError(f"{saved}: the run was started with another config; drop --config to resume it, "
                                "or train into a new folder")  # fmt: skip
        return saved_cfg, load_state(ckpt)
    if ckpt.is_file():
        raise Avatar3DError(f"{out} already holds a training run: pass --resume to continue it, or choose a new folder")
    return config or TrainConfig(), None


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
    config, state = _prepare_run(out, config, resume)
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
    opt = _optimizer(model, config)
    torch_gen, np_gen = torch.Generator(device=dev).manual_seed(config.seed), np.random.default_rng(config.seed)
    step, elapsed, history = 0, 0.0, []
    if state is None:
        hull = carve_head_hull(model.grid, data.R, data.t, data.K, data.labels, data.train_ids,
                               neck_px=config.neck_band_px)
        model.set_hull(hull)
        if model.pose is not None:
            model.pose.set_gauge(data.train_ids)
        log(f"[train] head hull from the masks: {100 * float(hull.float().mean()):.1f}% of the head box")
    else:
        step = restore(state, model=model, optimizer=opt, torch_gen=torch_gen, np_gen=np_gen)
        elapsed, history = float(state.get("elapsed_s", 0.0)), list(state.get("history", []))
        log(f"[train] resumed at step {step} ({elapsed:.0f} s trained)")
    _load_kernels(dev, log)
    sampler = RaySampler(data, config)
    eval_ids = _eval_ids(data, config.eval_frames)
    writer = _tensorboard(out)
    last_stop = config.steps if stop_after_steps is None else min(config.steps, step + stop_after_steps)
    bar = _progress(progress, config.steps, step)

    def checkpoint() -> None:
        save_checkpoint(out / CHECKPOINT_NAME, model=model, optimizer=opt, step=step, torch_gen=torch_gen,
                        np_gen=np_gen, extra={"elapsed_s": elapsed, "history": history})  # fmt: skip

    def evaluate() -> dict[str, float]:
        model.eval()
        metrics, images = evaluate_frames(model, data, eval_ids)
        model.train()
        row = {"step": step, "elapsed_s": round(elapsed, 2), **{k: round(v, 4) for k, v in metrics.items()}}
        history.append(row)
        write_json_atomic(out / HISTORY_NAME, history)
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, step)
            grid = np.concatenate([np.concatenate([p, data.image(int(i))], 1) for p, i in zip(images, eval_ids)], 0)
            writer.add_image("val/pred_vs_truth", grid.clip(0, 1), step, dataformats="HWC")
        return metrics

    budget_hit = False
    while step < last_stop and not budget_hit:
        t0 = time.perf_counter()
        progress = step / max(config.steps - 1, 1)
        if config.time_budget_s > 0:  # a timed run decays on time, so it ends at the final rate too
            progress = max(progress, elapsed / config.time_budget_s)
        factor = config.lr_final_factor ** min(progress, 1.0)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor if step >= g.get("start", 0) else 0.0
        if step % config.grid_update_every == 0:
            f = int(np_gen.choice(data.train_ids))
            model.update_grid(torch.from_numpy(data.motion(np.array([f]))[0]).float().to(dev), step, torch_gen,
                              config.grid_warmup_steps, config.grid_threshold)  # fmt: skip
        batch, target = sampler.sample(model, np_gen)
        out_rays = model.render_rays(batch)
        terms = losses(out_rays, target, config)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        step += 1
        elapsed += time.perf_counter() - t0
        budget_hit = config.time_budget_s > 0 and elapsed >= config.time_budget_s
        if writer is not None and step % 25 == 0:
            for k, v in terms.items():
                writer.add_scalar(f"loss/{k}", float(v.detach()), step)
            writer.add_scalar("train/samples_per_ray", float(out_rays["n_samples"]) / config.rays_per_step, step)
            writer.add_scalar("train/occupancy", model.grid.occupancy_fraction(), step)
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(psnr=f"{-10 * math.log10(max(float(terms['photo'].detach()), 1e-10)):.1f}", refresh=False)
        if config.eval_every and step % config.eval_every == 0 and step < config.steps:
            evaluate()
        if step % config.checkpoint_every == 0 or step == last_stop or budget_hit:
            checkpoint()
    if bar is not None:
        bar.close()
    finished = step >= config.steps or budget_hit
    result: dict[str, Any] = {"step": step, "elapsed_s": round(elapsed, 1), "finished": finished}
    if finished:
        evaluate()  # the history's last point
        checkpoint()
        model.eval()
        final_ids = _eval_ids(data, config.final_eval_frames or len(data.val_ids) or len(data.train_ids))
        result["val"] = evaluate_frames(model, data, final_ids)[0]
        R, t = _training_poses(model, data)
        if config.held_out_pose_fit is not None and len(data.val_ids):
            log(f"[train] re-tracking the {len(data.val_ids)} held-out frames' head poses photometrically")
            R[data.val_ids], t[data.val_ids] = fit_poses(model, data, data.val_ids, config, config.held_out_pose_fit)
            result["val_tracked"] = result["val"]
            result["val"] = evaluate_frames(model, dataclasses.replace(data, R=R, t=t), final_ids)[0]
        model.train()
        result["val_frames"] = len(final_ids)
        save_avatar(out / AVATAR_NAME, model, data, config, poses=(R, t))
        val = result["val"]
        log(f"[train] {step} steps in {elapsed:.0f} s; held-out PSNR ({len(final_ids)} frames) full "
            f"{val['psnr_full']:.2f} / head {val['psnr_head']:.2f} / mouth {val['psnr_mouth']:.2f} dB"
            + (f" (re-tracked poses; landmark-tracked: head {result['val_tracked']['psnr_head']:.2f} dB)"
               if "val_tracked" in result else "") + f" -> {out / AVATAR_NAME}")
    if writer is not None:
        writer.close()
    return result


def _training_poses(model: AvatarModel, data: SubjectData) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the subject's poses with the training frames as the field saw them (learned corrections)."""
    R, t = data.R.copy(), data.t.copy()
    if model.pose is not None:
        ids = data.train_ids
        R[ids], t[ids] = (a[ids] for a in model.pose.corrected_poses(data.R, data.t))
    return R, t


def save_avatar(path: Path, model: AvatarModel, data: SubjectData, config: TrainConfig,
                poses: tuple[np.ndarray, np.ndarray] | None = None) -> None:  # fmt: skip
    """The inference bundle: weights, model config, camera, plate, the subject's poses and motion (for `render`).

    ``poses``: the refined poses (learned on training frames, re-tracked on held-out ones) saved as
    "R"/"t"; the landmark-tracked ones are kept as "R_tracked"/"t_tracked".
    """
    R, t = poses if poses is not None else _training_poses(model, data)
    bundle = {
        "format_version": FORMAT_VERSION, "avatar3d_version": __version__, "avatar_config": _plain(to_dict(config.avatar)),
        "motion_dim": model.motion_dim, "n_frames": data.n_frames, "model": model.state_dict(),
        "resolution": data.resolution, "K": data.K, "background": (data.background * 255).round().astype(np.uint8),
        "expression_names": list(data.expression_names), "R": R, "t": t, "R_tracked": data.R, "t_tracked": data.t,
        "fps": data.fps,
        "expression": data.expression, "blink": data.blink,
        "train_ids": data.train_ids, "val_ids": data.val_ids, "subject": str(data.root),
    }  # fmt: skip
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)


def load_avatar(path: str | Path) -> tuple[AvatarModel, dict[str, Any]]:
    """(model in eval mode, bundle metadata) from an avatar folder or its avatar.pt."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".pt":
        path = path / AVATAR_NAME
    bundle = load_state(path)
    cfg = from_dict(AvatarConfig, bundle["avatar_config"], source=str(path))
    model = AvatarModel(cfg, int(bundle["motion_dim"]), int(bundle["n_frames"]),
                        motion_regions=bundle["model"]["head.regions"].tolist())  # as trained
    model.load_state_dict(bundle.pop("model"))
    model.eval()
    return model, bundle


def use_refined_poses(data: SubjectData, bundle: dict[str, Any]) -> int:
    """Swaps the avatar's refined poses into ``data`` when it is the subject the avatar was trained on.

    The subject is recognised by its tracked poses (equal to the bundle's), not by its path, so a
    copied subject folder still matches and another subject never does.  Returns the number of
    frames whose pose changed (0: nothing swapped).
    """
    tracked = bundle.get("R_tracked")
    if tracked is None or np.shape(tracked) != data.R.shape or not np.allclose(tracked, data.R, atol=1e-9) \
            or not np.allclose(bundle["t_tracked"], data.t, atol=1e-12):
        return 0
    changed = int((np.abs(bundle["R"] - data.R).max(axis=(1, 2)) > 0).sum())
    data.R, data.t = np.asarray(bundle["R"], np.float64).copy(), np.asarray(bundle["t"], np.float64).copy()
    return changed


def require_motion(bundle: dict[str, Any]) -> None:
    """Avatars saved before the bundle carried the subject's tracked motion cannot be driven or exported."""
    if "expression" not in bundle or "blink" not in bundle:
        raise Avatar3DError(f"the avatar bundle of {bundle.get('subject', 'this avatar')} has no tracked expressions "
                            "(saved by an older avatar3d): retrain it with `avatar3d train`")  # fmt: skip


def _load_kernels(dev: torch.device, log: Callable[[str], None]) -> None:
    """Loads (on first use: compiles, ~1-2 min) the compiled kernels before the clock starts, so a timed run
    (``time_budget_s``, the demo's 2 minutes) trains for its whole budget on a fresh install."""
    from avatar3d.nerf.backend import load_extension, requested_backend
    from avatar3d.nerf.encoding import HASHGRID_SPEC
    from avatar3d.nerf.raymarch import RAYMARCH_SPEC

    if requested_backend() == "torch" or dev.type not in ("cpu", "cuda"):
        return
    kind = "cuda" if dev.type == "cuda" else "cpu"
    records = [load_extension(spec, kind) for spec in (HASHGRID_SPEC, RAYMARCH_SPEC)]  # type: ignore[arg-type]
    built = sum(r.seconds for r in records if r.source == "jit")
    if built:
        log(f"[train] compiled the {kind} kernels in {built:.0f} s (first use; not counted as training time)")


def _tensorboard(out: Path):  # type: ignore[no-untyped-def]
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))


def _progress(enabled: bool, total: int, initial: int):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
