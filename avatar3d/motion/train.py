"""Single-process pretraining of the motion model on a corpus from :mod:`avatar3d.motion.corpus`.

Why this shape: Adam on random crops (L1 on the weights + L1 on their frame
to frame change, so the mouth neither lags nor jitters), a warm-up then
cosine learning-rate decay computed from the step number alone, and every
piece of state a resumed run needs (weights, Adam moments, both random
generators, the step) saved atomically in the model file itself.  A killed
run restarted with the same arguments continues from the last checkpoint
and ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from avatar3d.errors import Avatar3DError
from avatar3d.motion.corpus import corpus_fps, load_split, read_index
from avatar3d.motion.model import (
    MotionModel, MotionModelConfig, Normalisation, fit_normalisation, gather_windows, read_blob, scalar_features,
)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (saved with the training state)."""

    batch: int = 32
    """Crops per step."""
    crop_frames: int = 64
    """Output frames per crop (2.56 s at 25 fps); the needed past/future context is added."""
    lr: float = 2e-3
    """Peak Adam learning rate."""
    warmup_steps: int = 100
    """Linear warm-up length."""
    final_lr_fraction: float = 0.05
    """Cosine decay ends at this fraction of ``lr``."""
    velocity_weight: float = 0.5
    """Weight of the L1 loss on frame-to-frame differences."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    checkpoint_every: int = 200
    """Steps between atomic checkpoints (and one at the end)."""


def learning_rate(step: int, steps: int, cfg: TrainConfig) -> float:
    """Warm-up then cosine decay, a pure function of the step (so a resumed run matches)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class CropSampler:
    """Random training crops with exactly the context the network needs; all randomness from ``gen``."""

    def __init__(self, model: MotionModel, utterances: list[dict[str, np.ndarray]], cfg: TrainConfig,
                 gen: torch.Generator):
        self.model, self.cfg, self.gen = model, cfg, gen
        self.past, self.ahead = model.net.past, model.config.lookahead_frames
        self.items = []
        norm = model.norm
        for u in utterances:  # normalised once; windows are gathered per crop (all windows would be ~16x larger)
            mel = ((u["log_mel"].astype(np.float32) - norm.mel_mean) / norm.mel_std).astype(np.float32)
            scal = scalar_features(u["energy_db"], u["f0_hz"], u["voiced_fraction"], norm)
            self.items.append((mel, scal, u["targets"].astype(np.float32)))
        lengths = torch.tensor([len(t) for _, _, t in self.items], dtype=torch.float64)
        self.weights = lengths / lengths.sum()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mel [B, past + L + ahead, C, M], scalars, targets [B, L, 16], mask [B, L])."""
        L = self.cfg.crop_frames
        picks = torch.multinomial(self.weights, self.cfg.batch, replacement=True, generator=self.gen).tolist()
        u01 = torch.rand(self.cfg.batch, generator=self.gen, dtype=torch.float64).tolist()
        mels, scals, tgts, masks = [], [], [], []
        for i, r in zip(picks, u01):
            mel, scal, tgt = self.items[i]
            n = len(tgt)
            start = int(r * (max(0, n - L) + 1))
            frames = np.arange(start - self.past, start + L + self.ahead)
            clamped = np.clip(frames, 0, n - 1)  # replicate the first/last frame, as predict() does at the ends
            mels.append(gather_windows(mel, clamped, self.model.config.fps, self.model.audio, self.model._floor))
            scals.append(scal[clamped])
            out = np.arange(start, start + L)
            tgts.append(tgt[np.clip(out, 0, n - 1)])
            masks.append(out < n)
        return (torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(scals)),
                torch.from_numpy(np.stack(tgts)), torch.from_numpy(np.stack(masks)).float())


def motion_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, velocity_weight: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, plain L1): masked L1 on weights + ``velocity_weight`` x L1 on their frame differences."""
    m = mask[..., None]
    l1 = ((pred - target).abs() * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)
    mv = m[:, 1:] * m[:, :-1]
    dv = (pred.diff(dim=1) - target.diff(dim=1)).abs()
    vel = (dv * mv).sum() / (mv.sum() * pred.shape[-1]).clamp_min(1.0)
    return l1 + velocity_weight * vel, l1


def _corpus_signature(corpus_dir: str | Path) -> dict:
    index = read_index(corpus_dir)
    return {"config": index["config"], "frames": index["frames"]}


