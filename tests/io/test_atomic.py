"""Crash-safe writers: the final name holds either the old content or the complete new one."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import (
    atomic_path,
    save_npz_atomic,
    temp_path_for,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_temp_name_hidden_same_dir_keeps_suffix(tmp_path: Path) -> None:
    tmp = temp_path_for(tmp_path / "clip.mp4")
    assert tmp.parent == tmp_path
    assert re.fullmatch(rf"\.clip\.tmp-{os.getpid()}-[0-9a-f]+\.mp4", tmp.name), tmp.name
    assert temp_path_for(tmp_path / "clip.mp4") != tmp  # random part differs
    assert temp_path_for(tmp_path / "notes").name.startswith(".notes.tmp-")


def test_atomic_path_success_renames(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out.bin"  # parent is created
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and not final.exists()
        tmp.write_bytes(b"hello")
    assert final.read_bytes() == b"hello"
    assert _names(final.parent) == ["out.bin"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_exception_keeps_old_and_cleans(tmp_path: Path, exc_type: type) -> None:
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(exc_type):
        with atomic_path(final) as tmp:
            tmp.write_text("half-writ")
            raise exc_type("boom")
    assert final.read_text() == "old"
    assert _names(tmp_path) == ["out.txt"]


def test_atomic_path_exception_without_old_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("x")
            raise ValueError
    assert _names(tmp_path) == []


def test_atomic_path_body_wrote_nothing(tmp_path: Path) -> None:
    with pytest.raises(Avatar3DError, match="new.txt"):
        with atomic_path(tmp_path / "new.txt"):
            pass
    assert _names(tmp_path) == []


def test_atomic_path_to_directory_is_error(tmp_path: Path) -> None:
    with pytest.raises(Avatar3DError, match="is a directory"):
        with atomic_path(tmp_path):
            pass


def test_bytes_and_text_round_trip(tmp_path: Path) -> None:
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    write_bytes_atomic(tmp_path / "a.bin", b"new")  # overwrite
    assert (tmp_path / "a.bin").read_bytes() == b"new"


def test_json_round_trip_and_midway_failure(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"fps": 25, "names": ["a", "b"]})
    assert json.loads(path.read_text()) == {"fps": 25, "names": ["a", "b"]}
    old = path.read_bytes()
    # json.dump streams: the big list is written to the temp file before the
    # unserializable object raises, i.e. the failure happens midway.
    with pytest.raises(TypeError):
        write_json_atomic(path, {"big": list(range(20000)), "bad": object()})
    assert path.read_bytes() == old
    assert _names(tmp_path) == ["meta.json"]


class _ExplodingArray:
    """Array-like whose conversion fails: np.savez converts lazily, after earlier arrays are written."""

    def __array__(self, dtype=None, copy=None):  # noqa: D401
        raise RuntimeError("disk full (simulated)")


def test_npz_round_trip_and_midway_failure(tmp_path: Path) -> None:
    path = tmp_path / "params.npz"
    save_npz_atomic(path, a=np.arange(5), b=np.eye(2, dtype=np.float32))
    with np.load(path) as z:
        assert z["a"].tolist() == [0, 1, 2, 3, 4]
        assert z["b"].dtype == np.float32
    old = path.read_bytes()
    with pytest.raises(RuntimeError, match="simulated"):
        save_npz_atomic(path, first=np.zeros(100_000), second=_ExplodingArray())
    assert path.read_bytes() == old
    assert _names(tmp_path) == ["params.npz"]


def test_npz_exact_name_without_npz_suffix(tmp_path: Path) -> None:
    save_npz_atomic(tmp_path / "cache.bin", x=np.ones(3))
    assert _names(tmp_path) == ["cache.bin"]
    with np.load(tmp_path / "cache.bin") as z:
        assert z["x"].sum() == 3


def test_npz_refuses_object_arrays(tmp_path: Path) -> None:
    with pytest.raises(Avatar3DError, match="dtype object"):
        save_npz_atomic(tmp_path / "o.npz", ok=np.ones(2), bad=np.array([{}, []], dtype=object))
    assert _names(tmp_path) == []
