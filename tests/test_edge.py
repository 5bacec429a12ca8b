"""The shared error surface (avatar3d/edge.py): exit codes, crash reports, temp sweeping, honest messages."""
from __future__ import annotations

import argparse
import ast
import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from avatar3d import edge
from avatar3d.cli import build_parser, exit_code_epilog
from avatar3d.errors import EXIT_CODES, Avatar3DError, InputError, Interrupted, MissingToolError, OutputError
from avatar3d.interrupts import deferred_interrupts
from avatar3d.io.atomic import check_output_file, check_output_folder, sweep_stale_temps, temp_path_for

REPO = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
# another program's command line quoted in a message: its flags are that program's, not ours
OTHER_TOOL = re.compile(r"(pip install|huggingface-cli|espeak-ng|torchrun|ffmpeg|tensorboard)[^`)]*")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("exc, code, needle", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.mp4"), 5, "out of disk space writing /data/out.mp4"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/data/c.pt"), 5, "/data/c.pt"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/x.npz"), 4, "cannot write /ro/x.npz"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/out"), 4, "/out"),
    (FileExistsError(errno.EEXIST, "File exists", "/out/a"), 4, "/out/a"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/in/clip.mp4"), 3, "/in/clip.mp4 not found"),
    (MemoryError(), 6, "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 21800000000 bytes"), 6, "can't allocate memory"),
    (InputError("x"), 3, "x"), (OutputError("y"), 4, "y"), (MissingToolError("z"), 7, "z"), (Avatar3DError("w"), 2, "w"),
    (Interrupted(signal.SIGTERM), 143, "interrupted"), (KeyboardInterrupt(), 130, "nothing half-written"),
])  # fmt: skip
def test_expected_failures_map_to_their_code_and_one_line(exc, code, needle) -> None:
    got = edge.describe(exc)
    assert got is not None and got[0] == code and needle in got[1] and "\n" not in got[1], got


