"""User-facing errors: one line that names the file (or input) and the fix.

The CLI prints ``error: <message>`` and exits with code 2 for these; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations


class Avatar3DError(Exception):
    """Bad input or a missing tool, explained in one line with the fix."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # always a single line
        super().__init__(message)


class MissingToolError(Avatar3DError):
    """A system tool (espeak-ng, an encoder) is not installed."""
