"""Choosing and loading the compiled kernels: prebuilt -> JIT build -> pure-torch mirror.

Why: the NeRF kernels (hash grid now; ray marching and compositing later) ship as
C++/OpenMP and CUDA sources, but a missing compiler or a CPU-only torch must never
stop training. Loading never raises under ``backend="auto"``: a failed build costs
one ``warnings.warn`` and the op runs its torch mirror. Forcing a backend (config
field ``backend`` or env ``AVATAR3D_BACKEND``, which wins) that cannot run is a
clear :class:`BackendUnavailable` error instead.

An op describes its sources with an :class:`ExtensionSpec`; :func:`resolve_backend`
returns which backend runs tensors on a given device and the loaded module. Sources come
from :func:`avatar3d.resources.kernel_source_dir` (package data in a wheel, ``cuda_ext/`` in
a checkout); builds go to :func:`avatar3d.resources.kernel_build_dir` (the checkout's
``build/torch_extensions``, else ``$AVATAR3D_CACHE/torch_extensions``, default
``~/.cache/avatar3d/torch_extensions``). A new kernel adds its spec to :data:`KERNEL_SPECS`
so ``python -m avatar3d.nerf.build_kernels`` (what ``tools/install.sh`` runs) prebuilds it.
"""
from __future__ import annotations

import importlib
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Literal, get_args

import torch
from torch.utils import cpp_extension

from avatar3d.errors import Avatar3DError
from avatar3d.resources import kernel_build_dir, kernel_source_dir

