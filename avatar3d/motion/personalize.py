"""Personalisation: fine-tune a motion model on one subject's own speech and tracked mouth.

Why: the generic model predicts the viseme rule book's mouth; the renderer
feeds the avatar the *subject's* tracked coefficients, whose scale differs
(resting smile, jaw range, asymmetry).  A personalised model learns the
subject's mapping from ~1 minute of their own speech.

How, and why each step:

1. The subject's train split is cut once more: the last ``holdout_fraction``
   is a train-internal holdout (contiguous, so neighbouring frames do not leak),
   used only to pick the stopping step -- the val split stays untouched.
2. Fine-tune every weight of the base model (L1 + velocity, as pretraining)
   with early stopping on the holdout; the best evaluated step is kept.  (Tried
   and dropped: folding a per-channel logit calibration into the output layer
   first -- on the 60 s bench subject fine-tuning from it never beat step 0,
   while plain fine-tuning did.)
3. Report mean L1 of the 16 mouth coefficients on the val split for the base
   model, base + per-channel affine fit on train, the personalised model, and
   two baselines (train mean; per-channel linear fit on audio energy), and keep
   the table in the model file's ``info["personalization"]``.

The output loads with :func:`avatar3d.motion.model.load` and ``predict()``
returns curves in the subject's tracked coefficient scale.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from avatar3d.errors import Avatar3DError
from avatar3d.motion.model import MotionModel, load, load_default
from avatar3d.motion.subject_corpus import SubjectSpeech, load_subject_speech
from avatar3d.motion.train import CropSampler, MotionTrainConfig, evaluate, motion_loss

METHODS = ("base", "base_affine", "personalized", "train_mean", "energy_linear")
"""Rows of the report, in print order."""


@dataclass(frozen=True)
class PersonalizeConfig:
    """Fine-tuning settings (defaults sized for 15-120 s of a subject's speech)."""

    steps: int = 400
    """Most optimiser steps; early stopping usually ends sooner."""
    lr: float = 1e-3
    """Adam learning rate after warm-up."""
    warmup_steps: int = 20
    """Linear warm-up."""
    batch: int = 16
    """Crops per step."""
    crop_frames: int = 64
    """Output frames per crop (2.56 s at 25 fps)."""
    velocity_weight: float = 0.5
    """Weight of the L1 on frame-to-frame differences."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    holdout_fraction: float = 0.15
    """Last part of the train split used only to choose the stopping step."""
    eval_every: int = 25
    """Steps between holdout evaluations."""
    patience: int = 4
    """Evaluations without improvement before stopping."""
    seed: int = 0
    """Seed of the crops and dropout."""
    calibrate: bool = True
    """Before fine-tuning, rescale each output channel of the base model to the subject's tracked range (a
    per-channel affine map in logit space, fitted on the training rows and folded into the output layer), so the
    fine-tune starts in the subject's scale: a channel the tracker holds nearly still starts nearly still."""

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.crop_frames < 2 or self.eval_every < 1 or self.patience < 1:
            raise Avatar3DError("personalize needs steps >= 0, batch >= 1, crop_frames >= 2, eval_every >= 1 and "
                                "patience >= 1")
        if not 0.0 < self.holdout_fraction < 0.9:
            raise Avatar3DError(f"holdout_fraction={self.holdout_fraction} must be in (0, 0.9)")
        if not self.lr > 0:
            raise Avatar3DError(f"lr={self.lr} must be positive")


