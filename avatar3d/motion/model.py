"""Speech -> 16 mouth blendshape weights: a small temporal conv net with bounded look-ahead.

Input per video frame (25 fps): the 16-slot log-mel window around the frame
centre (-75..+75 ms, gathered from the 100 Hz log-mel stream exactly as
:func:`avatar3d.audio.features.frame_features` does), plus energy, log f0 and
voicing, all normalised with training-corpus statistics kept in the model file.

Network: each log-mel slot is projected (shared weights) and the window is
flattened into one frame vector; a stack of *valid* (unpadded) dilated
1-D convolutions then only ever sees the past.  Output frame ``t`` is read
``lookahead_frames`` positions later, so it depends on frames
``<= t + lookahead_frames`` and nothing else -- the look-ahead is a property
of the construction, not of the training.  At a clip's start the first frame
is repeated (it is the leading silence in practice).

Look-ahead in audio time, beyond the frame centre, at 25 fps with the default
front-end: ``lookahead_frames * 40 ms`` + 75 ms (last mel slot) + 12.5 ms (half
its 25 ms STFT window) = 167.5 ms for ``lookahead_frames = 2``.

Other frame rates: the model runs at its own rate (25 fps) and the curves
are linearly resampled to the requested rate.

Optional speech-encoder front-end (:mod:`avatar3d.audio.speech_encoder`): a
model trained with one takes the encoder's hidden states (on the same 100 Hz
grid) in place of the log-mel rows -- same windows, same network, slot width
``dim`` instead of ``n_mels``; energy / f0 / voicing stay from the weight-free
front-end.  The model file records the encoder's fingerprint and refuses to
load without that very encoder.  Utterance dicts keep the key ``log_mel`` for
the per-slot stream whichever front-end made it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avatar3d.audio.features import LOG_FLOOR, AudioFeatureConfig, frame_features, hop_samples, resample_mono
from avatar3d.audio.speech_encoder import SpeechEncoder, fingerprint_mismatch, load_speech_encoder
from avatar3d.errors import Avatar3DError
from avatar3d.face.blendshape_names import MOUTH_BLENDSHAPES
from avatar3d.io.atomic import atomic_path

FORMAT = "avatar3d-motion-v1"
N_SCALARS = 3  # energy, log f0 (0 when unvoiced), voiced fraction
ENCODER_FRONTEND = "speech-encoder"
"""``blob["frontend"]["kind"]`` of a model trained on a speech encoder (absent: the weight-free front-end)."""


@dataclass(frozen=True)
class MotionModelConfig:
    """Architecture of the motion model (saved in the model file)."""

    fps: float = 25.0
    """Frame rate the model runs at (the corpus' rate); the 100 Hz log-mel hop must divide it evenly."""
    lookahead_frames: int = 2
    """Future video frames each output may see (2 at 25 fps = 80 ms, 167.5 ms of audio in all)."""
    mel_project: int = 24
    """Per-slot projection width of the log-mel window."""
    channels: int = 128
    """Width of the temporal conv stack."""
    kernel: int = 3
    """Temporal kernel size."""
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1)
    """One residual block per entry; the receptive field is 1 + (kernel - 1) * sum(dilations) frames."""
    dropout: float = 0.1
    """Dropout in the blocks (training only)."""

    def __post_init__(self) -> None:
        if self.lookahead_frames < 0:
            raise Avatar3DError(f"lookahead_frames={self.lookahead_frames} must be >= 0")
        if self.kernel < 1 or not self.dilations or min(self.dilations) < 1 or self.channels < 1:
            raise Avatar3DError("motion model needs kernel >= 1, channels >= 1 and positive dilations")
        if self.lookahead_frames > self.receptive_field - 1:
            raise Avatar3DError(f"lookahead_frames={self.lookahead_frames} exceeds the receptive field "
                                f"({self.receptive_field} frames); add dilations or lower the look-ahead")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise Avatar3DError(f"fps={self.fps} must be a positive number")

    @property
    def receptive_field(self) -> int:
        """Frames one output depends on (past + current + look-ahead)."""
        return 1 + (self.kernel - 1) * sum(self.dilations)


