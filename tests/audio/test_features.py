"""The weight-free audio front-end on real signals: tones, noise, silence, espeak-ng speech."""
from __future__ import annotations

import functools
import time

import numpy as np
import pytest

from avatar3d.audio.features import AudioFeatureConfig, energy, frame_features, log_mel, mel_center_frequencies, pitch
from avatar3d.errors import Avatar3DError

SR = 16000
CFG = AudioFeatureConfig()
TEXT = "She sells sea shells by the sea shore, and the fish swim far away from the harbour."
VOWELS = set("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
VOICELESS_FRICATIVES = set("S SH F TH HH".split())


def tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t + 0.3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def speech(pitch_setting: int) -> np.ndarray:
    from avatar3d.synth.speech import synthesize

    return synthesize(TEXT, voice="en-us", pitch=pitch_setting)


@pytest.mark.parametrize("freq", [65.0, 110.0, 220.0, 440.0, 480.0])
def test_tone_pitch_within_2_percent_and_voiced(freq: float) -> None:
    f0, voiced = pitch(tone(freq), CFG)
    inner = slice(3, -3)  # edge frames see the zero padding
    assert voiced[inner].all()
    err = np.abs(f0[inner] / freq - 1.0)
    print(f"{freq:.0f} Hz tone: max f0 error {100 * err.max():.4f} %")
    assert err.max() < 0.02


def test_white_noise_is_mostly_unvoiced() -> None:
    noise = (0.1 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32)
    _, voiced = pitch(noise, CFG)
    print(f"white noise voiced fraction {voiced.mean():.3f}")
    assert voiced.mean() < 0.05


def test_silence_is_quiet_and_unvoiced() -> None:
    silence = np.zeros(SR, np.float32)
    f0, voiced = pitch(silence, CFG)
    level = energy(silence, CFG)
    assert not voiced.any() and (f0 == 0).all()
    assert level.max() <= -99.0
    assert np.isfinite(log_mel(silence, CFG)).all()


def test_energy_of_sine_is_its_rms_in_db() -> None:
    level = energy(tone(1000.0, amp=0.5), CFG)
    assert abs(np.median(level) - 20 * np.log10(0.5 / np.sqrt(2))) < 0.1  # -9.03 dB


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0, 6000.0])
def test_mel_of_tone_peaks_in_its_band(freq: float) -> None:
    mel = log_mel(tone(freq), CFG)
    assert mel.shape == (100, CFG.n_mels)
    peak = int(np.argmax(mel[5:-5].mean(axis=0)))
    expected = int(np.argmin(np.abs(mel_center_frequencies(CFG) - freq)))
    assert abs(peak - expected) <= 1 if freq > 5000 else peak == expected


def test_espeak_pitch_setting_raises_measured_f0() -> None:
    low, high = (pitch(speech(p), CFG) for p in (20, 80))
    med_low, med_high = np.median(low[0][low[1]]), np.median(high[0][high[1]])
    print(f"espeak en-us median f0: pitch 20 -> {med_low:.1f} Hz, pitch 80 -> {med_high:.1f} Hz")
    assert 60 < med_low < 300 and 60 < med_high < 300
    assert med_high > 1.3 * med_low
    for f0, voiced in (low, high):
        assert voiced.mean() > 0.3
        assert np.percentile(f0[voiced], 95) < 2.5 * np.median(f0[voiced])  # few octave jumps


