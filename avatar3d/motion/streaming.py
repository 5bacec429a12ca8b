"""Streaming speech -> mouth inference: chunks in, finished frames out, bounded memory.

Why: a live microphone (or an hour-long file) cannot wait for the whole clip
and must not hold it.  :class:`MotionStream` keeps only what the next frames
still need -- the audio under the not-yet-computed analysis windows, the
log-mel rows of the next frames' 16-slot windows, and the last
``(kernel - 1) * dilation`` activations of each conv block -- so its memory
does not grow with the length of the speech.

Exactness: a pushed stream gives the frames of
``model.predict(audio, model.config.fps, ceil(len(audio) / frame_samples))``
(the same front-end maths on the same samples: zero-padded on both sides,
mel slots before the clip and past its padded end read as silence, the first
frame repeated into the conv past), whatever the chunk sizes; only float
rounding differs (measured ~1e-6, tested at 1e-4).  The stream runs at the
model's own frame rate (25 fps) and takes 16 kHz mono; :func:`stream_file`
decodes any file to that in chunks.

Latency: a frame leaves the stream once the audio up to its centre +
``latency_ms()`` (171.75 ms at 25 fps: the model's 167.5 ms look-ahead plus
4.25 ms because each 10 ms analysis frame is computed once its widest window,
the YIN pitch window, is complete) has been pushed, plus the chunk's own
duration (a frame cannot leave before the chunk that completes it arrives).

Opt-in guard (:class:`GateConfig`): the default model was trained on speech
and silence only; on white / pink noise at speech level it opens the jaw about
as wide as on speech (mean jawOpen 0.06-0.08 against 0.06-0.08), and a bare DC
offset opens it to ~0.10.  The gate holds the mouth at the model's own output
for digital silence unless a voiced frame (YIN voicing with AC energy above
the silence level, so a constant offset does not count) lies within
``hold_frames`` before, or the look-ahead after, the frame: noise has no pitch,
speech has vowels.  It adds no latency.  On the held-out synthetic voices of
tools/bench/motion.py it moves L1 by +0.07 % (0.02374 -> 0.02375).  An optional
DC-blocking high-pass (``dc_cutoff_hz``) removes most of a DC offset's effect
on speech but is off by default (see its field).  :func:`predict_stream`
applies the same gate offline.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import lfilter

from avatar3d.audio.features import (LOG_FLOOR, energy, fft_size, hop_samples, log_mel, pitch, resample_mono,
                                     window_samples, yin_lags)
from avatar3d.errors import Avatar3DError
from avatar3d.io.video import decode_error, first_stream, import_av, open_input
from avatar3d.motion.model import MotionModel, hops_per_frame, load_default, scalar_features

__all__ = ["GateConfig", "MouthFrames", "MotionStream", "speech_gate", "silent_output", "predict_stream",
           "stream_file", "iter_audio_chunks"]

# --- the opt-in guard against non-speech input -----------------------------------------------------

@dataclass(frozen=True)
class GateConfig:
    """Voice-activity gate and DC blocker (opt-in; see the module docstring for why)."""

    min_voiced: float = 0.25
    """A frame counts as speech when at least this share of its 10 ms analysis frames is voiced (YIN) and
    above the front-end's ``silence_db`` once their mean is removed (a constant DC offset is "periodic")."""
    dc_cutoff_hz: float = 0.0
    """Corner of a first-order DC-blocking high-pass on the model's input (0: off).  Off by default: its
    decaying tail turns digital silence after speech into near-silence, which this model reads differently
    (mean |change| 0.0016 of the 16 weights on espeak speech at 5 Hz); the gate alone closes a DC-only input."""
    hold_frames: int = 6
    """Frames after the last voiced frame during which the model's output passes unchanged (240 ms at 25 fps)."""
    ramp_frames: int = 4
    """Frames over which the gate then fades the output to the silent output."""

    def __post_init__(self) -> None:
        if not (self.dc_cutoff_hz >= 0 and math.isfinite(self.dc_cutoff_hz)):
            raise Avatar3DError(f"dc_cutoff_hz={self.dc_cutoff_hz} must be >= 0 (0 disables the DC blocker)")
        if not 0 < self.min_voiced <= 1:
            raise Avatar3DError(f"min_voiced={self.min_voiced} must lie in (0, 1]")
        if self.hold_frames < 0 or self.ramp_frames < 1:
            raise Avatar3DError("gate needs hold_frames >= 0 and ramp_frames >= 1")


