"""Crash-safe file writing: outputs appear under their final name complete or not at all.

Everything is first written to a hidden temp file in the *same directory* (so the
final ``os.replace`` is an atomic rename on one filesystem), fsynced, then renamed.
A crash or exception mid-write leaves the previous file (if any) untouched and
removes the temp file, so a later stage never reads a truncated mp4/npz/json.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from avatar3d.errors import Avatar3DError, OutputError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "atomic_path",
    "temp_path_for",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_json_atomic",
    "json_safe",
    "save_npz_atomic",
    "check_writable",
    "check_parent_writable",
    "check_output_folder",
    "check_output_file",
    "sweep_stale_temps",
]

# ``.NAME.tmp-PID-HEX[.ext]``: what temp_path_for and the staged folders (render frames, ER-NeRF export) create
TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+(\.[^.]*)?$")


def temp_path_for(final_path: PathLike) -> Path:
    """Hidden sibling temp name that keeps the real suffix last.

    ``out/clip.mp4`` -> ``out/.clip.tmp-<pid>-<random>.mp4``: encoders and
    libraries that pick the format from the extension (FFmpeg muxers,
    ``soundfile``) still see ``.mp4``/``.wav``; the leading dot and ``.tmp-``
    keep it out of globs like ``*.mp4`` made by other stages.
    """
    final = Path(final_path)
    stem, suffix = final.stem, final.suffix
    if not stem:  # e.g. a dotfile such as ".cache" has no separate suffix
        stem, suffix = final.name, ""
    token = secrets.token_hex(4)
    return final.with_name(f".{stem.lstrip('.')}.tmp-{os.getpid()}-{token}{suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (not possible on every OS/filesystem)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(final_path: PathLike) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsynced and renamed onto ``final_path``.

    On any exception (including KeyboardInterrupt) the temp file is deleted and
    ``final_path`` keeps its old content (or stays absent). The parent directory
    is created if missing. The body must create the file at the yielded path.
    """
    final = Path(final_path)
    if final.is_dir():
        raise OutputError(f"{final}: is a directory; give a file path for the output")
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{final}: cannot create output directory {parent} ({exc.strerror or exc}); "
            "choose a writable location"
        ) from exc
    tmp = temp_path_for(final)
    try:
        yield tmp
        if not tmp.exists():
            raise Avatar3DError(f"{final}: nothing was written to the temp file {tmp.name}")
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(parent)


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the final path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns the final path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="\n") as f:
            f.write(text)
    return Path(path)


def write_json_atomic(path: PathLike, obj: Any, *, indent: int | None = 2, **dump_kwargs: Any) -> Path:
    """Stream ``obj`` as JSON into ``path`` atomically (a serialization error midway
    leaves the old file intact); returns the final path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            json.dump(obj, f, indent=indent, **dump_kwargs)
            f.write("\n")
    return Path(path)


def json_safe(obj: Any) -> Any:
    """Plain JSON values: NaN/inf -> None (JSON has no NaN), numpy scalars and arrays -> Python, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_npz_atomic(path: PathLike, *, compress: bool = False, **arrays: Any) -> Path:
    """Save arrays as an ``.npz`` (readable by ``np.load``) atomically; ``compress`` deflates them.

    Written member by member with ``zipfile`` rather than ``np.savez`` so that a
    failure midway closes the archive cleanly, the file lands exactly at
    ``path`` (numpy would append ``.npz``), and object arrays are refused
    (``np.load`` would need ``allow_pickle=True`` to read them). Returns the final path.
    """
    if not arrays:
        raise Avatar3DError(f"{path}: no arrays given to save; pass them as name=array")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f, zipfile.ZipFile(
            f, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED, allowZip64=True
        ) as zf:
            for name, value in arrays.items():
                arr = np.asanyarray(value)
                if arr.dtype.hasobject:
                    raise Avatar3DError(
                        f"{path}: array {name!r} has dtype object; convert it to a numeric or string array"
                    )
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, arr, allow_pickle=False)
    return Path(path)


def check_writable(path: Path) -> None:
    """Fails early (before minutes of work) when the output cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file path for the output")
    check_parent_writable(path)


def check_parent_writable(path: Path, label: str = "") -> None:
    """Creates ``path``'s folder if needed; one-line error (prefixed by ``label``, e.g. a flag) if it cannot be written."""
    path = Path(path)
    what = f"{label} {path}" if label else str(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{what}: cannot create the folder {parent} ({exc.strerror or exc}); "
                          "choose a writable location") from None  # fmt: skip
    _probe_writable(parent, what)


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _probe_writable(folder: Path, what: str) -> None:
    """Creates and removes a file in ``folder``: the only test that holds for root, read-only mounts and ACLs."""
    probe = folder / f".avatar3d-probe.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise OutputError(f"{what}: cannot write in the folder {folder} ({exc.strerror or exc}); "
                          "choose a writable location") from None  # fmt: skip
    _remove_quietly(probe)


def _check_creatable(path: Path, what: str) -> None:
    """``path`` (absent) could be created: its nearest existing ancestor is a writable folder."""
    probe = _nearest_existing(path.parent if str(path.parent) else Path("."))
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{what}: {probe} is a file, so nothing can be made under it; choose another location")
    _probe_writable(probe, what)


def check_output_folder(path: Path, label: str = "-o") -> None:
    """Fails before any work when ``path`` cannot become an output folder; creates nothing.

    Why nothing is created: a run refused later (a bad option, a corrupt input) must not leave
    an empty folder behind. The nearest existing ancestor must be a writable folder.
    """
    path = Path(path)
    what = f"{label} {path}" if label else str(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what}: is a file, not a folder; give a new or existing folder")
    if path.is_dir():
        _probe_writable(path, what)
        return
    _check_creatable(path, what)


def check_output_file(path: Path, label: str = "-o") -> None:
    """Fails before any work when ``path`` cannot become an output file; creates nothing."""
    path = Path(path)
    what = f"{label} {path}" if label else str(path)
    if path.is_dir():
        raise OutputError(f"{what}: is a directory; give a file path for the output")
    _check_creatable(path, what)  # the file is replaced by a rename, so only its folder must be writable


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the pid belongs to another user's live process
        return True
    return True


def sweep_stale_temps(folder: PathLike, name: str | None = None) -> list[Path]:
    """Removes the temp files and folders (``.NAME.tmp-PID-HEX[.ext]``) that killed processes left in ``folder``.

    Why: SIGKILL (or a power cut) gives no chance to clean up, and hidden temps of a big render
    or prep pile up unseen. A temp whose PID is still alive belongs to a running job and is kept.
    ``name`` limits the sweep to the temps of one output (``.NAME.tmp-...``: a file's stem, a folder's name), for a folder
    the user owns (the folder beside a render's ``-o``). Returns what was removed; a missing
    folder or an entry that cannot be removed is skipped.
    """
    root = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = TEMP_NAME.match(path.name)
        if name is not None and not path.name.startswith(f".{name}.tmp-"):
            continue
        if not match or _pid_alive(int(match.group(1))):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed
