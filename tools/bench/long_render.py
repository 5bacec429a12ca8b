"""An hour of speech through `avatar3d render --audio`: memory must not grow with the length.

Why: issue 7 asks that audio longer than an hour be streamed.  CI renders 10 minutes
(tests/render/test_long_audio.py); this runs the real CLI, each length in its own process, on
65 minutes and on 1 minute of the same speech and compares their peak resident memory and time.
Every stage that scales with the audio runs on all of it (decoding, the motion model at its
25 fps, the mp4's AAC track, the Live Link CSV); only the number of *rendered* frames is cut, by
rendering a copy of the avatar whose frame rate is set to ``--fps`` (1 by default: an hour at
25 fps would take hours of CPU rendering here).

Usage: python tools/bench/long_render.py AVATAR [--minutes 65] [--fps 1] [--size 64] [--phones off]
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from avatar3d.io.video import probe_video, read_audio  # noqa: E402
from avatar3d.synth.speech import synthesize  # noqa: E402

SR = 16000
SENTENCE = "Bring me the purple umbrella before the morning bus arrives."


def avatar_at_fps(avatar: Path, folder: Path, fps: float) -> Path:
    """A copy of ``avatar`` that renders ``fps`` frames per second of speech."""
    folder.mkdir(parents=True)
    for name in ("config.yaml", "motion.pt"):
        if (avatar / name).is_file():
            shutil.copy(avatar / name, folder)
    bundle = torch.load(avatar / "avatar.pt", weights_only=False)
    bundle["fps"] = fps
    torch.save(bundle, folder / "avatar.pt")
    return folder


def speech_wav(path: Path, minutes: float) -> None:
    """``minutes`` of a sentence every 10 s, written block by block (never the whole track in memory)."""
    block = np.zeros(10 * SR, np.float32)
    speech = synthesize(SENTENCE, voice="en-us")
    block[4000:4000 + len(speech)] = speech
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
        for _ in range(round(6 * minutes)):
            f.write(block)


def render(avatar: Path, wav: Path, out: Path, size: int, phones: str) -> dict[str, float]:
    """One `avatar3d render` in its own process: wall seconds and that process's peak RSS (MB)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "avatar3d", "render", str(avatar), "--audio", str(wav), "-o", str(out),
           "--size", str(size), "--phones", phones, "--blendshapes", str(out.with_suffix(".csv"))]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"render failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    return {"seconds": time.perf_counter() - start, "peak_children_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("avatar", type=Path, help="an avatar folder written by `avatar3d train` (with its motion.pt)")
    ap.add_argument("--minutes", type=float, default=65.0)
    ap.add_argument("--fps", type=float, default=1.0, help="rendered frames per second of speech")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--phones", default="off", choices=("auto", "loop", "off"))
    args = ap.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory(prefix="avatar3d-long-") as tmp:
        work = Path(tmp)
        avatar = avatar_at_fps(args.avatar, work / "avatar", args.fps)
        # shortest first: RUSAGE_CHILDREN keeps the largest child's peak, so each row reads its own
        # peak only if it is at least as large as the rows before it (the claim under test)
        for minutes in (1.0, args.minutes):
            wav, out = work / f"speech_{minutes:g}min.wav", work / f"say_{minutes:g}min.mp4"
            speech_wav(wav, minutes)
            row = render(avatar, wav, out, args.size, args.phones)
            info = probe_video(out)
            sound_s = len(read_audio(out, SR)) / SR
            row.update(frames=info.n_frames, video_s=info.duration, sound_s=sound_s,
                       csv_rows=sum(1 for _ in out.with_suffix(".csv").open()) - 1,
                       wav_mb=wav.stat().st_size / 1e6, decoded_mb=minutes * 60 * SR * 4 / 1e6)  # fmt: skip
            rows[minutes] = row
            print(f"[bench] {minutes:g} min: {row['seconds']:.0f} s, peak RSS {row['peak_children_mb']:.0f} MB, "
                  f"{row['frames']} frames, sound {sound_s:.1f} s", flush=True)
    short, long = rows[1.0], rows[args.minutes]
    print(f"\n{'speech':>10}{'wall s':>9}{'peak RSS MB':>13}{'frames':>8}{'sound s':>10}{'decoded MB':>12}")
    for minutes, r in rows.items():
        print(f"{minutes:>8g} m{r['seconds']:>9.0f}{r['peak_children_mb']:>13.0f}{r['frames']:>8}{r['sound_s']:>10.1f}"
              f"{r['decoded_mb']:>12.1f}")
    growth = long["peak_children_mb"] - short["peak_children_mb"]
    print(f"peak RSS, {args.minutes:g} min vs 1 min: {long['peak_children_mb'] / short['peak_children_mb']:.3f}x "
          f"(+{growth:.0f} MB; the decoded {args.minutes:g}-minute track alone would be {long['decoded_mb']:.0f} MB); "
          f"time {long['seconds'] / short['seconds']:.1f}x for {args.minutes:g}x the speech")
    print(json.dumps({"minutes": args.minutes, "fps": args.fps, "size": args.size, "phones": args.phones,
                      "rows": {f"{k:g}": v for k, v in rows.items()}, "peak_growth_mb": round(growth, 1)}))


if __name__ == "__main__":
    main()