def test_a_bug_is_one_line_naming_its_crash_file(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AVATAR3D_CACHE", str(tmp_path / "cache"))

    def buggy() -> int:
        return {"a": 1}["b"]

    assert edge.describe(KeyError("b")) is None
    assert edge.run(buggy, ["render", "avatar", "--text", "hi"]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: internal error (KeyError: 'b')") and "Traceback" not in err
    crash = Path(re.search(r"the full traceback is in (\S+);", err).group(1))
    assert crash.parent == tmp_path / "cache" / "crash"
    text = crash.read_text()
    assert "command: avatar3d render avatar --text hi" in text and "Traceback" in text and "in buggy" in text


def test_exit_codes_are_documented_in_help_and_docs() -> None:
    docs = (REPO / "docs" / "errors.md").read_text()
    rows = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", docs, re.M)}
    assert rows == {code for code, _ in EXIT_CODES}
    epilog = exit_code_epilog()
    for code, meaning in EXIT_CODES:
        assert f"{code:>3}  {meaning}" in epilog


def _cli_options(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _cli_options(sub)
    return found


def _message_text(node: ast.AST) -> str | None:
    """A string literal, or an f-string with ``{}`` where its values go (whole, so a quoted command stays one text)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


# Calls whose strings reach the user besides errors: warnings, log lines, printed results.
MESSAGE_CALLS = {"_bad", "warn", "_warn_stderr", "log", "print"}
MESSAGE_BUILDERS = ("_message", "_notice", "_warning")  # functions returning a message: their returned strings


def _error_message_texts() -> list[tuple[str, str]]:
    """(where, text) of every string inside a call to an ...Error class, a warning, a log line or a print
    (what a user reads), in both packages."""
    texts = []
    for package in ("avatar3d", "data_prep"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef) and node.name.endswith(MESSAGE_BUILDERS):
                    texts += [(f"{path.relative_to(REPO)}:{sub.lineno}", text) for ret in ast.walk(node)
                              if isinstance(ret, ast.Return) and ret.value is not None for sub in ast.walk(ret.value)
                              if (text := _message_text(sub)) is not None]  # fmt: skip
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
                if not (name.endswith("Error") or name in MESSAGE_CALLS):
                    continue
                inner = {id(v) for sub in ast.walk(node) if isinstance(sub, ast.JoinedStr) for v in sub.values}
                for sub in ast.walk(node):
                    text = None if id(sub) in inner else _message_text(sub)
                    if text is not None:
                        texts.append((f"{path.relative_to(REPO)}:{sub.lineno}", text))
    return texts


def test_every_flag_a_message_names_exists() -> None:
    texts = _error_message_texts()
    assert len(texts) > 300  # the scan sees the messages (there are ~1000 literals)
    known = _cli_options(build_parser())
    unknown = [(where, flag) for where, text in texts for flag in FLAG.findall(OTHER_TOOL.sub("", text))
               if flag not in known]  # fmt: skip
    assert not unknown, unknown
    assert FLAG.findall(OTHER_TOOL.sub("", "pass --no-audio (or `pip install --no-deps x`)")) == ["--no-audio"]
    # warnings and notices are scanned too, and the flags they name are seen
    assert any("no speech found" in text for _, text in texts) and any("--yes" in text for _, text in texts)
    assert any("--other-subject" in text for _, text in texts)


def test_messages_name_no_python_api_or_issue_numbers() -> None:
    api = re.compile(r"\b[A-Z][A-Za-z]*Config\b|\b(issue|task) #?\d+")
    leaks = [(where, text) for where, text in _error_message_texts() if api.search(text)]
    assert not leaks, leaks


def test_sweep_removes_only_dead_processes_temps(tmp_path) -> None:
    dead = _dead_pid()
    stale_file = tmp_path / f".clip.tmp-{dead}-0a1b2c3d.mp4"
    stale_dir = tmp_path / f".frames.tmp-{dead}-deadbeef"
    live = temp_path_for(tmp_path / "clip.mp4")  # this process: a running job's temp
    keep = [tmp_path / "clip.mp4", tmp_path / ".hidden", tmp_path / "notes.tmp-1-ab.txt", live]
    stale_dir.mkdir()
    (stale_dir / "0001.png").write_bytes(b"x")
    for p in (stale_file, *keep):
        p.write_bytes(b"x")
    assert sorted(sweep_stale_temps(tmp_path, "frames")) == [stale_dir]  # only that output's temps
    assert sorted(sweep_stale_temps(tmp_path)) == [stale_file]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert sweep_stale_temps(tmp_path / "missing") == []


def test_output_guards_create_nothing(tmp_path) -> None:
    a_file = tmp_path / "taken.mp4"
    a_file.write_bytes(b"x")
    check_output_folder(tmp_path / "new" / "deeper")
    check_output_file(tmp_path / "new" / "x.mp4")
    check_output_file(a_file)  # replaced atomically: allowed
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_folder(a_file)
    with pytest.raises(OutputError, match="taken.mp4 is a file, so nothing can be made under it"):
        check_output_file(a_file / "x.mp4")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.mp4"]


def test_a_failed_command_removes_the_output_folder_it_made(tmp_path) -> None:
    out = tmp_path / "subject"
    with pytest.raises(InputError):
        with edge.output_folder(out):
            out.mkdir()
            raise InputError("clip.mp4 not found")
    assert not out.exists()
    kept = tmp_path / "kept"
    with pytest.raises(InputError):
        with edge.output_folder(kept):
            kept.mkdir()
            (kept / "manifest.json").write_text("{}")  # finished work is never removed
            raise InputError("later stage failed")
    assert (kept / "manifest.json").is_file()


def test_a_deferred_signal_waits_for_the_step_and_a_second_one_does_not() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with deferred_interrupts() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.signum == signal.SIGTERM  # the handler ran; nothing was raised mid-step
        with pytest.raises(Interrupted) as second:
            os.kill(os.getpid(), signal.SIGINT)
        assert second.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_error_line_comes_after_an_open_progress_bar(capsys) -> None:
    """A command interrupted mid-loop: its bar is closed first, so the message is the last line, on its own."""
    from tqdm import tqdm

    def command() -> int:
        bar = tqdm(total=10, desc="render")
        bar.update(3)
        raise Interrupted(signal.SIGINT)

    assert edge.run(command, ["render"]) == 130
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: nothing half-written was kept"), lines[-3:]
    assert "render:" in "\n".join(lines[:-1])
