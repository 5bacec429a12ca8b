"""`avatar3d render AVATAR --text/--audio`: the avatar says new speech, in sync, with a Live Link CSV beside it.

One copy of the session's tiny avatar says one sentence through the CLI (personalising its
motion model on first use, as a user's first render does); the tests read what was written.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.cli import main
from avatar3d.eval.sync import audio_envelope, sync_offset
from avatar3d.io.audio import write_wav
from avatar3d.io.video import probe_video, read_audio, read_video
from avatar3d.synth.speech import synthesize

SENTENCE = "Peter bought a big bag of bread. Then he walked home."


@pytest.fixture(scope="module")
def spoken(tiny_avatar_run, tmp_path_factory):
    """(avatar copy, mp4, csv): the tiny avatar saying SENTENCE, pose looped, blinks sampled."""
    folder = tmp_path_factory.mktemp("speech-render")
    avatar = folder / "avatar"
    shutil.copytree(tiny_avatar_run[0], avatar, ignore=shutil.ignore_patterns("tensorboard", "checkpoint.pt"))
    mp4, table = folder / "say.mp4", folder / "say.csv"
    assert main(["render", str(avatar), "--text", SENTENCE, "-o", str(mp4), "--blendshapes", str(table)]) == 0
    return avatar, mp4, table


def _csv(path: Path) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(path.open()))
    return rows[0], np.array([[float(v) for v in row[2:]] for row in rows[1:]])


def test_video_has_one_frame_per_frame_of_speech_and_the_speech_itself(spoken) -> None:
    avatar, mp4, _ = spoken
    assert (avatar / "motion.pt").is_file(), "the personalised motion model is kept beside the avatar"
    speech = synthesize(SENTENCE, sample_rate=16000)
    info = probe_video(mp4)
    frames = list(read_video(mp4))
    assert len(frames) == round(len(speech) / 16000 * info.fps)
    assert frames[0].shape == (64, 64, 3)
    track = read_audio(mp4, 16000)
    assert abs(len(track) - len(speech)) < 0.05 * 16000
    n = min(len(track), len(speech))
    lags = range(-400, 401, 40)  # within 25 ms: the mp4's sound starts with its first frame
    corr = [np.corrcoef(np.roll(track[:n], k), speech[:n])[0, 1] for k in lags]
    assert max(corr) > 0.8 and abs(list(lags)[int(np.argmax(corr))]) <= 400


def test_mouth_curves_follow_the_speech_within_one_frame(spoken) -> None:
    _, mp4, table = spoken
    header, values = _csv(table)
    assert header[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"] and len(header) == 63
    assert len(values) == len(list(read_video(mp4)))
    jaw = values[:, header.index("JawOpen") - 2]
    speech = read_audio(mp4, 16000)
    envelope = audio_envelope(speech, 16000, 25.0, len(jaw))
    result = sync_offset(jaw, envelope)
    print(f"jawOpen vs speech envelope: lag {result.lag_frames} frames, confidence {result.confidence:.2f}")
    assert abs(result.lag_frames) <= 1 and result.confidence > 0.4


def test_head_pose_loops_the_training_clip_and_eyes_blink(spoken) -> None:
    avatar, _, table = spoken
    header, values = _csv(table)
    yaw = values[:, header.index("HeadYaw") - 2]
    assert np.ptp(yaw) > 0, "--pose subject must move the head"
    assert np.abs(np.diff(yaw)).max() * 180 < 2.0, "no jump of more than 2° between frames"
    blink = values[:, header.index("EyeBlinkLeft") - 2]
    assert np.ptp(blink) > 0.2, "a blink in ~4 s of speech (the subject blinks every 2-6 s)"


def test_static_pose_without_blinks_moves_only_the_mouth(spoken, tmp_path) -> None:
    avatar, _, _ = spoken
    speech = synthesize("Bob and Mama.", sample_rate=16000)
    wav, mp4 = write_wav(tmp_path / "s.wav", speech, 16000), tmp_path / "still.mp4"
    assert main(["render", str(avatar), "--audio", str(wav), "--pose", "static", "--blink", "off",
                 "-o", str(mp4)]) == 0  # fmt: skip
    frames = np.stack(list(read_video(mp4))).astype(np.float32)
    upper = np.abs(np.diff(frames[:, :24], axis=0)).max()
    print(f"static render: largest frame-to-frame change above the eyes {upper:.1f} / 255")
    assert upper <= 6.0, "hair and forehead must stay still when only speech drives the avatar"


def test_bad_speech_input_is_a_one_line_error_and_writes_nothing(spoken, tmp_path, capsys) -> None:
    avatar, _, _ = spoken
    out = tmp_path / "x.mp4"
    short = write_wav(tmp_path / "short.wav", np.zeros(800, np.float32), 16000)
    for args, needle, code in (
        (["--audio", str(tmp_path / "missing.wav")], "not found", 3),
        (["--audio", str(short)], "at least", 2),
        (["--text", "   "], "empty", 2),
        (["--text", "hi", "--mouth-scale", "9"], "mouth-scale", 2),
        (["--text", "hi", "--voice", "xx-nonexistent"], "voice", 2),
    ):
        assert main(["render", str(avatar), *args, "-o", str(out)]) == code, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and "\n" not in err, err
        assert not out.exists() and not list(tmp_path.glob(".*x.mp4*"))
    assert main(["render", str(avatar), "--text", "hi", "-o", str(tmp_path)]) == 4  # a folder, not a file
    assert "directory" in capsys.readouterr().err


def test_a_personalised_model_of_an_older_tracking_is_made_again(spoken, tmp_path, monkeypatch) -> None:
    """A re-tracked subject must not keep driving the avatar with the old tracking's coefficient scale."""
    import functools

    from avatar3d.avatar.bundle import AvatarBundle
    from avatar3d.motion import personalize as personalize_module
    from avatar3d.motion.model import load
    from avatar3d.render import speech as speech_module
    from avatar3d.render.speech import mouth_model_for

    # what is tested is *that* it is made again, from the subject on disk: 40 fine-tuning steps do (~15 s saved)
    monkeypatch.setattr(speech_module, "personalize", functools.partial(
        personalize_module.personalize, config=personalize_module.PersonalizeConfig(steps=40)))

    avatar = spoken[0]
    bundle = AvatarBundle.load(avatar)
    kept = mouth_model_for(avatar, bundle, progress=False, log=lambda s: None)
    assert kept.info["personalization"]["signature"]["tracking_sha256"]  # the first render personalised it
    copy = tmp_path / "avatar"
    copy.mkdir()
    stale = load(avatar / "motion.pt")
    stale.info["personalization"]["signature"]["tracking_sha256"] = "0" * 64  # "made from another tracking"
    stale.save(copy / "motion.pt")
    said: list[str] = []
    fresh = mouth_model_for(copy, bundle, progress=False, log=said.append)
    assert any("re-tracked" in line for line in said)
    assert fresh.info["personalization"]["signature"] == kept.info["personalization"]["signature"]
    assert load(copy / "motion.pt").info["personalization"]["signature"] == kept.info["personalization"]["signature"]


