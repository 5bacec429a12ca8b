"""``avatar3d demo``: every stage, end to end, on the built-in subject.

Synthesise a 60 s talking subject (speech, head motion, blinks, ground truth), check it
with MediaPipe, prepare it as a dataset and measure the tracking against the ground truth,
train the avatar (the cpu_small preset at 128², 16 min here so the whole demo stays within
30 min on 2 cores; ``--fast``: an 8 s clip, 64², 90 s with the tiny network, ~3 min in all),
re-render its held-out frames with their audio, make it say a sentence the subject never said
(text -> espeak-ng -> the motion model personalised on first use), orbit the camera around it,
and evaluate it with an HTML report.
Every figure it prints and every output path are also written to ``OUT/demo.json``, with which
kernels ran (the compiled C++/CUDA build or the pure-torch mirror).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from avatar3d.config import load_config
from avatar3d.dataset.contract import TRACKING
from avatar3d.errors import Avatar3DError
from avatar3d.eval.evaluate import EvalConfig, evaluate
from avatar3d.eval.pose import rotation_errors_deg, still_jitter_deg, translation_errors_mm
from avatar3d.io.atomic import check_parent_writable, json_safe, write_json_atomic
from avatar3d.nerf.backend import describe_backends
from avatar3d.nerf.encoding import HASHGRID_SPEC
from avatar3d.nerf.raymarch import RAYMARCH_SPEC
from avatar3d.render.drive import DriveConfig
from avatar3d.render.replay import render_from_subject
from avatar3d.render.speech import SpeechSource, render_from_speech
from avatar3d.resources import preset_path, resolve_config
from avatar3d.synth.check import check_clip, load_groundtruth
from avatar3d.synth.generate import SynthConfig, generate
from avatar3d.train.config import TrainConfig
from avatar3d.train.trainer import resolve_device, train
from data_prep.pipeline import prepare

DEFAULT_PRESET = "cpu_small"  # the TrainConfig the demo starts from (a preset name or a YAML file)
FAST_NETWORK_PRESET = "tiny"  # --fast trains this preset's network
DEMO_TRAIN_MINUTES = 16  # of cpu_small's 20: the other stages take ~12 min on 2 cores
FAST_TRAIN_SECONDS = 90  # --fast: the other stages take ~90 s; CI runs it inside the 15-minute test suite
NEW_SENTENCE = "Good morning. I never said this sentence, but my avatar can say it for me."
STEPS = 8
ORBIT_SENTENCE = "Here is a short orbit around my head."


def _train_config(fast: bool, base: str | Path = DEFAULT_PRESET):  # type: ignore[no-untyped-def]
    """``base`` (the cpu_small preset unless told otherwise); for --fast shrunk to 64², 90 s and the
    network of the tiny preset.

    Why the tiny network for --fast: in 90 s at 64² it runs ~700 steps where cpu_small's runs ~450, and
    the held-out head came out 27.7-28.6 dB against 21.9-24.4 dB (two runs each, 8 s clip).
    """
    config = load_config(TrainConfig, base)
    if not fast:
        return dataclasses.replace(config, time_budget_s=DEMO_TRAIN_MINUTES * 60.0)
    fit = config.eval.held_out_pose_fit and dataclasses.replace(config.eval.held_out_pose_fit, steps=60,
                                                                rays_per_step=1024)
    avatar = load_config(TrainConfig, preset_path(FAST_NETWORK_PRESET)).avatar
    avatar = dataclasses.replace(avatar, pose_knot_frames=config.avatar.pose_knot_frames)
    px = config.sampler.neck_band_px * 64 // config.resolution  # the band is in training pixels
    return dataclasses.replace(config, avatar=avatar, resolution=64, time_budget_s=FAST_TRAIN_SECONDS,
                               sampler=dataclasses.replace(config.sampler, rays_per_step=1024, neck_band_px=px),
                               optim=dataclasses.replace(config.optim, pose_refine_start=200),
                               eval=dataclasses.replace(config.eval, every=0, held_out_pose_fit=fit))  # fmt: skip


def _kernels(device):  # type: ignore[no-untyped-def]
    """Which build ran the NeRF's ops: "cpu"/"cuda" (compiled) or "torch" (the mirror), and where it came from."""
    return describe_backends((HASHGRID_SPEC, RAYMARCH_SPEC), device)


def _kernel_line(kernels: dict[str, dict]) -> str:
    """e.g. "hashgrid cpu (jit), raymarch cpu (jit)"; the mirror is named as such."""
    return ", ".join(f"{name} {k['backend']} ({k['build'] or 'pure-torch mirror'})" for name, k in kernels.items())