def test_voicing_agrees_with_phone_alignment() -> None:
    from avatar3d.audio.alignment import align_phones

    audio = speech(50)
    phones = align_phones(audio, SR, TEXT, "en")
    _, voiced = pitch(audio, CFG)
    centres = (np.arange(voiced.size) + 0.5) * 0.01
    vowel, fricative = [], []
    for ph in phones:  # skip 15 ms at each boundary: alignment is good to ~20 ms
        inside = voiced[(centres >= ph.start + 0.015) & (centres < ph.end - 0.015)]
        if ph.label in VOWELS:
            vowel.extend(inside)
        elif ph.label in VOICELESS_FRICATIVES:
            fricative.extend(inside)
    print(f"voiced: vowels {np.mean(vowel):.2f} ({len(vowel)} frames), "
          f"voiceless fricatives {np.mean(fricative):.2f} ({len(fricative)} frames)")
    assert np.mean(vowel) > 0.7
    assert np.mean(fricative) < 0.1


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97])
def test_burst_lands_in_the_video_frame_covering_it(fps: float) -> None:
    n_frames = 60
    audio = np.zeros(int(n_frames / fps * SR) + 1, np.float32)
    frame = 37
    centre = (frame + 0.5) / fps  # burst centred on frame 37's centre, 20 ms long
    start = int(round((centre - 0.01) * SR))
    audio[start:start + 320] = tone(1000.0, seconds=0.02)
    feats = frame_features(audio, fps, n_frames, CFG)
    assert feats["mel_window"].shape == (n_frames, CFG.context_frames, CFG.n_mels)
    assert int(np.argmax(feats["energy_db"])) == frame
    assert np.allclose(feats["frame_times_s"], (np.arange(n_frames) + 0.5) / fps)
    # within frame 37's window the burst sits at the two centre slots (offsets -5 ms, +5 ms)
    band = feats["mel_window"][frame].mean(axis=1)
    assert set(np.argsort(band)[-2:]) == {CFG.context_frames // 2 - 1, CFG.context_frames // 2}
    # a neighbour's window sees it 1 / fps later/earlier: shifted by fps-dependent slots
    shift = int(round(100.0 / fps))
    band_prev = feats["mel_window"][frame - 1].mean(axis=1)
    assert int(np.argmax(band_prev)) in (CFG.context_frames // 2 - 1 + shift, CFG.context_frames // 2 + shift)


def test_pitch_and_energy_follow_a_tone_step_in_video_frames() -> None:
    fps, n_frames = 25.0, 50
    audio = np.concatenate([np.zeros(SR, np.float32), tone(200.0)])  # silence 0-1 s, 200 Hz 1-2 s
    feats = frame_features(audio, fps, n_frames, CFG)
    assert not feats["voiced"][:24].any() and feats["voiced"][26:].all()
    assert np.allclose(feats["f0_hz"][26:], 200.0, rtol=0.02)
    assert feats["energy_db"][:24].max() <= -99 and feats["energy_db"][26:].min() > -12


def test_sixty_seconds_is_fast() -> None:
    audio = np.tile(speech(50), 13)[: 60 * SR]
    frame_features(audio[:SR], 25.0, 25, CFG)  # warm-up
    timings = {}
    for name, fn in (("log_mel", log_mel), ("pitch", pitch), ("energy", energy)):
        t0 = time.perf_counter()
        fn(audio, CFG)
        timings[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = frame_features(audio, 25.0, 1500, CFG)
    timings["frame_features"] = time.perf_counter() - t0
    print("60 s of audio: " + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in timings.items()))
    assert feats["mel_window"].shape == (1500, 16, 80)


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(Avatar3DError, match="mono"):
        log_mel(np.zeros((100, 2), np.float32), CFG)
    with pytest.raises(Avatar3DError, match="NaN"):
        pitch(np.full(100, np.nan, np.float32), CFG)
    with pytest.raises(Avatar3DError, match="fps"):
        frame_features(tone(100.0), 0.0, 10, CFG)


# --- the prep stage ----------------------------------------------------------------------------

def test_extract_audio_features_writes_the_npz(tmp_path) -> None:
    from avatar3d.io.audio import write_wav
    from data_prep.audio_features import extract_audio_features

    audio = speech(50)
    fps = 25.0
    n_frames = int(len(audio) / SR * fps)
    write_wav(tmp_path / "audio.wav", audio, SR)
    out = extract_audio_features(tmp_path, fps, n_frames)
    with np.load(out, allow_pickle=False) as npz:
        assert npz["mel_window"].shape == (n_frames, 16, 80)
        assert npz["f0_hz"].shape == npz["voiced"].shape == npz["energy_db"].shape == (n_frames,)
        assert str(npz["frontend"]).startswith("weightfree-v1") and '"n_mels": 80' in str(npz["frontend"])
        assert float(npz["fps"]) == fps
    mtime = out.stat().st_mtime_ns
    assert extract_audio_features(tmp_path, fps, n_frames) == out and out.stat().st_mtime_ns == mtime  # skipped

    # another sample rate is resampled, not refused
    write_wav(tmp_path / "audio.wav", np.interp(np.arange(len(audio) * 3) / 3, np.arange(len(audio)), audio), 48000)
    with np.load(extract_audio_features(tmp_path, fps, n_frames), allow_pickle=False) as npz:
        assert int(npz["source_sample_rate"]) == 48000
        assert npz["voiced"].mean() > 0.3


def test_extract_audio_features_errors(tmp_path) -> None:
    from avatar3d.io.audio import write_wav
    from data_prep.audio_features import extract_audio_features

    with pytest.raises(Avatar3DError, match="not found"):
        extract_audio_features(tmp_path, 25.0, 10)
    (tmp_path / "audio.wav").write_bytes(b"RIFF garbage, not a wav")
    with pytest.raises(Avatar3DError, match="not a readable audio file"):
        extract_audio_features(tmp_path, 25.0, 10)
    write_wav(tmp_path / "audio.wav", np.zeros(SR, np.float32), SR)
    with pytest.raises(Avatar3DError, match="silent"):
        extract_audio_features(tmp_path, 25.0, 25)
    write_wav(tmp_path / "audio.wav", tone(200.0), SR)
    with pytest.raises(Avatar3DError, match="video is 2.00 s"):
        extract_audio_features(tmp_path, 25.0, 50)
    assert extract_audio_features(tmp_path, 25.0, 27).is_file()  # 80 ms short: padded with silence
