"""Resource guards every command runs before any work: free disk, peak memory, and the size of long jobs.

Why one place: a job that runs the disk full or the machine out of memory fails late (after minutes of
work) or takes the machine down with it, and a 20,000-character text silently became a 35,620-frame
job. Each command estimates what it will write, what it will hold, and how long it will take, from
its options alone, and refuses with the numbers and the fix (exit 5 for disk, 6 for memory, 2 for a
job above :data:`LONG_JOB_FRAMES` without ``--yes``). A later entry point (a server, batch runs) calls
the same checks. The estimates are plain numbers in, bytes out, so they import nothing above
:mod:`avatar3d.errors`; the constants were measured (docs/errors.md, "Guards before work").
"""
from __future__ import annotations

import math
import os
import shutil
import sys
from pathlib import Path

from avatar3d.errors import Avatar3DError, DiskFullError, ResourceError

__all__ = [
    "available_memory", "free_disk", "check_disk", "check_memory",
    "estimate_render_bytes", "check_render_memory", "estimate_train_bytes", "check_train_memory",
    "estimate_gaussian_train_bytes", "check_gaussian_train_memory",
    "estimate_prep_disk", "estimate_video_disk", "estimate_train_disk", "hash_grid_params",
    "long_job_notice", "warn", "speech_frames_from_text", "RENDER_SECONDS_PER_PIXEL", "SYNTH_SECONDS_PER_PIXEL", "LONG_JOB_FRAMES", "ANNOUNCE_FRAMES",
]  # fmt: skip

# Render (measured peak RSS of one frame of tests/assets/sync_avatar on a CPU: 0.41 / 0.73 / 1.05 /
# 2.99 GB at 256² / 512² / 1024² / 2048²; the head is rendered in passes of 512² rays, so the pixel
# term is the torso field, the composite and the frame buffers).
BYTES_PER_PIXEL = 1000  # measured 620 B a pixel of one frame (1024² -> 2048²), +60 % for the view warp and sinks
FIXED_BYTES = 1_000_000_000  # measured 0.75 GB: the interpreter, torch, the avatar and one pass of 512² head rays
EXTRA_VIEW_BYTES_PER_PIXEL = 64  # each further stereo eye: its finished float view is kept for the side by side

# Train (measured with /usr/bin/time on the 400-frame 512² test subject, 30 steps and the closing
# evaluation: peak RSS 1.65 GB with configs/tiny.yaml and 1.61 GB with configs/cpu_small.yaml; the
# estimate gives 1.63 and 1.73 GB. The ray-sample term is what grows with rays_per_step x max_samples).
TRAIN_FIXED_BYTES = 1_500_000_000  # interpreter, torch, the face model, kernels, evaluation renders, TensorBoard
TRAIN_BYTES_PER_PARAM = 16  # float32 parameter + gradient + Adam's two moments
TRAIN_BYTES_PER_SAMPLE = 1200  # forward activations kept for backward, per ray sample (hash grid + MLPs)
TRAIN_FRAME_BYTES_PER_PIXEL = 4  # the frame store on disk: RGB + label, uint8 (a disk figure, not a RAM one:
# training reads it memory-mapped, and clean file-backed pages are page cache the kernel counts as available and
# evicts under pressure -- counting them made a 512² estimate of a 5-minute clip 10.4 GB against 1.3 GB measured)
# The Gaussian avatar renders whole frames: what grows is the pixels of a step (torso-field activations kept
# for backward, the rasterizer's per-pixel and per-tile buffers). Measured: configs/gaussians_cpu.yaml at 128²
# with 30,000 Gaussians peaked at 1.24-1.61 GB on the real clips (125-550 frames); the estimate gives 1.59-1.62.
GAUSSIAN_BYTES_PER_PIXEL = 4000

# Disk (bytes written per output frame; generous for real, noisy footage: the synthetic clips compress
# to ~0.005 B a pixel, camera footage to ~0.05).
VIDEO_BYTES_PER_PIXEL = 0.25  # H.264 at the quality the writers use
PREP_BYTES_PER_FRAME = 16_000  # landmarks (478 x 3 float32), tracking, audio features, flags
PREP_PARSING_BYTES_PER_PIXEL = 0.05  # compressed label maps
RGBA_BYTES_PER_PIXEL = 4.0  # --rgba PNGs, uncompressed upper bound
DEPTH_BYTES_PER_PIXEL = 2.0  # --depth 16-bit PNGs
MARGIN_BYTES = 50_000_000  # temp copies, logs, TensorBoard, the probe file