def pretrain(corpus_dir: str | Path, out_path: str | Path, config: MotionModelConfig | None = None,
             steps: int = 3000, seed: int = 0, *, train: TrainConfig | None = None, progress: bool = True,
             resume: bool = True, callback: Callable[[int, float], None] | None = None) -> MotionModel:
    """Train a motion model on ``corpus_dir``'s training split; checkpoints go to ``out_path``.

    If ``out_path`` holds a checkpoint of the same corpus, config, seed and
    step budget (and ``resume``), training continues from it.  ``callback(step,
    loss)`` runs after every step (tests use it to kill a run midway).
    Returns the trained model (also saved at ``out_path``).
    """
    config = config or MotionModelConfig()
    train = train or TrainConfig()
    if int(steps) < 1:
        raise Avatar3DError(f"steps={steps} must be at least 1")
    if train.batch < 1 or train.crop_frames < 2 or train.checkpoint_every < 1:
        raise Avatar3DError("training needs batch >= 1, crop_frames >= 2 and checkpoint_every >= 1")
    fps = corpus_fps(corpus_dir)
    if abs(fps - config.fps) > 1e-9:
        raise Avatar3DError(f"{corpus_dir}: corpus is at {fps:g} fps but the model config says {config.fps:g} fps")
    signature = {"corpus": _corpus_signature(corpus_dir), "config": asdict(config), "train": asdict(train),
                 "seed": int(seed), "steps": int(steps)}
    signature = _plain(signature)
    utterances = load_split(corpus_dir, "train")
    state = _resumable(out_path, signature) if resume else None

    torch.manual_seed(int(seed))
    norm = Normalisation.from_dict(state["norm"]) if state else fit_normalisation(utterances)
    model = MotionModel(config, norm, info={"corpus": str(corpus_dir), "steps": int(steps), "seed": int(seed)})
    opt = torch.optim.Adam(model.net.parameters(), lr=train.lr)
    gen = torch.Generator().manual_seed(int(seed))
    step = 0
    if state:
        model.net.load_state_dict(state["weights"])
        opt.load_state_dict(state["training"]["optimizer"])
        gen.set_state(state["training"]["sampler_rng"])
        torch.set_rng_state(state["training"]["torch_rng"])
        step = int(state["training"]["step"])
    sampler = CropSampler(model, utterances, train, gen)
    model.net.train()
    bar = tqdm(total=int(steps), initial=step, disable=not progress, desc="motion pretrain", unit="step")
    started, running = time.perf_counter(), None
    try:
        while step < int(steps):
            mel, scal, tgt, mask = sampler.batch()
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, int(steps), train)
            pred = model.net(mel, scal)
            loss, l1 = motion_loss(pred, tgt, mask, train.velocity_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), train.grad_clip)
            opt.step()
            step += 1
            l1v = float(l1.detach())
            running = l1v if running is None else 0.98 * running + 0.02 * l1v
            bar.update(1)
            bar.set_postfix(l1=f"{running:.4f}")
            if step % train.checkpoint_every == 0 or step == int(steps):
                model.info.update({"train_l1": running, "trained_steps": step,
                                   "train_seconds": round(time.perf_counter() - started, 1)})
                _checkpoint(model, out_path, opt, gen, step, signature)
            if callback is not None:
                callback(step, l1v)
    finally:
        bar.close()
    model.net.eval()
    return model


def _checkpoint(model: MotionModel, out_path: str | Path, opt: torch.optim.Optimizer, gen: torch.Generator,
                step: int, signature: dict) -> None:
    model.save(out_path, extra={"training": {
        "step": step, "optimizer": opt.state_dict(), "sampler_rng": gen.get_state(),
        "torch_rng": torch.get_rng_state(), "signature": signature}})


def _resumable(out_path: str | Path, signature: dict) -> dict | None:
    """The checkpoint at ``out_path`` if it belongs to this very run, else None (it is then overwritten)."""
    if not Path(out_path).is_file():
        return None
    try:
        blob = read_blob(out_path)
    except Avatar3DError:
        return None
    training = blob.get("training")
    if not training or training.get("signature") != signature:
        return None
    return blob


def _plain(obj):
    """Tuples -> lists throughout, so a signature compares equal after a save/load round trip."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def evaluate(model: MotionModel, utterances: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Predicted weights [sum n_frames, 16] for corpus utterances (same inputs as ``predict``)."""
    k = model.config.lookahead_frames
    out = []
    for u in utterances:
        n = len(u["targets"])
        # features past the end: repeat the last (silent) frame, as a clip's trailing silence would read
        frames = np.minimum(np.arange(n + k), n - 1)
        mel, scal = model.inputs(u["log_mel"], u["energy_db"], u["f0_hz"], u["voiced_fraction"], frames)
        model.net.eval()
        with torch.inference_mode():
            out.append(model.net(torch.from_numpy(mel)[None], torch.from_numpy(scal)[None], pad=True)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.names)), np.float32)


__all__ = ["TrainConfig", "pretrain", "learning_rate", "motion_loss", "CropSampler", "evaluate"]
