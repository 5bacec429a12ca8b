"""`avatar3d render AVATAR --audio FILE | --text "..."`: the avatar speaking new speech.

Why: this is the product -- any speech in, a talking-head video out, with audio and video
in sync.  The mouth comes from the audio-to-motion model (personalised to the subject when
a personalised model is at hand), the rest of the face and the head pose from the
subject's own clip (:mod:`avatar3d.render.drive`), and frames are rendered one by one
and streamed into the mp4.  Speech from a file is never held whole either (an hour is 230 MB
as float32, and one offline pass of the motion model over it several times that): it is
decoded chunk by chunk for the phone loop (in windows), the motion model and the mp4's sound
track, so memory does not grow with the length of the speech beyond the per-frame tracks.
"""
from __future__ import annotations

import importlib.util
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from avatar3d.audio.alignment import align_phones
from avatar3d.audio.features import frame_features, resample_mono
from avatar3d.audio.phones import SIL, Phone
from avatar3d.audio.speech_presence import MIN_VOICED_SHARE, no_speech_message, voiced_share
from avatar3d.audio.tts_phonemes import synthesize_with_phonemes
from avatar3d.audio.word_phones import WindowDecoder
from avatar3d.avatar.base import Avatar
from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.loading import load_avatar
from avatar3d.dataset.contract import MANIFEST, TRACKING
from avatar3d.errors import Avatar3DError, InputError
from avatar3d.export.livelink import LLF_COUNT, LLF_HEADER, arkit_weights, livelink_table, timecode
from avatar3d.guards import (RENDER_SECONDS_PER_PIXEL, check_disk, check_render_memory, estimate_video_disk,
                             long_job_notice, speech_frames_from_text, warn)
from avatar3d.io.atomic import atomic_path, check_writable
from avatar3d.io.hashing import file_sha256
from avatar3d.io.video import media_duration, read_audio
from avatar3d.motion.model import load
from avatar3d.motion.personalize import personalize
from avatar3d.motion.phone_constraints import BILABIAL_LABELS, PhoneConstraintConfig, apply_phone_constraints
from avatar3d.motion.streaming import GateConfig, MotionStream, iter_audio_chunks, silent_output, speech_gate
from avatar3d.render.camera import CameraPath, ViewRenderer, camera_track, parse_camera, stereo_eyes
from avatar3d.render.drive import DriveConfig, DriveTracks, build_tracks
from avatar3d.render.outputs import (DEPTH_PATTERN, RGBA_PATTERN, DepthSink, Frame, MatteConfig, Mp4Sink,  # fmt: skip
                                     Outputs, RgbaSink, check_output_dir)

SAMPLE_RATE = 16000
PERSONAL_MODEL_NAME = "motion.pt"
LONG_RENDER_FRAMES = 3000  # 2 minutes of video at 25 fps: from here a CPU render takes the better part of an hour
TIMED_FRAMES = 5  # the time estimate of a long render is taken over its first frames
MIN_SPEECH_S = 0.2


PHONE_MODES = ("auto", "loop", "off")
QUIET_CUT_S = 0.3  # a phone window ends in the middle of the quietest 300 ms of its last phone_cut_search_s


@dataclass(frozen=True)
class StreamConfig:
    """How speech is read: in chunks, never whole, so memory is bounded by a chunk or window, not by the file."""

    chunk_s: float = 1.0
    """Seconds of audio decoded at a time for the motion model and for the mp4's sound track."""
    phone_window_s: float = 30.0
    """Longest stretch the pocketsphinx phone loop decodes at once (``--phones auto`` with ``--audio``).
    Speech up to this long is decoded whole (as before streaming); longer speech in windows cut at pauses.
    Why windows: one decode converts the whole audio to float64 three times (~0.7 GB for an hour) and
    pocketsphinx keeps the whole utterance's search; the phone loop itself only looks a few phones
    around each frame, and its batch cepstral-mean normalisation needs seconds, not minutes."""
    phone_cut_search_s: float = 10.0
    """A window is cut in the middle of the quietest 300 ms of its last this-many seconds (a pause when
    there is one; speech without a pause for that long is cut at its quietest moment)."""
    constraint_window_s: float = 60.0
    """Phone constraints are applied to this many seconds of frames at a time, with 2 s of context each
    side (the rules reach at most 80 ms, so the result equals one pass over everything; one pass over an
    hour is quadratic in time: every phone scans every frame)."""

    def __post_init__(self) -> None:
        values = (self.chunk_s, self.phone_window_s, self.phone_cut_search_s, self.constraint_window_s)
        if not all(np.isfinite(v) and v > 0 for v in values) or \
                not QUIET_CUT_S < self.phone_cut_search_s < self.phone_window_s:
            raise Avatar3DError(f"invalid streaming settings {self}: all must be positive and "
                                f"{QUIET_CUT_S} < phone_cut_search_s < phone_window_s")  # fmt: skip

    @property
    def chunk_samples(self) -> int:
        return max(1, int(round(self.chunk_s * SAMPLE_RATE)))