# Long jobs: the frame count and time are said up front from ANNOUNCE_FRAMES (2 min of video at 25 fps);
# above LONG_JOB_FRAMES (10 min of video at 25 fps: an hour or more of CPU work) the command needs --yes.
ANNOUNCE_FRAMES = 3000
LONG_JOB_FRAMES = 15000
RENDER_SECONDS_PER_PIXEL = 6.5e-6  # CPU render, 2 cores: 10 FPS at 128², 2.3 FPS at 256² (tools/bench/RESULTS.md)
SYNTH_SECONDS_PER_PIXEL = 1.0e-7  # synth: 24 ms a 512² frame with 2 workers, speech and encoding included
SPEECH_CHARS_PER_SECOND = 14.0  # espeak-ng at 160 words a minute (measured: 20,000 characters -> 1,425 s)


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get without swapping (MemAvailable); None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path: Path) -> int | None:
    """Free bytes on the filesystem that ``path`` (or its nearest existing parent) is on; None if unknown."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return int(shutil.disk_usage(here).free)
    except OSError:
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_disk(path: Path, need: int, what: str, free: int | None = None) -> None:
    """:class:`DiskFullError` (exit 5) when ``what`` (about ``need`` bytes) cannot fit beside ``path``."""
    have = free_disk(path) if free is None else free
    if have is None or need <= have:
        return
    raise DiskFullError(f"not enough free disk for {path}: {what} needs about {_gb(need)}, but {_gb(have)} is "
                        "free there; free some space or choose another location")  # fmt: skip


def check_memory(need: int, what: str, advice: str, available: int | None = None) -> None:
    """:class:`ResourceError` (exit 6) when ``what`` needs more than the machine's available memory."""
    have = available_memory() if available is None else available
    if have is None or need <= have:
        return
    raise ResourceError(f"{what} needs about {need / 1e9:.1f} GB of memory, but {have / 1e9:.1f} GB is available; "
                        f"{advice}")  # fmt: skip


def estimate_render_bytes(size: int, eyes: int = 1) -> int:
    """Peak memory of rendering ``size``² frames with ``eyes`` views side by side."""
    pixels = int(size) * int(size)
    return FIXED_BYTES + pixels * (BYTES_PER_PIXEL + (int(eyes) - 1) * EXTRA_VIEW_BYTES_PER_PIXEL)


def check_render_memory(size: int, eyes: int = 1, label: str = "--size", available: int | None = None) -> None:
    """One-line :class:`ResourceError` (exit 6) when the render would need more memory than is available."""
    have = available_memory() if available is None else available
    if have is None or estimate_render_bytes(size, eyes) <= have:
        return
    per_pixel = BYTES_PER_PIXEL + (eyes - 1) * EXTRA_VIEW_BYTES_PER_PIXEL
    fits = int(math.sqrt(max(have - FIXED_BYTES, 0) / per_pixel)) // 2 * 2
    advice = f"use {label} {fits} or smaller" if fits >= 16 else "free memory first"
    check_memory(estimate_render_bytes(size, eyes), f"{label} {size}: rendering {size}x{size} frames", advice, have)


def hash_grid_params(n_dims: int, n_levels: int, features_per_level: int, log2_table_size: int) -> int:
    """Upper bound of a hash grid's parameter count (every level's table full)."""
    del n_dims  # the table size bounds every level, whatever the dimension
    return int(n_levels) * (1 << int(log2_table_size)) * int(features_per_level)


def estimate_train_bytes(resolution: int, n_frames: int, rays_per_step: int, max_samples: int, n_params: int) -> int:
    """Peak memory of one training step: fixed + optimiser state + ray samples (the memory-mapped uint8 frame store
    is page cache, see :data:`TRAIN_FRAME_BYTES_PER_PIXEL`; ``resolution`` and ``n_frames`` size the model only)."""
    del resolution, n_frames
    return int(TRAIN_FIXED_BYTES + TRAIN_BYTES_PER_PARAM * n_params + TRAIN_BYTES_PER_SAMPLE * rays_per_step
               * max_samples)  # fmt: skip


def estimate_gaussian_train_bytes(resolution: int, n_frames: int, frames_per_step: int, n_params: int) -> int:
    """Peak memory of one Gaussian-avatar training step: fixed + optimiser state + whole-frame buffers (the frames
    are memory-mapped page cache, see :data:`TRAIN_FRAME_BYTES_PER_PIXEL`)."""
    del n_frames
    pixels = int(resolution) * int(resolution)
    return int(TRAIN_FIXED_BYTES + TRAIN_BYTES_PER_PARAM * n_params + GAUSSIAN_BYTES_PER_PIXEL * pixels
               * int(frames_per_step))  # fmt: skip


