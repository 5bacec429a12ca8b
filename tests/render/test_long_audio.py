"""`avatar3d render --audio` streams long speech: memory bounded by a chunk, not by the file (issue 7).

An hour cannot be rendered in CI (the tiny avatar takes ~25 ms a frame here even at 8²), so the
end-to-end memory test renders 2 and 10 minutes of speech through the CLI with a copy of the
session's tiny avatar whose frame rate is set to 1 fps: every stage that scales with the audio
(decoding, the motion model at its own 25 fps, the mp4's AAC track) runs on all ten minutes, and
only the number of rendered frames is cut.  Short speech must come out as before streaming:
the same mouth curves and the same mp4 sound.
"""
from __future__ import annotations

import csv
import shutil
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
import torch

from avatar3d.audio.alignment import align_phones, reset_aligners
from avatar3d.audio.phones import SIL, Phone
from avatar3d.audio.tts_phonemes import synthesize_with_phonemes
from avatar3d.avatar.loading import load_avatar
from avatar3d.cli import main
from avatar3d.export.livelink import arkit_weights, write_livelink_csv
from avatar3d.io.video import VideoWriter, probe_video, read_audio
from avatar3d.motion.model import DEFAULT_MODEL_PATH, load_default
from avatar3d.motion.phone_constraints import PhoneConstraintConfig, apply_phone_constraints
from avatar3d.render.drive import DriveConfig
from avatar3d.render.speech import (SpeechAudio, StreamConfig, constrain_in_windows, drive_from_speech,  # fmt: skip
                                    gated_mouth_curves, phone_loop_timeline, write_blendshapes_csv)
from avatar3d.synth.speech import synthesize

