"""Build avatar3d's wheel or sdist from a copy of the checkout and install it into a fresh venv outside it.

Why a copy: pip builds in the source tree (``build/``, ``*.egg-info``) and the checkout's ``build/`` holds
the prebuilt kernels; the copy also proves the distribution needs nothing beyond the files it names.
The venv sees the system site-packages (torch, mediapipe, ... are not reinstalled), so the test has to
check that the venv's avatar3d, not the editable checkout, is what runs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# what setup.py and MANIFEST.in read: the distribution's inputs
SOURCE_ITEMS = ("setup.py", "README.md", "MANIFEST.in", "avatar3d", "data_prep", "cuda_ext", "configs")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.o", "*.so", "*.egg-info")


def kernel_sources() -> list[str]:
    """Every file of the checkout's cuda_ext/, relative to it (what the wheel must carry)."""
    root = REPO / "cuda_ext"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".o", ".so"))  # fmt: skip


def preset_files() -> list[str]:
    return sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def copy_source(dest: Path) -> Path:
    """The distribution's inputs copied into ``dest``."""
    dest.mkdir(parents=True)
    for name in SOURCE_ITEMS:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=outside_env())
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(work: Path) -> Path:
    """``pip wheel --no-deps --no-build-isolation`` of a copy of the checkout; returns the .whl."""
    source = copy_source(work / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
          str(source)], cwd=work)  # fmt: skip
    (wheel,) = (work / "dist").glob("avatar3d-*.whl")
    return wheel


def build_sdist(work: Path) -> Path:
    """The sdist of a copy of the checkout; returns the .tar.gz."""
    source = copy_source(work / "src")
    _run([sys.executable, "setup.py", "-q", "sdist", "-d", str(work / "sdist")], cwd=source)
    (sdist,) = (work / "sdist").glob("avatar3d-*.tar.gz")
    return sdist


def install_in_venv(wheel: Path, venv: Path) -> Path:
    """A fresh venv (system site-packages visible, no pip of its own) with ``wheel`` installed; its python."""
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=venv.parent)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], cwd=venv.parent)
    return python


def outside_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env
