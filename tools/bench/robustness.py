"""Bad inputs x commands, and signals at random points: never a traceback, never a leftover, never lost work.

Usage: python tools/bench/robustness.py [--work DIR] [--seed N] [--subject DIR]

Every input is made on the fly in ``--work`` (default: a temp folder): a 4 s synthetic clip
(`avatar3d synth`) prepared by `avatar3d prep`, then broken every way a user breaks files
(corrupt, truncated, renamed, no audio, no face, tiny / huge / odd frames; silent, noise, clipped,
8-bit, float, 48 kHz stereo audio; empty / huge / unicode text; malformed camera paths;
unwritable / existing / missing outputs; missing or corrupt subject files and avatars; an avatar
evaluated on a subject it was not trained on). Each case runs the CLI in this process (as the
bad-input tests do) in a folder of its own, and is
  clean      when it exits 0 or with one line ``error: ...`` and a documented code;
  traceback  when a traceback or an internal error (exit 70) reaches the user;
  leftover   when a failed case left anything in its folder, or any case left a ``.tmp-`` file.
Then prep, train and render run as real processes and get SIGINT, SIGTERM or SIGKILL at a random
point: INT/TERM must exit 130/143 with no temp file left; after KILL, the next run on the same output
must sweep the dead process's temps; an interrupted train must resume at the step it stopped at
(lost steps = stopped - resumed; a killed one must lose nothing beyond its last checkpoint).
Prints a table; the last line is JSON. The shipped avatar (tests/assets/sync_avatar) is the trained
avatar of the render, eval and export cases.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from avatar3d.cli import main  # noqa: E402
from avatar3d.io.video import VideoWriter, read_audio, read_video  # noqa: E402
from avatar3d.train.checkpoint import CHECKPOINT_NAME, load_state  # noqa: E402

ASSET = REPO / "tests" / "assets" / "sync_avatar"
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7}
TRAIN_STEPS, CHECKPOINT_EVERY = 60, 10


@dataclass
class Outcome:
    name: str
    command: str
    code: int
    clean: bool
    traceback: bool
    leftovers: list[str] = field(default_factory=list)
    lost_steps: int = 0
    note: str = ""


# --- inputs --------------------------------------------------------------------------------------

def _write_video(path: Path, frames: list[np.ndarray], audio: np.ndarray | None, fps: int = 25) -> Path:
    with VideoWriter(path, fps, audio=audio, sample_rate=16000 if audio is not None else None) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def make_inputs(work: Path, subject: Path | None) -> dict[str, Path]:
    """Every bad input, plus a good clip and its prepared subject."""
    import cv2  # lazy: only the input maker resizes frames

    inp = work / "inputs"
    inp.mkdir(parents=True, exist_ok=True)
    clip_dir = inp / "clip"
    if not (clip_dir / "video.mp4").is_file():
        code = main(["synth", "-o", str(clip_dir), "--duration", "4", "--size", "256", "--seed", "3"])
        assert code == 0, "synth of the good clip failed"
    clip = clip_dir / "video.mp4"
    good = inp / "subject"
    if not (good / "manifest.json").is_file():
        if subject is not None:
            shutil.copytree(subject, good, ignore=shutil.ignore_patterns("cache"), dirs_exist_ok=True)
        else:
            assert main(["prep", str(clip), "-o", str(good), "--size", "256"]) == 0, "prep of the good clip failed"
    frames = [f for _, f in zip(range(50), read_video(clip))]
    speech = read_audio(clip, 16000)
    rng = np.random.default_rng(0)
    p: dict[str, Path] = {"clip": clip, "subject": good, "missing": inp / "missing.mp4", "avatar": ASSET}
    data = clip.read_bytes()
    p["truncated_mp4"] = inp / "truncated.mp4"
    p["truncated_mp4"].write_bytes(data[: len(data) // 2])
    p["random_mp4"] = inp / "random.mp4"
    p["random_mp4"].write_bytes(rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    p["empty_mp4"] = inp / "empty.mp4"
    p["empty_mp4"].write_bytes(b"")
    p["text_mp4"] = inp / "notes.mp4"
    p["text_mp4"].write_text("not a video\n")
    p["wav_as_mp4"] = inp / "speech_wav.mp4"
    sf.write(p["wav_as_mp4"], speech[:16000], 16000, format="WAV")
    p["png_as_mp4"] = inp / "image_png.mp4"
    cv2.imwrite(str(inp / "frame.png"), frames[0][..., ::-1])
    shutil.copy(inp / "frame.png", p["png_as_mp4"])
    p["mp4_as_wav"] = inp / "video_mp4.wav"
    shutil.copy(clip, p["mp4_as_wav"])
    p["no_audio"] = _write_video(inp / "no_audio.mp4", frames, None)
    p["no_face"] = _write_video(inp / "no_face.mp4", [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                                                      for _ in range(50)], speech[:32000])
    p["tiny"] = _write_video(inp / "tiny.mp4", [cv2.resize(f, (18, 18), interpolation=cv2.INTER_AREA)
                                               for f in frames], speech[:32000])
    p["small_face"] = _write_video(inp / "small_face.mp4", [cv2.resize(f, (48, 48), interpolation=cv2.INTER_AREA)
                                                           for f in frames], speech[:32000])
    p["odd"] = _write_video(inp / "odd.mp4", [cv2.resize(f, (130, 98)) for f in frames[:25]], speech[:16000])
    p["huge"] = _write_video(inp / "huge.mp4", [np.zeros((2160, 3840, 3), np.uint8)] * 3, speech[:16000 * 3 // 25])
    p["dir"] = inp / "a_folder"
    p["dir"].mkdir(exist_ok=True)
    # audio
    one = speech[:16000]
    p["silent_wav"] = inp / "silent.wav"
    sf.write(p["silent_wav"], np.zeros(16000, np.float32), 16000)
    p["noise_wav"] = inp / "noise.wav"
    sf.write(p["noise_wav"], (0.3 * rng.standard_normal(16000)).clip(-1, 1).astype(np.float32), 16000)
    p["clipped_wav"] = inp / "clipped.wav"
    sf.write(p["clipped_wav"], np.clip(one * 30, -1, 1), 16000)
    p["u8_wav"] = inp / "u8.wav"
    sf.write(p["u8_wav"], one, 16000, subtype="PCM_U8")
    p["float_wav"] = inp / "float.wav"
    sf.write(p["float_wav"], one.astype(np.float32), 16000, subtype="FLOAT")
    p["stereo48_wav"] = inp / "stereo48.wav"
    x48 = np.interp(np.arange(48000) / 3, np.arange(16000), one)
    sf.write(p["stereo48_wav"], np.stack([x48, 0.5 * x48], 1), 48000)
    p["short_wav"] = inp / "short.wav"
    sf.write(p["short_wav"], one[:800], 16000)
    p["truncated_wav"] = inp / "truncated.wav"
    full = io.BytesIO()
    sf.write(full, one, 16000, format="WAV")
    p["truncated_wav"].write_bytes(full.getvalue()[:30])
    p["text_wav"] = inp / "notes.wav"
    p["text_wav"].write_text("not audio\n")
    # text
    p["binary_txt"] = inp / "binary.txt"
    p["binary_txt"].write_bytes(b"\xff\xfe\xfa\x00\x81 not utf-8")
    p["empty_txt"] = inp / "empty.txt"
    p["empty_txt"].write_text("   \n")
    # camera paths
    cams = {"nan": '{"camera_path": [{"camera_to_world": [1,0,0,0, 0,1,0,NaN, 0,0,1,0, 0,0,0,1], "fov": 40}]}',
            "short": '{"camera_path": [{"camera_to_world": [1,0,0], "fov": 40}]}',
            "empty": '{"camera_path": []}', "broken": '{"camera_path": [', "list": "[1, 2, 3]",
            "nofov": '{"camera_path": [{"camera_to_world": [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1]}]}',
            "fov0": '{"camera_path": [{"camera_to_world": [1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1], "fov": 0}]}'}
    for key, text in cams.items():
        p[f"cam_{key}"] = inp / f"camera_{key}.json"
        p[f"cam_{key}"].write_text(text)
    # avatars and subjects
    p["avatar_corrupt"] = inp / "avatar_corrupt"
    p["avatar_corrupt"].mkdir(exist_ok=True)
    (p["avatar_corrupt"] / "avatar.pt").write_bytes((ASSET / "avatar.pt").read_bytes()[:4096])
    p["avatar_garbage"] = inp / "avatar_garbage"
    p["avatar_garbage"].mkdir(exist_ok=True)
    (p["avatar_garbage"] / "avatar.pt").write_bytes(rng.integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    p["avatar_empty"] = inp / "avatar_empty"
    p["avatar_empty"].mkdir(exist_ok=True)
    p["half_subject"] = inp / "half_subject"
    p["half_subject"].mkdir(exist_ok=True)
    (p["half_subject"] / "manifest.json").write_text('{"format_version": 1}')
    for broken, action in (("no_tracking", "delete"), ("bad_tracking", "truncate"), ("bad_manifest", "manifest"),
                           ("no_audio_subject", "audio"), ("no_frames", "frames")):
        folder = inp / broken
        if not folder.is_dir():
            shutil.copytree(good, folder, ignore=shutil.ignore_patterns("cache"))
        if action == "delete":
            (folder / "tracking.npz").unlink(missing_ok=True)
        elif action == "truncate":
            (folder / "tracking.npz").write_bytes((good / "tracking.npz").read_bytes()[:500])
        elif action == "manifest":
            (folder / "manifest.json").write_text('{"n_frames": ')
        elif action == "audio":
            (folder / "audio.wav").unlink(missing_ok=True)
        else:
            (folder / "frames.mp4").write_bytes(b"\x00" * 100)
        p[broken] = folder
    p["taken"] = inp / "taken.bin"
    p["taken"].write_bytes(b"mine")
    p["full_ernerf"] = inp / "full_ernerf"
    p["full_ernerf"].mkdir(exist_ok=True)
    (p["full_ernerf"] / "something.txt").write_text("x")
    p["yaml_unknown"] = inp / "unknown_key.yaml"
    p["yaml_unknown"].write_text("resolution: 64\nno_such_key: 1\n")
    p["yaml_broken"] = inp / "broken.yaml"
    p["yaml_broken"].write_text("resolution: [64\n")
    p["yaml_memory"] = inp / "memory.yaml"
    p["yaml_memory"].write_text("resolution: 64\nsampler: {rays_per_step: 100000000}\n")
    p["yaml_resolution"] = inp / "resolution.yaml"
    p["yaml_resolution"].write_text("resolution: 4096\n")
    return p


def readonly_folder(work: Path) -> Path:
    """A folder nothing can be written in: permission bits for a user, a kernel filesystem for root."""
    if os.geteuid() == 0:
        return Path("/sys/avatar3d-robustness")
    folder = work / "readonly"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


# --- the matrix ----------------------------------------------------------------------------------

def cases(p: dict[str, Path], ro: Path) -> dict[str, tuple[list[str], set[int]]]:
    """name -> (argv with OUT for the case's folder, acceptable exit codes)."""
    s = lambda k: str(p[k])  # noqa: E731
    A, E = str(ASSET), {2, 3}
    huge_text = "Peter bought a big bag of bread. " * 700  # ~23,000 characters: about 41,000 frames
    uni = "Grüße ✓ 日本 🙂."
    c: dict[str, tuple[list[str], set[int]]] = {}
    # prep
    for key in ("missing", "empty_mp4", "dir", "text_mp4", "random_mp4", "truncated_mp4", "wav_as_mp4",
                "png_as_mp4", "no_audio", "no_face", "tiny", "small_face", "huge"):
        c[f"prep/{key}"] = (["prep", s(key), "-o", "OUT/subject"], E)
    c["prep/odd-size-frames"] = (["prep", s("odd"), "-o", "OUT/subject", "--size", "128"], {0, 2})  # 130x98, 1 s
    c["prep/size-63"] = (["prep", s("clip"), "-o", "OUT/subject", "--size", "63"], {2})
    c["prep/size-0"] = (["prep", s("clip"), "-o", "OUT/subject", "--size", "0"], {2})
    c["prep/fps-abc"] = (["prep", s("clip"), "-o", "OUT/subject", "--fps", "abc"], {2})
    c["prep/out-is-a-file"] = (["prep", s("clip"), "-o", s("taken")], {4})
    c["prep/out-readonly"] = (["prep", s("clip"), "-o", str(ro / "subject")], {4})
    c["prep/out-under-a-file"] = (["prep", s("clip"), "-o", s("taken") + "/subject"], {4})
    c["prep/unknown-preset"] = (["prep", s("clip"), "-o", "OUT/subject", "--config", "nope"], {2, 3})
    c["prep/broken-yaml"] = (["prep", s("clip"), "-o", "OUT/subject", "--config", s("yaml_broken")], {2, 3})
    # synth
    c["synth/empty-text"] = (["synth", "-o", "OUT/s", "--text", "  "], {2})
    c["synth/huge-text"] = (["synth", "-o", "OUT/s", "--text", huge_text], {2})
    c["synth/unicode-text"] = (["synth", "-o", "OUT/s", "--text", uni, "--size", "128", "--fps", "10"], {0, 2})
    c["synth/text-file-missing"] = (["synth", "-o", "OUT/s", "--text-file", s("missing")], E)
    c["synth/text-file-binary"] = (["synth", "-o", "OUT/s", "--text-file", s("binary_txt")], E)
    c["synth/text-file-empty"] = (["synth", "-o", "OUT/s", "--text-file", s("empty_txt")], {2})
    c["synth/photo-missing"] = (["synth", "-o", "OUT/s", "--photo", s("missing")], E)
    c["synth/photo-is-a-video"] = (["synth", "-o", "OUT/s", "--photo", s("clip")], E)
    c["synth/photo-no-face"] = (["synth", "-o", "OUT/s", "--photo", s("avatar_garbage") + "/avatar.pt"], E)
    c["synth/odd-size"] = (["synth", "-o", "OUT/s", "--size", "511"], {2})
    c["synth/tiny-size"] = (["synth", "-o", "OUT/s", "--size", "2"], {2})
    c["synth/bad-voice"] = (["synth", "-o", "OUT/s", "--voice", "xx-nowhere"], {2})
    c["synth/long-duration"] = (["synth", "-o", "OUT/s", "--duration", "3600"], {2})
    c["synth/out-is-a-file"] = (["synth", "-o", s("taken")], {4})
    c["synth/out-readonly"] = (["synth", "-o", str(ro / "s")], {4})
    c["synth/no-out"] = (["synth"], {2})
    # train
    for key in ("missing", "dir", "half_subject", "no_tracking", "bad_tracking", "bad_manifest", "no_frames",
                "taken"):
        c[f"train/{key}"] = (["train", s(key), "-o", "OUT/run", "--steps", "2"], E)
    c["train/out-is-a-file"] = (["train", s("subject"), "-o", s("taken")], {4})
    c["train/out-readonly"] = (["train", s("subject"), "-o", str(ro / "run")], {4})
    c["train/unknown-preset"] = (["train", s("subject"), "-o", "OUT/run", "--config", "tinny"], {2})
    c["train/unknown-yaml-key"] = (["train", s("subject"), "-o", "OUT/run", "--config", s("yaml_unknown")], {2})
    c["train/broken-yaml"] = (["train", s("subject"), "-o", "OUT/run", "--config", s("yaml_broken")], {2, 3})
    c["train/out-of-memory"] = (["train", s("subject"), "-o", "OUT/run", "--config", s("yaml_memory")], {6})
    c["train/resolution-too-big"] = (["train", s("subject"), "-o", "OUT/run", "--config", s("yaml_resolution")],
                                     {2, 6})
    c["train/resume-nothing"] = (["train", s("subject"), "-o", "OUT/run", "--resume"], {2})
    c["train/steps-0"] = (["train", s("subject"), "-o", "OUT/run", "--steps", "0"], {2})
    # render
    speak = ["--text", "Hi.", "--size", "32"]
    for key in ("missing", "avatar_corrupt", "avatar_garbage", "avatar_empty", "subject", "taken"):
        c[f"render/avatar-{key}"] = (["render", s(key), *speak, "-o", "OUT/x.mp4"], E)
    for key in ("missing", "dir", "truncated_wav", "text_wav", "short_wav", "random_mp4", "empty_mp4", "no_audio"):
        c[f"render/audio-{key}"] = (["render", A, "--audio", s(key), "--size", "32", "-o", "OUT/x.mp4"], E)
    for key in ("silent_wav", "noise_wav", "clipped_wav", "u8_wav", "float_wav", "stereo48_wav", "mp4_as_wav"):
        c[f"render/audio-{key}"] = (["render", A, "--audio", s(key), "--phones", "off", "--size", "32", "-o",
                                     "OUT/x.mp4"], {0})
    c["render/text-empty"] = (["render", A, "--text", "", "--size", "32", "-o", "OUT/x.mp4"], {2})
    c["render/text-huge"] = (["render", A, "--text", huge_text, "--size", "32", "-o", "OUT/x.mp4"], {2})
    c["render/text-unicode"] = (["render", A, "--text", uni, "--phones", "off", "--size", "32", "-o", "OUT/x.mp4"],
                                {0, 2})
    for key in ("nan", "short", "empty", "broken", "list", "nofov", "fov0"):
        c[f"render/camera-{key}"] = (["render", A, *speak, "--camera", s(f"cam_{key}"), "-o", "OUT/x.mp4"], {0, 2, 3})
    c["render/camera-missing"] = (["render", A, *speak, "--camera", s("missing"), "-o", "OUT/x.mp4"], E)
    c["render/size-odd"] = (["render", A, "--text", "Hi.", "--size", "31", "-o", "OUT/x.mp4"], {2})
    c["render/size-huge"] = (["render", A, "--text", "Hi.", "--size", "16384", "-o", "OUT/x.mp4"], {6})
    c["render/stereo-negative"] = (["render", A, *speak, "--stereo", "-5", "-o", "OUT/x.mp4"], {2})
    c["render/out-is-a-folder"] = (["render", A, *speak, "-o", "OUT"], {4})
    c["render/out-readonly"] = (["render", A, *speak, "-o", str(ro / "x.mp4")], {4})
    c["render/out-under-a-file"] = (["render", A, *speak, "-o", s("taken") + "/x.mp4"], {4})
    c["render/motion-from-missing"] = (["render", A, "--motion-from", s("missing"), "-o", "OUT/x.mp4"], E)
    c["render/motion-from-half"] = (["render", A, "--motion-from", s("half_subject"), "-o", "OUT/x.mp4"], E)
    c["render/motion-from-camera"] = (["render", A, "--motion-from", s("subject"), "--camera", "orbit", "-o",
                                       "OUT/x.mp4"], {2})
    c["render/motion-model-corrupt"] = (["render", A, *speak, "--motion-model", s("text_wav"), "-o", "OUT/x.mp4"], E)
    c["render/no-source"] = (["render", A, "-o", "OUT/x.mp4"], {2})
    # eval
    c["eval/avatar-corrupt"] = (["eval", s("avatar_corrupt"), s("subject"), "-o", "OUT/r"], E)
    c["eval/subject-missing"] = (["eval", A, s("missing"), "-o", "OUT/r"], E)
    c["eval/subject-no-tracking"] = (["eval", A, s("no_tracking"), "-o", "OUT/r"], E)
    c["eval/subject-bad-tracking"] = (["eval", A, s("bad_tracking"), "-o", "OUT/r"], E)
    c["eval/mismatched-subject"] = (["eval", A, s("subject"), "-o", "OUT/r"], {2})
    c["eval/out-is-a-file"] = (["eval", A, s("subject"), "-o", s("taken")], {4})
    c["eval/out-readonly"] = (["eval", A, s("subject"), "-o", str(ro / "r")], {4})
    c["eval/frames-0"] = (["eval", A, s("subject"), "-o", "OUT/r", "--frames", "0"], {2})
    # export
    c["export/avatar-corrupt"] = (["export", s("avatar_corrupt"), "--blendshapes", "OUT/b.csv"], E)
    c["export/mesh-readonly"] = (["export", A, "--mesh", str(ro / "h.glb")], {4})
    c["export/mesh-bad-extension"] = (["export", A, "--mesh", "OUT/h.xyz"], {2})
    c["export/blendshapes-into-a-folder"] = (["export", A, "--blendshapes", "OUT"], {4})
    c["export/nothing"] = (["export", A], {2})
    c["export/subject-as-avatar"] = (["export", s("subject"), "--mesh", "OUT/h.glb"], {2})
    c["export/ernerf-not-empty"] = (["export", s("subject"), "--to-ernerf", s("full_ernerf")], {4})
    c["export/ernerf-of-an-avatar"] = (["export", A, "--to-ernerf", "OUT/d"], E)
    c["export/ernerf-missing"] = (["export", s("missing"), "--to-ernerf", "OUT/d"], E)
    # motion, import-ernerf
    c["motion/personalize-missing"] = (["motion", "personalize", s("missing"), "-o", "OUT/m.pt"], E)
    c["motion/personalize-bad-tracking"] = (["motion", "personalize", s("bad_tracking"), "-o", "OUT/m.pt"], E)
    c["export/ernerf-bad-tracking"] = (["export", s("bad_tracking"), "--to-ernerf", "OUT/d"], E)
    c["motion/personalize-no-audio"] = (["motion", "personalize", s("no_audio_subject"), "-o", "OUT/m.pt"], E)
    c["motion/personalize-out-folder"] = (["motion", "personalize", s("subject"), "-o", "OUT"], {4})
    c["motion/pretrain-missing"] = (["motion", "pretrain", s("missing"), "-o", "OUT/m.pt"], E)
    c["motion/pretrain-out-readonly"] = (["motion", "pretrain", s("subject"), "-o", str(ro / "m.pt")], {4})
    c["import-ernerf/missing"] = (["import-ernerf", s("missing"), "-o", "OUT/s"], E)
    c["import-ernerf/empty"] = (["import-ernerf", s("dir"), "-o", "OUT/s"], E)
    return c


def _tree(root: Path) -> set[str]:
    return {str(q.relative_to(root)) for q in root.rglob("*")} if root.exists() else set()


def _is_traceback(code: int, err: str) -> bool:
    return code == 70 or "Traceback (most recent call last)" in err or "internal error" in err


def _clean_text(code: int, err: str) -> bool:
    """Exit 0, or one ``error: ...`` line last (argparse: its usage and one ``PROG: error: ...`` line)."""
    if code == 0:
        return True
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    ours = sum(line.startswith("error:") for line in lines)
    if last.startswith("error: "):
        return ours == 1
    return code == 2 and ours == 0 and ": error: " in last and any(line.startswith("usage:") for line in lines)


def run_case(name: str, argv: list[str], expect: set[int], root: Path) -> Outcome:
    folder = root / name.replace("/", "__")
    folder.mkdir(parents=True)
    argv = [a.replace("OUT", str(folder)) if a.startswith("OUT") else a for a in argv]
    before = _tree(folder)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if code in (130, 143):  # the bench itself was interrupted (the CLI turned the signal into an exit code)
        raise KeyboardInterrupt
    text = err.getvalue()
    new = sorted(_tree(folder) - before)
    leftovers = [q for q in new if ".tmp-" in q] if code == 0 else new
    tb = _is_traceback(code, text)
    clean = not tb and code in DOCUMENTED and code in expect and _clean_text(code, text)
    last = [line for line in text.splitlines() if line.strip()]
    return Outcome(name, " ".join(argv)[:160], code, clean, tb, leftovers,
                   note="" if clean else (last[-1][:200] if last else f"exit {code}"))


# --- signals at random points --------------------------------------------------------------------

class Proc:
    """A CLI process whose stdout+stderr are collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.p = subprocess.Popen([sys.executable, "-m", "avatar3d", *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, cwd=str(REPO))  # fmt: skip
        self.chunks: list[str] = []
        self.reader = threading.Thread(target=lambda: self.chunks.extend(iter(lambda: self.p.stdout.read(1), "")),
                                       daemon=True)
        self.reader.start()

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def wait_for(self, pattern: str, timeout: float) -> re.Match | None:
        deadline = time.time() + timeout
        while time.time() < deadline and self.p.poll() is None:
            found = list(re.finditer(pattern, self.text))
            if found:
                return found[-1]
            time.sleep(0.05)
        return None

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            code = self.p.wait()
        self.reader.join(timeout=5)
        return code


def _temps(root: Path) -> list[str]:
    return sorted(str(q.relative_to(root)) for q in root.rglob("*") if ".tmp-" in q.name) if root.exists() else []


def kill_prep(work: Path, p: dict[str, Path], sig: signal.Signals, rng: random.Random, env: dict[str, str],
              typical_s: float) -> Outcome:
    out = work / "kills" / f"prep-{sig.name}"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["prep", str(p["clip"]), "-o", str(out), "--size", "256"]
    proc = Proc(argv, env)
    delay = rng.uniform(0.15, 0.85) * typical_s
    time.sleep(delay)
    done_before = proc.p.poll() is not None
    proc.p.send_signal(sig)
    code = proc.finish()
    return _after_kill(f"prep/{sig.name}", argv, code, proc.text, sig, out, env, done_before,
                       ["prep", str(p["missing"]), "-o", str(out)], f"at {delay:.1f} s")


def kill_render(work: Path, sig: signal.Signals, rng: random.Random, env: dict[str, str]) -> Outcome:
    out = work / "kills" / f"render-{sig.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    target = out / "x.mp4"
    argv = ["render", str(ASSET), "--text", "Peter bought a big bag of bread. Then he walked home.", "--phones", "off",
            "--size", "32", "-o", str(target)]  # fmt: skip
    proc = Proc(argv, env)
    k = rng.randint(1, 40)
    seen = proc.wait_for(rf"render:.*?\b({k}|[1-9]\d+)/\d+", 300)
    done_before = proc.p.poll() is not None
    proc.p.send_signal(sig)
    code = proc.finish()
    o = _after_kill(f"render/{sig.name}", argv, code, proc.text, sig, out, env, done_before,
                    ["render", str(work / "missing"), "--text", "hi", "-o", str(target)],
                    f"at frame ~{k}" if seen else "before the first frame")
    if target.exists() and code != 0:
        o.leftovers.append(f"{target.name} (half-written output at the final path)")
        o.clean = False
    return o


def _after_kill(name: str, argv: list[str], code: int, text: str, sig: signal.Signals, out: Path,
                env: dict[str, str], done_before: bool, sweep_argv: list[str], when: str) -> Outcome:
    tb = "Traceback (most recent call last)" in text or "internal error" in text
    if done_before or code == 0:
        return Outcome(name, " ".join(argv)[:160], code, not tb, tb, _temps(out), note="finished before the signal")
    if sig == signal.SIGKILL:
        left_by_kill = _temps(out)
        sweep = Proc(sweep_argv, env)  # the next run on the same output (it fails at once: a missing input)
        sweep.finish()
        leftovers = _temps(out)
        return Outcome(name, " ".join(argv)[:160], code, code == -9 and not leftovers, tb, leftovers,
                       note=f"{when}; {len(left_by_kill)} temp(s) left by the kill, swept by the next run")
    expected = 128 + int(sig)
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    ok = code == expected and bool(lines) and lines[-1].startswith("interrupted")
    leftovers = _temps(out)
    return Outcome(name, " ".join(argv)[:160], code, ok and not tb and not leftovers, tb, leftovers, note=when)


def kill_train(work: Path, subject: Path, sig: signal.Signals, rng: random.Random, env: dict[str, str],
               tag: str) -> Outcome:
    out = work / "kills" / f"train-{sig.name}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = work / "kills" / "train.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    tiny = (REPO / "configs" / "tiny.yaml").read_text()
    cfg.write_text(re.sub(r"(?m)^steps: .*$", f"steps: {TRAIN_STEPS}",
                          re.sub(r"(?m)^checkpoint_every: .*$", f"checkpoint_every: {CHECKPOINT_EVERY}", tiny)))
    argv = ["train", str(subject), "-o", str(out), "--config", str(cfg)]
    name = f"train/{sig.name}"
    proc = Proc(argv, env)
    k = rng.randint(2, 2 * CHECKPOINT_EVERY + 5)
    seen = proc.wait_for(rf"(\d+)/{TRAIN_STEPS}", 600)
    reached = proc.wait_for(rf"\b({k}|[1-9]\d+)/{TRAIN_STEPS}", 600)
    progress = int(reached.group(1)) if reached else (int(seen.group(1)) if seen else 0)
    done_before = proc.p.poll() is not None
    proc.p.send_signal(sig)
    code = proc.finish(300)
    text = proc.text
    tb = "Traceback (most recent call last)" in text or "internal error" in text
    if done_before or code == 0:
        return Outcome(name, " ".join(argv)[:160], code, not tb, tb, _temps(out), note="finished before the signal")
    ckpt = out / CHECKPOINT_NAME
    saved = int(load_state(ckpt)["step"]) if ckpt.is_file() else 0
    if sig == signal.SIGKILL:
        stopped = progress  # the bar lags the loop by at most a step or two
        periodic = (stopped // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
        lost_beyond = max(0, periodic - saved - CHECKPOINT_EVERY)  # the bar may not show the newest step yet
        note = f"killed near step {stopped}: checkpoint at step {saved}"
    else:
        m = re.search(r"interrupted at step (\d+)", text)
        stopped = int(m.group(1)) if m else -1
        lost_beyond = 0 if stopped == saved else max(stopped - saved, 1)
        note = f"stopped at step {stopped}, checkpoint at step {saved}"
    if not ckpt.is_file():  # killed before the first checkpoint: a fresh start is the resume
        return Outcome(name, " ".join(argv)[:160], code, sig == signal.SIGKILL and not _temps_after_sweep(out, argv, env),
                       tb, _temps(out), lost_beyond, note + "; no checkpoint yet (nothing to resume)")
    resume = Proc([*argv[:4], "--resume"], env)  # the printed command (the config is the run's own)
    resumed = resume.wait_for(r"resumed at step (\d+)", 600)
    resume.p.send_signal(signal.SIGTERM)
    resume.finish(300)
    at = int(resumed.group(1)) if resumed else -1
    lost = max(0, stopped - at) if sig != signal.SIGKILL else lost_beyond
    leftovers = _temps(out)
    clean = (not tb and at == saved and lost == 0 and not leftovers
             and (code == -9 if sig == signal.SIGKILL else code == 128 + int(sig)))  # fmt: skip
    return Outcome(name, " ".join(argv)[:160], code, clean, tb, leftovers, lost, note + f"; resumed at step {at}")


def _temps_after_sweep(out: Path, argv: list[str], env: dict[str, str]) -> list[str]:
    Proc([*argv[:4], "--resume"], env).finish()  # refuses (nothing to resume) after sweeping the dead temps
    return _temps(out)


# --- main ----------------------------------------------------------------------------------------

def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a new temp folder, removed afterwards)")
    parser.add_argument("--subject", type=Path, help="use this prepared subject instead of preparing the clip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--no-kills", action="store_true", help="only the bad-input matrix")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="avatar3d-robustness-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AVATAR3D_CACHE", str(work / "cache"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(args.seed)
    started = time.time()
    t = time.time()
    p = make_inputs(work, args.subject)
    print(f"inputs made in {time.time() - t:.0f} s", file=sys.stderr)
    ro = readonly_folder(work)
    root = work / f"cases-{os.getpid()}"  # a run of its own, whatever an earlier run left
    outcomes: list[Outcome] = []
    for name, (argv, expect) in cases(p, ro).items():
        t = time.time()
        outcomes.append(run_case(name, argv, expect, root))
        o = outcomes[-1]
        print(f"{'ok ' if o.clean else 'BAD'} {name:38s} exit {o.code:>3} {time.time() - t:5.1f} s {o.note[:110]}",
              file=sys.stderr)
    inputs_temps = _temps(work / "inputs")
    kills: list[Outcome] = []
    if not args.no_kills:
        t = time.time()
        warm = Proc(["prep", str(p["clip"]), "-o", str(work / "kills" / "prep-timing"), "--size", "256"], env)
        warm.finish(900)
        typical = time.time() - t
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            kills.append(kill_prep(work, p, sig, rng, env, typical))
            kills.append(kill_render(work, sig, rng, env))
        subject = work / "kills" / "subject"
        if not subject.is_dir():
            shutil.copytree(p["subject"], subject, ignore=shutil.ignore_patterns("cache"))
        for tag, sig in (("a", signal.SIGINT), ("a", signal.SIGTERM), ("a", signal.SIGKILL), ("b", signal.SIGTERM)):
            kills.append(kill_train(work, subject, sig, rng, env, tag))
        for o in kills:
            print(f"{'ok ' if o.clean else 'BAD'} {o.name:38s} exit {o.code:>4} {o.note[:110]}", file=sys.stderr)
    every = outcomes + kills
    by_command: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_command.setdefault(o.name.split("/")[0], []).append(o)
    print(f"\n{'command':14s} {'cases':>5s} {'clean':>5s} {'tracebacks':>10s} {'leftovers':>9s}")
    for command, rows in by_command.items():
        print(f"{command:14s} {len(rows):5d} {sum(o.clean for o in rows):5d} {sum(o.traceback for o in rows):10d} "
              f"{sum(bool(o.leftovers) for o in rows):9d}")
    if kills:
        print(f"{'signals':14s} {len(kills):5d} {sum(o.clean for o in kills):5d} {sum(o.traceback for o in kills):10d} "
              f"{sum(bool(o.leftovers) for o in kills):9d}   lost train steps: {sum(o.lost_steps for o in kills)}")
    bad = [o for o in every if not o.clean]
    for o in bad:
        print(f"  not clean: {o.name} (exit {o.code}): {o.note} {o.leftovers[:3]}")
    train_kills = [o for o in kills if o.name.startswith("train/")]
    summary = {
        "cases": len(every), "bad_input_cases": len(outcomes), "signal_cases": len(kills),
        "clean": sum(o.clean for o in every), "tracebacks": sum(o.traceback for o in every),
        "leftovers": sum(bool(o.leftovers) for o in every) + len(inputs_temps),
        "lost_train_steps": sum(o.lost_steps for o in kills),
        "train_interrupts_resumable": sum(o.clean for o in train_kills if "SIGKILL" not in o.name),
        "train_interrupts": sum("SIGKILL" not in o.name for o in train_kills),
        "not_clean": [o.name for o in bad], "seconds": round(time.time() - started),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
