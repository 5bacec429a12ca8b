"""Streaming inference: same frames as offline predict() for any chunking, bounded latency and memory."""
from __future__ import annotations

import math
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avatar3d.errors import Avatar3DError
from avatar3d.io.video import read_audio
from avatar3d.motion.model import load_default
from avatar3d.motion.streaming import (GateConfig, MotionStream, iter_audio_chunks, predict_stream, speech_gate,
                                       stream_file)
from avatar3d.synth.speech import synthesize

pytestmark = [pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"), pytest.mark.usefixtures("one_torch_thread")]
SR, FPS, FRAME = 16000, 25, 640
TOL = 1e-4  # float rounding only: measured <= 2.1e-6 on 2 min of speech with 20 ms chunks



@pytest.fixture(scope="module")
def model():
    return load_default()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """~4.5 s: leading digital silence, a sentence, a faint noise gap, a cut-off second sentence."""
    sp = synthesize("Peter painted a purple boat in the park before lunch.", voice="en-us")
    rng = np.random.default_rng(1)
    return np.concatenate([np.zeros(3000, np.float32), sp, (rng.standard_normal(5000) * 0.01).astype(np.float32),
                           sp[:7777]])


def _run(stream: MotionStream, audio: np.ndarray, chunk: int) -> np.ndarray:
    parts = []
    for i in range(0, len(audio), chunk):
        out = stream.push(audio[i:i + chunk])
        assert out.start == sum(len(p) for p in parts)  # frames come in order, none skipped or repeated
        parts.append(out)
    parts.append(stream.flush())
    return np.concatenate([p.weights for p in parts])


@pytest.mark.parametrize("chunk", [320, 333, 4097, 16000, 10**7])  # 20 ms, odd sizes, 1 s, everything at once
def test_stream_equals_offline_predict_for_any_chunk_size(model, speech, chunk):
    n = math.ceil(len(speech) / FRAME)
    offline = model.predict(speech, FPS, n)
    streamed = _run(MotionStream(model), speech, chunk)
    assert streamed.shape == (n, len(model.names))
    ref = np.stack([offline[k] for k in model.names], axis=1)
    assert np.abs(streamed - ref).max() < TOL
    assert ref[:, model.names.index("jawOpen")].max() > 0.15  # the comparison is on a mouth that moves


def test_frames_leave_once_their_lookahead_has_arrived(model, speech):
    stream = MotionStream(model)
    assert model.lookahead_ms() == pytest.approx(167.5)  # by construction
    assert stream.latency_ms() == pytest.approx(171.75)  # + the YIN window's reach past the last mel slot
    lag = round(stream.latency_ms() * SR / 1000)
    t = 40  # frame 40 is centred on sample 40 * 640 + 320
    ready = t * FRAME + FRAME // 2 + lag
    stream.push(speech[:ready - 1])
    assert stream.frames_out == t
    stream.push(speech[ready - 1:ready])
    assert stream.frames_out == t + 1
    # real time at 20 ms chunks: mean compute per chunk well under the chunk's 20 ms (measured ~3.5 ms loaded)
    rest = speech[ready:]
    timer = MotionStream(model)
    t0 = time.perf_counter()
    for i in range(0, len(rest), 320):
        timer.push(rest[i:i + 320])
    per_chunk_ms = 1000 * (time.perf_counter() - t0) / math.ceil(len(rest) / 320)
    print(f"compute per 20 ms chunk: {per_chunk_ms:.2f} ms")
    assert per_chunk_ms < 20.0


def test_gated_stream_is_chunk_independent_and_matches_the_offline_gate(model, speech):
    gate = GateConfig()
    whole = predict_stream(model, speech, gate=gate)
    chunked = _run(MotionStream(model, gate), speech, 777)
    assert np.abs(chunked - np.stack([whole[k] for k in model.names], axis=1)).max() < TOL
    # the offline gate function: 1 during voicing, fading to 0 after hold + ramp unvoiced frames
    v = np.array([0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)
    g = speech_gate(v, 12, 2, GateConfig(hold_frames=3, ramp_frames=2))
    np.testing.assert_allclose(g, [0, 0, 1, 1, 1, 1, 1, 1, 1, 0.5, 0, 0])


def test_ten_minute_file_streams_in_bounded_memory(model, tmp_path: Path):
    """10 min of speech + noise as a 16-bit WAV; memory stays far below the decoded file (38.4 MB)."""
    sp = synthesize("Bring me the purple umbrella before the morning bus arrives.", voice="en-us")
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(10 * SR) * 0.003).astype(np.float32)  # 10 s = 250 frames
    block[4000:4000 + len(sp)] += sp[:10 * SR - 4000]
    path = tmp_path / "long.wav"
    sf.write(str(path), np.tile(block, 60), SR, subtype="PCM_16")
    MotionStream(model).push(np.zeros(SR, np.float32))  # warm-up outside the measurement
    tracemalloc.start()
    stream = MotionStream(model)
    frames, largest = [], {}
    t0 = time.perf_counter()
    for chunk in iter_audio_chunks(path, SR, 2 * SR):
        out = stream.push(chunk)
        frames.append(out.weights)
        largest = {k: max(v, largest.get(k, 0)) for k, v in stream.buffered().items()}
    frames.append(stream.flush().weights)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    w = np.concatenate(frames)
    print(f"10 min streamed in {seconds:.1f} s ({600 / seconds:.0f}x real time), traced peak {peak / 1e6:.1f} MB, "
          f"buffers {largest}")
    assert w.shape == (15000, len(model.names))  # one frame per 40 ms, none lost at chunk joins
    assert peak < 8e6, f"traced peak {peak / 1e6:.1f} MB"  # measured 2.9 MB with 1 s chunks
    assert largest["audio_samples"] <= 2 * SR + 1000 and largest["analysis_rows"] <= 200 + 16
    assert largest["cache_frames"] <= 64
    # the audio repeats every 250 frames: so must the output, away from the file's two ends
    np.testing.assert_allclose(w[250:490], w[-250:-10], atol=TOL)
    np.testing.assert_allclose(w[250:500], w[7000:7250], atol=TOL)
    # and the stream_file generator yields the same frames as the explicit loop
    head = next(stream_file(path, chunk_s=2.0, model=model))
    np.testing.assert_allclose(head.weights, w[:len(head)], atol=TOL)


def test_stream_file_equals_offline_on_a_resampled_stereo_file(model, speech, tmp_path: Path):
    from scipy.signal import resample_poly

    x48 = resample_poly(speech, 3, 1).astype(np.float32)
    path = tmp_path / "stereo48k.wav"
    sf.write(str(path), np.stack([x48, 0.5 * x48], axis=1), 48000, subtype="PCM_16")
    audio = read_audio(path)
    offline = model.predict(audio, FPS, math.ceil(len(audio) / FRAME))
    streamed = np.concatenate([f.weights for f in stream_file(path, chunk_s=0.13, model=model)])
    np.testing.assert_allclose(streamed, np.stack([offline[k] for k in model.names], axis=1), atol=TOL)


def test_bad_stream_use_is_a_one_line_error(model, tmp_path: Path):
    stream = MotionStream(model)
    with pytest.raises(Avatar3DError, match="no audio was pushed"):
        stream.flush()
    with pytest.raises(Avatar3DError, match="mono"):
        MotionStream(model).push(np.zeros((100, 2), np.float32))
    with pytest.raises(Avatar3DError, match="int16"):
        MotionStream(model).push(np.zeros(100, np.int16))
    with pytest.raises(Avatar3DError, match="NaN or inf"):
        MotionStream(model).push(np.array([0.0, np.inf], np.float32))
    done = MotionStream(model)
    done.push(np.zeros(100, np.float32))
    assert len(done.flush()) == 1
    with pytest.raises(Avatar3DError, match="start a new one"):
        done.push(np.zeros(100, np.float32))
    with pytest.raises(Avatar3DError, match="chunk_s"):
        next(stream_file(tmp_path / "x.wav", chunk_s=0))
    with pytest.raises(Avatar3DError, match="not found"):
        next(stream_file(tmp_path / "missing.wav", model=model))
    with pytest.raises(Avatar3DError, match="hold_frames"):
        GateConfig(ramp_frames=0)
