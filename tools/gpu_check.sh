#!/usr/bin/env bash
# GPU check: build the CUDA extensions, run the kernel parity suite (CPU + CUDA) and the CUDA benchmark.
# Why a script: a lent GPU's time is short; one prepared command does everything and keeps the logs.
# Usage (repo root, on a machine with a CUDA torch): bash tools/gpu_check.sh [OUT_DIR]
set -u
out=${1:-gpu_check_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-8}
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    nvcc --version | tail -1
} 2>&1 | tee "$out/env.txt"

build() {  # $1 = spec module, $2 = spec name, $3 = kind
    python3 - "$@" <<'PY'
import importlib, sys, time
from avatar3d.nerf.backend import _jit_build
spec = getattr(importlib.import_module(sys.argv[1]), sys.argv[2])
t = time.perf_counter()
_jit_build(spec, sys.argv[3])
print(f"{spec.name} {sys.argv[3]} build: {time.perf_counter() - t:.1f} s")
PY
}
build avatar3d.nerf.encoding HASHGRID_SPEC cuda >"$out/build_hashgrid_cuda.log" 2>&1 &
build avatar3d.nerf.raymarch RAYMARCH_SPEC cuda >"$out/build_raymarch_cuda.log" 2>&1 &
build avatar3d.nerf.encoding HASHGRID_SPEC cpu >"$out/build_hashgrid_cpu.log" 2>&1 &
build avatar3d.nerf.raymarch RAYMARCH_SPEC cpu >"$out/build_raymarch_cpu.log" 2>&1 &
wait
tail -n 3 "$out"/build_*.log

python3 -m pytest -q -rfEs -p no:cacheprovider tests/nerf 2>&1 | tee "$out/pytest.log" | tail -n 40
python3 tools/bench/cuda.py 2>&1 | tee "$out/bench_cuda.txt"
