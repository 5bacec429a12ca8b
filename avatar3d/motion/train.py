"""Pretraining of the motion model: one process, or many under ``torchrun`` (PyTorch DDP).

Why this shape: Adam on random crops (L1 on the weights + L1 on their frame
to frame change, so the mouth neither lags nor jitters), a warm-up then
cosine learning-rate decay computed from the step number alone, and every
piece of state a resumed run needs (weights, Adam moments, both random
generators, the step) saved atomically in the model file itself.  A killed
run restarted with the same arguments continues from the last checkpoint
and ends bit-identical to an uninterrupted one.

Corpora: a synthetic corpus (:mod:`avatar3d.motion.corpus`, targets from the
viseme rules) or a folder of prepared subjects (:mod:`avatar3d.motion.subject_corpus`,
targets = the tracked mouth blendshapes, each subject's val split held out).

Front-end: the weight-free log-mel, or (``speech_encoder=DIR``) a local
wav2vec 2.0 / HuBERT checkpoint whose hidden states replace the log-mel rows;
their streams are computed once and cached in ``CORPUS/encoder_cache/<key>/``
(by rank 0 under torchrun), and the model file records the encoder's fingerprint.

Distributed (``torchrun --nproc_per_node=N -m avatar3d.cli motion pretrain ...``):
every rank draws the same global batch plan from the shared sampler generator
and materialises only its own crops (``rank::world_size``), so N processes see
exactly the crops one process would; DDP all-reduces (averages) the gradients,
so the replicas stay bit-identical; only rank 0 writes checkpoints.  Each
rank's dropout generator is gathered into the checkpoint, so a resumed
distributed run is as exact as a resumed single one (same world size).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from avatar3d.audio.speech_encoder import SpeechEncoder, load_speech_encoder
from avatar3d.errors import Avatar3DError
from avatar3d.motion import distributed as dd
from avatar3d.motion.corpus import corpus_fps, encoder_cache_dir, encoder_streams, load_split, read_index
from avatar3d.motion.model import (MotionModel, MotionModelConfig, Normalisation, fit_normalisation, gather_windows,
                                   read_blob, scalar_features)
from avatar3d.motion.subject_corpus import load_subject_corpus


@dataclass(frozen=True)
class MotionTrainConfig:
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


def learning_rate(step: int, steps: int, cfg: MotionTrainConfig) -> float:
    """Warm-up then cosine decay, a pure function of the step (so a resumed run matches)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class PretrainConfig:
    """Everything ``avatar3d motion pretrain --config YAML`` may set."""

    model: MotionModelConfig = field(default_factory=MotionModelConfig)
    """Architecture."""
    train: MotionTrainConfig = field(default_factory=MotionTrainConfig)
    """Optimisation (``batch`` is the global batch, split over the ranks)."""
    steps: int = 3000
    """Optimiser steps."""
    seed: int = 0
    """Seed of the initial weights, the crop plan and dropout."""