@dataclass
class Normalisation:
    """Corpus statistics the inputs are standardised with (kept in the model file)."""

    mel_mean: np.ndarray  # [n_mels]
    mel_std: np.ndarray  # [n_mels]
    energy_mean: float
    energy_std: float
    logf0_mean: float
    logf0_std: float

    def to_dict(self) -> dict[str, Any]:
        return {"mel_mean": torch.as_tensor(self.mel_mean, dtype=torch.float32),
                "mel_std": torch.as_tensor(self.mel_std, dtype=torch.float32),
                "energy": [float(self.energy_mean), float(self.energy_std)],
                "logf0": [float(self.logf0_mean), float(self.logf0_std)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalisation":
        return cls(np.asarray(d["mel_mean"], np.float32), np.asarray(d["mel_std"], np.float32),
                   float(d["energy"][0]), float(d["energy"][1]), float(d["logf0"][0]), float(d["logf0"][1]))


def fit_normalisation(utterances: list[dict[str, np.ndarray]]) -> Normalisation:
    """Mean / std of log-mel (per band), energy and voiced log f0 over a corpus split."""
    if not utterances:
        raise Avatar3DError("cannot fit feature statistics on an empty corpus split")
    mel = np.concatenate([u["log_mel"] for u in utterances]).astype(np.float64)
    energy = np.concatenate([u["energy_db"] for u in utterances]).astype(np.float64)
    f0 = np.concatenate([u["f0_hz"] for u in utterances]).astype(np.float64)
    logf0 = np.log(f0[f0 > 0]) if np.any(f0 > 0) else np.array([math.log(120.0)])
    return Normalisation(mel.mean(0).astype(np.float32), np.maximum(mel.std(0), 1e-3).astype(np.float32),
                         float(energy.mean()), float(max(energy.std(), 1e-3)),
                         float(logf0.mean()), float(max(logf0.std(), 1e-3)))


# --- inputs --------------------------------------------------------------------------------------

def hops_per_frame(fps: float, audio: AudioFeatureConfig) -> int:
    """Analysis hops per video frame (4 at 25 fps / 10 ms); one-line error unless it is a whole number."""
    ratio = audio.sample_rate / hop_samples(audio) / fps
    if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
        raise Avatar3DError(f"model fps={fps} must divide the {audio.sample_rate / hop_samples(audio):g} Hz "
                            "analysis rate evenly (25 fps does)")
    return int(round(ratio))


def window_indices(frames: np.ndarray, fps: float, audio: AudioFeatureConfig) -> np.ndarray:
    """[len(frames), context] analysis-frame index of each mel slot of each video frame.

    Slot ``j`` of frame ``i`` is centred at ``(i + 0.5) / fps + (j - (C - 1) / 2) * hop``;
    with an even ``C`` and whole hops per frame that is exactly analysis frame
    ``R * i + R / 2 - C / 2 + j`` (``R`` hops per frame), as in ``frame_features``.
    """
    r, c = hops_per_frame(fps, audio), audio.context_frames
    if (r - c) % 2:
        raise Avatar3DError(f"{r} hops per frame and {c} mel slots put the slots between analysis frames; "
                            "use an even context_frames with an even hop count (25 fps, 16 slots)")
    base = r * np.asarray(frames, np.int64) + (r - c) // 2
    return base[:, None] + np.arange(c)[None]


def gather_windows(log_mel_norm: np.ndarray, frames: np.ndarray, fps: float, audio: AudioFeatureConfig,
                   floor_value: np.ndarray) -> np.ndarray:
    """[len(frames), C, n_mels] normalised mel windows; slots outside the clip read as silence."""
    idx = window_indices(frames, fps, audio)
    inside = (idx >= 0) & (idx < len(log_mel_norm))
    out = log_mel_norm[np.clip(idx, 0, max(len(log_mel_norm) - 1, 0))] if len(log_mel_norm) else \
        np.zeros(idx.shape + (len(floor_value),), np.float32)
    return np.where(inside[..., None], out, floor_value[None, None, :]).astype(np.float32)


def scalar_features(energy_db: np.ndarray, f0_hz: np.ndarray, voiced_fraction: np.ndarray,
                    norm: Normalisation) -> np.ndarray:
    """[N, 3] standardised energy, log f0 (0 where unvoiced) and voiced fraction."""
    f0 = np.asarray(f0_hz, np.float64)
    logf0 = np.where(f0 > 0, (np.log(np.maximum(f0, 1e-3)) - norm.logf0_mean) / norm.logf0_std, 0.0)
    e = (np.asarray(energy_db, np.float64) - norm.energy_mean) / norm.energy_std
    return np.stack([e, logf0, np.asarray(voiced_fraction, np.float64)], axis=1).astype(np.float32)


# --- the network -----------------------------------------------------------------------------------

class _FrameNorm(nn.Module):
    """LayerNorm over channels of each frame of [B, C, T] (never across time: that would leak the future)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class _Block(nn.Module):
    """Pre-norm residual block: frame norm, valid dilated conv (sees only the past), GELU, 1x1 conv.

    The norm keeps activations bounded; without it L1 training drove every
    sigmoid into saturation (all-zero output) within a few dozen steps.
    """

    def __init__(self, channels: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.trim = (kernel - 1) * dilation
        self.norm = _FrameNorm(channels)
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.trim:] + self.drop(self.mix(F.gelu(self.conv(self.norm(x)))))


class MotionNet(nn.Module):
    """mel windows [B, T, C, M] + scalars [B, T, 3] -> weights [B, T - past - lookahead, 16].

    With ``pad=True`` the first frame is repeated ``past`` times in front, so the
    output has ``T - lookahead`` frames: output ``t`` <-> input frame ``t``.
    """

    def __init__(self, config: MotionModelConfig, n_mels: int, context: int, n_out: int = len(MOUTH_BLENDSHAPES)):
        super().__init__()
        self.config = config
        self.past = config.receptive_field - 1 - config.lookahead_frames
        self.mel = nn.Linear(n_mels, config.mel_project)
        self.frame = nn.Linear(context * config.mel_project + N_SCALARS, config.channels)
        self.blocks = nn.ModuleList(_Block(config.channels, config.kernel, d, config.dropout)
                                    for d in config.dilations)
        self.out_norm = _FrameNorm(config.channels)
        self.head = nn.Conv1d(config.channels, n_out, 1)
        with torch.no_grad():  # start near the typical weight (~0.05), not at 0.5
            self.head.weight.mul_(0.1)
            self.head.bias.fill_(-3.0)

    def forward(self, mel: torch.Tensor, scalars: torch.Tensor, pad: bool = False) -> torch.Tensor:
        b, t = mel.shape[:2]
        h = F.gelu(self.mel(mel)).reshape(b, t, -1)
        h = F.gelu(self.frame(torch.cat([h, scalars], dim=-1))).transpose(1, 2)  # [B, ch, T]
        if pad and self.past > 0:
            h = torch.cat([h[..., :1].expand(-1, -1, self.past), h], dim=-1)
        for block in self.blocks:
            h = block(h)
        return torch.sigmoid(self.head(self.out_norm(h))).transpose(1, 2)


# --- the model (network + statistics + front-end) ------------------------------------------------

@dataclass
class MotionModel:
    """A trained (or fresh) motion model: network, config, front-end settings and corpus statistics."""

    config: MotionModelConfig
    norm: Normalisation
    audio: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    net: MotionNet | None = None
    names: tuple[str, ...] = MOUTH_BLENDSHAPES
    info: dict[str, Any] = field(default_factory=dict)
    speech_encoder: Any = None
    """A :class:`avatar3d.audio.speech_encoder.SpeechEncoder` whose stream replaces the log-mel rows (None: log-mel)."""

    def __post_init__(self) -> None:
        hops_per_frame(self.config.fps, self.audio)
        enc = self.speech_encoder
        if enc is not None and (enc.sample_rate != self.audio.sample_rate or enc.hop != hop_samples(self.audio)):
            raise Avatar3DError(f"speech encoder {enc.folder} runs at {enc.sample_rate} Hz / hop {enc.hop} but the "
                                f"motion front-end at {self.audio.sample_rate} Hz / hop {hop_samples(self.audio)}; "
                                "use a 16 kHz checkpoint with the default 10 ms grid")
        if self.net is None:
            self.net = MotionNet(self.config, self.slot_width, self.audio.context_frames, len(self.names))
        if enc is None:
            silence = np.float32(math.log(LOG_FLOOR))
        else:  # window slots outside the clip read the encoder's own output on silence
            silence = enc.silence()
        # The normalised input row that window slots outside the clip read (silence).
        self.window_floor = ((silence - self.norm.mel_mean) / self.norm.mel_std).astype(np.float32)

    @property
    def slot_width(self) -> int:
        """Features per window slot: the encoder's hidden size, or the number of mel bands."""
        return int(self.speech_encoder.dim) if self.speech_encoder is not None else int(self.audio.n_mels)

    def slot_stream(self, audio: np.ndarray, feats: dict[str, np.ndarray]) -> np.ndarray:
        """The 100 Hz per-slot stream of 16 kHz ``audio``: ``feats["log_mel"]`` or the encoder's hidden states."""
        if self.speech_encoder is None:
            return feats["log_mel"]
        stream = self.speech_encoder.encode(audio, self.audio.sample_rate)
        if len(stream) != len(feats["log_mel"]):  # both are ceil(samples / hop) by construction
            raise Avatar3DError(f"speech encoder gave {len(stream)} rows for {len(feats['log_mel'])} analysis frames")
        return stream

    # time ---------------------------------------------------------------------------------------
    def lookahead_ms(self) -> float:
        """Audio needed beyond a frame's centre before that frame can be output (ms)."""
        hop_ms = 1000.0 * hop_samples(self.audio) / self.audio.sample_rate
        mel_reach = (self.audio.context_frames - 1) / 2.0 * hop_ms + self.audio.window_ms / 2.0
        return self.config.lookahead_frames * 1000.0 / self.config.fps + mel_reach

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # inputs -------------------------------------------------------------------------------------
    def inputs(self, log_mel: np.ndarray, energy_db: np.ndarray, f0_hz: np.ndarray, voiced_fraction: np.ndarray,
               frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mel windows [n, C, M], scalars [n, 3]) of the given frame indices (clamped to the clip)."""
        n = len(energy_db)
        if np.ndim(log_mel) != 2 or np.shape(log_mel)[1] != self.slot_width:
            raise Avatar3DError(f"per-slot features are {np.shape(log_mel)} but this model's front-end "
                                f"({self.frontend_name()}) gives {self.slot_width} per row: compute the utterances "
                                "with the model's own front-end")
        mel = (np.asarray(log_mel, np.float32) - self.norm.mel_mean) / self.norm.mel_std
        frames = np.asarray(frames, np.int64)
        scal = scalar_features(energy_db, f0_hz, voiced_fraction, self.norm)[np.clip(frames, 0, n - 1)]
        return gather_windows(mel, np.clip(frames, 0, n - 1), self.config.fps, self.audio, self.window_floor), scal

    # inference ----------------------------------------------------------------------------------
    def predict(self, audio: np.ndarray, fps: float, n_frames: int, sample_rate: int | None = None
                ) -> dict[str, np.ndarray]:
        """Mouth weights ``{name: [n_frames] float32 in [0, 1]}`` for mono float audio.

        Frame ``i`` describes the audio around ``(i + 0.5) / fps`` (the front-end's
        convention).  ``sample_rate`` defaults to the front-end's (16 kHz); other
        rates are resampled.  Audio shorter than the frames reads as silence.
        """
        if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(fps) and fps > 0):
            raise Avatar3DError(f"fps={fps!r} must be a positive number of frames per second")
        if int(n_frames) < 1:
            raise Avatar3DError(f"n_frames={n_frames} must be at least 1")
        x = resample_mono(audio, sample_rate or self.audio.sample_rate, self.audio.sample_rate)
        own = float(self.config.fps)
        same = abs(float(fps) - own) < 1e-9
        n_own = int(n_frames) if same else int(math.ceil(int(n_frames) * own / float(fps))) + 1
        k = self.config.lookahead_frames
        total = n_own + k  # the last outputs need k frames of (silent) future
        need = int(math.ceil(total * self.audio.sample_rate / own))
        if len(x) < need:
            x = np.pad(x, (0, need - len(x)))
        feats = frame_features(x, own, total, self.audio)
        weights = self._run(self.slot_stream(x, feats), feats["energy_db"], feats["f0_hz"], feats["voiced_fraction"])
        if not same:
            t_out = (np.arange(int(n_frames)) + 0.5) / float(fps)
            t_own = (np.arange(n_own) + 0.5) / own
            weights = np.stack([np.interp(t_out, t_own, weights[:, j]) for j in range(weights.shape[1])], axis=1)
        return {name: weights[:, j].astype(np.float32) for j, name in enumerate(self.names)}

    def _run(self, log_mel: np.ndarray, energy_db: np.ndarray, f0_hz: np.ndarray, voiced: np.ndarray) -> np.ndarray:
        """[n - lookahead, 16] weights from per-frame features of n frames (the last ones are the look-ahead)."""
        mel, scal = self.inputs(log_mel, energy_db, f0_hz, voiced, np.arange(len(energy_db)))
        self.net.eval()
        with torch.inference_mode():
            out = self.net(torch.from_numpy(mel)[None], torch.from_numpy(scal)[None], pad=True)[0]
        return out.numpy()

    def frontend_name(self) -> str:
        """Which front-end feeds the window slots (for messages)."""
        return "weight-free log-mel" if self.speech_encoder is None else self.speech_encoder.name

    # persistence --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (plain types and tensors: safe ``weights_only`` load)."""
        blob = {"format": FORMAT, "config": _jsonable(asdict(self.config)), "audio": asdict(self.audio),
                "norm": self.norm.to_dict(), "names": list(self.names), "info": dict(self.info),
                "weights": {k: v.detach().clone() for k, v in self.net.state_dict().items()}}
        if self.speech_encoder is not None:  # weight-free models keep exactly their old layout
            blob["frontend"] = {"kind": ENCODER_FRONTEND, "fingerprint": dict(self.speech_encoder.fingerprint)}
        return blob

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the model atomically (``extra``, e.g. training state, is stored beside it)."""
        blob = self.state()
        if extra:
            blob.update(extra)
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
        return Path(path)

    @classmethod
    def from_state(cls, blob: dict[str, Any], speech_encoder: Any = None, where: str = "motion model") -> "MotionModel":
        """Rebuild a saved model; ``speech_encoder`` (a folder or a loaded encoder) is required exactly when the
        model was trained with one, and must be that very encoder (same weights, config and layer)."""
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise Avatar3DError(f"not a motion model file (expected format {FORMAT!r})")
        cfg = dict(blob["config"])
        cfg["dilations"] = tuple(cfg["dilations"])
        encoder = _matching_encoder(blob.get("frontend"), speech_encoder, where)
        model = cls(MotionModelConfig(**cfg), Normalisation.from_dict(blob["norm"]),
                    AudioFeatureConfig(**blob["audio"]), names=tuple(blob["names"]), info=dict(blob.get("info", {})),
                    speech_encoder=encoder)
        model.net.load_state_dict(blob["weights"])
        model.net.eval()
        return model


DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "data" / "default_motion.pt"


def load_default() -> MotionModel:
    """The shipped model, trained on synthetic multi-voice speech only (tools/train_default_motion.py)."""
    if not DEFAULT_MODEL_PATH.is_file():
        raise Avatar3DError(f"the default motion model {DEFAULT_MODEL_PATH} is missing: reinstall avatar3d "
                            "or rebuild it with `python tools/train_default_motion.py`")
    return load(DEFAULT_MODEL_PATH)


def load(path: str | Path, speech_encoder: Any = None) -> MotionModel:
    """Load a model saved by :meth:`MotionModel.save`; one-line error if it is missing or not one.

    ``speech_encoder``: the encoder folder (or a loaded ``SpeechEncoder``) of a
    model trained on one; it must be the encoder the model was trained with.
    """
    return MotionModel.from_state(read_blob(path), speech_encoder, where=str(path))


def _matching_encoder(frontend: Any, speech_encoder: Any, where: str) -> Any:
    """The loaded encoder a saved model needs (None for a weight-free model); one-line errors otherwise."""
    if not frontend:
        if speech_encoder is not None:
            raise Avatar3DError(f"{where} uses the weight-free log-mel front-end, not a speech encoder: drop "
                                "--speech-encoder / speech_encoder")
        return None
    if not isinstance(frontend, dict) or frontend.get("kind") != ENCODER_FRONTEND:
        raise Avatar3DError(f"{where}: unknown front-end {frontend!r}; this avatar3d cannot run it")
    expected = dict(frontend["fingerprint"])
    label = f"{expected.get('model_type')} layer {expected.get('layer')}, hidden size {expected.get('hidden_size')}"
    if speech_encoder is None:
        raise Avatar3DError(f"{where} was trained on a speech encoder ({label}): pass that encoder's local folder "
                            "(--speech-encoder DIR / speech_encoder=DIR)")

    enc = speech_encoder if isinstance(speech_encoder, SpeechEncoder) else \
        load_speech_encoder(speech_encoder, layer=int(expected.get("layer", -1)))
    diff = fingerprint_mismatch(expected, enc.fingerprint)
    if diff:
        raise Avatar3DError(f"{where} was trained on another speech encoder than {enc.folder} ({'; '.join(diff)}): "
                            "pass the encoder folder it was trained with")
    return enc


def read_blob(path: str | Path) -> dict[str, Any]:
    """The raw saved dict (model + optional training state)."""
    p = Path(path)
    if not p.is_file():
        raise Avatar3DError(f"{p}: motion model file not found; train one with avatar3d.motion.train.pretrain")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or truncated file
        raise Avatar3DError(f"{p}: not a readable motion model file ({type(exc).__name__})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise Avatar3DError(f"{p}: not a motion model file (expected format {FORMAT!r})")
    return blob


def save(model: MotionModel, path: str | Path) -> Path:
    """Save ``model`` atomically (module-level alias of :meth:`MotionModel.save`)."""
    return model.save(path)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


__all__ = ["MotionModelConfig", "MotionModel", "MotionNet", "Normalisation", "fit_normalisation", "load", "save",
           "read_blob", "gather_windows", "window_indices", "hops_per_frame", "scalar_features", "FORMAT",
           "ENCODER_FRONTEND"]
