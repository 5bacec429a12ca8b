"""`avatar3d render AVATAR --audio FILE | --text "..."`: the avatar speaking new speech.

Why: this is the product -- any speech in, a talking-head video out, with audio and video
in sync.  The mouth comes from the audio-to-motion model (personalised to the subject when
a personalised model is at hand), the rest of the face and the head pose from the
subject's own clip (:mod:`avatar3d.render.drive`), and frames are rendered one by one
and streamed into the mp4, so memory does not grow with the length of the speech.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import check_writable
from avatar3d.io.video import read_audio
from avatar3d.motion.phone_constraints import BILABIAL_LABELS, PhoneConstraintConfig, apply_phone_constraints
from avatar3d.render.camera import CameraPath, ViewRenderer, camera_track, parse_camera, stereo_eyes
from avatar3d.render.drive import DriveConfig, DriveTracks, build_tracks
from avatar3d.render.outputs import (DEPTH_PATTERN, RGBA_PATTERN, DepthSink, Frame, MatteConfig, Mp4Sink, Outputs,
                                     RgbaSink, check_output_dir)  # fmt: skip
from avatar3d.train.trainer import load_avatar, require_motion

SAMPLE_RATE = 16000
PERSONAL_MODEL_NAME = "motion.pt"
MIN_SPEECH_S = 0.2


PHONE_MODES = ("auto", "off")


@dataclass(frozen=True)
class SpokenSpeech:
    """Speech ready to drive the mouth: 16 kHz audio and, when known, its phone timeline."""

    audio: np.ndarray
    phones: tuple | None
    """Contiguous phones (``start``, ``end`` s, ARPAbet ``label`` or "SIL"), or None: audio alone drives the mouth."""
    origin: str
    """Where the phones came from (or why there are none), for the log."""


@dataclass(frozen=True)
class SpeechSource:
    """Where the speech comes from: an audio/video file, or text spoken by espeak-ng.

    ``phones``: ``auto`` times the lip constraints (:mod:`avatar3d.motion.phone_constraints`) with
    espeak-ng's own phoneme timings for text, and with pocketsphinx phone-loop decoding for audio
    (no transcript: the user's audio has none) when pocketsphinx is importable; ``off``: the audio
    alone drives the mouth.
    """

    audio_path: Path | None = None
    text: str | None = None
    voice: str = "en-us"
    phones: str = "auto"

    def __post_init__(self) -> None:
        if self.phones not in PHONE_MODES:
            raise Avatar3DError(f"--phones {self.phones!r}: use one of {', '.join(PHONE_MODES)}")

    def load(self) -> np.ndarray:
        """float32 mono audio at 16 kHz; one-line errors for missing, silent-length or unreadable input."""
        self._check()
        if self.text is not None:
            from avatar3d.audio.tts_phonemes import synthesize_with_phonemes

            return synthesize_with_phonemes(self.text, voice=self.voice, sample_rate=SAMPLE_RATE).audio
        return self._read_file()

    def speech(self, log: Callable[[str], None] = print) -> SpokenSpeech:
        """The audio and, per ``phones``, its phone timeline; logs which timeline drives the lips."""
        self._check()
        if self.text is not None:
            from avatar3d.audio.tts_phonemes import synthesize_with_phonemes

            tts = synthesize_with_phonemes(self.text, voice=self.voice, sample_rate=SAMPLE_RATE)
            spoken = SpokenSpeech(tts.audio, tuple(tts.as_phones()), "espeak-ng's own phoneme timings") \
                if self.phones == "auto" else SpokenSpeech(tts.audio, None, "off (--phones off)")
        else:
            audio = self._read_file()
            if self.phones == "off":
                spoken = SpokenSpeech(audio, None, "off (--phones off)")
            elif importlib.util.find_spec("pocketsphinx") is None:
                spoken = SpokenSpeech(audio, None, "off (pocketsphinx is not importable; pip install pocketsphinx)")
            else:
                from avatar3d.synth.phonemes import align_phones

                spoken = SpokenSpeech(audio, tuple(align_phones(audio, SAMPLE_RATE, None)),
                                      "pocketsphinx phone-loop decoding (no transcript)")
        if spoken.phones is None:
            log(f"[render] lip constraints: {spoken.origin}; the audio alone drives the mouth")
        else:
            n_bil = sum(p.label in BILABIAL_LABELS for p in spoken.phones)
            log(f"[render] lip constraints from {spoken.origin}: {n_bil} bilabials closed, pauses >= "
                f"{PhoneConstraintConfig.min_silence_s * 1000:.0f} ms held still")
        return spoken

    def _check(self) -> None:
        if (self.audio_path is None) == (self.text is None):
            raise Avatar3DError("give exactly one speech source: --audio FILE or --text \"...\"")

    def _read_file(self) -> np.ndarray:
        path = Path(self.audio_path)
        if not path.is_file():
            raise Avatar3DError(f"{path}: audio file not found; check the path")
        audio = read_audio(path, SAMPLE_RATE)
        if len(audio) < MIN_SPEECH_S * SAMPLE_RATE:
            raise Avatar3DError(f"{path}: only {len(audio) / SAMPLE_RATE:.2f} s of audio; give at least "
                                f"{MIN_SPEECH_S} s of speech")  # fmt: skip
        return audio


def gated_mouth_curves(mouth_model, audio: np.ndarray, fps: float, n: int, phones=None,  # type: ignore[no-untyped-def]
                       constraints: PhoneConstraintConfig = PhoneConstraintConfig()) -> dict[str, np.ndarray]:
    """Mouth curves at ``fps`` with the speech gate on and, given ``phones``, the phone constraints.

    Gate: the raw model opens the jaw on noise or a DC offset about as much as on speech
    (tests/motion/test_audio_inputs.py); the gate holds the mouth at its silent pose unless voiced
    speech is near, and leaves speech unchanged (held-out L1 +0.07 %).  Phones (a timeline of
    ``start``/``end``/ARPAbet ``label``): bilabials sealed and long pauses held still at the model's
    own silent pose (:func:`avatar3d.motion.phone_constraints.apply_phone_constraints`), applied at
    ``fps`` so that a phone shorter than a frame still closes its nearest frame.
    """
    from avatar3d.motion.streaming import GateConfig, _silent_output, predict_stream

    curves = predict_stream(mouth_model, audio, SAMPLE_RATE, GateConfig())
    own = float(mouth_model.config.fps)
    t_out = (np.arange(n) + 0.5) / fps
    t_own = (np.arange(len(next(iter(curves.values())))) + 0.5) / own
    out = {name: np.interp(t_out, t_own, c).astype(np.float32) for name, c in curves.items()}
    if phones is None:
        return out
    rest = dict(zip(mouth_model.names, (float(v) for v in _silent_output(mouth_model))))
    return apply_phone_constraints(out, phones, fps, constraints, rest=rest).curves


def drive_from_speech(bundle: dict, audio: np.ndarray, mouth_model, config: DriveConfig,  # type: ignore[no-untyped-def]
                      phones=None, log: Callable[[str], None] = print) -> DriveTracks:
    """Per-frame tracks for ``audio`` (16 kHz) at the avatar's frame rate (``log``: where pose notes go).

    ``phones``: the speech's phone timeline (``SpokenSpeech.phones``), see :func:`gated_mouth_curves`.
    """
    fps = float(bundle["fps"])
    n = max(1, int(round(len(audio) / SAMPLE_RATE * fps)))
    mouth = gated_mouth_curves(mouth_model, audio, fps, n, phones)
    return build_tracks(mouth, n, fps, expression_names=list(bundle["expression_names"]),
                        expression=np.asarray(bundle["expression"], np.float32),
                        blink=np.asarray(bundle["blink"], np.float32), R=np.asarray(bundle["R"]),
                        t=np.asarray(bundle["t"]), train_ids=np.asarray(bundle["train_ids"]), config=config,
                        log=log)  # fmt: skip


def render_tracks(model, bundle: dict, tracks: DriveTracks, out: Path | None, audio: np.ndarray | None,  # type: ignore[no-untyped-def]
                  size: int, progress: bool = True, *, camera: str | CameraPath = "training",
                  stereo_ipd_mm: float | None = None, rgba: Path | None = None, depth: Path | None = None,
                  matte: MatteConfig = MatteConfig(), log: Callable[[str], None] = print,
                  warn: Callable[[str], None] | None = None) -> float:  # fmt: skip
    """Render every frame of ``tracks`` into ``out`` (mp4 with ``audio``) and the other outputs; returns render FPS.

    ``camera``: ``training``, ``orbit`` or a parsed camera path (:mod:`avatar3d.render.camera`);
    ``stereo_ipd_mm``: left|right eyes side by side in every output; ``rgba``/``depth``: folders
    (:mod:`avatar3d.render.outputs`).  ``out`` may be None when only folders are wanted.
    """
    fps_out = float(bundle["fps"])
    cam = camera_track(camera, tracks.R, tracks.t, bundle, **({"warn": warn} if warn is not None else {}))
    if cam.clamped and camera == "orbit":
        log(f"[render] orbit: {cam.clamped} of {len(cam.R)} frames where the head's own turn plus the orbit "
            "would leave the trained range are held at its edge")  # fmt: skip
    views = ViewRenderer(model, bundle, size, cam, tracks.R, tracks.t, tracks.motion, stereo_eyes(stereo_ipd_mm))
    sinks: list = []
    try:
        if out is not None:
            sinks.append(Mp4Sink(Path(out), fps_out, audio, SAMPLE_RATE))
        if rgba is not None:
            sinks.append(RgbaSink(Path(rgba), fps_out, matte, log=log))
        if depth is not None:
            sinks.append(DepthSink(Path(depth), matte))
    except BaseException:
        Outputs(sinks)._abort()
        raise
    if not sinks:
        raise Avatar3DError("nothing to render to: give -o OUT.mp4, --rgba DIR or --depth DIR")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(views), desc="render", unit="frame", dynamic_ncols=True)
    seconds = 0.0
    with Outputs(sinks) as outputs:
        for i in range(len(views)):
            t0 = time.perf_counter()
            frame = Frame.from_views(views.render(i))
            seconds += time.perf_counter() - t0
            outputs.write(frame)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return len(views) / max(seconds, 1e-9)


def mouth_model_for(avatar: Path, bundle: dict, path: Path | None = None, *, progress: bool = True,  # type: ignore[no-untyped-def]
                    log: Callable[[str], None] = print):
    """The motion model that drives ``avatar``: ``path`` if given, else the avatar's personalised one.

    The shipped model speaks in the synthetic rig's blendshape scale, not in the scale the
    subject was tracked in (e.g. a resting jawOpen of 0.46 vs 0.05), so the avatar needs a model
    personalised to its subject: made on first use from the subject folder recorded at training
    time and kept as ``AVATAR/motion.pt``.
    """
    from avatar3d.motion.model import load

    if path is not None:
        return load(path)
    own = avatar / PERSONAL_MODEL_NAME
    if own.is_file():
        return load(own)
    subject = Path(str(bundle.get("subject", "")))
    if not (subject / "manifest.json").is_file():
        raise Avatar3DError(f"{avatar}: no personalised motion model ({PERSONAL_MODEL_NAME}) and its subject folder "
                            f"{subject} is gone; run `avatar3d motion personalize SUBJECT -o {own}` or pass "
                            "--motion-model FILE")  # fmt: skip
    from avatar3d.motion.personalize import personalize

    log(f"[render] personalising the motion model to {subject} (first use; kept as {own})")
    personalize(subject, own, progress=progress)
    return load(own)


def render_from_speech(
    avatar: str | Path, source: SpeechSource, out: str | Path, *, mouth_model=None,  # type: ignore[no-untyped-def]
    motion_model_path: Path | None = None, config: DriveConfig = DriveConfig(), size: int | None = None,
    blendshapes: Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
    camera: str | Path = "training", stereo_ipd_mm: float | None = None, rgba: Path | None = None,
    depth: Path | None = None,
) -> dict[str, float]:  # fmt: skip
    """Writes ``out`` (H.264 + AAC) of the avatar saying ``source``; returns frames, seconds and render FPS.

    ``blendshapes``: also write the same motion as a Live Link Face CSV (ARKit weights + head
    rotation per frame), so a game-engine rig can say the same speech in step with the video.

    ``mouth_model`` (default: :func:`mouth_model_for`) has ``predict(audio, fps, n_frames,
    sample_rate) -> {name: curve}`` giving curves in the avatar's tracked coefficient scale.

    ``camera`` (training | orbit | camera-path .json), ``stereo_ipd_mm``, ``rgba`` and ``depth``
    folders: see :func:`render_tracks`.
    """
    avatar, out = Path(avatar), Path(out)
    model, bundle = load_avatar(avatar)
    require_motion(bundle)
    # Everything the user can get wrong about the camera and outputs fails here, before any work.
    camera_spec = parse_camera(camera)
    eyes = stereo_eyes(stereo_ipd_mm)
    if rgba is not None:
        check_output_dir(Path(rgba), RGBA_PATTERN, "--rgba")
    if depth is not None:
        check_output_dir(Path(depth), DEPTH_PATTERN, "--depth")
    check_writable(out)
    size = int(size or bundle["resolution"])
    if size % 2:
        raise Avatar3DError(f"--size {size}: H.264 needs an even frame size")
    speech = source.speech(log=log)  # a bad file, voice or text fails before minutes of personalising
    audio = speech.audio
    if mouth_model is None:
        mouth_model = mouth_model_for(avatar if avatar.is_dir() else avatar.parent, bundle, motion_model_path,
                                      progress=progress, log=log)  # fmt: skip
    check_writable(out)  # before minutes of rendering, not after (again: personalising may have taken minutes)
    if blendshapes is not None:
        check_writable(Path(blendshapes))
    tracks = drive_from_speech(bundle, audio, mouth_model, config, phones=speech.phones, log=log)
    fps = render_tracks(model, bundle, tracks, out, audio, size, progress, camera=camera_spec,
                        stereo_ipd_mm=stereo_ipd_mm, rgba=rgba, depth=depth, log=log)
    if blendshapes is not None:
        from avatar3d.export.livelink import arkit_weights, write_livelink_csv

        weights = arkit_weights(tracks.expression_names, tracks.expression, tracks.blink)
        write_livelink_csv(blendshapes, weights, tracks.R, float(bundle["fps"]))
    layout = f"{size}² per eye, side by side" if len(eyes) == 2 else f"{size}²"
    log(f"[render] {len(tracks.motion)} frames ({len(audio) / SAMPLE_RATE:.1f} s of speech) at {layout} -> {out} "
        f"({fps:.1f} FPS rendering)")  # fmt: skip
    return {"frames": float(len(tracks.motion)), "seconds": len(audio) / SAMPLE_RATE, "render_fps": fps}
