"""The ``avatar3d`` command: one entry point, one subcommand per stage that exists.

Bad input raises :class:`~avatar3d.errors.Avatar3DError`; it is printed as one line
(``error: ...``) and the exit code is 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avatar3d import __version__
from avatar3d.errors import Avatar3DError


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
    p.add_argument("--config", type=Path, help="YAML file of SynthConfig values (e.g. configs/synth.yaml)")
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
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from avatar3d.config import load_config
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
    report = generate(config, args.out)
    if args.check:
        from avatar3d.synth.check import check_clip

        report["check"] = check_clip(args.out, progress=True)
        print(json.dumps(report["check"], indent=1))
    _print_outputs(report["files"])
    return 0


def _print_outputs(files: dict[str, str]) -> None:
    for key, path in files.items():
        print(f"  {key:12s} {path}")


def _add_prep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prep", help="turn a clip into a tracked, segmented subject dataset",
                       description="Decode, landmarks, face-model tracking, parsing, background plate and audio "
                                   "features, written as the dataset contract. Re-runs skip finished stages.")
    p.add_argument("clip", type=Path, help="video of one person talking (any common container/codec)")
    p.add_argument("-o", "--out", type=Path, required=True, help="subject folder to write")
    p.add_argument("--config", type=Path, help="YAML file of PrepConfig values (e.g. configs/prep.yaml)")
    p.add_argument("--fps", type=_positive_int, help="output frame rate (default 25)")
    p.add_argument("--size", type=_positive_int, help="output square size, even (default 512)")
    p.add_argument("--preview", action="store_true",
                   help="also write preview.mp4: labels, landmarks and the fitted face mesh over the first 10 s")
    p.set_defaults(func=_cmd_prep)


def _cmd_prep(args: argparse.Namespace) -> int:
    import dataclasses

    from avatar3d.config import load_config
    from data_prep.pipeline import PrepConfig, prepare

    config = load_config(PrepConfig, args.config)
    decode_changes = {k: v for k, v in (("fps", args.fps), ("size", args.size)) if v is not None}
    if decode_changes:
        config = dataclasses.replace(config, decode=dataclasses.replace(config.decode, **decode_changes))
    if args.preview:
        config = dataclasses.replace(config, preview=True)
    manifest = prepare(args.clip, args.out, config)
    print(f"subject dataset in {args.out}: {manifest['n_frames']} frames, "
          f"train {manifest['split']['train']}, val {manifest['split']['val']}, "
          f"{manifest['excluded_frames']} frames excluded")
    if args.preview:
        print(f"  preview      {args.out / 'preview.mp4'}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the avatar (head NeRF + torso field) on a prepared subject",
                       description="Fit the motion-conditioned head field and the head-aware torso field to a "
                                   "subject prepared by `avatar3d prep`. Checkpoints atomically; --resume continues.")
    p.add_argument("subject", type=Path, help="subject folder written by `avatar3d prep`")
    p.add_argument("-o", "--out", type=Path, required=True, help="avatar folder (checkpoint, avatar.pt, TensorBoard)")
    p.add_argument("--config", type=Path, help="YAML of TrainConfig values (configs/cpu_small.yaml, configs/gpu_512.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--steps", type=_positive_int, help="override the number of steps")
    p.add_argument("--minutes", type=_positive_float, help="stop after this much training time")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from avatar3d.config import load_config
    from avatar3d.train.trainer import TrainConfig, train

    config = None
    if args.config is not None or args.steps or args.minutes:
        config = load_config(TrainConfig, args.config)
        if args.steps:
            config = dataclasses.replace(config, steps=args.steps)
        if args.minutes:
            config = dataclasses.replace(config, time_budget_s=args.minutes * 60.0)
    result = train(args.subject, args.out, config, resume=args.resume)
    print(json.dumps(result))
    return 0


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render a trained avatar to an mp4",
                       description="Re-render a subject's frames with their tracked pose and motion and the "
                                   "original audio (held-out frames by default).")
    p.add_argument("avatar", type=Path, help="avatar folder written by `avatar3d train`")
    p.add_argument("--motion-from", type=Path, required=True, help="subject folder whose tracked motion drives it")
    p.add_argument("--split", choices=("val", "train", "all"), default="val", help="which frames (default val)")
    p.add_argument("--size", type=_positive_int, help="output size in pixels (default: the training resolution)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .mp4")
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    from avatar3d.render.replay import render_from_subject

    render_from_subject(args.avatar, args.motion_from, args.out, split=args.split, size=args.size)
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every stage that exists end to end on the built-in subject",
                       description="Synthesise a talking subject from the built-in photo, check it with MediaPipe, "
                                   "prepare it, train the avatar, re-render its held-out frames and print where "
                                   "every output is. Grows as stages land.")
    p.add_argument("-o", "--out", type=Path, default=Path("avatar3d_demo"), help="output folder (default ./avatar3d_demo)")
    p.add_argument("--fast", action="store_true", help="an 8 s clip and 2 minutes of training at 64² (~3 min in all) "
                   "instead of 30 s and 20 minutes at 128²")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from avatar3d.demo import run_demo

    run_demo(args.out, fast=args.fast)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar3d", description="Audio-driven 3D talking-head avatars.")
    parser.add_argument("--version", action="version", version=f"avatar3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_synth(sub)
    _add_prep(sub)
    _add_train(sub)
    _add_render(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except Avatar3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: partial outputs were not kept (all files are written atomically)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
