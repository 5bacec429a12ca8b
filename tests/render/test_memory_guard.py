"""Resource guards of `avatar3d render`: a frame size that cannot fit is refused before any work, with the
numbers; a long render says its frame count and expected time once its first frames are timed."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from avatar3d.cli import main
from avatar3d.errors import ResourceError
from avatar3d.render import speech
from avatar3d.guards import available_memory, check_render_memory, estimate_render_bytes

ASSET = Path(__file__).resolve().parents[1] / "assets" / "sync_avatar"


def test_estimate_grows_with_pixels_and_refuses_with_a_size_that_fits() -> None:
    assert estimate_render_bytes(4096) > 16 * estimate_render_bytes(512) / 4  # the pixel term dominates
    assert estimate_render_bytes(512, eyes=2) > estimate_render_bytes(512)
    check_render_memory(512, available=8 * 10**9)
    with pytest.raises(ResourceError) as refused:
        check_render_memory(4096, available=8 * 10**9)
    message = str(refused.value)
    assert message.startswith("--size 4096:") and "8.0 GB is available" in message, message
    fits = int(re.search(r"use --size (\d+) or smaller", message).group(1))
    assert fits % 2 == 0 and estimate_render_bytes(fits) <= 8 * 10**9 < estimate_render_bytes(fits + 64)


def test_render_refuses_a_frame_that_cannot_fit_before_any_work(tmp_path: Path, capsys) -> None:
    have = available_memory()
    assert have is not None and have > 0
    out = tmp_path / "x.mp4"
    assert main(["render", str(ASSET), "--text", "hi", "--size", "16384", "-o", str(out)]) == 6  # ~375 GB
    err = capsys.readouterr().err
    assert err.startswith("error: --size 16384:") and "GB of memory" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_long_render_says_its_frames_and_time(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(speech, "LONG_RENDER_FRAMES", 10)  # the threshold, not the renderer: a real short render
    monkeypatch.setattr(speech, "TIMED_FRAMES", 2)
    out = tmp_path / "hi.mp4"
    assert main(["render", str(ASSET), "--text", "Hi.", "--phones", "off", "--size", "64", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    warning = re.search(r"warning: a long render: (\d+) frames \(([\d.]+) min of video\) at ([\d.]+) s a frame take "
                        r"about (\d+) min", err)  # fmt: skip
    assert warning is not None, err
    assert int(warning.group(1)) >= 10 and float(warning.group(3)) > 0 and out.is_file()
