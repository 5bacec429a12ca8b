"""The default motion model on real-world audio: silence, clipping, other rates, short clips, noise, DC, bad files.

What the model does is measured and asserted, including where it misbehaves: it
opens the jaw on white / pink noise and on a bare DC offset about as much as on
speech.  The opt-in guard (:class:`avatar3d.motion.streaming.GateConfig`) closes it
there and leaves speech unchanged; both are asserted below.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from avatar3d.errors import Avatar3DError
from avatar3d.io.video import read_audio
from avatar3d.motion.model import load_default
from avatar3d.motion.streaming import GateConfig, predict_stream, stream_file
from avatar3d.synth.speech import synthesize

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"), pytest.mark.usefixtures("one_torch_thread")]
SR, FPS = 16000, 25



@pytest.fixture(scope="module")
def model():
    return load_default()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A held-out voice (variant m3 never trained on), with 0.25 s of silence each side."""
    sp = synthesize("Bring me the purple umbrella before the morning bus arrives, and keep the map.",
                    voice="en-gb+m3")
    pad = np.zeros(4000, np.float32)
    return np.concatenate([pad, sp, pad])


def _w(curves: dict[str, np.ndarray], model) -> np.ndarray:
    return np.stack([curves[k] for k in model.names], axis=1)


def _predict(model, audio: np.ndarray, sr: int = SR) -> np.ndarray:
    n = math.ceil(len(audio) / sr * FPS)
    return _w(model.predict(audio, FPS, n, sr), model)


def _jaw(model, w: np.ndarray) -> np.ndarray:
    return w[:, model.names.index("jawOpen")]