def _l1(pred: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> float:
    return float(np.abs(pred[rows] - truth[rows]).mean())


def _affine_coefficients(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[K, 2]: least-squares ``y[:, k] = a_k + b_k * x[:, k or 0]`` on ``rows`` (x [n, K] or [n] / [n, 1])."""
    x = x if x.ndim == 2 else x[:, None]
    coef = []
    for k in range(y.shape[1]):
        xk = x[:, k if x.shape[1] > 1 else 0].astype(np.float64)
        design = np.stack([np.ones_like(xk), xk], axis=1)
        c, *_ = np.linalg.lstsq(design[rows], y[rows, k].astype(np.float64), rcond=None)
        coef.append(c)
    return np.asarray(coef)


def _linear_fit(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`_affine_coefficients` as a predictor; applied result clipped to [0, 1]."""
    coef_a = _affine_coefficients(x, y, rows)  # [16, 2]

    def apply(xn: np.ndarray) -> np.ndarray:
        xn = xn if xn.ndim == 2 else xn[:, None]
        xs = xn if xn.shape[1] > 1 else np.repeat(xn, len(coef_a), axis=1)
        return np.clip(coef_a[:, 0] + coef_a[:, 1] * xs, 0.0, 1.0).astype(np.float32)

    return apply


def personalize(subject_dir: str | Path, out_path: str | Path, base: str | Path | MotionModel | None = None,
                config: PersonalizeConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``base`` (default: the shipped model) on a prepared subject; save to ``out_path``.

    Returns the report (also stored as ``info["personalization"]`` in the saved model).
    """
    if isinstance(base, MotionModel):
        base_model, base_name = base, str(base.info.get("name", "given model"))
    elif base is None:
        base_model, base_name = load_default(), "default"
    else:
        base_model, base_name = load(base), str(base)
    speech = load_subject_speech(subject_dir, base_model.config.fps, base_model.audio,
                                 speech_encoder=base_model.speech_encoder)
    model, report = personalize_speech(speech, base_model, base_name, config, progress=progress)
    model.save(out_path)
    return report


def personalize_speech(speech: SubjectSpeech, base_model: MotionModel, base_name: str = "given model",
                       config: PersonalizeConfig | None = None, *, progress: bool = True
                       ) -> tuple[MotionModel, dict[str, Any]]:
    """The personalised copy of ``base_model`` and its report, from one speaker's speech + mouth curves.

    Why separate from :func:`personalize`: the motion benchmark personalises on held-out corpus voices whose
    true curves are known, without writing a prepared subject folder first.
    """
    cfg = config or PersonalizeConfig()
    started = time.perf_counter()
    lo, hi = speech.train
    cut = hi - int(round(cfg.holdout_fraction * (hi - lo)))
    frames = np.arange(speech.n_frames)
    inner_rows = frames[lo:cut][speech.valid[lo:cut]]
    hold_rows = frames[cut:hi][speech.valid[cut:hi]]
    train_rows = frames[lo:hi][speech.valid[lo:hi]]
    val_rows = frames[speech.val[0]:speech.val[1]][speech.valid[speech.val[0]:speech.val[1]]]
    if len(val_rows) < 1:
        raise Avatar3DError(f"{speech.root}: the val split has no frames with a tracked face; nothing to evaluate on")
    if len(inner_rows) < 2 * cfg.crop_frames // 4 or len(hold_rows) < 5:
        raise Avatar3DError(f"{speech.root}: {len(train_rows)} train frames are too few to personalise "
                            f"(need about {cfg.crop_frames} or more); prepare a longer clip")
    full = speech.utterance()
    y = speech.targets

    base_pred = evaluate(base_model, [full])
    affine = _linear_fit(base_pred, y, train_rows)
    energy = _linear_fit(full["energy_db"].astype(np.float64), y, train_rows)
    preds = {"base": base_pred, "base_affine": affine(base_pred),
             "train_mean": np.broadcast_to(y[train_rows].mean(0), y.shape),
             "energy_linear": energy(full["energy_db"].astype(np.float64))}

    model = MotionModel.from_state(copy.deepcopy(base_model.state()), base_model.speech_encoder)
    if cfg.calibrate:
        calibrate_output(model, base_pred, y, inner_rows)
    history = _finetune(model, speech, (lo, cut), hold_rows, cfg, progress)
    preds["personalized"] = evaluate(model, [full])

    table = {m: {"val_l1": _l1(preds[m], y, val_rows), "holdout_l1": _l1(preds[m], y, hold_rows)} for m in METHODS}
    report = {
        "subject": str(speech.root), "base": base_name, "fps": speech.fps, "signature": dict(speech.signature),
        "frames": {"train": int(len(inner_rows)), "holdout": int(len(hold_rows)), "val": int(len(val_rows))},
        "val_seconds": round(len(val_rows) / speech.fps, 2), "table": table,
        "best_step": history["best_step"], "steps_run": history["steps_run"], "history": history["evals"],
        "config": asdict(cfg), "seconds": round(time.perf_counter() - started, 1),
        "scale": "tracked coefficients of this subject (tracking.npz expression)",
    }
    model.info = {**{k: v for k, v in base_model.info.items() if k != "personalization"}, "base": base_name,
                  "personalization": report}
    return model, report


def _logit(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def calibrate_output(model: MotionModel, pred: np.ndarray, target: np.ndarray, rows: np.ndarray) -> None:
    """Folds ``logit(target[:, k]) ~ a_k + b_k logit(pred[:, k])`` into the output layer, matching mean and spread.

    The network's output is sigmoid(head(h)), so scaling head's row k by b_k and shifting its bias by a_k maps
    every prediction exactly as fitted; b_k is kept in [0, 2] (no sign flips, no blow-up on a flat channel).
    Why the spread (b_k = std(target) / std(pred) on ``rows``) and not least squares: least squares scales a
    prediction by its correlation with the target, and on a few seconds of a real person's speech that
    correlation is weak, so the mouth shrank towards its mean (a 5 s real clip: jaw spread 0.27x the
    subject's, new-speech mouth opening 0.17-0.21x; with the spread matched 0.98x, and a lower held-out L1).
    """
    z, u = _logit(pred, 1e-4), _logit(target, 5e-3)
    slopes = np.clip(u[rows].std(0) / np.maximum(z[rows].std(0), 1e-6), 0.0, 2.0)
    offsets = u[rows].mean(0) - slopes * z[rows].mean(0)
    head = model.net.head
    with torch.no_grad():
        for k, (a, b) in enumerate(zip(offsets.tolist(), slopes.tolist())):
            head.weight[k].mul_(b)
            head.bias[k] = b * head.bias[k] + a


def _finetune(model: MotionModel, speech: SubjectSpeech, inner: tuple[int, int], hold_rows: np.ndarray,
              cfg: PersonalizeConfig, progress: bool) -> dict[str, Any]:
    """Adam fine-tuning with early stopping on the holdout rows; leaves ``model`` at its best evaluated step."""
    full = speech.utterance()
    y = speech.targets

    def holdout_l1() -> float:
        return _l1(evaluate(model, [full]), y, hold_rows)

    best, best_step = holdout_l1(), 0
    best_state = copy.deepcopy(model.net.state_dict())
    evals = [{"step": 0, "holdout_l1": round(best, 5)}]
    if cfg.steps == 0:
        return {"best_step": 0, "steps_run": 0, "evals": evals}
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tcfg = MotionTrainConfig(batch=cfg.batch, crop_frames=cfg.crop_frames, lr=cfg.lr,
                             velocity_weight=cfg.velocity_weight, grad_clip=cfg.grad_clip)
    sampler = CropSampler(model, [speech.utterance(*inner)], tcfg, gen)
    opt = torch.optim.Adam(model.net.parameters(), lr=cfg.lr)
    stale, step = 0, 0
    bar = tqdm(total=cfg.steps, disable=not progress, desc="personalize", unit="step")
    try:
        while step < cfg.steps and stale < cfg.patience:
            model.net.train()
            mel, scal, tgt, mask = sampler.batch()
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            loss, _ = motion_loss(model.net(mel, scal), tgt, mask, cfg.velocity_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            bar.update(1)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                score = holdout_l1()
                evals.append({"step": step, "holdout_l1": round(score, 5)})
                if score < best:
                    best, best_step, stale = score, step, 0
                    best_state = copy.deepcopy(model.net.state_dict())
                else:
                    stale += 1
                bar.set_postfix(holdout_l1=f"{score:.4f}", best=f"{best:.4f}@{best_step}")
    finally:
        bar.close()
    model.net.load_state_dict(best_state)
    model.net.eval()
    return {"best_step": best_step, "steps_run": step, "evals": evals}


def format_table(report: dict[str, Any]) -> str:
    """The report's L1 table as aligned text (val first: it is the number that matters)."""
    names = {"base": "base model as is", "base_affine": "base + per-channel affine", "personalized": "personalised",
             "train_mean": "predict the train mean", "energy_linear": "audio energy, linear"}
    f = report["frames"]
    lines = [f"mean L1 of the 16 mouth coefficients ({f['val']} val frames = {report['val_seconds']} s; "
             f"{f['holdout']} holdout frames; trained on {f['train']})",
             f"{'method':<28}{'val L1':>9}{'holdout L1':>12}"]
    for m in METHODS:
        r = report["table"][m]
        lines.append(f"{names[m]:<28}{r['val_l1']:>9.4f}{r['holdout_l1']:>12.4f}")
    lines.append(f"best step {report['best_step']} of {report['steps_run']} run (early stopping on the holdout)")
    return "\n".join(lines)


__all__ = ["PersonalizeConfig", "personalize", "format_table", "METHODS"]