def check_gaussian_train_memory(resolution: int, n_frames: int, frames_per_step: int, n_params: int,
                                available: int | None = None) -> None:  # fmt: skip
    """:class:`ResourceError` (exit 6) when a Gaussian avatar's training cannot fit in the available memory."""
    need = estimate_gaussian_train_bytes(resolution, n_frames, frames_per_step, n_params)
    check_memory(need, f"training a Gaussian avatar at {resolution}x{resolution}, {frames_per_step} frame(s) a step, "
                 f"{n_params / 1e6:.1f} M parameters and {n_frames} frames",
                 "use a smaller preset (e.g. --config gaussians_tiny) or a YAML with a lower resolution or "
                 "density.max_gaussians, or free memory first", available)  # fmt: skip


def check_train_memory(resolution: int, n_frames: int, rays_per_step: int, max_samples: int, n_params: int,
                       available: int | None = None) -> None:
    """:class:`ResourceError` (exit 6) when training as configured cannot fit in the available memory."""
    need = estimate_train_bytes(resolution, n_frames, rays_per_step, max_samples, n_params)
    check_memory(need, f"training at {resolution}x{resolution} with {rays_per_step} rays x {max_samples} samples a "
                 f"step, {n_params / 1e6:.1f} M parameters and {n_frames} frames",
                 "use a smaller preset (e.g. --config tiny or cpu_small) or a YAML with a lower resolution or "
                 "sampler.rays_per_step, or free memory first", available)  # fmt: skip


def estimate_video_disk(n_frames: int, size: int, eyes: int = 1, rgba: bool = False, depth: bool = False) -> int:
    """Bytes a render writes: the mp4 (and its temp copy), plus --rgba / --depth PNGs."""
    pixels = int(n_frames) * int(size) * int(size)
    total = VIDEO_BYTES_PER_PIXEL * pixels * eyes * 2  # the temp mp4 and, for a moment, the finished one
    total += (RGBA_BYTES_PER_PIXEL * pixels * eyes if rgba else 0) + (DEPTH_BYTES_PER_PIXEL * pixels if depth else 0)
    return int(total + MARGIN_BYTES)


def estimate_prep_disk(n_frames: int, size: int, seconds: float) -> int:
    """Bytes prep writes for ``n_frames`` at ``size``²: frames.mp4, label maps, per-frame arrays, audio."""
    pixels = int(n_frames) * int(size) * int(size)
    return int(pixels * (2 * VIDEO_BYTES_PER_PIXEL + PREP_PARSING_BYTES_PER_PIXEL) + PREP_BYTES_PER_FRAME
               * n_frames + 32_000 * seconds + MARGIN_BYTES)  # fmt: skip


def estimate_train_disk(n_params: int, n_frames: int, resolution: int, cache_exists: bool) -> int:
    """Bytes train writes: the frame cache (unless built), checkpoint + its temp copy (weights and Adam), avatar.pt."""
    cache = 0 if cache_exists else TRAIN_FRAME_BYTES_PER_PIXEL * n_frames * resolution * resolution
    return int(cache + 2 * 12 * n_params + 4 * n_params + MARGIN_BYTES)


def speech_frames_from_text(text: str, fps: float) -> int:
    """Frames a text becomes when espeak-ng speaks it (estimated from its length, before synthesis)."""
    return int(math.ceil(len(text.strip()) / SPEECH_CHARS_PER_SECOND * fps))


def long_job_notice(n_frames: int, fps: float, seconds_per_frame: float, yes: bool, what: str) -> str | None:
    """A long job's frames and expected time, to say up front (None for a short one).

    Above :data:`LONG_JOB_FRAMES` frames the job is refused (exit 2) unless ``yes`` (the ``--yes`` flag).
    """
    if n_frames < ANNOUNCE_FRAMES:
        return None
    minutes = n_frames * seconds_per_frame / 60.0
    size = (f"{n_frames} frames ({n_frames / max(fps, 1e-9) / 60.0:.1f} min of video), about {minutes:.0f} min of "
            "CPU work")  # fmt: skip
    if n_frames > LONG_JOB_FRAMES and not yes:
        raise Avatar3DError(f"{what} is a long job: {size}; pass --yes to run it (jobs above {LONG_JOB_FRAMES} "
                            "frames need it), or shorten the input")  # fmt: skip
    return f"{what} is a long job: {size} (estimated up front); Ctrl-C stops it without leaving a partial file"


def warn(message: str | None) -> None:
    """Prints ``warning: message`` on stderr (nothing for None)."""
    if message:
        print(f"warning: {message}", file=sys.stderr)
