"""Optional pretrained speech-encoder front-end (wav2vec 2.0 / HuBERT / WavLM / data2vec-audio).

Why optional and local-only: no encoder weights ship with avatar3d or with any
package it installs, and avatar3d never downloads (a library call that fetches
1 GB from a hub breaks offline machines and CI).  A user who has a checkpoint
on disk (a Hugging Face folder: ``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``) passes its path; everything else is a one-line error.

Time grid: the stream this module returns lies on the *same* 100 Hz analysis
grid as the weight-free front-end (:mod:`avatar3d.audio.features`): row ``k``
describes the audio around ``(k + 0.5) * hop`` and a clip of ``N`` samples
gives ``ceil(N / hop)`` rows.  The encoder's own frames come from its conv
stack (standard checkpoints: receptive field 400 samples, stride 320 at 16 kHz,
so frame ``j`` reads samples ``[320 j, 320 j + 400)`` and is centred on
``320 j + 200``); they are mapped onto the grid by linear interpolation in time
(held constant before the first and after the last encoder frame).  Receptive
field and stride are computed from the checkpoint's ``conv_kernel`` /
``conv_stride``, not assumed.

Long audio is encoded in chunks (``chunk_s`` of core with ``overlap_s`` of
context on each side, the context frames discarded), so activation memory is
bounded whatever the clip length.  Chunk borders lie on the encoder's frame
lattice, so a chunked stream differs from a one-pass one only through the
self-attention / positional-conv context it loses at the borders.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from avatar3d.audio.features import as_mono_audio  # the one validation of mono float audio
from avatar3d.errors import Avatar3DError
from avatar3d.io.audio import resample
from avatar3d.io.hashing import file_sha256

__all__ = ["SUPPORTED_MODEL_TYPES", "SpeechEncoderConfig", "SpeechEncoder", "load_speech_encoder",
           "conv_geometry", "fingerprint_mismatch"]

SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
"""``config.json`` model types whose base model maps a waveform to hidden states the same way."""
_INSTALL_HINT = "pip install 'avatar3d[encoder]'"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class SpeechEncoderConfig:
    """How the encoder is run (``layer`` is part of the fingerprint; the rest only of the cache key)."""

    layer: int = -1
    """Hidden state to return: 0 = before the transformer (conv features + positional conv), ``n`` = after
    layer ``n``; negative counts from the end (-1 = the last).  Middle layers are often the more phonetic ones
    for wav2vec 2.0 / HuBERT (the last ones drift towards the pretraining target); -1 is only the plain default."""
    chunk_s: float = 20.0
    """Seconds of audio whose frames are kept per encoder pass (bounds memory on long files)."""
    overlap_s: float = 1.0
    """Extra context encoded on each side of a chunk and discarded."""
    hop_ms: float = 10.0
    """Hop of the output grid; 10 ms is the weight-free front-end's analysis grid."""

    def __post_init__(self) -> None:
        if not (self.chunk_s > 0 and math.isfinite(self.chunk_s)):
            raise Avatar3DError(f"speech encoder chunk_s={self.chunk_s} must be a positive number of seconds (20)")
        if not (self.overlap_s >= 0 and math.isfinite(self.overlap_s)):
            raise Avatar3DError(f"speech encoder overlap_s={self.overlap_s} must be >= 0 seconds (1)")
        if not (self.hop_ms > 0 and math.isfinite(self.hop_ms)):
            raise Avatar3DError(f"speech encoder hop_ms={self.hop_ms} must be positive (10)")


def conv_geometry(conv_kernel: list[int], conv_stride: list[int]) -> tuple[int, int]:
    """(receptive field, stride) in input samples of a stack of unpadded 1-D convolutions (400, 320 for wav2vec 2.0)."""
    field, jump = 1, 1
    for k, s in zip(conv_kernel, conv_stride):
        field += (int(k) - 1) * jump
        jump *= int(s)
    return field, jump