class CropSampler:
    """Random training crops with exactly the context the network needs; all randomness from ``gen``.

    ``rank`` / ``world`` select this process's share of each batch: the plan
    (which utterance, where) is drawn for the whole global batch from ``gen`` on
    every rank, and only crops ``rank, rank + world, ...`` are built.  An
    utterance may carry a ``valid`` [n] mask (frames without a tracked face); it
    zeroes those frames' loss.
    """

    def __init__(self, model: MotionModel, utterances: list[dict[str, np.ndarray]], cfg: MotionTrainConfig,
                 gen: torch.Generator, rank: int = 0, world: int = 1):
        if not utterances:
            raise Avatar3DError("no training utterances: the corpus' train split is empty")
        if not 0 <= rank < world or cfg.batch < world:
            raise Avatar3DError(f"batch {cfg.batch} must be at least the number of processes ({world})")
        self.model, self.cfg, self.gen, self.rank, self.world = model, cfg, gen, rank, world
        self.past, self.ahead = model.net.past, model.config.lookahead_frames
        self.items = []
        norm = model.norm
        widths = {int(np.shape(u["log_mel"])[-1]) for u in utterances}
        if widths != {model.slot_width}:
            raise Avatar3DError(f"utterance features are {sorted(widths)} wide but the model's front-end "
                                f"({model.frontend_name()}) gives {model.slot_width}: compute them with that front-end")
        for u in utterances:  # normalised once; windows are gathered per crop (all windows would be ~16x larger)
            mel = ((u["log_mel"].astype(np.float32) - norm.mel_mean) / norm.mel_std).astype(np.float32)
            scal = scalar_features(u["energy_db"], u["f0_hz"], u["voiced_fraction"], norm)
            valid = np.asarray(u["valid"], bool) if "valid" in u else None
            self.items.append((mel, scal, u["targets"].astype(np.float32), valid))
        lengths = torch.tensor([len(it[2]) for it in self.items], dtype=torch.float64)
        self.weights = lengths / lengths.sum()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mel [B, past + L + ahead, C, M], scalars, targets [B, L, 16], mask [B, L])."""
        L = self.cfg.crop_frames
        picks = torch.multinomial(self.weights, self.cfg.batch, replacement=True, generator=self.gen).tolist()
        u01 = torch.rand(self.cfg.batch, generator=self.gen, dtype=torch.float64).tolist()
        mels, scals, tgts, masks = [], [], [], []
        for i, r in list(zip(picks, u01))[self.rank::self.world]:
            mel, scal, tgt, valid = self.items[i]
            n = len(tgt)
            start = int(r * (max(0, n - L) + 1))
            frames = np.arange(start - self.past, start + L + self.ahead)
            clamped = np.clip(frames, 0, n - 1)  # replicate the first/last frame, as predict() does at the ends
            mels.append(gather_windows(mel, clamped, self.model.config.fps, self.model.audio, self.model.window_floor))
            scals.append(scal[clamped])
            out = np.arange(start, start + L)
            tgts.append(tgt[np.clip(out, 0, n - 1)])
            masks.append((out < n) & valid[np.clip(out, 0, n - 1)] if valid is not None else out < n)
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


def load_training_corpus(corpus_dir: str | Path, fps: float, speech_encoder: Any = None, *, progress: bool = False
                         ) -> tuple[list[dict[str, np.ndarray]], dict, str]:
    """(train utterances, corpus signature, kind) of a synthetic corpus or a folder of prepared subjects.

    With ``speech_encoder`` (a loaded SpeechEncoder) each utterance's ``log_mel``
    is its encoder stream, cached under ``corpus_dir/encoder_cache/<key>/``.
    """
    root = Path(corpus_dir)
    if (root / "index.json").is_file():
        cfps = corpus_fps(root)
        if abs(cfps - fps) > 1e-9:
            raise Avatar3DError(f"{root}: corpus is at {cfps:g} fps but the model config says {fps:g} fps")
        train = load_split(root, "train")
        if speech_encoder is not None:
            for u, stream in zip(train, encoder_streams(root, "train", speech_encoder, progress=progress)):
                u["log_mel"] = stream
        return train, _corpus_signature(root), "synthetic"
    if not root.is_dir():
        raise Avatar3DError(f"{root}: corpus folder not found; pass a synthetic corpus (index.json) or a folder "
                            "of `avatar3d prep` subject folders")

    cache = encoder_cache_dir(root, speech_encoder) if speech_encoder is not None else None
    train, _val, signature = load_subject_corpus(root, fps, speech_encoder=speech_encoder, cache_dir=cache)
    return train, signature, "subjects"


def resolve_speech_encoder(speech_encoder: Any, layer: int = -1) -> Any:
    """A loaded SpeechEncoder from a folder (with ``layer``) or one already loaded; None stays None."""
    if speech_encoder is None:
        return None

    return speech_encoder if isinstance(speech_encoder, SpeechEncoder) else load_speech_encoder(speech_encoder, layer)


def pretrain(corpus_dir: str | Path, out_path: str | Path, config: MotionModelConfig | None = None,
             steps: int = 3000, seed: int = 0, *, train: MotionTrainConfig | None = None, progress: bool = True,
             resume: bool = True, callback: Callable[[int, float], None] | None = None,
             dist: dd.DistContext | None = None, speech_encoder: Any = None, encoder_layer: int = -1) -> MotionModel:
    """Train a motion model on ``corpus_dir``'s training split; checkpoints go to ``out_path``.

    If ``out_path`` holds a checkpoint of the same corpus, config, seed and
    step budget (and ``resume``), training continues from it.  ``callback(step,
    loss)`` runs after every step with the batch L1 averaged over all ranks
    (tests use it to kill a run midway).  ``dist`` defaults to the initialised
    process group, if any (see :mod:`avatar3d.motion.distributed`); only rank 0
    writes ``out_path``, and every rank returns once it is written.
    ``speech_encoder``: a local encoder folder (hidden state ``encoder_layer``)
    or a loaded SpeechEncoder, to train on its stream instead of the log-mel.
    Returns the trained model (also saved at ``out_path``).
    """
    config = config or MotionModelConfig()
    train = train or MotionTrainConfig()
    ctx = dist or dd.current()
    if int(steps) < 1:
        raise Avatar3DError(f"steps={steps} must be at least 1")
    if train.batch < 1 or train.crop_frames < 2 or train.checkpoint_every < 1:
        raise Avatar3DError("training needs batch >= 1, crop_frames >= 2 and checkpoint_every >= 1")
    if train.batch < ctx.world_size:
        raise Avatar3DError(f"batch {train.batch} is smaller than the {ctx.world_size} processes: raise "
                            "train.batch (it is the global batch) or start fewer processes")
    encoder = resolve_speech_encoder(speech_encoder, encoder_layer)
    fill_cache_first = encoder is not None and ctx.is_distributed
    if fill_cache_first and not ctx.is_main:
        dd.barrier(ctx)  # rank 0 computes and caches the encoder streams; the others then read them
    utterances, corpus_sig, kind = load_training_corpus(corpus_dir, config.fps, encoder,
                                                        progress=progress and ctx.is_main)
    if fill_cache_first and ctx.is_main:
        dd.barrier(ctx)
    signature = {"corpus": corpus_sig, "config": asdict(config), "train": asdict(train),
                 "seed": int(seed), "steps": int(steps)}
    if ctx.is_distributed:
        signature["world_size"] = ctx.world_size  # the crop split and dropout streams depend on it
    if encoder is not None:  # weight-free runs keep their old signature (their checkpoints still resume)
        signature["frontend"] = dict(encoder.fingerprint)
    signature = _plain(signature)
    state = _resumable(out_path, signature) if resume else None

    torch.manual_seed(int(seed))
    norm = Normalisation.from_dict(state["norm"]) if state else fit_normalisation(utterances)
    model = MotionModel(config, norm, info={"corpus": str(corpus_dir), "corpus_kind": kind, "steps": int(steps),
                                            "seed": int(seed), "world_size": ctx.world_size},
                        speech_encoder=encoder)
    if encoder is not None:
        model.info["speech_encoder"] = str(encoder.folder)
    if ctx.rank > 0:  # rank 0 keeps the single-process stream; the others get their own dropout masks
        torch.manual_seed(int(seed) * 1_000_003 + ctx.rank)
    opt = torch.optim.Adam(model.net.parameters(), lr=train.lr)
    gen = torch.Generator().manual_seed(int(seed))
    step = 0
    if state:
        model.net.load_state_dict(state["weights"])
        opt.load_state_dict(state["training"]["optimizer"])
        gen.set_state(state["training"]["sampler_rng"])
        ranks = state["training"].get("torch_rng_ranks")
        torch.set_rng_state(ranks[ctx.rank] if ctx.is_distributed else state["training"]["torch_rng"])
        step = int(state["training"]["step"])
    sampler = CropSampler(model, utterances, train, gen, ctx.rank, ctx.world_size)
    device = torch.device(ctx.device)
    model.net.to(device)
    net: torch.nn.Module = model.net
    if ctx.is_distributed:
        net = DistributedDataParallel(model.net, device_ids=[device.index] if device.type == "cuda" else None)
    model.net.train()
    bar = tqdm(total=int(steps), initial=step, disable=not (progress and ctx.is_main), desc="motion pretrain",
               unit="step")
    started, running = time.perf_counter(), None
    try:
        while step < int(steps):
            mel, scal, tgt, mask = (x.to(device) for x in sampler.batch())
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, int(steps), train)
            pred = net(mel, scal)
            loss, l1 = motion_loss(pred, tgt, mask, train.velocity_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks here
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), train.grad_clip)
            opt.step()
            step += 1
            l1v = dd.all_mean(float(l1.detach()), ctx)
            running = l1v if running is None else 0.98 * running + 0.02 * l1v
            bar.update(1)
            bar.set_postfix(l1=f"{running:.4f}")
            if step % train.checkpoint_every == 0 or step == int(steps):
                model.info.update({"train_l1": running, "trained_steps": step,
                                   "train_seconds": round(time.perf_counter() - started, 1)})
                _checkpoint(model, out_path, opt, gen, step, signature, ctx)
            if callback is not None:
                callback(step, l1v)
    finally:
        bar.close()
    dd.barrier(ctx)  # every rank returns only once rank 0 has written the model
    model.net.to("cpu")
    model.net.eval()
    return model


def _checkpoint(model: MotionModel, out_path: str | Path, opt: torch.optim.Optimizer, gen: torch.Generator,
                step: int, signature: dict, ctx: dd.DistContext | None = None) -> None:
    """Rank 0 writes weights + optimizer + every rank's generators atomically (a collective call)."""
    ctx = ctx or dd.DistContext()
    rng_ranks = dd.gather(torch.get_rng_state(), ctx)
    digests = dd.gather(dd.parameter_digest(model.net), ctx)
    if not ctx.is_main:
        return
    model.info["rank_parameter_sha256"] = digests  # equal on all ranks, or DDP went out of sync
    training = {"step": step, "optimizer": opt.state_dict(), "sampler_rng": gen.get_state(),
                "torch_rng": rng_ranks[0], "signature": signature}
    if ctx.is_distributed:
        training["torch_rng_ranks"] = rng_ranks
    model.save(out_path, extra={"training": training})


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


__all__ = ["MotionTrainConfig", "PretrainConfig", "pretrain", "load_training_corpus", "learning_rate", "motion_loss",
           "CropSampler", "evaluate", "resolve_speech_encoder"]
