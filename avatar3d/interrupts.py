"""SIGTERM handled like Ctrl-C, and a way for a loop to finish its step before stopping.

Why: ``timeout``, batch schedulers and container stops send SIGTERM, whose default action kills
the process without running ``finally`` blocks, so temp files stay and a training run loses every
step since its last checkpoint. Raising :class:`~avatar3d.errors.Interrupted` from the handler
unwinds like Ctrl-C. A training loop wants more: stop *between* steps, so the checkpoint it then
writes is consistent (the step counter and the weights agree) — :func:`deferred_interrupts`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any, Iterator, Optional

from avatar3d.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)

__all__ = ["HANDLED", "raise_on_signals", "deferred_interrupts", "InterruptFlag"]


def _as_before(signum: int) -> None:
    """In a forked child (a worker pool inherits the handlers), behave as if no handler were set:
    ``Pool.terminate()`` sends SIGTERM, and a worker must die quietly, not print an exception."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _raising_handler(owner: int) -> Any:
    def handle(signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != owner:
            _as_before(signum)
            return
        raise Interrupted(signum)

    return handle


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block; the old handlers come back after."""
    if not _in_main_thread():  # signal handlers can only be set from the main thread
        yield
        return
    handler = _raising_handler(os.getpid())
    old = {sig: signal.signal(sig, handler) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class InterruptFlag:
    """Set by the first SIGINT/SIGTERM inside :func:`deferred_interrupts`; a second one raises at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.owner = os.getpid()

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self.owner:
            _as_before(signum)
            return
        if self.signum is not None:  # asked twice: the user wants out now (atomic writes keep files whole)
            raise Interrupted(signum)
        self.signum = signum


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[InterruptFlag]:
    """Within the block a signal only sets the yielded flag; the loop checks it between steps."""
    flag = InterruptFlag()
    if not _in_main_thread():
        yield flag
        return
    old: dict[int, Any] = {sig: signal.signal(sig, flag._handle) for sig in HANDLED}
    try:
        yield flag
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