SR = 16000
SENTENCES = ("Peter bought a big bag of bread.", "Mama made a warm apple pie for Bob.",
             "The puppy played by the empty pool.", "Bring me the purple umbrella before the bus.")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread: far cheaper than two fighting a loaded 2-core CPU (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _avatar_copy(tiny_avatar_run, folder: Path, fps: float | None = None) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(tiny_avatar_run[0] / "config.yaml", folder)
    bundle = torch.load(tiny_avatar_run[0] / "avatar.pt", weights_only=False)
    if fps is not None:
        bundle["fps"] = fps
    torch.save(bundle, folder / "avatar.pt")
    return folder


def _peak_growth(run: Callable[[], None]) -> int:
    """Bytes the process's peak memory rose above its size before ``run``: peak RSS (reset through
    /proc/self/clear_refs, no overhead), or Python's traced allocations (numpy included) where that is missing."""
    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(key)

    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = status("VmRSS")
    except OSError:
        tracemalloc.start()
        try:
            run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    run()
    return status("VmHWM") - before


def _render(avatar: Path, wav: Path, out: Path, *extra: str) -> None:
    assert main(["render", str(avatar), "--audio", str(wav), "-o", str(out), "--size", "8",
                 "--motion-model", str(DEFAULT_MODEL_PATH), *extra]) == 0  # fmt: skip


def test_ten_minutes_render_in_memory_that_does_not_grow_with_the_length(tiny_avatar_run, tmp_path) -> None:
    avatar = _avatar_copy(tiny_avatar_run, tmp_path / "avatar_1fps", fps=1.0)
    speech = synthesize("Bring me the purple umbrella before the morning bus arrives.", voice="en-us")
    block = np.zeros(10 * SR, np.float32)  # 10 s: a sentence, then silence
    block[4000:4000 + len(speech)] = speech
    growth = {}
    for minutes in (1 / 6, 1, 10):  # 10 s first: what any first render loads (kernels, codecs) is not counted
        wav = tmp_path / f"speech_{minutes:.2f}min.wav"
        sf.write(str(wav), np.tile(block, round(6 * minutes)), SR, subtype="PCM_16")
        out, table = tmp_path / f"say_{minutes:.2f}min.mp4", tmp_path / f"say_{minutes:.2f}min.csv"
        growth[minutes] = _peak_growth(lambda: _render(avatar, wav, out, "--phones", "off", "--blendshapes",
                                                       str(table)))  # fmt: skip
    decoded = 600 * SR * 4  # the 10-minute track as float32: 38.4 MB (before streaming: +562 MB peak RSS)
    print(f"peak memory growth: 1 min {growth[1] / 1e6:.1f} MB, 10 min {growth[10] / 1e6:.1f} MB "
          f"(decoded 10-min track {decoded / 1e6:.1f} MB)")
    assert growth[10] < 12e6, "far below the decoded audio"
    assert growth[10] < growth[1] + 6e6, "9 more minutes of speech (34.6 MB decoded) must not add memory"
    # one frame per second of speech, the whole ten minutes of sound, in step to the end
    info = probe_video(out)
    assert info.n_frames == 600 and abs(info.duration - 600) < 1
    sound = read_audio(out, SR)
    assert abs(len(sound) - 600 * SR) <= 1024  # within one AAC frame
    source = np.tile(block, 60)
    for start in (0, len(source) - 20 * SR):  # first and last 20 s: the same samples at lag 0 (±2 ms)
        a, b = sound[start:start + 20 * SR], source[start:start + 20 * SR]
        lags = range(-32, 33, 4)
        corr = [np.dot(np.roll(a, k), b) / (np.linalg.norm(a) * np.linalg.norm(b)) for k in lags]
        assert max(corr) > 0.9 and list(lags)[int(np.argmax(corr))] == 0
    rows = list(csv.reader(table.open()))
    assert len(rows) == 1 + 600 and rows[-1][0].startswith("00:09:59")


def _speech_with_pauses(copies: int, texts: tuple[str, ...] = SENTENCES) -> tuple[np.ndarray, list[Phone]]:
    """``texts`` spoken ``copies`` times with 0.6 s pauses, and espeak-ng's own phone timeline of it."""
    audio, truth, t = [], [], 0.0
    for _ in range(copies):
        for text in texts:
            tts = synthesize_with_phonemes(text, sample_rate=SR)
            truth += [Phone(p.start + t, p.end + t, p.label) for p in tts.as_phones()]
            t += len(tts.audio) / SR
            truth.append(Phone(t, t + 0.6, SIL))
            audio += [tts.audio, np.zeros(int(0.6 * SR), np.float32)]
            t += 0.6
    return np.concatenate(audio), truth


def test_short_speech_streams_to_the_same_curves_and_sound_as_before(tiny_avatar_run, tmp_path) -> None:
    avatar = _avatar_copy(tiny_avatar_run, tmp_path / "avatar")
    audio, _ = _speech_with_pauses(1, SENTENCES[:2])
    audio = audio[:-3333]  # a duration that is not a whole number of frames
    wav, mp4, table = tmp_path / "say.wav", tmp_path / "say.mp4", tmp_path / "say.csv"
    sf.write(str(wav), audio, SR, subtype="FLOAT")
    reset_aligners()  # pocketsphinx's phone loop carries state from one decode to the next
    _render(avatar, wav, mp4, "--pose", "static", "--blink", "off", "--blendshapes", str(table),
            "--mouth-amplitude", "predicted")  # the model's own curves: what the code before streaming gave
    whole = read_audio(wav, SR)
    n = round(len(whole) / SR * 25)
    assert probe_video(mp4).n_frames == n
    # the mouth: one offline pass over the whole track, one phone-loop decode of it (the code before streaming)
    reset_aligners()
    before = gated_mouth_curves(load_default(), whole, 25.0, n, align_phones(whole, SR, None))
    rows = list(csv.reader(table.open()))
    header, values = rows[0], np.array([[float(v) for v in row[2:]] for row in rows[1:]])
    for name in ("jawOpen", "mouthClose", "mouthPressLeft", "mouthFunnel"):
        column = values[:, header.index(name[0].upper() + name[1:]) - 2]
        assert np.abs(column - np.clip(before[name], 0, 1)).max() < 1e-5, name
    assert np.ptp(values[:, header.index("JawOpen") - 2]) > 0.1  # a mouth that moves
    # the sound: what the muxer made of the whole array before
    reference = tmp_path / "reference.mp4"
    with VideoWriter(reference, 25, audio=whole, sample_rate=SR) as writer:
        for _ in range(n):
            writer.write(np.zeros((8, 8, 3), np.uint8))
    assert np.array_equal(read_audio(mp4, SR), read_audio(reference, SR))


def test_muxer_pulls_audio_chunks_only_as_frames_need_them(tmp_path) -> None:
    rng = np.random.default_rng(3)
    track = (0.3 * rng.standard_normal(int(4.3 * SR))).astype(np.float32)
    pulled = [0]

    def chunks():
        for i in range(0, len(track), 5900):  # odd size: chunks straddle frames
            pulled[0] += len(track[i:i + 5900])
            yield track[i:i + 5900]

    with VideoWriter(tmp_path / "lazy.mp4", 25, audio=chunks(), sample_rate=SR) as writer:
        for i in range(100):
            writer.write(np.full((16, 16, 3), i, np.uint8))
            assert pulled[0] < (i + 1) * 640 + 5900, "never more than one chunk ahead of the frames"
    with VideoWriter(tmp_path / "array.mp4", 25, audio=track, sample_rate=SR) as writer:
        for i in range(100):
            writer.write(np.full((16, 16, 3), i, np.uint8))
    lazy, array = read_audio(tmp_path / "lazy.mp4", SR), read_audio(tmp_path / "array.mp4", SR)
    assert abs(len(lazy) - 4 * SR) <= 1024 and np.array_equal(lazy, array)  # 100 frames: 4 s, the rest dropped


def test_long_speech_is_phone_decoded_in_windows_cut_at_pauses(tmp_path) -> None:
    audio, truth = _speech_with_pauses(3)  # ~36 s; windows of <= 12 s (30 s by default)
    config = StreamConfig(phone_window_s=12.0, phone_cut_search_s=5.0)

    def decode(fn):  # (phones, traced peak bytes) from a fresh decoder
        reset_aligners()
        tracemalloc.start()
        try:
            return fn(), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    (windowed, cuts), peak_windowed = decode(lambda: phone_loop_timeline(SpeechAudio(array=audio).chunks(SR), config))
    whole, peak_whole = decode(lambda: align_phones(audio, SR, None))
    print(f"cuts at {cuts} s; traced peak {peak_windowed / 1e6:.1f} MB in windows, {peak_whole / 1e6:.1f} MB whole")
    assert len(cuts) >= 2 and all(any(p.label == SIL and p.start < c < p.end for p in truth) for c in cuts)
    assert peak_windowed < 0.6 * peak_whole  # bounded by a window (measured 5.7 vs 14.8 MB)
    assert windowed[0].start == 0 and abs(windowed[-1].end - len(audio) / SR) < 1e-6
    assert all(a.end == b.start for a, b in zip(windowed, windowed[1:]))

    def recall(phones: list[Phone]) -> tuple[float, float]:
        """Share of true bilabials with a decoded P/B/M within 30 ms, of true pauses >= 0.3 s half covered by SIL."""
        bil = [p for p in truth if p.label in ("P", "B", "M")]
        closing = [p for p in phones if p.label in ("P", "B", "M")]
        hit = sum(any(d.start < b.end + 0.03 and d.end > b.start - 0.03 for d in closing) for b in bil)
        pauses = [p for p in truth if p.label == SIL and p.end - p.start >= 0.3]
        sil = [p for p in phones if p.label == SIL]
        held = sum(any(min(d.end, s.end) - max(d.start, s.start) >= 0.5 * (s.end - s.start) for d in sil)
                   for s in pauses)
        return hit / len(bil), held / len(pauses)

    (bil_w, pause_w), (bil_1, pause_1) = recall(windowed), recall(whole)
    print(f"bilabials found: windows {bil_w:.2f}, whole {bil_1:.2f}; pauses: {pause_w:.2f}, {pause_1:.2f}")
    assert bil_w >= bil_1 - 0.1 and pause_w >= pause_1 and pause_w == 1.0


def test_phone_constraints_in_windows_equal_one_pass() -> None:
    audio, truth = _speech_with_pauses(2)
    n = int(len(audio) / SR * 25)
    model = load_default()
    curves = gated_mouth_curves(model, audio, 25.0, n)  # no phones: the raw gated curves
    rest = {name: 0.05 for name in curves}
    one = apply_phone_constraints(curves, truth, 25.0, PhoneConstraintConfig(), rest=rest).curves
    for window in (50, 251):  # 2 s and an odd 10 s: cuts inside phones and pauses
        windowed = constrain_in_windows(curves, truth, 25.0, PhoneConstraintConfig(), rest, window)
        assert max(np.abs(one[k] - windowed[k]).max() for k in one) == 0.0


def test_blendshape_csv_is_written_in_blocks_byte_for_byte(tiny_avatar_run, tmp_path) -> None:
    bundle = load_avatar(tiny_avatar_run[0]).bundle
    model = load_default()
    tracks = drive_from_speech(bundle, synthesize("Bob and Mama.", sample_rate=SR), model, DriveConfig(),
                               log=lambda s: None)  # fmt: skip
    write_blendshapes_csv(tmp_path / "blocks.csv", tracks, 25.0, block=7)
    write_livelink_csv(tmp_path / "whole.csv", arkit_weights(tracks.expression_names, tracks.expression,
                                                             tracks.blink), tracks.R, 25.0)  # fmt: skip
    assert (tmp_path / "blocks.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.csv", "whole.csv"]  # no temp files left
