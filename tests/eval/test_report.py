"""The eval report: self-contained HTML that renders in headless Chromium with its plots and frames."""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar3d.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected into a *copy* of the report only (the report itself has no scripts): marks on <body>
# how many images there are and how many failed to decode once the page has loaded.
PROBE = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
         "document.body.setAttribute('data-images',im.length+':'+"
         "im.filter(i=>!(i.complete&&i.naturalWidth>0)).length);});</script>")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(html)
    return parser.tags


@pytest.fixture(scope="module")
def report(tiny_avatar_run, avatar_subject: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`avatar3d eval` through the CLI on the first 5 held-out frames of the tiny avatar."""
    out = tmp_path_factory.mktemp("report")
    assert main(["eval", str(tiny_avatar_run[0]), str(avatar_subject), "-o", str(out), "--frames", "5"]) == 0
    return out / "report.html"


def _chromium() -> str:
    if CHROMIUM is None:
        reason = "chromium is not installed (tools/install.sh installs it: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


def _run_chromium(html_path: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", *args, html_path.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _probe(html_path: Path, tmp: Path) -> tuple[int, int]:
    """(images, images that failed to decode) as Chromium saw them after load."""
    probe = tmp / f"probe-{html_path.name}"
    probe.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    dom = _run_chromium(probe, tmp, "--virtual-time-budget=10000", "--dump-dom").stdout
    found = re.search(r'data-images="(\d+):(\d+)"', dom)
    assert found, f"probe did not run; DOM starts {dom[:200]!r}"
    return int(found.group(1)), int(found.group(2))


def test_report_is_self_contained(report: Path) -> None:
    html = report.read_text()
    tags = _tags(html)
    imgs = [attrs.get("src") or "" for tag, attrs in tags if tag == "img"]
    assert len(imgs) >= 3 + 1  # three plots and at least one frame strip
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        png = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8)
        img = cv2.imdecode(png, cv2.IMREAD_COLOR)
        assert img is not None and min(img.shape[:2]) >= 64 and img.std() > 5.0  # a real picture, not a blank
    assert not any(tag in ("script", "link", "iframe") for tag, _ in tags)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|url\(\s*["']?(https?:|//)""", html)
    for needle in ("PSNR full / head / mouth", "LMD mouth / face", "sync lag", "blinks per minute",
                   "unavailable (no local weights given (--lpips-weights))", "Provenance"):
        assert needle in html


def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    run = _run_chromium(report, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert _console_lines(run.stderr) == []  # the page logs nothing: no errors, no warnings
    image = cv2.imread(str(shot), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (2400, 1280)
    assert image.std() > 20.0  # not blank
    assert (image < 200).mean() > 0.03  # plots, frames and text cover a real share of the page
    n_img = len([t for t, _ in _tags(report.read_text()) if t == "img"])
    assert n_img >= 4 and _probe(report, tmp_path) == (n_img, 0)  # every image decoded


def test_chromium_checks_can_fail(report: Path, tmp_path: Path) -> None:
    """Negative controls: a broken image and a console error are caught by the checks above."""
    _chromium()
    html = report.read_text()
    broken = tmp_path / "broken.html"
    first = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken.write_text(html[:first] + "AAAA" + html[first + 200:])  # truncate the first plot's PNG
    assert _probe(broken, tmp_path)[1] == 1
    noisy = tmp_path / "noisy.html"
    noisy.write_text(html.replace("</body>", "<script>console.error('boom')</script></body>"))
    run = _run_chromium(noisy, tmp_path, f"--screenshot={tmp_path / 'n.png'}", "--window-size=800,600")
    assert any("boom" in line for line in _console_lines(run.stderr))
