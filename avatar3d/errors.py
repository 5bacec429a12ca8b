"""User-facing errors: one line that names the file (or input) and the fix, and a stable exit code per class.

Library code raises these; the edge (:mod:`avatar3d.edge`) prints ``error: <message>`` and exits
with the class's ``exit_code``, so scripts and schedulers can tell a bad option from a full disk
without parsing text. The table lives in ``docs/errors.md`` and the CLI's ``--help``.
"""
from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_USAGE = 2  # bad option value or bad input content the user can fix (argparse uses 2 too)
EXIT_INPUT = 3  # an input file or folder is missing, corrupt or of an unsupported kind
EXIT_OUTPUT = 4  # an output cannot be written: read-only folder, an existing file of the wrong kind
EXIT_DISK_FULL = 5  # the disk (or quota) filled up while writing
EXIT_RESOURCE = 6  # not enough memory (or another machine resource) for the job as asked
EXIT_MISSING_TOOL = 7  # a system tool or optional package is not installed
EXIT_INTERNAL = 70  # a bug: the traceback is written to a crash file (sysexits' EX_SOFTWARE)
EXIT_SIGINT = 128 + int(signal.SIGINT)  # 130: Ctrl-C
EXIT_SIGTERM = 128 + int(signal.SIGTERM)  # 143: `kill`, `timeout`, a scheduler or container stop

#: (code, meaning) rows, shown by ``avatar3d --help`` and kept in step with docs/errors.md by a test.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_USAGE, "bad option value or bad input content"),
    (EXIT_INPUT, "an input is missing, corrupt or unsupported"),
    (EXIT_OUTPUT, "an output cannot be written (read-only folder, existing file of the wrong kind)"),
    (EXIT_DISK_FULL, "out of disk space or quota"),
    (EXIT_RESOURCE, "out of memory for the job as asked"),
    (EXIT_MISSING_TOOL, "a required tool or package is not installed"),
    (EXIT_INTERNAL, "internal error (a bug): the traceback is saved to a crash file"),
    (EXIT_SIGINT, "interrupted by Ctrl-C (SIGINT)"),
    (EXIT_SIGTERM, "terminated (SIGTERM)"),
)


class Avatar3DError(Exception):
    """Bad input or a bad option value, explained in one line with the fix."""

    exit_code: int = EXIT_USAGE

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always a single line
        super().__init__(message)


class InputError(Avatar3DError):
    """An input file or folder is missing, unreadable, corrupt or of an unsupported kind."""

    exit_code = EXIT_INPUT


class OutputError(Avatar3DError):
    """An output cannot be written where asked (read-only folder, an existing file or folder in the way)."""

    exit_code = EXIT_OUTPUT


class DiskFullError(Avatar3DError):
    """The disk or quota filled up; what was written so far was removed."""

    exit_code = EXIT_DISK_FULL


class ResourceError(Avatar3DError):
    """The job as asked needs more memory (or another resource) than the machine has."""

    exit_code = EXIT_RESOURCE


class MissingToolError(Avatar3DError):
    """A system tool (espeak-ng, an encoder) is not installed."""

    exit_code = EXIT_MISSING_TOOL


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C (``finally`` blocks and temp-file cleanup run).

    ``message`` says what was kept and how to continue (train: the checkpoint and the
    ``--resume`` command); the exit code is 128 + the signal number.
    """

    def __init__(self, signum: int = int(signal.SIGINT), message: str = ""):
        super().__init__(message)
        self.signum = int(signum)
        self.message = " ".join(str(message).split())

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
