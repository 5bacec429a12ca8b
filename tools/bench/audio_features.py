"""Benchmark: the weight-free audio front-end on 60 s of audio vs a per-frame Python loop.

The reference computes the same three streams one analysis frame at a time
with numpy (Hann-window FFT + the same mel filterbank; a normalised
autocorrelation pitch picker; RMS), i.e. the obvious way to write it.  Both run
in the same process on the same audio: espeak-ng speech (timing, voicing
agreement) and a synthetic harmonic signal with a known gliding f0 (accuracy).
Prints a table, then one JSON line.

    python tools/bench/audio_features.py [--seconds 60] [--fps 25]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from avatar3d.audio.features import (
    AudioFeatureConfig, analysis_frame_count, energy, frame_features, hop_samples, log_mel,
    mel_filterbank, pitch,
)

SR = 16000
TEXT = ("The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore, "
        "and the fish swim far away from the harbour while we talk about the weather.")


def _frame(audio: np.ndarray, k: int, length: int, hop: int) -> np.ndarray:
    """Frame k centred on (k + 0.5) * hop, zero outside the clip (the front-end's convention)."""
    start = (k * hop + hop // 2) - length // 2
    out = np.zeros(length, np.float64)
    lo, hi = max(0, start), min(len(audio), start + length)
    if hi > lo:
        out[lo - start:hi - start] = audio[lo:hi]
    return out


def naive_log_mel(audio: np.ndarray, cfg: AudioFeatureConfig) -> np.ndarray:
    hop, win = hop_samples(cfg), int(round(SR * cfg.window_ms / 1000))
    fb = mel_filterbank(cfg).astype(np.float64)
    n_fft = (fb.shape[1] - 1) * 2
    window = np.hanning(win + 1)[:-1]  # periodic Hann, as torch.hann_window
    rows = []
    for k in range(analysis_frame_count(len(audio), cfg)):
        spec = np.fft.rfft(_frame(audio, k, win, hop) * window, n=n_fft)
        rows.append(np.log(np.maximum(fb @ (spec.real ** 2 + spec.imag ** 2), 1e-10)))
    return np.array(rows, np.float32)


def naive_energy(audio: np.ndarray, cfg: AudioFeatureConfig) -> np.ndarray:
    hop, win = hop_samples(cfg), int(round(SR * cfg.window_ms / 1000))
    return np.array([10 * np.log10(max(np.mean(_frame(audio, k, win, hop) ** 2), 1e-10))
                     for k in range(analysis_frame_count(len(audio), cfg))], np.float32)


def naive_pitch(audio: np.ndarray, cfg: AudioFeatureConfig, threshold: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame normalised autocorrelation: the best lag in range, voiced if its NCCF > threshold."""
    hop = hop_samples(cfg)
    lag_min, lag_max = int(SR / cfg.pitch_max_hz), int(np.ceil(SR / cfg.pitch_min_hz))
    width = lag_max
    f0s, voiced = [], []
    for k in range(analysis_frame_count(len(audio), cfg)):
        x = _frame(audio, k, width + lag_max, hop)
        head = x[:width]
        e0 = head @ head
        best, best_lag = -1.0, lag_min
        for lag in range(lag_min, lag_max):
            seg = x[lag:lag + width]
            r = head @ seg / np.sqrt(e0 * (seg @ seg) + 1e-20)
            if r > best:
                best, best_lag = r, lag
        loud = 10 * np.log10(max(e0 / width, 1e-10)) > cfg.silence_db
        v = bool(best > threshold and loud)
        f0s.append(SR / best_lag if v else 0.0)
        voiced.append(v)
    return np.array(f0s, np.float32), np.array(voiced)


def glide(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic tone (5 partials, 1/n amplitudes) whose f0 glides 90..280 Hz; true f0 per analysis frame."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 185 + 95 * np.sin(2 * np.pi * t / 3.7)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(np.sin(n * phase) / n for n in range(1, 6))
    x = (0.3 * x / np.abs(x).max()).astype(np.float32)
    centres = ((np.arange(analysis_frame_count(len(x), AudioFeatureConfig())) + 0.5) * (SR // 100)).astype(int)
    return x, f0[np.minimum(centres, len(x) - 1)]


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def pitch_errors(f0: np.ndarray, voiced: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(voiced fraction, gross error rate > 5 %, median |error| in cents) over frames away from the edges."""
    inner = slice(5, -5)
    f0, voiced, truth = f0[inner], voiced[inner], truth[inner]
    ok = voiced & (f0 > 0)
    cents = 1200 * np.abs(np.log2(np.where(ok, f0, 1.0) / truth))[ok]
    gross = float(np.mean(np.abs(f0[ok] / truth[ok] - 1) > 0.05)) if ok.any() else 1.0
    return float(voiced.mean()), gross, float(np.median(cents)) if ok.any() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length (default 60)")
    parser.add_argument("--fps", type=float, default=25.0, help="video frame rate for frame_features")
    args = parser.parse_args()
    cfg = AudioFeatureConfig()
    from avatar3d.synth.speech import synthesize

    one = synthesize(TEXT)
    speech = np.tile(one, int(np.ceil(args.seconds * SR / len(one))))[: int(args.seconds * SR)]
    log_mel(speech[:SR], cfg), pitch(speech[:SR], cfg), energy(speech[:SR], cfg)  # warm-up

    rows, result = [], {}
    mel_v, t_mel_v = timed(log_mel, speech, cfg)
    mel_n, t_mel_n = timed(naive_log_mel, speech, cfg)
    (f0_v, vo_v), t_p_v = timed(pitch, speech, cfg)
    (f0_n, vo_n), t_p_n = timed(naive_pitch, speech, cfg)
    en_v, t_e_v = timed(energy, speech, cfg)
    en_n, t_e_n = timed(naive_energy, speech, cfg)
    n_frames = int(args.seconds * args.fps)
    _, t_ff = timed(frame_features, speech, args.fps, n_frames, cfg)
    rows += [("log_mel", t_mel_v, t_mel_n), ("pitch", t_p_v, t_p_n), ("energy", t_e_v, t_e_n),
             ("frame_features (all)", t_ff, t_mel_n + t_p_n + t_e_n)]

    both = vo_v & vo_n
    agree = float(np.mean(np.abs(f0_v[both] / f0_n[both] - 1) < 0.05)) if both.any() else float("nan")
    glide_x, truth = glide(min(args.seconds, 30.0))
    acc_v = pitch_errors(*pitch(glide_x, cfg), truth)
    acc_n = pitch_errors(*naive_pitch(glide_x, cfg), truth)

    print(f"audio front-end on {args.seconds:.0f} s of espeak-ng speech ({SR} Hz), {torch.get_num_threads()} "
          f"torch threads, {os.cpu_count()} cores")
    print(f"{'feature':24s} {'vectorised ms':>14s} {'per-frame loop ms':>18s} {'speed-up':>9s}")
    for name, fast, slow in rows:
        print(f"{name:24s} {1000 * fast:14.1f} {1000 * slow:18.1f} {slow / fast:8.0f}x")
    print(f"log-mel max |vectorised - loop| = {np.abs(mel_v - mel_n).max():.2e} (log units); "
          f"energy max diff = {np.abs(en_v - en_n).max():.2e} dB")
    print(f"speech: voiced {vo_v.mean():.3f} (YIN) vs {vo_n.mean():.3f} (loop NCCF); voicing agreement "
          f"{np.mean(vo_v == vo_n):.3f}; f0 within 5 % on frames both call voiced: {agree:.3f}")
    print(f"{'glide 90-280 Hz':24s} {'voiced':>8s} {'gross >5%':>10s} {'median cents':>13s}")
    for name, (v, g, c) in (("YIN (vectorised)", acc_v), ("NCCF loop (reference)", acc_n)):
        print(f"{name:24s} {v:8.3f} {g:10.4f} {c:13.2f}")
    result = {
        "bench": "audio_features", "seconds": args.seconds, "fps": args.fps,
        "ms": {name: round(1000 * fast, 1) for name, fast, _ in rows},
        "loop_ms": {name: round(1000 * slow, 1) for name, _, slow in rows},
        "speedup": {name: round(slow / fast, 1) for name, fast, slow in rows},
        "log_mel_max_abs_diff": float(np.abs(mel_v - mel_n).max()),
        "speech_voiced_fraction": round(float(vo_v.mean()), 3),
        "speech_voicing_agreement": round(float(np.mean(vo_v == vo_n)), 3),
        "speech_f0_agreement_5pct": round(agree, 3),
        "glide_yin": {"voiced": round(acc_v[0], 4), "gross_error": round(acc_v[1], 4),
                      "median_cents": round(acc_v[2], 2)},
        "glide_loop": {"voiced": round(acc_n[0], 4), "gross_error": round(acc_n[1], 4),
                       "median_cents": round(acc_n[2], 2)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