Backend = Literal["auto", "cuda", "cpu", "torch"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ENV_VAR = "AVATAR3D_BACKEND"
CUDA_EXT_DIR = kernel_source_dir()  # include/, cpu/, cuda/, bindings/
BUILD_ROOT = kernel_build_dir()  # the default ExtensionSpec.build_root (read at spec creation)
# Every compiled op as "module:ATTRIBUTE" of its ExtensionSpec: what `python -m avatar3d.nerf.build_kernels`
# and tools/install.sh prebuild. A new kernel registers itself by adding one line here.
KERNEL_SPECS: tuple[str, ...] = (
    "avatar3d.nerf.encoding:HASHGRID_SPEC",
    "avatar3d.nerf.raymarch:RAYMARCH_SPEC",
    "avatar3d.gaussians.rasterize:GAUSSIANS_SPEC",
)


class BackendUnavailable(Avatar3DError):
    """A forced backend cannot run here (no CUDA, build failed, wrong device)."""


@dataclass(frozen=True)
class ExtensionSpec:
    """Sources of one op's compiled builds; ``name`` becomes ``avatar3d_<name>_<kind>``."""

    name: str
    cpu_sources: tuple[Path, ...]
    cuda_sources: tuple[Path, ...] = ()  # binding .cpp + kernel .cu files
    include_dirs: tuple[Path, ...] = (CUDA_EXT_DIR / "include", CUDA_EXT_DIR / "cuda")
    build_root: Path = field(default_factory=kernel_build_dir)

    def module_name(self, kind: str) -> str:
        return f"avatar3d_{self.name}_{kind}"


@dataclass
class BuildRecord:
    """What happened when a build was loaded: for logs, reports and tests."""

    module: ModuleType | None
    source: str  # "prebuilt" | "jit" | "failed"
    seconds: float
    error: str = ""
    warned: bool = False  # the fallback warning was issued (once per build per process)


_RECORDS: dict[tuple[str, str, str], BuildRecord] = {}
_LOCK = threading.Lock()


def requested_backend(config_value: str = "auto") -> str:
    """The backend asked for: env ``AVATAR3D_BACKEND`` if set, else the config value."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    value = env or str(config_value).lower()
    if value not in BACKENDS:
        where = f"environment variable {ENV_VAR}" if env else "config field backend"
        raise Avatar3DError(f"{where}={value!r} is not a backend: use one of {', '.join(BACKENDS)}")
    return value


def cuda_available() -> bool:
    """True when this torch was built with CUDA and sees a GPU."""
    return torch.version.cuda is not None and torch.cuda.is_available()


def kernel_specs(refs: Iterable[str] = KERNEL_SPECS) -> list[ExtensionSpec]:
    """The registered specs (``"module:ATTRIBUTE"`` references), imported."""
    specs = []
    for ref in refs:
        module, _, attr = ref.partition(":")
        spec = getattr(importlib.import_module(module), attr, None)
        if not isinstance(spec, ExtensionSpec):
            raise Avatar3DError(f"kernel {ref!r} is not an ExtensionSpec: fix KERNEL_SPECS in {__file__}")
        specs.append(spec)
    return specs


def _jit_build(spec: ExtensionSpec, kind: str) -> ModuleType:
    """Compile with ninja into ``<build_root>/<module>`` (cached by torch on source hash)."""
    name = spec.module_name(kind)
    build_dir = Path(spec.build_root) / name
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = spec.cpu_sources if kind == "cpu" else spec.cuda_sources
    missing = [str(s) for s in sources if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"missing source(s): {', '.join(missing)}")
    flags = ["-O3", "-fopenmp"] if kind == "cpu" else ["-O3"]
    return cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        extra_include_paths=[str(d) for d in spec.include_dirs],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"] if kind == "cpu" else [],
        extra_cuda_cflags=["-O3"],  # torch adds -std=c++20; a second -std makes nvcc fail
        build_directory=str(build_dir),
        with_cuda=kind == "cuda",
        verbose=False,
    )


def load_extension(spec: ExtensionSpec, kind: Literal["cpu", "cuda"]) -> BuildRecord:
    """Loads ``kind`` once per process: prebuilt module, else JIT build; failures are recorded, not raised."""
    key = (spec.name, kind, str(spec.build_root))
    with _LOCK:
        if key in _RECORDS:
            return _RECORDS[key]
        t0 = time.perf_counter()
        if kind == "cuda" and not cuda_available():
            record = BuildRecord(None, "failed", 0.0, "torch has no usable CUDA (CPU build of torch or no GPU)")
        else:
            try:
                record = BuildRecord(importlib.import_module(spec.module_name(kind)), "prebuilt", 0.0)
            except ImportError:
                try:
                    module = _jit_build(spec, kind)
                    record = BuildRecord(module, "jit", time.perf_counter() - t0)
                except Exception as exc:  # compiler missing, syntax error, link error: fall back, never raise
                    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                    detail = " | ".join(lines[-6:]) if lines else type(exc).__name__
                    record = BuildRecord(None, "failed", time.perf_counter() - t0, detail)
        _RECORDS[key] = record
        return record


def resolve_backend(spec: ExtensionSpec, requested: str, device: torch.device) -> tuple[str, ModuleType | None]:
    """``(backend, module)`` that runs tensors on ``device``; module is None for the torch mirror.

    ``auto`` prefers the compiled build for the device and falls back to the mirror
    with one warning per build; ``cpu``/``cuda`` raise :class:`BackendUnavailable`
    when they cannot run here.
    """
    if requested == "torch":
        return "torch", None
    device = torch.device(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    if requested in ("cpu", "cuda") and requested != kind:
        if requested == "cuda" and not cuda_available():
            raise BackendUnavailable(
                f"backend 'cuda' was forced but this torch has no usable CUDA ({torch.__version__}): "
                f"unset {ENV_VAR} / use backend='auto', or install a CUDA build of torch"
            )
        raise BackendUnavailable(
            f"backend {requested!r} was forced but the tensors are on {device}: move them to "
            f"{'a CUDA device' if requested == 'cuda' else 'the CPU'} or use backend='auto'"
        )
    if device.type not in ("cpu", "cuda"):
        if requested == "auto":
            return "torch", None
        raise BackendUnavailable(f"no compiled {spec.name} build for device {device}: use backend='torch'")
    record = load_extension(spec, kind)
    if record.module is not None:
        return kind, record.module
    if requested == kind:
        raise BackendUnavailable(f"backend {kind!r} was forced but the {spec.name} {kind} build failed: {record.error}")
    if not record.warned:
        record.warned = True
        warnings.warn(
            f"avatar3d: {spec.name} {kind} build unavailable ({record.error}); using the slower pure-torch "
            f"mirror. Set {ENV_VAR}=torch to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "torch", None


def describe_backends(specs: Iterable[ExtensionSpec], device: torch.device | str,
                      requested: str = "auto") -> dict[str, dict[str, Any]]:
    """Per op: the backend that runs tensors on ``device`` ("cuda", "cpu" or "torch" for the mirror) and
    where its build came from, for logs and run summaries (loads, or JIT-builds, what is not loaded yet)."""
    device = torch.device(device)
    summary: dict[str, dict[str, Any]] = {}
    for spec in specs:
        backend, module = resolve_backend(spec, requested_backend(requested), device)
        record = _RECORDS.get((spec.name, backend, str(spec.build_root))) if module is not None else None
        summary[spec.name] = {
            "backend": backend,
            "build": record.source if record else "",  # "prebuilt" | "jit" | "" (the mirror)
            "build_seconds": round(record.seconds, 1) if record else 0.0,
            "module_file": str(getattr(module, "__file__", "") or ""),
        }
    return summary


def ensure_backend(spec: ExtensionSpec, requested: str) -> None:
    """Fails early (at module construction) when a forced backend cannot run on this machine."""
    if requested == "cuda":
        resolve_backend(spec, "cuda", torch.device("cuda") if cuda_available() else torch.device("cpu"))
    elif requested == "cpu":
        resolve_backend(spec, "cpu", torch.device("cpu"))
