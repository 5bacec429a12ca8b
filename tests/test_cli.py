"""The `avatar3d` command: subcommands, and one-line errors with the exit code of their class (docs/errors.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar3d.cli import build_parser, main


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, *needles: str, expected: int = 2) -> None:
    assert code == expected, (code, err)
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("error: ") and "\r" not in last, err
    assert err.count("error") == 1, err
    for needle in needles:
        assert needle in last, (needle, last)


def _no_outputs(directory: Path) -> None:
    if directory.exists():
        leftovers = [p.name for p in directory.iterdir() if p.suffix in {".mp4", ".npz", ".wav", ".json"}]
        assert not leftovers, leftovers


def test_help_lists_only_working_subcommands():
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(choices) == ["demo", "eval", "export", "import-ernerf", "motion", "prep", "presets", "render", "synth",
                               "train"]  # fmt: skip


def test_photo_without_a_face(tmp_path, capsys):
    photo = tmp_path / "wall.png"
    gradient = np.tile(np.linspace(40, 220, 320, dtype=np.uint8), (240, 1))
    cv2.imwrite(str(photo), np.stack([gradient] * 3, axis=-1))
    out = tmp_path / "out"
    code, _, err = _run(capsys, ["synth", "-o", str(out), "--photo", str(photo), "--duration", "5"])
    _assert_one_line_error(code, err, str(photo), "no face")
    _no_outputs(out)


def test_missing_and_corrupt_photo(tmp_path, capsys):
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--photo", str(tmp_path / "nope.jpg")])
    _assert_one_line_error(code, err, "nope.jpg", "not found", expected=3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--photo", str(bad)])
    _assert_one_line_error(code, err, "bad.png", "could not be decoded", expected=3)


def test_unknown_voice_lists_alternatives(tmp_path, capsys):
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--voice", "xx-nosuchvoice", "--duration", "5"])
    _assert_one_line_error(code, err, "xx-nosuchvoice", "--list-voices")
    _no_outputs(tmp_path / "o")


def test_empty_text_and_missing_text_file(tmp_path, capsys):
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--text", "   "])
    _assert_one_line_error(code, err, "empty")
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--text-file", str(tmp_path / "none.txt")])
    _assert_one_line_error(code, err, "none.txt", expected=3)


def test_missing_espeak_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--duration", "5"])
    _assert_one_line_error(code, err, "espeak-ng", "apt-get install espeak-ng", expected=7)


def test_odd_size_and_bad_config(tmp_path, capsys):
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--size", "511"])
    _assert_one_line_error(code, err, "511", "even")
    config = tmp_path / "c.yaml"
    config.write_text("duration_s: 5\nfocal: 3\n")
    code, _, err = _run(capsys, ["synth", "-o", str(tmp_path / "o"), "--config", str(config)])
    _assert_one_line_error(code, err, "c.yaml", "focal")


def test_list_voices(capsys):
    code, out, _ = _run(capsys, ["synth", "--list-voices"])
    assert code == 0
    assert "en-us" in out and "de" in out.split()


def test_entry_point_exit_code_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "avatar3d", "synth", "-o", str(tmp_path), "--voice", "zz"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_prep_of_a_missing_clip(tmp_path, capsys):
    code, _, err = _run(capsys, ["prep", str(tmp_path / "talk.mp4"), "-o", str(tmp_path / "subject")])
    _assert_one_line_error(code, err, "talk.mp4", "not found", expected=3)


def test_train_and_render_bad_input(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope"), "-o", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err and "avatar3d prep" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "run"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "no_avatar"), "--motion-from", str(tmp_path), "-o", str(tmp_path / "o.mp4")]) == 3
    err = capsys.readouterr().err
    assert "avatar.pt" in err and "avatar3d train" in err and not (tmp_path / "o.mp4").exists()
