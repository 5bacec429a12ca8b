"""Bad inputs x commands: each ends in one line ``error: ...`` naming the file, the exit code of its class
(docs/errors.md), no traceback, and an output location exactly as it was (no temp files, no empty folders).

The table runs each command in-process (a subprocess costs ~2-3 s); the shipped 160² avatar
(tests/assets/sync_avatar) stands in for a trained one, since every case fails before rendering.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from avatar3d.audio.speech_presence import MIN_VOICED_SHARE, voiced_share
from avatar3d.audio.tts_phonemes import synthesize_with_phonemes
from avatar3d.cli import main
from avatar3d.io.audio import write_wav
from avatar3d.io.video import VideoWriter

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "tests" / "assets" / "sync_avatar"


@dataclass
class Inputs:
    """Real bad inputs, made fresh in each test's folder."""

    root: Path
    readonly: Path  # a folder nothing can be written in (for root too)
    a_file: Path  # an existing regular file, where a folder or another file is wanted
    text_mp4: Path  # a text file named .mp4
    truncated_mp4: Path  # the first half of a real mp4
    text_wav: Path
    text_png: Path
    corrupt_avatar: Path  # an avatar folder whose avatar.pt is truncated
    half_subject: Path  # a subject folder holding only its manifest
    nan_camera: Path  # a nerfstudio camera path with a NaN in its 8th number
    missing: Path  # nothing there
    tiny_face_mp4: Path  # 18x18 frames with a sound track: no face can be that small
    foreign_subject: Path  # a subject folder whose tracked poses are not the shipped avatar's subject
    memory_yaml: Path  # a train config whose ray batch cannot fit in any machine's memory


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    """A folder no file can be created in: permission bits for a user, a kernel filesystem for root."""
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new files to everyone
        yield Path("/sys")
        return
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.fixture
def inputs(tmp_path: Path, readonly: Path) -> Inputs:
    root = tmp_path / "in"
    root.mkdir()
    video = root / "real.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(video, 25) as writer:
        for _ in range(25):
            writer.write(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = video.read_bytes()
    truncated = root / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    video.unlink()
    text_mp4, text_wav, text_png = root / "notes.mp4", root / "notes.wav", root / "notes.png"
    for path in (text_mp4, text_wav, text_png):
        path.write_text("this is a text file\n")
    corrupt = root / "avatar"
    corrupt.mkdir()
    corrupt.joinpath("avatar.pt").write_bytes((ASSET / "avatar.pt").read_bytes()[:4096])
    half = root / "subject"
    half.mkdir()
    half.joinpath("manifest.json").write_text('{"format_version": 1}')
    half.joinpath("tracking.npz").write_bytes(b"PK\x03\x04 a zip cut short")  # once a BadZipFile traceback
    camera = root / "path.json"
    camera.write_text('{"camera_path": [{"camera_to_world": [1,0,0,0, 0,1,0,NaN, 0,0,1,0, 0,0,0,1], "fov": 40}]}')
    a_file = root / "taken.bin"
    a_file.write_bytes(b"mine")
    tiny = root / "tiny.mp4"
    tone = (0.3 * np.sin(2 * np.pi * 150 * np.arange(32000) / 16000)).astype(np.float32)
    with VideoWriter(tiny, 25, audio=tone, sample_rate=16000) as writer:
        for _ in range(50):
            writer.write(rng.integers(0, 255, (18, 18, 3), dtype=np.uint8))
    foreign = root / "foreign"
    foreign.mkdir()
    foreign.joinpath("manifest.json").write_text('{"format_version": 1, "n_frames": 400}')
    np.savez(foreign / "tracking.npz", R=np.tile(np.eye(3), (400, 1, 1)), t=np.tile([0.0, 0.0, 0.6], (400, 1)))
    memory = root / "memory.yaml"
    memory.write_text("resolution: 64\nsampler: {rays_per_step: 100000000}\n")
    return Inputs(root, readonly, a_file, text_mp4, truncated, text_wav, text_png, corrupt, half, camera,
                  root / "missing", tiny, foreign, memory)


# (id, argv from the inputs and an output folder, exit code, what the message must name)
Case = Callable[[Inputs, Path], tuple[list[str], int, str]]
CASES: dict[str, Case] = {
    # synth
    "synth-photo-missing": lambda i, o: (["synth", "-o", str(o / "s"), "--photo", str(i.missing)], 3, str(i.missing)),
    "synth-photo-corrupt": lambda i, o: (["synth", "-o", str(o / "s"), "--photo", str(i.text_png)], 3, str(i.text_png)),
    "synth-out-is-a-file": lambda i, o: (["synth", "-o", str(i.a_file)], 4, str(i.a_file)),
    "synth-out-readonly": lambda i, o: (["synth", "-o", str(i.readonly / "s")], 4, str(i.readonly)),
    "synth-odd-size": lambda i, o: (["synth", "-o", str(o / "s"), "--size", "511"], 2, "511"),
    # prep
    "prep-clip-missing": lambda i, o: (["prep", str(i.missing), "-o", str(o / "s")], 3, str(i.missing)),
    "prep-text-as-mp4": lambda i, o: (["prep", str(i.text_mp4), "-o", str(o / "s")], 3, str(i.text_mp4)),
    "prep-truncated-mp4": lambda i, o: (["prep", str(i.truncated_mp4), "-o", str(o / "s")], 3, str(i.truncated_mp4)),
    "prep-odd-size": lambda i, o: (["prep", str(i.truncated_mp4), "-o", str(o / "s"), "--size", "63"], 2, "--size"),
    "prep-out-is-a-file": lambda i, o: (["prep", str(i.text_mp4), "-o", str(i.a_file)], 4, str(i.a_file)),
    "prep-out-readonly": lambda i, o: (["prep", str(i.text_mp4), "-o", str(i.readonly / "s")], 4, str(i.readonly)),
    # train
    "train-subject-missing": lambda i, o: (["train", str(i.missing), "-o", str(o / "a")], 3, str(i.missing)),
    "train-subject-incomplete": lambda i, o: (["train", str(i.half_subject), "-o", str(o / "a")], 3,
                                              str(i.half_subject)),
    "train-out-is-a-file": lambda i, o: (["train", str(i.half_subject), "-o", str(i.a_file)], 4, str(i.a_file)),
    "train-out-readonly": lambda i, o: (["train", str(i.half_subject), "-o", str(i.readonly / "a")], 4,
                                        str(i.readonly)),
    "train-unknown-preset": lambda i, o: (["train", str(i.half_subject), "-o", str(o / "a"), "--config", "tinny"], 2,
                                          "tinny"),
    "train-resume-nothing": lambda i, o: (["train", str(i.half_subject), "-o", str(o / "a"), "--resume"], 2,
                                          str(o / "a")),
    # render
    "render-avatar-missing": lambda i, o: (["render", str(i.missing), "--text", "hi", "-o", str(o / "x.mp4")], 3,
                                           str(i.missing)),
    "render-avatar-corrupt": lambda i, o: (["render", str(i.corrupt_avatar), "--text", "hi", "-o", str(o / "x.mp4")],
                                           3, str(i.corrupt_avatar)),
    "render-audio-missing": lambda i, o: (["render", str(ASSET), "--audio", str(i.missing), "-o", str(o / "x.mp4")],
                                          3, str(i.missing)),
    "render-audio-corrupt": lambda i, o: (["render", str(ASSET), "--audio", str(i.text_wav), "-o", str(o / "x.mp4")],
                                          3, str(i.text_wav)),
    "render-camera-nan": lambda i, o: (["render", str(ASSET), "--text", "hi", "--camera", str(i.nan_camera), "-o",
                                        str(o / "x.mp4")], 2, "camera_to_world[7] is nan"),
    "render-out-is-a-folder": lambda i, o: (["render", str(ASSET), "--text", "hi", "-o", str(i.root)], 4, str(i.root)),
    "render-out-under-a-file": lambda i, o: (["render", str(ASSET), "--text", "hi", "-o", str(i.a_file / "x.mp4")], 4,
                                             str(i.a_file)),
    "render-out-readonly": lambda i, o: (["render", str(ASSET), "--text", "hi", "-o", str(i.readonly / "x.mp4")], 4,
                                         str(i.readonly)),
    # eval
    "eval-avatar-corrupt": lambda i, o: (["eval", str(i.corrupt_avatar), str(i.half_subject), "-o", str(o / "r")], 3,
                                         str(i.corrupt_avatar)),
    "eval-subject-missing": lambda i, o: (["eval", str(ASSET), str(i.missing), "-o", str(o / "r")], 3, str(i.missing)),
    "eval-out-is-a-file": lambda i, o: (["eval", str(ASSET), str(i.half_subject), "-o", str(i.a_file)], 4,
                                        str(i.a_file)),
    "eval-out-readonly": lambda i, o: (["eval", str(ASSET), str(i.half_subject), "-o", str(i.readonly / "r")], 4,
                                       str(i.readonly)),
    # export
    "export-avatar-corrupt": lambda i, o: (["export", str(i.corrupt_avatar), "--blendshapes", str(o / "b.csv")], 3,
                                           str(i.corrupt_avatar)),
    "export-mesh-readonly": lambda i, o: (["export", str(ASSET), "--mesh", str(i.readonly / "h.glb")], 4,
                                          str(i.readonly)),
    "export-splat-of-a-nerf-avatar": lambda i, o: (["export", str(ASSET), "--splat", str(o / "h.ply")], 2,
                                                   "nerf avatar"),
    "export-splat-not-a-ply": lambda i, o: (["export", str(ASSET), "--splat", str(o / "h.splat")], 2, ".ply"),
    "export-ernerf-out-is-a-file": lambda i, o: (["export", str(i.half_subject), "--to-ernerf", str(i.a_file)], 4,
                                                 str(i.a_file)),
    "export-ernerf-out-readonly": lambda i, o: (["export", str(i.half_subject), "--to-ernerf",
                                                 str(i.readonly / "d")], 4, str(i.readonly)),
    # guards before work (avatar3d/guards.py) and useless inputs
    "synth-long-text-needs-yes": lambda i, o: (["synth", "-o", str(o / "s"), "--text", "Bread. " * 3000], 2, "--yes"),
    "synth-long-duration-needs-yes": lambda i, o: (["synth", "-o", str(o / "s"), "--duration", "3600"], 2, "--yes"),
    "synth-out-of-disk": lambda i, o: (["synth", "-o", str(o / "s"), "--duration", "100000", "--size", "4096",
                                        "--yes"], 5, "not enough free disk"),
    "render-long-text-needs-yes": lambda i, o: (["render", str(ASSET), "--text", "Bread. " * 3000, "-o",
                                                 str(o / "x.mp4")], 2, "--yes"),
    "render-out-of-disk": lambda i, o: (["render", str(ASSET), "--text", "Bread. " * 200_000, "--size", "1024",
                                         "--yes", "-o", str(o / "x.mp4")], 5, "not enough free disk"),
    "train-out-of-memory": lambda i, o: (["train", str(i.foreign_subject), "-o", str(o / "a"), "--config",
                                          str(i.memory_yaml)], 6, "GB of memory"),
    "prep-out-of-disk": lambda i, o: (["prep", str(i.tiny_face_mp4), "-o", str(o / "s"), "--size", "2000000"], 5,
                                      "not enough free disk"),
    "prep-face-too-small": lambda i, o: (["prep", str(i.tiny_face_mp4), "-o", str(o / "s")], 2,
                                         f"face too small (at most 18 px: the frames are that small; needs >= 32 px) "
                                         f"in {i.tiny_face_mp4}"),
    "eval-tracking-truncated": lambda i, o: (["eval", str(ASSET), str(i.half_subject), "-o", str(o / "r")], 3,
                                             str(i.half_subject / "tracking.npz")),
    "eval-other-subject": lambda i, o: (["eval", str(ASSET), str(i.foreign_subject), "-o", str(o / "r")], 2,
                                        "--other-subject"),
    # motion
    "personalize-out-is-a-folder": lambda i, o: (["motion", "personalize", str(i.half_subject), "-o", str(i.root)], 4,
                                                 str(i.root)),
    "pretrain-out-readonly": lambda i, o: (["motion", "pretrain", str(i.half_subject), "-o",
                                            str(i.readonly / "m.pt")], 4, str(i.readonly)),
}  # fmt: skip


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_one_line_error(err: str, needle: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    last = lines[-1]
    assert last.startswith("error: ") and needle in last, (needle, err)
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return last


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, inputs: Inputs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv, code, needle = CASES[case](inputs, out)
    before = _tree(tmp_path)
    got = main(argv)
    err = capsys.readouterr().err
    _assert_one_line_error(err, needle)
    assert got == code, (got, err)
    assert _tree(tmp_path) == before, "the command left files behind"


def test_a_real_process_shows_no_traceback(inputs: Inputs, tmp_path: Path) -> None:
    """The installed entry point (not main() in this process) prints the same one line and code."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "avatar3d", "prep", str(inputs.truncated_mp4), "-o",
                           str(tmp_path / "subject")], capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    _assert_one_line_error(proc.stderr, str(inputs.truncated_mp4))
    assert not (tmp_path / "subject").exists(), "a refused prep left its subject folder behind"


def test_stale_temps_of_killed_runs_are_swept_at_start(inputs: Inputs, tmp_path: Path, capsys) -> None:
    """SIGKILL leaves hidden temps; the next run on the same output removes them (a live run's stay)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, live = proc.pid, os.getpid()
    out = tmp_path / "out"
    subject = out / "subject"
    subject.mkdir(parents=True)
    planted = {
        "render": [out / f".x.tmp-{dead}-00aa11bb.mp4"],
        "prep": [subject / f".frames.tmp-{dead}-00aa11bb.mp4", subject / f".manifest.tmp-{dead}-1234abcd.json"],
        "ernerf": [out / f".dump.tmp-{dead}-00aa11bb"],
    }
    kept = [out / f".x.tmp-{live}-00aa11bb.mp4", subject / "manifest.json"]
    for path in [*sum(planted.values(), []), *kept]:
        if path.name.startswith(".dump"):
            path.mkdir()  # a staged folder
        else:
            path.write_bytes(b"half")
    runs = {"render": ["render", str(inputs.missing), "--text", "hi", "-o", str(out / "x.mp4")],
            "prep": ["prep", str(inputs.missing), "-o", str(subject)],
            "ernerf": ["export", str(inputs.missing), "--to-ernerf", str(out / "dump")]}
    for name, argv in runs.items():
        assert main(argv) == 3, name
        capsys.readouterr()
        assert not any(p.exists() for p in planted[name]), name
    assert all(p.exists() for p in kept)


def test_personalize_checks_its_output_before_training(avatar_subject: Path, readonly: Path, capsys) -> None:
    started = time.perf_counter()
    assert main(["motion", "personalize", str(avatar_subject), "-o", str(readonly / "m.pt"), "--steps", "50"]) == 4
    _assert_one_line_error(capsys.readouterr().err, str(readonly))
    assert time.perf_counter() - started < 5, "the output was checked after the fine-tuning"


def test_prep_refuses_bad_options_before_creating_the_subject_folder(tmp_path: Path, capsys) -> None:
    subject = tmp_path / "new" / "subject"
    assert main(["prep", str(ASSET / "avatar.pt"), "-o", str(subject), "--size", "63"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "63")
    assert not (tmp_path / "new").exists()


def test_render_says_when_the_audio_holds_no_speech(inputs: Inputs, tmp_path: Path, capsys) -> None:
    """White noise is said to hold no speech before any rendering (here the render then stops at a corrupt
    motion model, to keep the test short); silence and faint noise are flagged too, speech is not."""
    rng = np.random.default_rng(1)
    noise = tmp_path / "noise.wav"
    write_wav(noise, (0.3 * rng.standard_normal(8000)).clip(-1, 1).astype(np.float32), 16000)
    out = tmp_path / "out" / "x.mp4"
    out.parent.mkdir()
    assert main(["render", str(ASSET), "--audio", str(noise), "--phones", "off", "--motion-model",
                 str(inputs.text_wav), "-o", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"warning: no speech found in {noise}: 0.0% of it is voiced" in err, err
    _assert_one_line_error(err, str(inputs.text_wav))
    assert list(out.parent.iterdir()) == []
    for silent in (np.zeros(16000, np.float32), (0.01 * rng.standard_normal(16000)).astype(np.float32)):
        assert voiced_share([silent]) < MIN_VOICED_SHARE
    speech = synthesize_with_phonemes("Peter bought a big bag of bread.", sample_rate=16000).audio
    assert voiced_share([speech]) > 10 * MIN_VOICED_SHARE


def test_personalize_says_when_the_subject_sound_holds_no_speech(tmp_path: Path, capsys) -> None:
    subject = tmp_path / "subject"
    subject.mkdir()
    subject.joinpath("manifest.json").write_text('{"format_version": 1}')
    write_wav(subject / "audio.wav", np.zeros(16000, np.float32), 16000)
    code = main(["motion", "personalize", str(subject), "-o", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert f"warning: no speech found in {subject / 'audio.wav'}" in err, err
    _assert_one_line_error(err, str(subject))  # then the incomplete subject is refused as before
    assert code in (2, 3) and not (tmp_path / "m.pt").exists()


def test_a_face_found_only_when_enlarged_is_too_small(tmp_path: Path, capsys) -> None:
    """The astronaut photo shrunk to a ~23 px face in a 256² frame: prep measures it and says so."""
    face = cv2.resize(astronaut(), None, fx=0.22, fy=0.22, interpolation=cv2.INTER_AREA)
    frame = np.full((256, 256, 3), 128, np.uint8)
    frame[60:60 + face.shape[0], 80:80 + face.shape[1]] = face
    clip = tmp_path / "wide.mp4"
    tone = (0.3 * np.sin(2 * np.pi * 150 * np.arange(32000) / 16000)).astype(np.float32)
    with VideoWriter(clip, 25, audio=tone, sample_rate=16000) as writer:
        for _ in range(50):
            writer.write(frame)
    assert main(["prep", str(clip), "-o", str(tmp_path / "subject")]) == 2
    last = _assert_one_line_error(capsys.readouterr().err, f"px; needs >= 32 px) in {clip}")
    px = int(re.search(r"face too small \((\d+) px", last).group(1))
    assert 15 <= px <= 31, last  # the mesh's forehead-to-chin box of the shrunk face
    assert not (tmp_path / "subject").exists()