def _check_out(out: Path) -> None:
    """A fresh, writable folder, checked before minutes of work (a second demo would stop at training)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Avatar3DError(f"{out}: already exists and is not an empty folder (a previous demo?); "
                            "pass -o NEW_FOLDER or remove it")  # fmt: skip
    check_parent_writable(out / "demo.json", "-o")


def run_demo(out: Path, fast: bool = False, config: str | Path = DEFAULT_PRESET) -> dict:
    """Run the demo into ``out`` and print where everything is; ``config`` is the TrainConfig to start from."""
    started = time.time()
    config_path = resolve_config(config)  # a bad name fails before any work
    _check_out(Path(out))
    subject_dir = Path(out) / "subject"
    print(f"[1/{STEPS}] synthesising a {'8' if fast else '60'} s talking subject into {subject_dir}")
    report = generate(SynthConfig(duration_s=8.0 if fast else 60.0, seed=0), subject_dir)
    print(f"[2/{STEPS}] checking the clip with MediaPipe against its ground truth")
    check = check_clip(subject_dir, progress=True)
    print(f"  face found in {100 * check['detection_rate']:.1f}% of {check['frames']} frames; "
          f"landmark error {check['mean_px']:.2f} px mean / {check['p95_px']:.2f} px p95 "
          f"(lips {check['lips_mean_px']:.2f} px, contour {check['contour_mean_px']:.2f} px)")
    prepared_dir = Path(out) / "prepared"
    print(f"[3/{STEPS}] preparing the clip as a subject dataset in {prepared_dir}")
    manifest = prepare(subject_dir / "video.mp4", prepared_dir)
    truth = load_groundtruth(subject_dir / "groundtruth.npz")
    with np.load(prepared_dir / TRACKING) as tracking:
        rot_err = rotation_errors_deg(truth["rotation"], tracking["R"])
        trans_err = translation_errors_mm(truth["translation"], tracking["t"])
        jitter = still_jitter_deg(tracking["R"], truth["head_still"])
    print(f"  tracking vs ground truth: rotation {np.median(rot_err):.2f}° median, translation "
          f"{np.median(trans_err):.1f} mm median (after one global similarity), jitter while still {jitter:.3f}°")

    avatar_dir = Path(out) / "avatar"
    train_config = _train_config(fast, config_path)
    budget = (f"{train_config.time_budget_s / 60:.0f} min" if train_config.time_budget_s >= 120
              else f"{train_config.time_budget_s:.0f} s")  # fmt: skip
    print(f"[4/{STEPS}] training the avatar at {train_config.resolution}² for {budget} into {avatar_dir} "
          f"({config_path.stem})")
    result = train(prepared_dir, avatar_dir, train_config)
    kernels = _kernels(resolve_device(train_config.device))
    val_video = Path(out) / "avatar_val.mp4"
    print(f"[5/{STEPS}] re-rendering the held-out frames with their tracked motion and audio into {val_video}")
    render_stats = render_from_subject(avatar_dir, prepared_dir, val_video, split="val")

    new_video, new_curves = Path(out) / "avatar_new_sentence.mp4", Path(out) / "avatar_new_sentence.csv"
    print(f"[6/{STEPS}] making the avatar say a new sentence into {new_video}: \"{NEW_SENTENCE}\"")
    speech_stats = render_from_speech(avatar_dir, SpeechSource(text=NEW_SENTENCE), new_video, blendshapes=new_curves)

    orbit_video = Path(out) / "avatar_orbit.mp4"
    print(f"[7/{STEPS}] a short orbit of the camera around the still head into {orbit_video}")
    render_from_speech(avatar_dir, SpeechSource(text=ORBIT_SENTENCE), orbit_video, camera="orbit",
                       config=DriveConfig(pose="static"))

    report_dir = Path(out) / "eval"
    print(f"[8/{STEPS}] evaluating the avatar on its held-out frames into {report_dir}")
    metrics = evaluate(avatar_dir, prepared_dir, report_dir, EvalConfig(frames=24 if fast else None)).metrics
    seconds = time.time() - started
    print(f"done in {seconds:.0f} s; kernels: {_kernel_line(kernels)}. Outputs:")
    for key, path in report["files"].items():
        print(f"  {key:12s} {path}")
    print(f"  {'dataset':12s} {prepared_dir} (manifest.json lists every file)")
    print(f"  {'avatar':12s} {avatar_dir} (held-out PSNR full {result['val']['psnr_full']:.1f} / head "
          f"{result['val']['psnr_head']:.1f} / mouth {result['val']['psnr_mouth']:.1f} dB"
          + (f" with re-tracked poses, {result['val_tracked']['psnr_head']:.1f} dB head with the landmark-tracked ones"
             if "val_tracked" in result else "") + "; "
          f"tensorboard --logdir {avatar_dir / 'tensorboard'})")
    print(f"  {'held-out':12s} {val_video} ({render_stats['render_fps']:.1f} FPS rendering)")
    print(f"  {'new speech':12s} {new_video} ({speech_stats['seconds']:.1f} s; motion model {avatar_dir / 'motion.pt'}; "
          f"Live Link Face curves {new_curves})")
    print(f"  {'report':12s} {report_dir / 'report.html'} (its figures: {report_dir / 'metrics.json'})")
    print(f"  {'orbit':12s} {orbit_video} (within the views the training clip covers; the torso stays in the "
          "training view)")
    summary = {
        "fast": fast, "seconds": round(seconds, 1), "config": str(config_path), "kernels": kernels,
        "check": check, "tracking": {"rotation_median_deg": float(np.median(rot_err)),
                                     "translation_median_mm": float(np.median(trans_err)), "still_jitter_deg": jitter},
        "train": result, "render": render_stats, "speech": speech_stats,
        "eval": {k: metrics[k] for k in ("image", "lpips", "lmd", "blink", "sync", "detection_rate")},
        "files": {**{k: str(v) for k, v in report["files"].items()}, "dataset": str(prepared_dir),
                  "avatar": str(avatar_dir), "held_out_video": str(val_video), "new_sentence_video": str(new_video),
                  "new_sentence_curves": str(new_curves), "orbit_video": str(orbit_video),
                  "report": str(report_dir / "report.html"), "metrics": str(report_dir / "metrics.json")},
    }  # fmt: skip
    write_json_atomic(Path(out) / "demo.json", json_safe(summary), default=str)
    print(f"  {'summary':12s} {Path(out) / 'demo.json'} (every figure above, as JSON)")
    return summary