def speech_gate(voiced_fraction: np.ndarray, n_out: int, lookahead: int, config: GateConfig) -> np.ndarray:
    """[n_out] gate in [0, 1] from per-frame voiced fractions of ``n_out + lookahead`` frames.

    Output ``t`` sees voicing up to frame ``t + lookahead`` (the model's own
    look-ahead, so the gate adds no latency): 1 while a voiced frame lies at most
    ``hold_frames`` back, then a linear fade to 0 over ``ramp_frames``.
    """
    v = np.asarray(voiced_fraction, np.float64) >= config.min_voiced
    if len(v) < n_out + lookahead:
        raise Avatar3DError(f"speech_gate needs {n_out + lookahead} frames of voicing, got {len(v)}")
    last = np.maximum.accumulate(np.where(v, np.arange(len(v)), -(1 << 40)))
    return _gate_values(np.arange(n_out), last[np.arange(n_out) + lookahead], config)


def _gate_values(t: np.ndarray, last_voiced: np.ndarray, config: GateConfig) -> np.ndarray:
    d = np.maximum(t - last_voiced, 0).astype(np.float64)
    return np.clip((config.hold_frames + config.ramp_frames - d) / config.ramp_frames, 0.0, 1.0).astype(np.float32)


class _DCBlocker:
    """y[n] = x[n] - x[n-1] + a * y[n-1], state carried across chunks (exactly the offline filter)."""

    def __init__(self, cutoff_hz: float, sample_rate: int):
        self.a = math.exp(-2.0 * math.pi * cutoff_hz / sample_rate)
        self.zi = np.zeros(1, np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y, self.zi = lfilter([1.0, -1.0], [1.0, -self.a], x.astype(np.float64), zi=self.zi)
        return y.astype(np.float32)


# --- the stream ------------------------------------------------------------------------------------

@dataclass
class MouthFrames:
    """Frames ``start .. start + len - 1`` of a stream: ``weights`` [k, len(names)] in [0, 1]."""

    start: int
    weights: np.ndarray
    names: tuple[str, ...]
    fps: float

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def curves(self) -> dict[str, np.ndarray]:
        """``{name: [k] float32}``, the shape ``MotionModel.predict`` returns."""
        return {n: self.weights[:, j].astype(np.float32) for j, n in enumerate(self.names)}


class MotionStream:
    """Push 16 kHz mono audio chunks of any size, get back every frame whose look-ahead is complete.

    ``push(chunk)`` returns the newly finished frames (possibly none);
    ``flush()`` pads the end with silence, returns the rest, and closes the
    stream.  ``frames_out`` counts frames returned so far; after ``flush()``
    it is ``ceil(samples_in / frame_samples)``.
    """

    def __init__(self, model: MotionModel | None = None, gate: GateConfig | None = None):
        self.model = model if model is not None else load_default()
        if getattr(self.model, "speech_encoder", None) is not None:
            raise Avatar3DError(f"streaming needs a motion model on the weight-free front-end; this one runs on a "
                                f"{self.model.frontend_name()} (a bidirectional transformer over the whole clip, no "
                                "bounded look-ahead): use MotionModel.predict on the whole clip, or a log-mel model")
        self.model.net.eval()
        m, cfg = self.model, self.model.config
        self.sample_rate = m.audio.sample_rate
        self.fps = float(cfg.fps)
        self.hop = hop_samples(m.audio)
        self.hops = hops_per_frame(cfg.fps, m.audio)
        self.frame_samples = self.hop * self.hops
        self.context = m.audio.context_frames
        self.lookahead = cfg.lookahead_frames
        self.gate = gate
        # samples each analysis frame k reads around k * hop: widest of STFT, RMS and YIN frames
        spans = [fft_size(m.audio), window_samples(m.audio), 2 * yin_lags(m.audio)[1]]
        self._left = max(s // 2 - self.hop // 2 for s in spans)
        self._right = max(s - (s // 2 - self.hop // 2) for s in spans)
        self._margin = -(-self._left // self.hop) * self.hop  # whole hops of left context kept
        self._mel_lo = (self.hops - self.context) // 2  # first mel slot of frame j is hops * j + this
        self._mel_hi = self._mel_lo + self.context - 1
        # state
        self._buf = np.zeros(self._margin, np.float32)  # audio from global sample _buf_start
        self._buf_start = -self._margin
        self._samples_in = 0
        self._k_next = 0  # next analysis frame to compute
        self._mel = np.zeros((0, m.audio.n_mels), np.float32)  # normalised log-mel rows from _a_start
        self._level = np.zeros(0, np.float32)
        self._f0 = np.zeros(0, np.float32)
        self._voiced = np.zeros(0, bool)
        self._speech = np.zeros(0, bool)  # gate only: voiced with AC level above silence
        self._a_start = 0
        self._j_next = 0  # next input frame to compute
        self._caches: list[torch.Tensor | None] = [None] * len(m.net.blocks)
        self._started = False
        self._t_next = 0  # next output frame
        self._v_flags = np.zeros(0, bool)  # voiced flags of input frames from _v_start
        self._v_start = 0
        self._v_last = -(1 << 40)  # last voiced input frame before _v_start
        self._dc = _DCBlocker(gate.dc_cutoff_hz, self.sample_rate) if gate and gate.dc_cutoff_hz > 0 else None
        self._silent = silent_output(self.model) if gate else None
        self._closed = False
        self._mel_floor = m.window_floor
        self.compute_s = 0.0  # wall time spent in push/flush

    # --- public ------------------------------------------------------------------------------------
    @property
    def frames_out(self) -> int:
        return self._t_next

    @property
    def samples_in(self) -> int:
        return self._samples_in

    def latency_ms(self) -> float:
        """Audio needed beyond a frame's centre before the stream returns it (excluding chunking)."""
        k_last = self.hops * self.lookahead + self._mel_hi  # last analysis frame output 0 needs
        need = k_last * self.hop + self._right  # samples that must have arrived
        return 1000.0 * (need - self.frame_samples / 2) / self.sample_rate

    def buffered(self) -> dict[str, int]:
        """Sizes of the internal buffers (audio samples, analysis rows, conv cache frames): bounded."""
        return {"audio_samples": int(len(self._buf)), "analysis_rows": int(len(self._level)),
                "cache_frames": int(sum(c.shape[-1] for c in self._caches if c is not None)),
                "voicing_flags": int(len(self._v_flags))}

    def push(self, audio: np.ndarray) -> MouthFrames:
        """Feed the next chunk (float mono at the model's rate); returns the frames it completed."""
        t0 = time.perf_counter()
        if self._closed:
            raise Avatar3DError("this MotionStream was flushed; start a new one for new audio")
        x = _check_chunk(audio)
        if self._dc is not None:
            x = self._dc(x)
        self._buf = np.concatenate([self._buf, x])
        self._samples_in += len(x)
        avail = self._buf_start + len(self._buf)
        k_end = (avail - self._right) // self.hop + 1 if avail >= self._right else 0
        out = self._advance(k_end, final_frames=None)
        self.compute_s += time.perf_counter() - t0
        return out

    def flush(self) -> MouthFrames:
        """End of speech: pad with silence and return the remaining frames; the stream is closed after."""
        t0 = time.perf_counter()
        if self._closed:
            raise Avatar3DError("this MotionStream was already flushed; start a new one for new audio")
        if self._samples_in == 0:
            raise Avatar3DError("no audio was pushed into the stream; give at least one sample of speech")
        self._closed = True
        n = -(-self._samples_in // self.frame_samples)
        total = n + self.lookahead  # input frames, as predict() computes them
        k_total = total * self.hops  # analysis frames of the padded clip (predict pads to whole frames)
        need = (k_total - 1) * self.hop + self._right
        pad = need - (self._buf_start + len(self._buf))
        if pad > 0:
            self._buf = np.concatenate([self._buf, np.zeros(pad, np.float32)])
        out = self._advance(k_total, final_frames=(total, k_total))
        self._buf = np.zeros(0, np.float32)
        self.compute_s += time.perf_counter() - t0
        return out

    # --- internals -----------------------------------------------------------------------------------
    def _advance(self, k_end: int, final_frames: tuple[int, int] | None) -> MouthFrames:
        """Compute analysis frames up to ``k_end``, then every input frame and output now possible."""
        m = self.model
        if k_end > self._k_next:
            lo = self._k_next * self.hop - self._margin - self._buf_start  # buffer index of the slice start
            hi = (k_end - 1) * self.hop + self._right - self._buf_start
            seg = self._buf[lo:hi]
            skip = self._margin // self.hop
            count = k_end - self._k_next
            mel = log_mel(seg, m.audio)[skip:skip + count]
            level = energy(seg, m.audio)[skip:skip + count]
            f0, voiced = pitch(seg, m.audio)
            if self.gate is not None:  # voiced and audible once DC is removed (the gate's notion of speech)
                ac_db = _ac_level_db(seg, skip, count, self.hop, window_samples(m.audio))
                self._speech = np.concatenate([self._speech, voiced[skip:skip + count]
                                               & (ac_db > m.audio.silence_db)])
            mel = (mel - m.norm.mel_mean) / m.norm.mel_std
            self._mel = np.concatenate([self._mel, mel.astype(np.float32)])
            self._level = np.concatenate([self._level, level])
            self._f0 = np.concatenate([self._f0, f0[skip:skip + count]])
            self._voiced = np.concatenate([self._voiced, voiced[skip:skip + count]])
            self._k_next = k_end
            keep = self._k_next * self.hop - self._margin - self._buf_start
            self._buf = self._buf[keep:].copy()
            self._buf_start += keep
        # input frames whose mel window (and pooled scalars) are complete
        if final_frames is None:
            j_end = (self._k_next - 1 - self._mel_hi) // self.hops + 1
            k_valid = self._k_next
        else:
            j_end, k_valid = final_frames
        j_end = max(j_end, self._j_next)
        weights = np.zeros((0, len(m.names)), np.float32)
        if j_end > self._j_next:
            j = np.arange(self._j_next, j_end)
            mel_w, scal = self._inputs(j, k_valid)
            weights = self._net(mel_w, scal)
            if self.gate is not None:
                sfrac = self._speech[self._rows(j)].mean(axis=1)
                self._v_flags = np.concatenate([self._v_flags, sfrac >= self.gate.min_voiced])
            self._j_next = j_end
            # forget analysis rows no later input frame reads (its mel window starts _mel_lo rows back)
            drop = max(0, self.hops * self._j_next + min(self._mel_lo, 0) - self._a_start)
            self._mel, self._level = self._mel[drop:], self._level[drop:]
            self._f0, self._voiced, self._speech = self._f0[drop:], self._voiced[drop:], self._speech[drop:]
            self._a_start += drop
        start = self._t_next
        if final_frames is not None:  # outputs past the clip's last frame come from its silent padding
            weights = weights[:max(0, final_frames[0] - self.lookahead - start)]
        self._t_next += len(weights)
        if self.gate is not None and len(weights):
            weights = self._apply_gate(start, weights)
        return MouthFrames(start, weights, tuple(m.names), self.fps)

    def _rows(self, j: np.ndarray) -> np.ndarray:
        """[n, hops] buffer row of each analysis frame pooled into input frames ``j`` (centres inside)."""
        return self.hops * j[:, None] + np.arange(self.hops)[None] - self._a_start

    def _inputs(self, j: np.ndarray, k_valid: int) -> tuple[np.ndarray, np.ndarray]:
        """Mel windows [n, C, M] and scalars [n, 3] of input frames ``j``."""
        m = self.model
        idx = self.hops * j[:, None] + self._mel_lo + np.arange(self.context)[None]
        inside = (idx >= 0) & (idx < k_valid)
        rows = self._mel[np.clip(idx - self._a_start, 0, len(self._mel) - 1)]
        mel_w = np.where(inside[..., None], rows, self._mel_floor[None, None, :]).astype(np.float32)
        # pool the analysis frames inside each video frame exactly as frame_features does
        pos = self._rows(j)  # [n, hops]
        power = 10.0 ** (self._level.astype(np.float64) / 10.0)
        voiced = self._voiced
        logf = np.where(voiced, np.log(np.maximum(self._f0, 1e-3)), 0.0)
        p_sum = power[pos].sum(axis=1)
        v_sum = voiced[pos].astype(np.float64).sum(axis=1)
        lf_sum = logf[pos].astype(np.float64).sum(axis=1)
        counts = float(self.hops)
        vfrac = (v_sum / counts).astype(np.float32)
        f0 = np.where(v_sum > 0, np.exp(lf_sum / np.maximum(v_sum, 1.0)), 0.0).astype(np.float32)
        e_db = (10.0 * np.log10(np.maximum(p_sum / counts, LOG_FLOOR))).astype(np.float32)
        return mel_w, scalar_features(e_db, f0, vfrac, m.norm)

    def _net(self, mel: np.ndarray, scal: np.ndarray) -> np.ndarray:
        """Run new input frames through the network, carrying each block's past; returns new outputs."""
        net = self.model.net
        with torch.inference_mode():
            mt, st = torch.from_numpy(mel)[None], torch.from_numpy(scal)[None]
            h = torch.nn.functional.gelu(net.mel(mt)).reshape(1, mt.shape[1], -1)
            h = torch.nn.functional.gelu(net.frame(torch.cat([h, st], dim=-1))).transpose(1, 2)  # [1, ch, n]
            if not self._started:
                self._started = True
                if net.past > 0:
                    h = torch.cat([h[..., :1].expand(-1, -1, net.past), h], dim=-1)
            for b, block in enumerate(net.blocks):
                cache = self._caches[b]
                x = h if cache is None else torch.cat([cache, h], dim=-1)
                self._caches[b] = x[..., max(0, x.shape[-1] - block.trim):].clone()
                if x.shape[-1] <= block.trim:
                    return np.zeros((0, len(self.model.names)), np.float32)
                h = block(x)
            out = torch.sigmoid(net.head(net.out_norm(h))).transpose(1, 2)[0]
        return out.numpy().astype(np.float32)

    def _apply_gate(self, start: int, weights: np.ndarray) -> np.ndarray:
        t = np.arange(start, start + len(weights))
        flags = self._v_flags
        idx = np.where(flags, np.arange(self._v_start, self._v_start + len(flags)), -(1 << 40))
        last = np.maximum(np.maximum.accumulate(idx), self._v_last)
        g = _gate_values(t, last[t + self.lookahead - self._v_start], self.gate)
        # drop flags of input frames no later output can need individually (keep their last voiced index)
        cut = t[-1] + 1 - self._v_start
        if cut > 0:
            self._v_last = int(last[cut - 1])
            self._v_flags = flags[cut:]
            self._v_start += cut
        return (self._silent[None] + g[:, None] * (weights - self._silent[None])).astype(np.float32)


def _ac_level_db(seg: np.ndarray, first: int, count: int, hop: int, window: int) -> np.ndarray:
    """RMS dB of each analysis window after removing its mean (same windows as ``energy``), [count]."""
    starts = (np.arange(first, first + count) * hop) - (window // 2 - hop // 2)
    frames = sliding_window_view(seg.astype(np.float64), window)[starts]
    return (10.0 * np.log10(np.maximum(frames.var(axis=1), LOG_FLOOR))).astype(np.float32)


def silent_output(model: MotionModel) -> np.ndarray:
    """The model's steady output for digital silence, [n_names] (what the gate holds the mouth at)."""
    n = int(model.config.fps)
    out = model.predict(np.zeros(model.audio.sample_rate, np.float32), model.config.fps, n)
    return np.array([out[name][n // 2] for name in model.names], np.float32)


def _check_chunk(audio: np.ndarray, where: str = "audio chunk") -> np.ndarray:
    x = np.asarray(audio)
    if x.ndim != 1:
        raise Avatar3DError(f"{where} must be mono, shape [samples]; got shape {x.shape} (average the channels)")
    if np.issubdtype(x.dtype, np.integer) or not np.issubdtype(x.dtype, np.floating):
        raise Avatar3DError(f"{where} must be float in [-1, 1], got {x.dtype}; divide int16 PCM by 32768")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise Avatar3DError(f"{where} contains NaN or inf samples; fix the audio source")
    return x


# --- conveniences ------------------------------------------------------------------------------------

def predict_stream(model: MotionModel, audio: np.ndarray, sample_rate: int | None = None,
                   gate: GateConfig | None = None) -> dict[str, np.ndarray]:
    """Offline curves at the model's frame rate (25 fps) through the stream: the way to apply ``gate`` offline.

    Returns ``ceil(len / frame_samples)`` frames per curve; without a gate it
    equals ``model.predict(audio, model.config.fps, that many frames)``.
    """
    x = resample_mono(audio, sample_rate or model.audio.sample_rate, model.audio.sample_rate)
    stream = MotionStream(model, gate)
    parts = [stream.push(x), stream.flush()]
    return {n: np.concatenate([p.curves()[n] for p in parts]) for n in model.names}


def iter_audio_chunks(path: str | Path, sample_rate: int = 16000, chunk_samples: int = 16000) -> Iterator[np.ndarray]:
    """Decode the first audio stream of any media file as float32 mono chunks at ``sample_rate``.

    Why not :func:`avatar3d.io.video.read_audio`: that returns the whole file;
    this holds one decoded packet plus one chunk.  Same FFmpeg downmix and
    resampler, same end trim to the stream's stored duration (AAC padding).
    """
    if int(chunk_samples) < 1:
        raise Avatar3DError(f"chunk_samples={chunk_samples} must be at least 1")
    av = import_av()
    container = open_input(path)
    try:
        stream = first_stream(container, "audio", path)
        expected = None
        if stream.duration is not None and stream.time_base is not None:
            expected = int(round(float(stream.duration * stream.time_base) * int(sample_rate))) or None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sample_rate))
        pending: list[np.ndarray] = []
        n_pending, emitted = 0, 0

        def take(final: bool) -> Iterator[np.ndarray]:
            nonlocal pending, n_pending, emitted
            while n_pending >= chunk_samples or (final and n_pending):
                joined = np.concatenate(pending)
                size = min(int(chunk_samples), len(joined))
                chunk, rest = joined[:size], joined[size:]
                pending, n_pending = ([rest] if len(rest) else []), len(rest)
                if expected is not None:
                    chunk = chunk[:max(0, expected - emitted)]
                emitted += len(chunk)
                if len(chunk):
                    yield _check_chunk(chunk, f"{path}: audio")

        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples (as read_audio does)
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
                    n_pending += pending[-1].size
                yield from take(False)
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
                n_pending += pending[-1].size
            yield from take(True)
        except av.FFmpegError as exc:
            raise decode_error(path, exc) from exc
        if emitted == 0:
            raise Avatar3DError(f"{path}: contains no audio samples; re-export the audio")
    finally:
        container.close()


def stream_file(path: str | Path, chunk_s: float = 1.0, model: MotionModel | None = None,
                gate: GateConfig | None = None) -> Iterator[MouthFrames]:
    """Mouth frames of a (long) audio or video file, decoded and inferred ``chunk_s`` seconds at a time.

    Memory stays bounded by the chunk, not the file; yields only non-empty frame blocks, in order.
    """
    if not (chunk_s > 0 and math.isfinite(chunk_s)):
        raise Avatar3DError(f"chunk_s={chunk_s} must be a positive number of seconds (e.g. 1.0)")
    stream = MotionStream(model, gate)
    for chunk in iter_audio_chunks(path, stream.sample_rate, max(1, int(round(chunk_s * stream.sample_rate)))):
        out = stream.push(chunk)
        if len(out):
            yield out
    out = stream.flush()
    if len(out):
        yield out
