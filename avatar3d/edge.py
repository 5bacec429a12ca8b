"""The error surface every entry point shares (the CLI now; a server or batch runner later).

Why one place: a user must never see a traceback or lose work, whichever command failed.
:func:`run` calls a command with SIGTERM handled like Ctrl-C and turns every expected failure
into one line ``error: <what> <which file> <what to do>`` plus a stable exit code
(:data:`avatar3d.errors.EXIT_CODES`); an unexpected exception becomes one line naming the crash
file that holds its traceback. :func:`describe` is the mapping alone, for callers that report
errors another way. :func:`output_folder` / :func:`output_file` are the guards a command runs on
its outputs before any work.
"""
from __future__ import annotations

import contextlib
import errno
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, Sequence

from avatar3d import __version__
from avatar3d.errors import (EXIT_DISK_FULL, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_OUTPUT, EXIT_RESOURCE,
                             EXIT_SIGINT, Avatar3DError, Interrupted)
from avatar3d.interrupts import raise_on_signals
from avatar3d.io.atomic import check_output_file, check_output_folder, sweep_stale_temps, temp_path_for
from avatar3d.resources import cache_dir

__all__ = ["run", "close_progress_bars", "describe", "write_crash_report", "output_folder", "output_file", "CRASH_DIR_NAME"]

CRASH_DIR_NAME = "crash"
INTERRUPTED = ("interrupted: nothing half-written was kept (every output is written under a temp name and "
               "renamed when complete); run the same command again to redo what was not finished")  # fmt: skip
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.EISDIR, errno.ENOTDIR}
_OOM_TEXT = ("can't allocate memory", "out of memory", "cannot allocate memory")


def _file_of(exc: OSError) -> str:
    return str(exc.filename) if exc.filename is not None else "a file"


def describe(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and one-line message for an expected failure; None for a bug (see :func:`run`)."""
    if isinstance(exc, Avatar3DError):
        return exc.exit_code, str(exc)
    if isinstance(exc, Interrupted):
        return exc.exit_code, exc.message or INTERRUPTED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGINT, INTERRUPTED
    if isinstance(exc, MemoryError):
        return EXIT_RESOURCE, ("out of memory: the job as asked does not fit in this machine's memory; use a "
                               "smaller --size, fewer frames, or close other programs")  # fmt: skip
    if isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return EXIT_RESOURCE, (f"out of memory ({first[:160]}): use a smaller --size, fewer frames, or close "
                               "other programs")  # fmt: skip
    if isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
        if exc.errno in _DISK_FULL:
            return EXIT_DISK_FULL, (f"out of disk space writing {_file_of(exc)} ({reason}): free some space or "
                                    "choose another location, then run the same command again")  # fmt: skip
        if isinstance(exc, (PermissionError, IsADirectoryError, FileExistsError, NotADirectoryError)) \
                or exc.errno in _UNWRITABLE:
            return EXIT_OUTPUT, (f"cannot write {_file_of(exc)} ({reason}): choose a writable location for the "
                                 "output (or make the file readable if it is an input)")  # fmt: skip
        if isinstance(exc, FileNotFoundError):
            return EXIT_INPUT, f"{_file_of(exc)} not found ({reason}): check the path"
    return None


def write_crash_report(exc: BaseException, argv: Sequence[str]) -> Path:
    """Writes the traceback, the command line and the versions to a new file under ``cache_dir()/crash/``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    lines = [f"command: avatar3d {' '.join(argv)}", f"avatar3d {__version__}",
             f"python {platform.python_version()} on {platform.platform()}"]
    torch = sys.modules.get("torch")  # only when the command loaded it: importing it here costs seconds
    if torch is not None:
        lines.append(f"torch {getattr(torch, '__version__', '?')}")
    text = "\n".join(lines) + "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for folder in (cache_dir() / CRASH_DIR_NAME, Path(os.environ.get("TMPDIR", "/tmp"))):
        path = folder / f"avatar3d-crash-{stamp}-{os.getpid()}.txt"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    raise OSError("no writable folder for the crash report")


def close_progress_bars() -> None:
    """Closes the progress bars a failed command left open.

    Why: an open tqdm bar redraws itself when it is garbage-collected at exit, after the error
    line, so the user's last line was a half-filled bar instead of the message saying what to do.
    """
    tqdm_module = sys.modules.get("tqdm")  # only when the command loaded it
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def run(command: Callable[[], int], argv: Sequence[str]) -> int:
    """Runs ``command`` (returns an exit code) and maps whatever it raises to one stderr line and a code."""
    try:
        with raise_on_signals():
            return int(command())
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (Exception, KeyboardInterrupt) as exc:  # SystemExit (argparse, --help) passes through
        close_progress_bars()
        known = describe(exc)
        if known is not None:
            code, message = known
            print(f"{'' if message.startswith('interrupted') else 'error: '}{message}", file=sys.stderr)
            return code
        try:
            where = f"the full traceback is in {write_crash_report(exc, argv)}"
        except OSError:
            traceback.print_exc()
            where = "the traceback is above (no folder was writable for a crash file)"
        what = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        print(f"error: internal error ({what}); {where}; please report it to the avatar3d maintainers with "
              "that file and the command you ran", file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL


@contextlib.contextmanager
def output_folder(path: Path, label: str = "-o") -> Iterator[Path]:
    """Guards an output folder before any work, and leaves no empty folder behind when the command fails.

    Checks that ``path`` is (or can become) a writable folder, removes temp files that killed
    runs left in it (and staged copies of it beside it), and, if the command fails before writing anything, removes the folder it
    made. Nothing is created here.
    """
    path = Path(path)
    check_output_folder(path, label)
    existed = path.exists()
    sweep_stale_temps(path)
    sweep_stale_temps(path.parent, path.name)  # a staged copy of the whole folder sits beside it
    try:
        yield path
    except BaseException:
        if not existed and path.is_dir():
            sweep_stale_temps(path)
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when empty: finished outputs are never removed
        raise


def output_file(path: Path, label: str = "-o") -> Path:
    """Guards an output file before any work: not a folder, its folder writable; sweeps its dead temps beside it."""
    path = Path(path)
    check_output_file(path, label)
    sweep_stale_temps(path.parent if str(path.parent) else Path("."), temp_path_for(path).name.split(".tmp-")[0][1:])
    return path