def test_an_avatar_whose_subject_is_gone_says_how_to_personalise(tiny_avatar_run, tmp_path, capsys) -> None:
    avatar = tmp_path / "moved"
    shutil.copytree(tiny_avatar_run[0], avatar, ignore=shutil.ignore_patterns("tensorboard", "checkpoint.pt"))
    bundle = torch.load(avatar / "avatar.pt", weights_only=False)
    bundle["subject"] = str(tmp_path / "gone")  # the file holds a plain dict
    torch.save(bundle, avatar / "avatar.pt")
    assert main(["render", str(avatar), "--text", "hi", "-o", str(tmp_path / "y.mp4")]) == 2
    assert "avatar3d motion personalize" in capsys.readouterr().err


def test_an_avatar_from_an_incompatible_version_names_both_versions(tiny_avatar_run, tmp_path, capsys) -> None:
    avatar = tmp_path / "future"
    shutil.copytree(tiny_avatar_run[0], avatar, ignore=shutil.ignore_patterns("tensorboard", "checkpoint.pt"))
    bundle = torch.load(avatar / "avatar.pt", weights_only=False)
    bundle["format_version"], bundle["avatar3d_version"] = 99, "9.9.9"
    torch.save(bundle, avatar / "avatar.pt")
    assert main(["render", str(avatar), "--text", "hi", "-o", str(tmp_path / "z.mp4")]) == 3
    err = capsys.readouterr().err
    assert "9.9.9" in err and "format 99" in err and "avatar3d 0." in err and "\n" == err[-1] and err.count("\n") == 1
    assert not (tmp_path / "z.mp4").exists()
