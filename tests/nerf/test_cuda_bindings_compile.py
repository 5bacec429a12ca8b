"""The torch bindings of the CUDA kernels compile (syntax + types) against this machine's torch headers.

Why: the bindings (cuda_ext/bindings/*.cpp) are only *built* where a CUDA torch and a GPU exist,
so without this check a binding error would surface only on a lent GPU. The CPU torch wheel ships
the c10/cuda headers; with CUDA's own headers (next to nvcc) g++ can type-check the bindings here.
``C10_CUDA_NO_CMAKE_CONFIGURE_FILE`` stands in for the one generated header the CPU wheel lacks.
Both files are checked in parallel (~30 s each). Skipped without nvcc / CUDA headers.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BINDINGS = sorted((REPO / "cuda_ext" / "bindings").glob("*.cpp"))


def _cuda_include() -> Path | None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    roots = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""),
             str(Path(nvcc).resolve().parent.parent), "/usr/local/cuda"]  # fmt: skip
    for root in filter(None, roots):
        if (Path(root) / "include" / "cuda_runtime.h").is_file():
            return Path(root) / "include"
    return None


def test_cuda_bindings_typecheck_against_torch_headers() -> None:
    cuda_inc = _cuda_include()
    cxx = shutil.which("g++") or shutil.which("c++")
    if cuda_inc is None or cxx is None:
        pytest.skip("nvcc/CUDA headers or a C++ compiler missing: bindings not checked")
    torch_inc = Path(torch.__file__).parent / "include"
    assert BINDINGS, "no binding sources under cuda_ext/bindings"
    procs = []
    for src in BINDINGS:
        cmd = [cxx, "-std=c++17", "-fsyntax-only", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
               "-DTORCH_EXTENSION_NAME=avatar3d_check", "-DTORCH_API_INCLUDE_EXTENSION_H",
               f"-I{torch_inc}", f"-I{torch_inc / 'torch' / 'csrc' / 'api' / 'include'}",
               f"-I{sysconfig.get_paths()['include']}", f"-I{cuda_inc}",
               f"-I{REPO / 'cuda_ext' / 'include'}", f"-I{REPO / 'cuda_ext' / 'cuda'}", str(src)]  # fmt: skip
        procs.append((src, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for src, cmd, proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{src.name} does not compile against torch {torch.__version__}:\n{out[-4000:]}"