def _check_folder(path: str | Path) -> tuple[Path, dict[str, Any], list[Path]]:
    """Validate a local checkpoint folder without importing transformers: (folder, config dict, weight files)."""
    raw = str(path)
    p = Path(raw).expanduser()
    if not p.exists():
        if _HUB_ID.match(raw) and not raw.startswith("."):
            raise Avatar3DError(
                f"speech encoder {raw!r} is not a local folder (a hub id?): avatar3d never downloads weights; "
                f"download it yourself (e.g. `huggingface-cli download {raw} --local-dir DIR`) and pass DIR")
        raise Avatar3DError(f"speech encoder folder {p} not found: pass the folder holding the checkpoint's "
                            "config.json and model.safetensors (or pytorch_model.bin)")
    if not p.is_dir():
        raise Avatar3DError(f"speech encoder path {p} is a file: pass the folder that holds it together with its "
                            "config.json")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise Avatar3DError(f"speech encoder folder {p} has no config.json: pass a Hugging Face checkpoint folder "
                            "(config.json + model.safetensors), e.g. one saved with save_pretrained")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise Avatar3DError(f"{cfg_path} is not readable JSON ({exc}): re-download or re-save the checkpoint") from exc
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise Avatar3DError(f"{cfg_path}: model_type {model_type!r} is not a supported speech encoder; use a "
                            f"{' / '.join(SUPPORTED_MODEL_TYPES)} checkpoint")
    weights = _weight_files(p)
    if not weights:
        raise Avatar3DError(f"speech encoder folder {p} has no weight file: put model.safetensors or "
                            "pytorch_model.bin (or a sharded *.index.json with its shards) beside config.json")
    return p, cfg, weights


def _weight_files(folder: Path) -> list[Path]:
    """The files holding the weights, in a fixed order (index file first for sharded checkpoints)."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / (name + ".index.json")
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise Avatar3DError(f"{index} is unreadable ({exc}): re-download the checkpoint") from exc
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise Avatar3DError(f"{index} lists shard(s) {missing[:3]} that are not in {folder}: finish the "
                                    "download")
            return [index] + [folder / s for s in shards]
    return []


def _import_transformers():  # type: ignore[no-untyped-def]
    """transformers with the hub switched off first (so nothing it does can reach the network)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers  # lazy: an optional extra (avatar3d[encoder]), ~2 s to import
    except ImportError as exc:
        raise Avatar3DError(f"the speech-encoder front-end needs the transformers package: {_INSTALL_HINT}") from exc
    return transformers