def _noise(kind: str, n: int, rms: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(n)
    if kind == "pink":  # 1/f power: shape the white spectrum by 1/sqrt(f)
        spec = np.fft.rfft(white)
        spec[1:] /= np.sqrt(np.arange(1, len(spec)))
        spec[0] = 0.0
        white = np.fft.irfft(spec, n)
    return (white / white.std() * rms).astype(np.float32)


def test_silence_gives_a_closed_still_mouth(model):
    for audio in (np.zeros(3 * SR, np.float32), _noise("white", 3 * SR, 1e-4)):  # digital and -80 dB silence
        w = _predict(model, audio)
        assert np.isfinite(w).all() and w.shape == (75, len(model.names))
        jaw = _jaw(model, w)
        assert jaw.max() < 0.01 and jaw.std() < 2e-3, (jaw.max(), jaw.std())  # speech reaches ~0.18
        assert w.max() < 0.02


def test_clipped_loud_speech_still_speaks(model, speech):
    clean = _predict(model, speech)
    loud = np.clip(speech * 20.0, -1.0, 1.0)  # ~25 % of samples clipped
    w = _predict(model, loud)
    assert np.isfinite(w).all() and np.mean(np.abs(loud) >= 1.0) > 0.2
    jaw, jaw_clean = _jaw(model, w), _jaw(model, clean)
    r = np.corrcoef(jaw, jaw_clean)[0, 1]
    print(f"x20 clipped: jaw p95 {np.percentile(jaw, 95):.3f} (clean {np.percentile(jaw_clean, 95):.3f}), r {r:.2f}")
    assert np.percentile(jaw, 95) > 0.08  # measured 0.127 vs 0.177 clean: opens, a little less
    assert r > 0.5  # measured 0.62: still follows the syllables


@pytest.mark.parametrize("rate,channels", [(8000, 1), (48000, 2)])
def test_other_rates_and_stereo_files_are_resampled(model, speech, tmp_path: Path, rate, channels):
    clean = _predict(model, speech)
    x = resample_poly(speech, rate // 1000, 16).astype(np.float32)
    data = np.stack([x, x], axis=1) if channels == 2 else x  # dual mono: FFmpeg downmixes to (L + R) / sqrt 2
    path = tmp_path / f"speech_{rate}.wav"
    sf.write(str(path), data, rate, subtype="PCM_16")
    audio = read_audio(path, SR)
    assert abs(len(audio) - len(speech)) <= 2
    w = _predict(model, audio)[:len(clean)]
    streamed = np.concatenate([f.weights for f in stream_file(path, chunk_s=0.5, model=model)])[:len(clean)]
    assert np.abs(streamed - w).max() < 1e-4  # the stream decodes and resamples the same way
    diff = np.abs(w - clean).mean()
    r = np.corrcoef(_jaw(model, w), _jaw(model, clean))[0, 1]
    print(f"{rate} Hz x{channels}: mean |diff| {diff:.4f}, jaw r {r:.3f}")
    if rate == 48000:  # full band, +3 dB from the downmix: close to the original
        assert diff < 0.005 and r > 0.98
    else:  # telephone band: nothing above 4 kHz, which the model never saw; measured 0.049 / r 0.73
        assert diff < 0.07 and r > 0.6
        assert np.percentile(_jaw(model, w), 95) > 0.08


def test_one_second_clip(model):
    clip = synthesize("Hello there.", voice="en-us")[:SR]
    clip = np.pad(clip, (0, SR - len(clip)))
    w = _predict(model, clip)
    assert w.shape == (25, len(model.names)) and np.isfinite(w).all()
    assert _jaw(model, w).max() > 0.08  # measured 0.17
    streamed = predict_stream(model, clip)
    np.testing.assert_allclose(_w(streamed, model), w, atol=1e-4)


def test_noise_opens_the_raw_model_and_the_gate_closes_it(model, speech):
    """Measured: on noise at speech level the raw default model opens the jaw ~0.05-0.08 on average (speech:
    0.064); the gate holds it at the silent output (~4e-4) and changes speech by < 1e-3 on average."""
    rms = float(np.sqrt(np.mean(speech ** 2)))
    speech_raw = _predict(model, speech)
    gate = GateConfig()
    speech_gated = _w(predict_stream(model, speech, gate=gate), model)
    assert np.abs(speech_gated - speech_raw).mean() < 1e-3
    assert np.percentile(_jaw(model, speech_gated), 95) > 0.15
    for kind in ("white", "pink"):
        noise = _noise(kind, 4 * SR, rms)
        raw = _jaw(model, _predict(model, noise))
        gated = _jaw(model, _w(predict_stream(model, noise, gate=gate), model))
        print(f"{kind} noise: raw jaw mean {raw.mean():.3f} p95 {np.percentile(raw, 95):.3f}; gated max "
              f"{gated.max():.4f}; speech jaw mean {_jaw(model, speech_raw).mean():.3f}")
        assert raw.mean() > 0.02  # the raw model's known fault, measured so a fix shows up here
        assert gated.max() < 0.01


def test_dc_offset(model, speech):
    clean = _predict(model, speech)
    raw = _predict(model, speech + 0.3)
    assert np.isfinite(raw).all()
    raw_diff = np.abs(raw - clean).mean()
    blocked = _w(predict_stream(model, speech + 0.3, gate=GateConfig(dc_cutoff_hz=5.0)), model)
    blocked_diff = np.abs(blocked - clean).mean()
    print(f"speech + 0.3 DC: mean |diff| raw {raw_diff:.4f}, with the DC blocker {blocked_diff:.4f}")
    assert raw_diff < 0.03  # measured 0.016: still speech, but perturbed
    assert blocked_diff < 0.5 * raw_diff  # measured 0.0026
    # DC alone: raw opens the jaw (~0.10); the gate (voicing needs AC energy) keeps it shut except the two steps
    dc_only = np.full(3 * SR, 0.3, np.float32)
    assert _jaw(model, _predict(model, dc_only)).mean() > 0.05
    gated = _jaw(model, _w(predict_stream(model, dc_only, gate=GateConfig()), model))
    assert np.median(gated) < 0.005 and gated.mean() < 0.01


def test_nan_inf_and_empty_inputs_are_one_line_errors(model, tmp_path: Path):
    bad = np.zeros(SR, np.float32)
    bad[100] = np.nan
    with pytest.raises(Avatar3DError, match="NaN or inf"):
        model.predict(bad, FPS, 25)
    bad[100] = np.inf
    with pytest.raises(Avatar3DError, match="NaN or inf"):
        predict_stream(model, bad)
    float_wav = tmp_path / "nan.wav"
    sf.write(str(float_wav), bad, SR, subtype="FLOAT")
    with pytest.raises(Avatar3DError, match="nan.wav: audio contains NaN or inf"):
        list(stream_file(float_wav, model=model))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for call in (lambda: read_audio(empty), lambda: list(stream_file(empty, model=model))):
        with pytest.raises(Avatar3DError, match="empty.wav: file is empty"):
            call()
    no_samples = tmp_path / "nosamples.wav"
    sf.write(str(no_samples), np.zeros(0, np.float32), SR, subtype="PCM_16")
    with pytest.raises(Avatar3DError, match="nosamples.wav: contains no audio samples"):
        list(stream_file(no_samples, model=model))


def test_unknown_language_names_the_fix():
    with pytest.raises(Avatar3DError, match=r"unknown voice 'xx-nolang'.*--list-voices") as err:
        synthesize("Hello there.", voice="xx-nolang")
    assert "\n" not in str(err.value)
