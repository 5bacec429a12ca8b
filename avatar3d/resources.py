"""Where avatar3d's non-Python files live: kernel sources, YAML presets, the user cache.

Why one module: the same code runs from an installed wheel (files are package data inside
``avatar3d/``) and from a checkout (an editable install, or pytest with ``pythonpath=.``, where
they sit beside the package in ``cuda_ext/`` and ``configs/``). Every other module asks here
instead of walking up from its own ``__file__``.

Layout (``setup.py`` maps the checkout's folders into the wheel at build time):

* kernel sources: wheel ``avatar3d/_cuda_ext/`` <- checkout ``cuda_ext/``
* presets:        wheel ``avatar3d/presets/*.yaml`` <- checkout ``configs/*.yaml``
* compiled kernels: checkout ``build/torch_extensions/`` (``tools/install.sh`` prebuilds there);
  an installed package JIT-builds into ``$AVATAR3D_CACHE/torch_extensions``
  (``AVATAR3D_CACHE`` defaults to ``~/.cache/avatar3d``; the same cache holds the synthetic
  subject's calibration and driving-video poses).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from avatar3d.errors import Avatar3DError

PACKAGE_DIR = Path(__file__).resolve().parent
CACHE_ENV = "AVATAR3D_CACHE"  # root of the per-user cache
PACKAGED_KERNELS = "_cuda_ext"  # folder names inside the installed package (setup.py writes them)
PACKAGED_PRESETS = "presets"
PRESET_SUFFIX = ".yaml"


def import_root() -> Path:
    """The folder holding the ``avatar3d`` package (a checkout or site-packages): what a child
    interpreter puts on ``sys.path`` to import this same copy."""
    return PACKAGE_DIR.parent


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None for an installed wheel."""
    root = import_root()
    if (root / "setup.py").is_file() and (root / "cuda_ext").is_dir() and (root / "configs").is_dir():
        return root
    return None


def kernel_source_dir() -> Path:
    """Root of the C++/CUDA sources (``include/``, ``cpu/``, ``cuda/``, ``bindings/``).

    Never raises (it is read at import): an install without them gets the packaged path, whose
    missing files make the build fail into the pure-torch mirror with its one warning.
    """
    inside, root = PACKAGE_DIR / PACKAGED_KERNELS, checkout_root()
    return root / "cuda_ext" if root is not None and not inside.is_dir() else inside


def preset_dir() -> Path:
    """Folder of the named YAML presets."""
    inside, root = PACKAGE_DIR / PACKAGED_PRESETS, checkout_root()
    if inside.is_dir():
        return inside
    if root is not None:
        return root / "configs"
    raise Avatar3DError(f"{inside} is missing and {import_root()} is not an avatar3d checkout: "
                        "reinstall avatar3d (pip install --force-reinstall avatar3d)")  # fmt: skip


def cache_dir() -> Path:
    """The per-user cache: ``$AVATAR3D_CACHE``, else ``$XDG_CACHE_HOME/avatar3d`` or ``~/.cache/avatar3d``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "avatar3d"


def kernel_build_dir() -> Path:
    """Where JIT builds of the kernels go: the checkout's ``build/torch_extensions`` (what
    ``tools/install.sh`` prebuilds), else ``cache_dir()/torch_extensions``."""
    root = checkout_root()
    return root / "build" / "torch_extensions" if root is not None else cache_dir() / "torch_extensions"


@dataclass(frozen=True)
class Preset:
    """One named YAML preset: its file, the command it configures and its one-line description."""

    name: str
    path: Path
    command: str  # "train", "prep", ...; "" when the file names none
    description: str


_USE_LINE = re.compile(r"^#\s*Use:\s*avatar3d\s+([a-z][a-z-]*(?:\s+(?:pretrain|personalize))?)")


def read_preset(path: Path) -> Preset:
    """A preset's description is its first comment line; its command comes from a ``# Use: avatar3d CMD`` line."""
    description, command = "", ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            if line.strip():
                break  # the header ends at the first value
            continue
        if not description:
            description = line.lstrip("#").strip()
        match = _USE_LINE.match(line)
        if match and not command:
            command = " ".join(match.group(1).split())
    return Preset(path.stem, path, command, description)


def presets() -> list[Preset]:
    """Every shipped preset, by name."""
    return [read_preset(p) for p in sorted(preset_dir().glob(f"*{PRESET_SUFFIX}"))]


def preset_names() -> list[str]:
    return [p.stem for p in sorted(preset_dir().glob(f"*{PRESET_SUFFIX}"))]


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; an unknown name is a one-line error listing the presets."""
    path = preset_dir() / f"{name}{PRESET_SUFFIX}"
    if not path.is_file():
        raise Avatar3DError(f"config {name!r} is neither a file nor a preset: use a YAML path or one of "
                            f"{', '.join(preset_names())} (`avatar3d presets` describes them)")  # fmt: skip
    return path


def resolve_config(value: str | Path) -> Path:
    """``--config`` value -> YAML file: an existing file wins, else a bare name is a preset.

    A value that looks like a path (a folder separator or a .yaml/.yml suffix) and is missing is
    reported as a missing file, not as an unknown preset.
    """
    path = Path(value).expanduser()
    if path.is_file():
        return path
    text = str(value)
    if os.sep in text or "/" in text or path.suffix.lower() in (".yaml", ".yml"):
        raise Avatar3DError(f"config file {path} not found: pass an existing YAML file or a preset name "
                            f"({', '.join(preset_names())})")  # fmt: skip
    return preset_path(text)


def format_presets() -> str:
    """The table ``avatar3d presets`` prints: name, command, description."""
    rows = presets()
    width = max((len(p.name) for p in rows), default=4)
    cmd_width = max((len(p.command) for p in rows), default=7)
    lines = [f"{'preset':{width}s}  {'command':{cmd_width}s}  description"]
    lines += [f"{p.name:{width}s}  {p.command or '-':{cmd_width}s}  {p.description}" for p in rows]
    lines.append(f"(in {preset_dir()}; use one with --config NAME, e.g. `avatar3d train SUBJECT -o AVATAR "
                 "--config cpu_small`)")
    return "\n".join(lines)