def fingerprint_mismatch(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Human-readable differences between two encoder fingerprints (empty: the same encoder and layer)."""
    def show(v: Any) -> str:  # sha256 digests shortened: the message stays one readable line
        return repr(v[:12] + "...") if isinstance(v, str) and len(v) == 64 else repr(v)

    keys = sorted(set(expected) | set(got))
    return [f"{k} {show(expected.get(k))} != {show(got.get(k))}" for k in keys if expected.get(k) != got.get(k)]


class SpeechEncoder:
    """A loaded encoder: ``encode(audio, sample_rate) -> [n_analysis, dim]`` on the 100 Hz analysis grid."""

    def __init__(self, folder: Path, model: Any, hf_config: dict[str, Any], weights: list[Path],
                 config: SpeechEncoderConfig, sample_rate: int, do_normalize: bool):
        self.folder = folder
        self.config = config
        self.model = model
        self.sample_rate = int(sample_rate)
        self.do_normalize = bool(do_normalize)
        mc = model.config  # the resolved config (config.json omits values equal to the class defaults)
        self.model_type = str(hf_config["model_type"])
        self.dim = int(mc.hidden_size)
        self.n_layers = int(mc.num_hidden_layers)
        layer = int(config.layer)
        if not -(self.n_layers + 1) <= layer <= self.n_layers:
            raise Avatar3DError(f"speech encoder {folder}: layer {layer} does not exist; it has hidden states "
                                f"0..{self.n_layers} (or -1 for the last)")
        self.layer = layer % (self.n_layers + 1)
        self.receptive_field, self.stride = conv_geometry(list(mc.conv_kernel), list(mc.conv_stride))
        self.hop = max(1, int(round(self.sample_rate * config.hop_ms / 1000.0)))
        self.fingerprint: dict[str, Any] = {
            "model_type": self.model_type, "hidden_size": self.dim, "layer": self.layer,
            "n_layers": self.n_layers, "sample_rate": self.sample_rate, "do_normalize": self.do_normalize,
            "config_sha256": file_sha256(folder / "config.json"),
            "weights_sha256": _combined_sha256(weights),
        }
        self._silence: np.ndarray | None = None

    def __repr__(self) -> str:
        return (f"SpeechEncoder({self.folder}, {self.model_type}, dim={self.dim}, layer={self.layer}/"
                f"{self.n_layers})")

    @property
    def frame_rate(self) -> float:
        """The encoder's own frames per second (sample rate / conv stride: 50 for every standard checkpoint)."""
        return self.sample_rate / self.stride

    @property
    def name(self) -> str:
        """One line naming the front-end (stored in model files and shown in messages)."""
        return f"speech-encoder {self.model_type} layer {self.layer}/{self.n_layers} dim {self.dim}"

    def cache_key(self) -> str:
        """Hex key of everything the encoded stream depends on (encoder, layer, chunking, grid)."""
        blob = json.dumps({"fingerprint": self.fingerprint, "chunk_s": self.config.chunk_s,
                           "overlap_s": self.config.overlap_s, "hop": self.hop}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def frame_count(self, n_samples: int) -> int:
        """Rows of the stream for ``n_samples`` at the encoder's rate: ceil(n / hop), as the weight-free front-end."""
        return -(-int(n_samples) // self.hop)

    # --- encoding ----------------------------------------------------------------------------------
    def encode(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """float32 [ceil(n16k / hop), dim]: the chosen hidden state of mono float ``audio`` on the 100 Hz grid.

        ``sample_rate`` other than the encoder's (16 kHz) is resampled first
        (polyphase, as everywhere in avatar3d); the waveform is then normalised
        per utterance (zero mean, unit variance) when the checkpoint asks for it.
        """
        x = self._prepare(audio, sample_rate)
        n = len(x)
        if n < self.receptive_field:  # at least one encoder frame (the conv stack needs a full field)
            x = np.pad(x, (0, self.receptive_field - n))
        centres, feats = self._frames(x)
        return _to_grid(centres, feats, self.frame_count(n), self.hop)

    def _prepare(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Mono float audio at the encoder's rate, normalised per utterance when the checkpoint asks for it."""
        x = as_mono_audio(audio)
        rate = int(sample_rate)
        if rate <= 0:
            raise Avatar3DError(f"sample_rate={sample_rate} must be a positive number of Hz")
        if rate != self.sample_rate:
            x = resample(x, rate, self.sample_rate).astype(np.float32)
        if self.do_normalize:  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm, over the whole utterance
            mean = float(np.mean(x, dtype=np.float64))
            var = float(np.var(x, dtype=np.float64))
            x = ((x - mean) / math.sqrt(var + 1e-7)).astype(np.float32)
        return x

    def encode_native(self, audio: np.ndarray, sample_rate: int, final_norm: bool = False) -> np.ndarray:
        """float32 [ceil(n16k / stride), dim]: the chosen hidden state at the encoder's own frame rate (50 Hz).

        Why: tools that consume encoder frames directly (ER-NeRF's ``aud_hu.npy``: two 20 ms frames per
        25 fps video frame) need the frames themselves, not the 100 Hz interpolation of :meth:`encode`.
        Frame ``j`` reads samples ``[stride j, stride j + receptive_field)`` of the (resampled, normalised)
        audio; the end is zero-padded by ``receptive_field - stride`` samples so every started stride of
        audio gets one frame (``640 N`` samples -> ``2 N`` frames).  Same chunking as :meth:`encode`.
        ``final_norm``: when the chosen state is the last one, return transformers' ``last_hidden_state``,
        i.e. apply the closing LayerNorm of pre-norm ("stable layer norm", the *large*) checkpoints, which
        ``hidden_states[-1]`` lacks; per frame, so exact after chunking.  No effect on other layers / layouts.
        """
        x = self._prepare(audio, sample_rate)
        n_frames = max(1, -(-len(x) // self.stride))
        x = np.pad(x, (0, (n_frames - 1) * self.stride + self.receptive_field - len(x)))
        _, feats = self._frames(x)
        if len(feats) != n_frames:  # the conv lattice is fixed by the padding above; guard the chunk logic
            raise AssertionError(f"speech encoder gave {len(feats)} frames for {n_frames} strides")
        if final_norm and self.has_final_norm:
            with torch.inference_mode():
                feats = self.model.encoder.layer_norm(torch.from_numpy(np.ascontiguousarray(feats))).numpy()
        return np.ascontiguousarray(feats, np.float32)

    @property
    def has_final_norm(self) -> bool:
        """Whether the chosen state is the last of a pre-norm checkpoint, whose last_hidden_state adds a LayerNorm."""
        return self.layer == self.n_layers and bool(getattr(self.model.config, "do_stable_layer_norm", False))

    def _frames(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centre sample [F], hidden state [F, dim]) of every encoder frame, chunk by chunk.

        The context each side is at least ``overlap_s`` and at least the
        positional convolution's reach, so layer 0 of a kept frame never sees a
        chunk border.  A first conv layer normalised over time (GroupNorm, the
        wav2vec 2.0 / HuBERT *base* layout) gets its statistics from the whole
        clip in a first pass, as a one-pass run would.
        """
        st = self.stride
        core = max(st, int(round(self.config.chunk_s * self.sample_rate / st)) * st)
        ctx = max(int(math.ceil(self.config.overlap_s * self.sample_rate / st)), self._pos_reach + 1) * st
        n = len(x)
        if n <= core + ctx:
            feats = self._run(x)
            return st * np.arange(len(feats)) + self.receptive_field / 2.0, feats
        centres, parts = [], []
        with self._clip_statistics(x, core):
            for a in range(0, n, core):
                lo, hi = max(0, a - ctx), min(n, a + core + ctx)
                feats = self._run(x[lo:hi])
                c = lo + st * np.arange(len(feats)) + self.receptive_field / 2.0
                last = a + core >= n
                keep = (c >= a) & ((c < a + core) | last)
                centres.append(c[keep])
                parts.append(feats[keep])
        return np.concatenate(centres), np.concatenate(parts)

    @property
    def _pos_reach(self) -> int:
        """Encoder frames the positional convolution(s) reach on each side."""
        mc = self.model.config
        return (int(getattr(mc, "num_conv_pos_embeddings", 128)) // 2) * int(
            getattr(mc, "num_conv_pos_embedding_layers", 1) or 1)

    @contextlib.contextmanager
    def _clip_statistics(self, x: np.ndarray, core: int) -> Iterator[None]:
        """While chunking: the first conv layer's per-channel GroupNorm uses the whole clip's statistics."""
        first = self.model.feature_extractor.conv_layers[0]
        gn = getattr(first, "layer_norm", None)
        if not (isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == gn.num_channels):
            yield  # per-frame LayerNorm (large checkpoints) or none: already local
            return
        conv = first.conv
        k, s = int(conv.kernel_size[0]), int(conv.stride[0])
        total = torch.zeros(gn.num_channels, dtype=torch.float64)
        square = torch.zeros(gn.num_channels, dtype=torch.float64)
        count = 0
        with torch.inference_mode():
            for a in range(0, len(x), core):  # core is a multiple of the stride: frames tile the clip exactly
                seg = torch.from_numpy(np.ascontiguousarray(x[a:a + core + k - s], np.float32))
                if len(seg) < k:
                    break
                h = conv(seg[None, None])[0].double()  # [C, frames starting in this core]
                total += h.sum(dim=1)
                square += h.square().sum(dim=1)
                count += h.shape[1]
        mean = total / count
        var = (square / count - mean.square()).clamp_min(0.0)
        first.layer_norm = _FixedChannelNorm(gn, mean, var)
        try:
            yield
        finally:
            first.layer_norm = gn

    def _run(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None], output_hidden_states=True)
        return out.hidden_states[self.layer][0].float().numpy()

    def silence(self) -> np.ndarray:
        """[dim] the stream's steady value on digital silence (what window slots outside a clip read)."""
        if self._silence is None:
            s = self.encode(np.zeros(self.sample_rate, np.float32), self.sample_rate)
            self._silence = s[len(s) // 2].astype(np.float32)
        return self._silence


class _FixedChannelNorm(torch.nn.Module):
    """A per-channel GroupNorm with given statistics (swapped in for the length of one chunked encode)."""

    def __init__(self, gn: torch.nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        scale = gn.weight.detach().double() / torch.sqrt(var + gn.eps)
        self.scale = scale.float()[None, :, None]
        self.shift = (gn.bias.detach().double() - mean * scale).float()[None, :, None]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale + self.shift


def _combined_sha256(files: list[Path]) -> str:
    if len(files) == 1:
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


def _to_grid(centres: np.ndarray, feats: np.ndarray, n_rows: int, hop: int) -> np.ndarray:
    """Linear interpolation in time of frames at ``centres`` (samples) onto grid centres ``(k + 0.5) * hop``."""
    t = (np.arange(n_rows) + 0.5) * hop
    if len(centres) == 1:
        return np.repeat(feats[:1], n_rows, axis=0).astype(np.float32)
    pos = np.interp(t, centres, np.arange(len(centres), dtype=np.float64))  # fractional frame index, clamped
    lo = np.minimum(np.floor(pos).astype(np.int64), len(centres) - 2)
    w = (pos - lo).astype(np.float32)[:, None]
    return (feats[lo] * (1.0 - w) + feats[lo + 1] * w).astype(np.float32)


def load_speech_encoder(path: str | Path, layer: int = -1, config: SpeechEncoderConfig | None = None,
                        ) -> SpeechEncoder:
    """Load a local wav2vec 2.0 / HuBERT / WavLM / data2vec-audio folder; never downloads.

    ``layer`` picks the hidden state (see :class:`SpeechEncoderConfig`); a
    ``config`` given overrides it.  One-line :class:`Avatar3DError` for a
    missing folder, a hub id, a missing config.json or weight file, an
    unsupported model type, or transformers not installed.
    """
    config = config or SpeechEncoderConfig(layer=int(layer))
    folder, hf_cfg, weights = _check_folder(path)
    transformers = _import_transformers()
    pre = folder / "preprocessor_config.json"
    sample_rate, do_normalize = 16000, True
    if pre.is_file():
        try:
            pc = json.loads(pre.read_text(encoding="utf-8"))
            sample_rate = int(pc.get("sampling_rate", 16000))
            do_normalize = bool(pc.get("do_normalize", True))
        except (OSError, ValueError, TypeError) as exc:
            raise Avatar3DError(f"{pre} is unreadable ({exc}): fix or delete it (defaults: 16 kHz, "
                                "normalised)") from exc
    try:
        transformers.utils.logging.disable_progress_bar()
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken or foreign checkpoint
        raise Avatar3DError(f"speech encoder folder {folder} could not be loaded by transformers "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            "check the checkpoint is complete") from exc
    model.eval()
    enc = SpeechEncoder(folder, model, hf_cfg, weights, config, sample_rate, do_normalize)
    if enc.layer < enc.n_layers:  # later layers never influence the chosen hidden state: skip them
        model.encoder.layers = model.encoder.layers[:enc.layer + 1]
    return enc
