"""Benchmark: speech -> mouth motion on held-out synthetic voices, against two baselines.

Builds (or reuses) a synthetic corpus, trains a small model for ``--steps``
steps (single process), then on the held-out-voice test split reports:

* mean L1 error of the 16 mouth blendshape weights;
* mean mouth-landmark distance (LMD, pixels): the face model's lip landmarks
  (``avatar3d.synth.regions`` LIP_* lists) posed with predicted vs true
  weights, projected by a frontal pinhole camera (f = 614 px, head origin
  0.57 m in front of the camera, 512 x 512 image);

for the trained model, "predict the training mean", and "energy only" (a least-
squares linear map from the frame's energy in dB to each weight, clipped to
[0, 1]).  Also inference speed (x real time, features + network, on 60 s of
speech) and the look-ahead.  Prints a table, then one JSON line.

Also the model behind the opt-in voice-activity gate (``model_gated``: the
gate of avatar3d.motion.streaming from the corpus' per-frame voiced fraction;
the corpus has no DC offset, so the stream's AC-level check changes nothing
there), and streaming: x real time with 20 ms and 1 s chunks and the largest
difference to offline ``predict`` on the same 60 s.

    python tools/bench/motion.py [--corpus DIR] [--steps 1200] [--n-train 600] [--n-test 90]
    python tools/bench/motion.py --corpus build/motion_corpus --model avatar3d/motion/data/default_motion.pt --no-train
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avatar3d.face.default_model import load_face_model
from avatar3d.motion.corpus import CorpusConfig, build_corpus, load_split
from avatar3d.motion.model import MotionModelConfig, load
from avatar3d.motion.streaming import GateConfig, MotionStream, silent_output, speech_gate
from avatar3d.motion.train import TrainConfig, evaluate, pretrain
from avatar3d.synth import regions as rg
from avatar3d.synth.speech import synthesize
from avatar3d.synth.visemes import BLENDSHAPES

FOCAL_PX, DISTANCE_M, SIZE = 614.0, 0.57, 512
LIPS = sorted(set(rg.LIP_OUTER_UPPER + rg.LIP_OUTER_LOWER + rg.LIP_INNER_UPPER + rg.LIP_INNER_LOWER))


class LipProjector:
    """Weights [N, 16] -> projected lip landmarks [N, L, 2] (px); the face model is linear in the weights."""

    def __init__(self) -> None:
        face = load_face_model()
        cols = [face.expression_index(n) for n in BLENDSHAPES]
        self.mean = face.mean[LIPS].astype(np.float64)  # [L, 3]
        self.basis = face.expression_basis[cols][:, LIPS].astype(np.float64)  # [16, L, 3]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        p = self.mean[None] + np.einsum("nk,klc->nlc", weights.astype(np.float64), self.basis)
        depth = DISTANCE_M - p[..., 2]  # camera on +z looking at the face
        u = SIZE / 2 + FOCAL_PX * p[..., 0] / depth
        v = SIZE / 2 - FOCAL_PX * p[..., 1] / depth
        return np.stack([u, v], axis=-1)


def lmd(projector: LipProjector, pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean pixel distance between predicted and true lip landmarks over frames and landmarks."""
    return float(np.linalg.norm(projector(pred) - projector(truth), axis=-1).mean())