@dataclass(frozen=True)
class SpeechAudio:
    """16 kHz mono speech that can be read again, chunk by chunk: espeak-ng's samples (text, in memory)
    or a media file, decoded afresh on every read (an hour is never held: 230 MB as float32)."""

    array: np.ndarray | None = None
    path: Path | None = None

    def chunks(self, chunk_samples: int, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
        """float32 chunks of ``chunk_samples`` (the last may be shorter) at ``sample_rate``."""
        if self.path is not None:
            return iter_audio_chunks(self.path, sample_rate, chunk_samples)
        assert self.array is not None

        x = resample_mono(self.array, SAMPLE_RATE, sample_rate)
        return (x[i:i + chunk_samples] for i in range(0, len(x), chunk_samples))

    def read(self) -> np.ndarray:
        """The whole track (for short speech and tests; the render path reads :meth:`chunks`)."""
        if self.path is not None:
            return read_audio(self.path, SAMPLE_RATE)
        assert self.array is not None
        return self.array


@dataclass(frozen=True)
class SpokenSpeech:
    """Speech ready to drive the mouth: re-readable 16 kHz audio and, when known, its phone timeline."""

    source: SpeechAudio
    phones: tuple | None
    """Contiguous phones (``start``, ``end`` s, ARPAbet ``label`` or "SIL"), or None: audio alone drives the mouth."""
    origin: str
    """Where the phones came from (or why there are none), for the log."""

    @property
    def audio(self) -> np.ndarray:
        """The whole track, decoded now (a file's hour would be 230 MB: rendering never asks for this)."""
        return self.source.read()


@dataclass(frozen=True)
class SpeechSource:
    """Where the speech comes from: an audio/video file, or text spoken by espeak-ng.

    ``phones``: ``auto`` times the lip constraints (:mod:`avatar3d.motion.phone_constraints`) with
    espeak-ng's own phoneme timings for text, and for audio (no transcript: the user's audio has none)
    with the words pocketsphinx recognises, force-aligned (:mod:`avatar3d.audio.word_phones`; its phone
    loop when the words look wrong) when pocketsphinx is importable; ``loop``: always the phone loop
    for audio; ``off``: the audio alone drives the mouth.  A file is read in chunks (``stream``), never whole.
    """

    audio_path: Path | None = None
    text: str | None = None
    voice: str = "en-us"
    phones: str = "auto"
    stream: StreamConfig = StreamConfig()

    def __post_init__(self) -> None:
        if self.phones not in PHONE_MODES:
            raise Avatar3DError(f"--phones {self.phones!r}: use one of {', '.join(PHONE_MODES)}")

    def speech(self, log: Callable[[str], None] = print) -> SpokenSpeech:
        """The audio and, per ``phones``, its phone timeline; logs which timeline drives the lips."""
        self._check()
        if self.text is not None:
            tts = synthesize_with_phonemes(self.text, voice=self.voice, sample_rate=SAMPLE_RATE)
            source = SpeechAudio(array=tts.audio)
            spoken = SpokenSpeech(source, tuple(tts.as_phones()), "espeak-ng's own phoneme timings") \
                if self.phones != "off" else SpokenSpeech(source, None, "off (--phones off)")
        else:
            source = SpeechAudio(path=self._check_file())
            if self.phones == "off":
                spoken = SpokenSpeech(source, None, "off (--phones off)")
            elif importlib.util.find_spec("pocketsphinx") is None:
                spoken = SpokenSpeech(source, None, "off (pocketsphinx is not importable; pip install pocketsphinx)")
            else:
                words = WindowDecoder() if self.phones == "auto" else None
                phones, cuts = phone_loop_timeline(source.chunks(self.stream.chunk_samples), self.stream, words)
                origin = words.describe() if words else "pocketsphinx phone-loop decoding (no transcript)"
                if cuts:
                    origin += (f", in {len(cuts) + 1} windows of <= {self.stream.phone_window_s:g} s cut at "
                               f"the quietest {QUIET_CUT_S * 1000:.0f} ms")  # fmt: skip
                spoken = SpokenSpeech(source, tuple(phones), origin)
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

    def _check_file(self) -> Path:
        """The file, after decoding only its first ``MIN_SPEECH_S`` (missing, unreadable, too short: one line)."""
        path = Path(self.audio_path)
        if not path.is_file():
            raise InputError(f"{path}: audio file not found; check the path")
        need = int(MIN_SPEECH_S * SAMPLE_RATE)
        head = iter_audio_chunks(path, SAMPLE_RATE, need)
        try:
            first = next(head, np.zeros(0, np.float32))
        finally:
            head.close()
        if len(first) < need:
            raise Avatar3DError(f"{path}: only {len(first) / SAMPLE_RATE:.2f} s of audio; give at least "
                                f"{MIN_SPEECH_S} s of speech")  # fmt: skip
        return path


def phone_loop_timeline(chunks: Iterable[np.ndarray], config: StreamConfig = StreamConfig(),
                        decode_window: Callable[[np.ndarray, int], list] | None = None) -> tuple[list, list[float]]:
    """(contiguous phones over the whole speech, the cuts between windows in s) by pocketsphinx phone-loop decoding.

    Speech up to ``config.phone_window_s`` is decoded whole; longer speech window by window, each cut in
    the middle of the quietest 300 ms of its last ``phone_cut_search_s`` (:func:`quiet_cut`), so memory is
    bounded by a window.  Silences meeting at a cut are merged (a pause cut in two is still one pause).
    ``decode_window(audio, sample_rate) -> phones`` replaces the phone loop as the decoder of a window
    (``--phones auto``: :class:`avatar3d.audio.word_phones.WindowDecoder`, recognised words force-aligned).
    """
    window = int(round(config.phone_window_s * SAMPLE_RATE))
    search = int(round(config.phone_cut_search_s * SAMPLE_RATE))
    phones: list = []
    pending: list[np.ndarray] = []
    cuts: list[float] = []
    n_pending, offset = 0, 0

    def decode(x: np.ndarray) -> None:
        nonlocal offset
        new = decode_window(x, SAMPLE_RATE) if decode_window else align_phones(x, SAMPLE_RATE, None)
        _append_shifted(phones, new, offset / SAMPLE_RATE)
        offset += len(x)

    for chunk in chunks:
        pending.append(np.asarray(chunk, np.float32))
        n_pending += len(pending[-1])
        while n_pending > window:
            x = np.concatenate(pending)
            cut = quiet_cut(x[:window], window - search)
            decode(x[:cut])
            cuts.append(offset / SAMPLE_RATE)
            pending, n_pending = [x[cut:]], len(x) - cut
    if n_pending:
        decode(np.concatenate(pending))
    return phones, cuts


def quiet_cut(x: np.ndarray, lo: int) -> int:
    """Sample index in ``x[lo:]``: the middle of its quietest 300 ms (10 ms energy frames, moving mean)."""
    hop = SAMPLE_RATE // 100
    seg = np.asarray(x[lo:], np.float64)
    n = len(seg) // hop
    if n < 1:
        return len(x)
    energy = (seg[:n * hop].reshape(n, hop) ** 2).mean(axis=1)
    k = min(n, max(1, int(round(QUIET_CUT_S * 100))))
    mean = np.convolve(energy, np.ones(k) / k, mode="valid")
    return lo + (int(np.argmin(mean)) + k // 2) * hop


def _append_shifted(phones: list, new: list, offset_s: float) -> None:
    """Append a window's phones moved by ``offset_s``, contiguous with the last one; SILs meeting at the cut merge."""
    for p in new:
        start, end = p.start + offset_s, p.end + offset_s
        if phones:
            start = phones[-1].end  # contiguous despite float rounding of the offset
            if p.label == SIL and phones[-1].label == SIL:
                phones[-1] = Phone(phones[-1].start, end, SIL)
                continue
        phones.append(Phone(start, end, p.label))


def _own_rate_curves(mouth_model, chunks: Iterable[np.ndarray]) -> tuple[dict[str, np.ndarray], int]:  # type: ignore[no-untyped-def]
    """Gated mouth curves at the model's own rate (25 fps) of speech pushed chunk by chunk, and its sample count.

    Through :class:`avatar3d.motion.streaming.MotionStream`: the same frames as one offline pass
    (float rounding only, ~1e-6), memory bounded by a chunk plus the curves themselves (16 floats a frame).
    """
    if getattr(mouth_model, "speech_encoder", None) is not None:
        return _offline_curves(mouth_model, chunks, GateConfig())
    stream = MotionStream(mouth_model, GateConfig())
    parts: list[np.ndarray] = []
    for chunk in chunks:
        out = stream.push(chunk)
        if len(out):
            parts.append(out.weights)
    n_samples = stream.samples_in
    if n_samples == 0:
        raise Avatar3DError("the speech has no audio samples; give at least 0.2 s of speech")
    parts.append(stream.flush().weights)
    weights = np.concatenate(parts)
    return {name: weights[:, j].astype(np.float32) for j, name in enumerate(mouth_model.names)}, n_samples


def _offline_curves(mouth_model, chunks: Iterable[np.ndarray], gate) -> tuple[dict[str, np.ndarray], int]:  # type: ignore[no-untyped-def]
    """As :func:`_own_rate_curves` for a model on a speech encoder (a bidirectional transformer: no streaming).

    The whole speech is held (4 bytes a sample: ~230 MB an hour) and predicted in one pass; the encoder
    itself runs in bounded chunks.  The same voice-activity gate as the stream's is applied.
    """
    parts = [np.asarray(c, np.float32) for c in chunks]
    audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if len(audio) == 0:
        raise Avatar3DError("the speech has no audio samples; give at least 0.2 s of speech")
    rate, k = float(mouth_model.config.fps), mouth_model.config.lookahead_frames
    n = int(np.ceil(len(audio) * rate / SAMPLE_RATE))
    pred = mouth_model.predict(audio, rate, n, SAMPLE_RATE)
    weights = np.stack([pred[name] for name in mouth_model.names], axis=1)
    voiced = frame_features(audio, rate, n + k, mouth_model.audio)["voiced_fraction"]
    g = speech_gate(voiced, n, k, gate)
    silent = silent_output(mouth_model)
    weights = silent[None] + g[:, None] * (weights - silent[None])
    return {name: weights[:, j].astype(np.float32) for j, name in enumerate(mouth_model.names)}, len(audio)


def _at_frame_rate(mouth_model, own: dict[str, np.ndarray], fps: float, n: int, phones,  # type: ignore[no-untyped-def]
                   constraints: PhoneConstraintConfig, window_s: float) -> dict[str, np.ndarray]:
    """Own-rate curves resampled to ``n`` frames at ``fps``, then the phone constraints (window by window)."""
    rate = float(mouth_model.config.fps)
    t_out = (np.arange(n) + 0.5) / fps
    t_own = (np.arange(len(next(iter(own.values())))) + 0.5) / rate
    out = {name: np.interp(t_out, t_own, c).astype(np.float32) for name, c in own.items()}
    if phones is None:
        return out
    rest = dict(zip(mouth_model.names, (float(v) for v in silent_output(mouth_model))))
    return constrain_in_windows(out, phones, fps, constraints, rest, int(round(window_s * fps)))


def constrain_in_windows(curves: dict[str, np.ndarray], phones, fps: float,  # type: ignore[no-untyped-def]
                         constraints: PhoneConstraintConfig, rest: dict[str, float], window: int,
                         margin_s: float = 2.0) -> dict[str, np.ndarray]:
    """:func:`apply_phone_constraints` over ``window`` frames at a time (2 s of context each side).

    Why: the rules reach 80 ms at most, so this equals one pass over every frame, but one pass costs
    phones x frames (quadratic in the length: minutes for an hour).  Up to ``window`` frames it *is* one
    pass.  One exception: a frame centre lying exactly on a phone boundary (pocketsphinx's 10 ms grid meets
    25 fps centres) is a float tie that the shifted times may decide the other way (seen on 4 of 890
    frames of decoded phones; none with espeak-ng's timings).  The rest pose must be given (per-window
    percentiles would differ from global ones).
    """
    n = len(next(iter(curves.values())))
    if n <= window:
        return apply_phone_constraints(curves, phones, fps, constraints, rest=rest).curves

    margin = int(np.ceil(margin_s * fps))
    starts = np.array([p.start for p in phones])
    ends = np.maximum.accumulate(np.array([p.end for p in phones]))
    out = {name: np.empty(n, np.float32) for name in curves}
    for a in range(0, n, window):
        b = min(n, a + window)
        lo, hi = max(0, a - margin), min(n, b + margin)
        t0, t1 = lo / fps, hi / fps
        first, last = int(np.searchsorted(ends, t0, side="right")), int(np.searchsorted(starts, t1, side="left"))
        local = [Phone(p.start - t0, p.end - t0, p.label) for p in phones[first:last]]
        done = apply_phone_constraints({k: v[lo:hi] for k, v in curves.items()}, local, fps, constraints,
                                       rest=rest).curves  # fmt: skip
        for name in curves:
            out[name][a:b] = done[name][a - lo:b - lo]
    return out


def gated_mouth_curves(mouth_model, audio: np.ndarray, fps: float, n: int, phones=None,  # type: ignore[no-untyped-def]
                       constraints: PhoneConstraintConfig = PhoneConstraintConfig(),
                       window_s: float = StreamConfig.constraint_window_s) -> dict[str, np.ndarray]:
    """Mouth curves at ``fps`` with the speech gate on and, given ``phones``, the phone constraints.

    Gate: the raw model opens the jaw on noise or a DC offset about as much as on speech
    (tests/motion/test_audio_inputs.py); the gate holds the mouth at its silent pose unless voiced
    speech is near, and leaves speech unchanged (held-out L1 +0.07 %).  Phones (a timeline of
    ``start``/``end``/ARPAbet ``label``): bilabials sealed and long pauses held still at the model's
    own silent pose (:func:`avatar3d.motion.phone_constraints.apply_phone_constraints`), applied at
    ``fps`` so that a phone shorter than a frame still closes its nearest frame.  ``audio`` is the
    whole 16 kHz track; :func:`drive_from_speech` reads a file chunk by chunk instead.
    """
    x = resample_mono(audio, SAMPLE_RATE, mouth_model.audio.sample_rate)
    own, _ = _own_rate_curves(mouth_model, [x])
    return _at_frame_rate(mouth_model, own, fps, n, phones, constraints, window_s)


def _speech_tracks(bundle: AvatarBundle, speech: np.ndarray | SpeechAudio, mouth_model, config: DriveConfig,  # type: ignore[no-untyped-def]
                   phones, log: Callable[[str], None], stream: StreamConfig) -> tuple[DriveTracks, int]:
    """(per-frame tracks, samples of speech at 16 kHz); the speech is read in ``stream.chunk_s`` chunks."""
    source = speech if isinstance(speech, SpeechAudio) else SpeechAudio(array=np.asarray(speech, np.float32))
    rate = int(mouth_model.audio.sample_rate)
    own, n_own = _own_rate_curves(mouth_model, source.chunks(max(1, int(round(stream.chunk_s * rate))), rate))
    seconds = n_own / rate
    fps = float(bundle.fps)
    n = max(1, int(round(seconds * fps)))
    mouth = _at_frame_rate(mouth_model, own, fps, n, phones, PhoneConstraintConfig(), stream.constraint_window_s)
    tracks = build_tracks(mouth, n, fps, expression_names=list(bundle.expression_names),
                          expression=np.asarray(bundle.expression, np.float32),
                          blink=np.asarray(bundle.blink, np.float32), R=np.asarray(bundle.R),
                          t=np.asarray(bundle.t), train_ids=np.asarray(bundle.train_ids), config=config,
                          log=log)  # fmt: skip
    return tracks, int(round(seconds * SAMPLE_RATE))


def drive_from_speech(bundle: AvatarBundle, audio: np.ndarray | SpeechAudio, mouth_model, config: DriveConfig,  # type: ignore[no-untyped-def]
                      phones=None, log: Callable[[str], None] = print,
                      stream: StreamConfig = StreamConfig()) -> DriveTracks:  # fmt: skip
    """Per-frame tracks for ``audio`` (16 kHz array, or :class:`SpeechAudio` read chunk by chunk) at the
    avatar's frame rate (``log``: where pose notes go).

    ``phones``: the speech's phone timeline (``SpokenSpeech.phones``), see :func:`gated_mouth_curves`.
    """
    return _speech_tracks(bundle, audio, mouth_model, config, phones, log, stream)[0]


def _checked_chunks(source: SpeechAudio, n_samples: int, chunk_samples: int) -> Iterator[np.ndarray]:
    """The speech again for the mp4's sound track, chunk by chunk; a file that changed since it drove the mouth
    (fewer samples now) is an error rather than a silently padded track."""
    seen = 0
    for chunk in source.chunks(chunk_samples):
        seen += len(chunk)
        yield chunk
    if seen < n_samples:
        raise Avatar3DError(f"{source.path}: the audio changed during the render ({seen} samples now, "
                            f"{n_samples} before); render again")  # fmt: skip


def write_blendshapes_csv(path: Path, tracks: DriveTracks, fps: float, block: int = 1024) -> Path:
    """The tracks as a Live Link Face CSV, written ``block`` rows at a time (atomically).

    Byte for byte what :func:`avatar3d.export.livelink.write_livelink_csv` writes (tested), but without
    building every row's text first: an hour at 25 fps is ~70 MB of text, twice over when joined.
    """
    weights = arkit_weights(tracks.expression_names, tracks.expression, tracks.blink)
    n = len(tracks.R)
    if n == 0:
        raise Avatar3DError(f"{path}: no frames to write (the rotations are empty)")
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(",".join(LLF_HEADER) + "\n")
            for a in range(0, n, block):
                b = min(n, a + block)
                table = livelink_table({k: v[a:b] for k, v in weights.items()}, tracks.R[a:b])
                f.write("".join(f"{timecode(i, fps)},{LLF_COUNT}," + ",".join(f"{v:.10f}" for v in row) + "\n"
                                for i, row in zip(range(a, b), table)))  # fmt: skip
    return Path(path)


def render_tracks(avatar: Avatar, tracks: DriveTracks, out: Path | None,
                  audio: np.ndarray | Iterator[np.ndarray] | None,
                  size: int, progress: bool = True, *, camera: str | CameraPath = "training",
                  stereo_ipd_mm: float | None = None, rgba: Path | None = None, depth: Path | None = None,
                  matte: MatteConfig = MatteConfig(), log: Callable[[str], None] = print,
                  warn: Callable[[str], None] | None = None) -> float:  # fmt: skip
    """Render every frame of ``tracks`` into ``out`` (mp4 with ``audio``) and the other outputs; returns render FPS.

    ``audio``: 16 kHz mono, the whole track or an iterator of chunks that the mp4 muxer pulls as the
    frames written so far need them (:class:`avatar3d.io.video.VideoWriter`), so sound and picture stay
    in step sample for sample and a long track is never held.

    ``camera``: ``training``, ``orbit`` or a parsed camera path (:mod:`avatar3d.render.camera`);
    ``stereo_ipd_mm``: left|right eyes side by side in every output; ``rgba``/``depth``: folders
    (:mod:`avatar3d.render.outputs`).  ``out`` may be None when only folders are wanted.
    """
    bundle = avatar.saved_bundle()
    fps_out = float(bundle.fps)
    cam = camera_track(camera, tracks.R, tracks.t, bundle, **({"warn": warn} if warn is not None else {}))
    if cam.clamped and camera == "orbit":
        log(f"[render] orbit: {cam.clamped} of {len(cam.R)} frames where the head's own turn plus the orbit "
            "would leave the trained range are held at its edge")  # fmt: skip
    views = ViewRenderer(avatar, size, cam, tracks.R, tracks.t, tracks.motion, stereo_eyes(stereo_ipd_mm))
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
            if i + 1 == TIMED_FRAMES and len(views) >= LONG_RENDER_FRAMES:
                (warn or _warn_stderr)(long_render_warning(len(views), fps_out, seconds / TIMED_FRAMES))
    if bar is not None:
        bar.close()
    return len(views) / max(seconds, 1e-9)


def expected_frames(source: SpeechSource, fps: float) -> int:
    """Frames the speech will become, known before any work: the text's length, or the file's duration (0: unknown)."""
    if source.text is not None:
        return speech_frames_from_text(source.text, fps)
    if source.audio_path is not None and Path(source.audio_path).is_file():
        seconds = media_duration(Path(source.audio_path))
        return int(math.ceil(seconds * fps)) if seconds else 0
    return 0


def long_render_warning(n_frames: int, fps: float, seconds_per_frame: float) -> str:
    """The frame count and expected time of a long render, said once its first frames are timed."""
    minutes = n_frames * seconds_per_frame / 60.0
    return (f"a long render: {n_frames} frames ({n_frames / fps / 60.0:.1f} min of video) at {seconds_per_frame:.2f} s "
            f"a frame take about {minutes:.0f} min; Ctrl-C stops it without leaving a partial file")


def _warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _stale(model, subject: Path) -> bool:  # type: ignore[no-untyped-def]
    """True when ``model`` was personalised on another tracking of ``subject`` than the one on disk now.

    Why: a re-tracked subject (new tracker, new expression scale) would otherwise keep driving the avatar
    with the old scale.  A subject folder that is gone cannot be checked: the model is kept.
    """
    tracking = subject / TRACKING
    if not tracking.is_file():
        return False

    made_from = model.info.get("personalization", {}).get("signature", {}).get("tracking_sha256")
    return made_from != file_sha256(tracking)


def mouth_model_for(avatar: Path, bundle: AvatarBundle, path: Path | None = None, *, progress: bool = True,  # type: ignore[no-untyped-def]
                    log: Callable[[str], None] = print):
    """The motion model that drives ``avatar``: ``path`` if given, else the avatar's personalised one.

    The shipped model speaks in the synthetic rig's blendshape scale, not in the scale the
    subject was tracked in (e.g. a resting jawOpen of 0.46 vs 0.05), so the avatar needs a model
    personalised to its subject: made on first use from the subject folder recorded at training
    time and kept as ``AVATAR/motion.pt``.
    """
    if path is not None:
        return load(path)
    own = avatar / PERSONAL_MODEL_NAME
    recorded = str(bundle.subject)  # "" in a shipped avatar (tests/assets): no subject to check or use
    subject = Path(recorded) if recorded else None
    if own.is_file():
        model = load(own)
        if subject is None or not _stale(model, subject):
            return model
        log(f"[render] {subject} was re-tracked since {own} was made; personalising again")
    if subject is None or not (subject / MANIFEST).is_file():
        raise Avatar3DError(f"{avatar}: no personalised motion model ({PERSONAL_MODEL_NAME}) and its subject folder "
                            f"{subject or '(not recorded)'} is gone; run `avatar3d motion personalize SUBJECT -o {own}` "
                            "or pass --motion-model FILE")  # fmt: skip

    log(f"[render] personalising the motion model to {subject} (first use; kept as {own})")
    personalize(subject, own, progress=progress)
    return load(own)


def render_from_speech(
    avatar: str | Path, source: SpeechSource, out: str | Path, *, mouth_model=None,  # type: ignore[no-untyped-def]
    motion_model_path: Path | None = None, config: DriveConfig = DriveConfig(), size: int | None = None,
    blendshapes: Path | None = None, progress: bool = True, log: Callable[[str], None] = print,
    camera: str | Path = "training", stereo_ipd_mm: float | None = None, rgba: Path | None = None,
    depth: Path | None = None, yes: bool = False,
) -> dict[str, float]:  # fmt: skip
    """Writes ``out`` (H.264 + AAC) of the avatar saying ``source``; returns frames, seconds, render FPS and the
    mouth-amplitude gain applied (see :class:`DriveConfig`).

    Speech from a file is never held whole: it is decoded in ``source.stream.chunk_s`` chunks once for
    the phone loop (``--phones auto``, in windows), once for the motion model and once more for the
    mp4's sound track, which the muxer pulls as frames are written.  Memory grows only with the
    per-frame tracks (~16 KB a second of speech at 25 fps).

    ``blendshapes``: also write the same motion as a Live Link Face CSV (ARKit weights + head
    rotation per frame), so a game-engine rig can say the same speech in step with the video.

    ``mouth_model`` (default: :func:`mouth_model_for`) has ``predict(audio, fps, n_frames,
    sample_rate) -> {name: curve}`` giving curves in the avatar's tracked coefficient scale.

    ``camera`` (training | orbit | camera-path .json), ``stereo_ipd_mm``, ``rgba`` and ``depth``
    folders: see :func:`render_tracks`.  ``yes``: run a job above :data:`avatar3d.guards.LONG_JOB_FRAMES` frames.
    """
    avatar, out = Path(avatar), Path(out)
    loaded = load_avatar(avatar)
    bundle = loaded.saved_bundle()
    bundle.require_motion()
    # Everything the user can get wrong about the camera and outputs fails here, before any work.
    camera_spec = parse_camera(camera)
    eyes = stereo_eyes(stereo_ipd_mm)
    if rgba is not None:
        check_output_dir(Path(rgba), RGBA_PATTERN, "--rgba")
    if depth is not None:
        check_output_dir(Path(depth), DEPTH_PATTERN, "--depth")
    check_writable(out)
    size = int(size or bundle.resolution)
    if size % 2:
        raise Avatar3DError(f"--size {size}: H.264 needs an even frame size")
    check_render_memory(size, len(eyes))
    video_fps = float(bundle.fps)
    expected = expected_frames(source, video_fps)
    if expected:  # from the text's length or the file's duration: before synthesis, personalising, rendering
        notice = long_job_notice(expected, video_fps, RENDER_SECONDS_PER_PIXEL * size * size * len(eyes), yes, "this render")
        check_disk(out, estimate_video_disk(expected, size, len(eyes), rgba is not None, depth is not None),
                   f"{expected} frames at {size}x{size}")
        warn(notice)
    speech = source.speech(log=log)  # a bad file, voice or text fails before minutes of personalising
    if source.audio_path is not None:
        share = voiced_share(speech.source.chunks(source.stream.chunk_samples))
        if share < MIN_VOICED_SHARE:
            warn(no_speech_message(source.audio_path, share))
    if mouth_model is None:
        mouth_model = mouth_model_for(avatar if avatar.is_dir() else avatar.parent, bundle, motion_model_path,
                                      progress=progress, log=log)  # fmt: skip
    check_writable(out)  # before minutes of rendering, not after (again: personalising may have taken minutes)
    if blendshapes is not None:
        check_writable(Path(blendshapes))
    tracks, n_samples = _speech_tracks(bundle, speech.source, mouth_model, config, speech.phones, log,
                                       source.stream)  # fmt: skip
    sound = _checked_chunks(speech.source, n_samples, source.stream.chunk_samples)
    fps = render_tracks(loaded, tracks, out, sound, size, progress, camera=camera_spec,
                        stereo_ipd_mm=stereo_ipd_mm, rgba=rgba, depth=depth, log=log)
    if blendshapes is not None:
        write_blendshapes_csv(Path(blendshapes), tracks, float(bundle.fps))
    layout = f"{size}² per eye, side by side" if len(eyes) == 2 else f"{size}²"
    seconds = n_samples / SAMPLE_RATE
    log(f"[render] {len(tracks.motion)} frames ({seconds:.1f} s of speech) at {layout} -> {out} "
        f"({fps:.1f} FPS rendering)")  # fmt: skip
    return {"frames": float(len(tracks.motion)), "seconds": seconds, "render_fps": fps,
            "mouth_gain": float(tracks.mouth_gain)}