def energy_baseline(train: list[dict], test: list[dict]) -> np.ndarray:
    """Per-weight least squares w = a + b * energy_db on the training frames, applied to test."""
    e = np.concatenate([u["energy_db"] for u in train]).astype(np.float64)
    y = np.concatenate([u["targets"] for u in train]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(np.stack([np.ones_like(e), e], axis=1), y, rcond=None)
    et = np.concatenate([u["energy_db"] for u in test]).astype(np.float64)
    return np.clip(np.stack([np.ones_like(et), et], axis=1) @ coef, 0.0, 1.0).astype(np.float32)


def speed(model, seconds: float = 60.0) -> dict[str, float]:
    """x real time of predict() (features + network) on ``seconds`` of espeak-ng speech."""
    text = ("Peter painted a purple boat in the park, and my mother makes amazing bread every morning. "
            "The quick brown fox jumps over the lazy dog while we walk by the open harbour at dawn. ")
    clip = synthesize(text, voice="en-us", words_per_minute=170)
    audio = np.resize(clip, int(seconds * 16000)).astype(np.float32)
    n = int(seconds * 25)
    model.predict(audio[:16000], 25, 25)  # warm-up
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        best = min(_timed(model, audio, n) for _ in range(3))
        out[f"x_realtime_{threads}thread"] = round(seconds / best, 1)
    return out


def gated(model, test: list[dict], config: GateConfig = GateConfig()) -> np.ndarray:
    """evaluate() with the voice-activity gate applied from each utterance's voiced fraction."""
    k, silent, out = model.config.lookahead_frames, silent_output(model), []
    for u in test:
        n = len(u["targets"])
        g = speech_gate(u["voiced_fraction"][np.minimum(np.arange(n + k), n - 1)], n, k, config)
        out.append(silent[None] + g[:, None] * (evaluate(model, [u]) - silent[None]))
    return np.concatenate(out).astype(np.float32)


def stream_speed(model, seconds: float = 60.0) -> dict[str, float]:
    """x real time of MotionStream (1 thread) with 20 ms and 1 s chunks, and its largest difference to predict()."""
    text = ("Peter painted a purple boat in the park, and my mother makes amazing bread every morning. "
            "The quick brown fox jumps over the lazy dog while we walk by the open harbour at dawn. ")
    audio = np.resize(synthesize(text, voice="en-us", words_per_minute=170), int(seconds * 16000)).astype(np.float32)
    torch.set_num_threads(1)
    ref = model.predict(audio, 25, int(np.ceil(len(audio) / 640)))
    ref = np.stack([ref[k] for k in model.names], axis=1)
    out: dict[str, float] = {}
    for chunk, name in ((320, "20ms"), (16000, "1s")):
        stream = MotionStream(model)
        parts = [stream.push(audio[i:i + chunk]).weights for i in range(0, len(audio), chunk)]
        parts.append(stream.flush().weights)
        out[f"stream_x_realtime_{name}_1thread"] = round(seconds / stream.compute_s, 1)
        out[f"stream_ms_per_chunk_{name}"] = round(1000 * stream.compute_s / -(-len(audio) // chunk), 2)
        out[f"stream_max_diff_{name}"] = float(np.abs(np.concatenate(parts) - ref).max())
    out["stream_latency_ms"] = MotionStream(model).latency_ms()
    return out


def _timed(model, audio: np.ndarray, n: int) -> float:
    t = time.perf_counter()
    model.predict(audio, 25, n)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=None, help="corpus folder (built there if missing)")
    ap.add_argument("--model", default=None, help="model path (trained / resumed there)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=90)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-train", action="store_true", help="evaluate the model at --model as it is")
    args = ap.parse_args()
    if args.no_train and not args.model:
        ap.error("--no-train needs --model PATH")
    work = Path(tempfile.mkdtemp(prefix="motion-bench-"))
    corpus = Path(args.corpus or work / "corpus")
    ccfg = CorpusConfig(n_train=args.n_train, n_test=args.n_test, generated_sentences=300, shard_utterances=100,
                        seed=args.seed)
    t0 = time.perf_counter()
    index = build_corpus(corpus, ccfg, workers=args.workers, progress=True)
    corpus_s = time.perf_counter() - t0
    torch.set_num_threads(1)
    mcfg = MotionModelConfig()
    t0 = time.perf_counter()
    if args.no_train:
        model = load(args.model)
        args.steps = int(model.info.get("trained_steps", 0))  # what the loaded model was trained for
    else:
        model = pretrain(corpus, args.model or work / "motion.pt", mcfg, steps=args.steps, seed=args.seed,
                         train=TrainConfig(), progress=True)
    train_s = time.perf_counter() - t0

    train, test = load_split(corpus, "train"), load_split(corpus, "test")
    truth = np.concatenate([u["targets"] for u in test])
    preds = {
        "model": evaluate(model, test),
        "mean": np.broadcast_to(np.concatenate([u["targets"] for u in train]).mean(0), truth.shape),
        "model_gated": gated(model, test),
        "energy": energy_baseline(train, test),
        # not asked for, but the honest constant for L1: ~1/3 of frames are silent, so the median is ~0
        "median": np.broadcast_to(np.median(np.concatenate([u["targets"] for u in train]), axis=0), truth.shape),
    }
    proj = LipProjector()
    rows = {k: {"l1": float(np.abs(p - truth).mean()), "lmd_px": lmd(proj, p, truth)} for k, p in preds.items()}
    fast = speed(model)
    fast.update(stream_speed(model))
    best_base_l1 = min(r["l1"] for k, r in rows.items() if not k.startswith("model"))
    best_base_lmd = min(r["lmd_px"] for k, r in rows.items() if not k.startswith("model"))
    print(f"\ncorpus: {len(train)} train / {len(test)} held-out utterances, {index['hours']['train']:.2f} h / "
          f"{index['hours']['test']:.2f} h at 25 fps; built in {corpus_s:.0f} s (reused if 0)")
    print(f"held-out voices: {index['held_out_voices']}")
    print(f"model: {model.n_parameters()} parameters, {args.steps} steps in {train_s:.0f} s (1 thread), "
          f"look-ahead {model.lookahead_ms():.1f} ms")
    print(f"{'method':<12}{'L1':>10}{'LMD px':>10}")
    for k, r in rows.items():
        print(f"{k:<12}{r['l1']:>10.4f}{r['lmd_px']:>10.3f}")
    print(f"model vs best baseline: L1 {100 * (1 - rows['model']['l1'] / best_base_l1):.0f} % lower, "
          f"LMD {100 * (1 - rows['model']['lmd_px'] / best_base_lmd):.0f} % lower")
    print(f"speed: {fast}  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(json.dumps({
        "bench": "motion", "train_utterances": len(train), "test_utterances": len(test),
        "train_hours": index["hours"]["train"], "test_frames": int(len(truth)), "steps": args.steps,
        "train_seconds": round(train_s, 1), "parameters": model.n_parameters(),
        "lookahead_ms": model.lookahead_ms(), **{f"{k}_{m}": round(v, 5) for k, r in rows.items() for m, v in r.items()},
        "l1_margin_vs_best_baseline": round(1 - rows["model"]["l1"] / best_base_l1, 3),
        "lmd_margin_vs_best_baseline": round(1 - rows["model"]["lmd_px"] / best_base_lmd, 3),
        "gate_l1_change": round(rows["model_gated"]["l1"] / rows["model"]["l1"] - 1, 4), **fast,
        "held_out_voices": index["held_out_voices"]}))


if __name__ == "__main__":
    main()
