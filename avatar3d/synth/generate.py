"""``avatar3d synth``: render a talking synthetic subject with full ground truth.

Speech (espeak-ng) -> phoneme timeline (pocketsphinx alignment) -> mouth weights
(viseme table + co-articulation) + wandering head + blinks -> rigged photo head
rendered over a static plate -> mp4 (H.264 + AAC) and ``groundtruth.npz``.
Deterministic for a given seed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avatar3d import __version__
from avatar3d.audio.alignment import align_phones
from avatar3d.audio.phones import Phone, fill_silence
from avatar3d.config import to_dict
from avatar3d.errors import Avatar3DError
from avatar3d.io.atomic import save_npz_atomic, write_json_atomic
from avatar3d.io.audio import write_wav
from avatar3d.io.video import VideoWriter
from avatar3d.resources import cache_dir
from avatar3d.synth.calibrate import Calibration, calibrate, landmark_points, project_landmarks
from avatar3d.synth.camera import head_rotation
from avatar3d.synth.motion import HeadMotionConfig, blink_track, head_track
from avatar3d.synth.photo import SourcePhoto, load_photo, prepare_source
from avatar3d.synth.scene import Scene, render_frame_and_mask
from avatar3d.synth.sentences import SENTENCES
from avatar3d.synth.speech import resolve_voice, synthesize
from avatar3d.synth.subject import build_scene
from avatar3d.synth.visemes import expression_curves

SAMPLE_RATE = 16000
RIG_VERSION = 1  # bump when the head mesh, rig or calibration changes (invalidates caches)
EXPRESSION_NAMES = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthPressLeft", "mouthPressRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthRollLower", "mouthRollUpper",
    "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp", "browDownLeft", "browDownRight",
)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic clip (saved beside it)."""

    duration_s: float = 20.0
    """Clip length when no ``text`` is given (default sentences are spoken until it is reached)."""
    text: str | None = None
    """Speak exactly this text (sentences split at . ! ?); the clip lasts as long as the speech."""
    voice: str = "en-us"
    """espeak-ng voice, optionally with a variant: ``en-us``, ``de``, ``en-us+f3``."""
    words_per_minute: int = 160
    """Speaking rate."""
    pitch: int = 50
    """espeak-ng pitch, 0-99."""
    fps: int = 25
    """Video frame rate."""
    size: int = 512
    """Square frame size in pixels (even)."""
    seed: int = 0
    """Seed for head motion, blinks, pauses and sentence order."""
    photo: str | None = None
    """Face photo; None uses skimage's astronaut (public domain)."""
    focal_factor: float = 1.2
    """Focal length in units of the frame size."""
    depth_scale: float = 0.75
    """Scale of MediaPipe's z when lifting the photo: 0.75 puts the nose tip ~8 cm in front of the
    234-454 line, as on adult heads (MediaPipe reads this photo deeper, and renders flatter)."""
    lead_silence_s: float = 0.6
    """Silence before the first sentence."""
    pause_s: tuple[float, float] = (0.35, 1.2)
    """Range of pauses between sentences."""
    calibration_views: int = 48
    """Rendered views used to calibrate ground-truth landmarks against MediaPipe."""
    workers: int = 2
    """Render processes."""
    crf: int = 18
    """H.264 quality (lower is better)."""
    head: HeadMotionConfig = field(default_factory=HeadMotionConfig)
    """Head wander and blink timing."""


@dataclass
class SpeechTrack:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    phones: list[Phone]
    sentences: list[tuple[float, float, str]]  # (start, end, text)


def _language(voice: str) -> str:
    return voice.split("+")[0].split("-")[0]


def _split_sentences(text: str) -> list[str]:
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text.strip()) if p.strip()]
    if not parts:
        raise Avatar3DError("the text to speak is empty: pass non-empty --text or --text-file")
    return parts


def build_speech(config: SynthConfig, rng: np.random.Generator, progress: bool = True) -> SpeechTrack:
    """Speak sentences one by one with pauses, align each, and join into one timeline."""
    voice = resolve_voice(config.voice)
    language = _language(voice)
    if config.text is not None:
        sentences = _split_sentences(config.text)
        target = None
    else:
        order = rng.permutation(len(SENTENCES))
        sentences = [SENTENCES[i] for i in np.resize(order, 200)]
        target = config.duration_s
    chunks = [np.zeros(int(config.lead_silence_s * SAMPLE_RATE), np.float32)]
    phones: list[Phone] = []
    spans: list[tuple[float, float, str]] = []
    cursor = config.lead_silence_s
    bar = tqdm(total=target or len(sentences), disable=not progress, desc="speech", unit="s" if target else "sentence",
               leave=False, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit}")
    for sentence in sentences:
        audio = synthesize(sentence, voice=voice, words_per_minute=config.words_per_minute, pitch=config.pitch,
                           sample_rate=SAMPLE_RATE)
        length = len(audio) / SAMPLE_RATE
        if target is not None and cursor + length + 0.3 > target:
            break
        aligned = align_phones(audio, SAMPLE_RATE, sentence, language=language)
        phones += [Phone(p.start + cursor, p.end + cursor, p.label) for p in aligned]
        spans.append((cursor, cursor + length, sentence))
        pause = float(rng.uniform(*config.pause_s))
        chunks += [audio.astype(np.float32), np.zeros(int(pause * SAMPLE_RATE), np.float32)]
        cursor += length + pause
        bar.update(length + pause if target else 1)
    bar.close()
    if not spans:
        raise Avatar3DError(f"duration {config.duration_s} s is too short for one sentence: use at least 4 s")
    audio = np.concatenate(chunks)
    end = target if target is not None else cursor
    total = int(round(end * config.fps)) * SAMPLE_RATE // config.fps
    audio = np.pad(audio, (0, max(0, total - len(audio))))[:total]
    return SpeechTrack(audio=audio, phones=fill_silence(phones, total / SAMPLE_RATE), sentences=spans)


def subject_scene(config: SynthConfig, source: SourcePhoto | None = None, progress: bool = True
                  ) -> tuple[Scene, Calibration, str]:
    """Build the rigged scene for the photo and its landmark calibration (cached on disk)."""
    if source is None:
        source = prepare_source(*load_photo(config.photo), config.size)
    scene = build_scene(source, config.size, focal_factor=config.focal_factor, depth_scale=config.depth_scale)
    key = hashlib.sha256(json.dumps([source.sha256, config.size, config.focal_factor, config.depth_scale,
                                     config.calibration_views, RIG_VERSION]).encode()).hexdigest()[:16]
    cache = cache_dir() / "synth" / f"calibration-{key}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            cal = Calibration(offsets=data["offsets"], train_error_px=float(data["train"]),
                              val_error_px=float(data["val"]), val_error_before_px=float(data["before"]),
                              n_train=int(data["n_train"]), n_val=int(data["n_val"]))
    else:
        if progress:
            print(f"calibrating ground-truth landmarks against MediaPipe ({config.calibration_views} views)...")
        cal = calibrate(scene, n_train=config.calibration_views, n_val=max(8, config.calibration_views // 3))
        save_npz_atomic(cache, offsets=cal.offsets, train=cal.train_error_px, val=cal.val_error_px,
                        before=cal.val_error_before_px, n_train=cal.n_train, n_val=cal.n_val)
    return scene, cal, source.sha256


_WORKER_SCENE: Scene | None = None


def _init_worker(scene: Scene) -> None:
    global _WORKER_SCENE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_SCENE = scene


def _render_chunk(jobs: list[tuple[dict[str, float], np.ndarray, np.ndarray]]
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, packed head mask) per job."""
    assert _WORKER_SCENE is not None
    out = []
    for w, r, t in jobs:
        frame, mask = render_frame_and_mask(_WORKER_SCENE, w, r, t)
        out.append((frame, np.packbits(mask.reshape(-1))))
    return out


def generate(config: SynthConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Write ``video.mp4``, ``audio.wav``, ``groundtruth.npz`` and ``synth.json`` into ``out_dir``."""
    if config.size % 2 or config.size < 128:
        raise Avatar3DError(f"--size {config.size} is not supported: use an even size of at least 128 (512 default)")
    if config.fps <= 0 or config.fps > 60:
        raise Avatar3DError(f"--fps {config.fps} is not supported: use 1-60 (25 default)")
    started = time.time()
    resolve_voice(config.voice)  # fail fast on bad input, before any slow work
    source = prepare_source(*load_photo(config.photo), config.size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    speech = build_speech(config, np.random.default_rng([config.seed, 1]), progress)
    n_frames = len(speech.audio) * config.fps // SAMPLE_RATE
    curves = expression_curves(speech.phones, config.fps, n_frames, rng=np.random.default_rng([config.seed, 2]))
    head = head_track(n_frames, config.fps, config.head, np.random.default_rng([config.seed, 3]))
    blinks = blink_track(n_frames, config.fps, config.head, np.random.default_rng([config.seed, 4]))
    t_speech = time.time() - started

    scene, cal, photo_sha = subject_scene(config, source, progress)
    t_scene = time.time() - started - t_speech

    expression = np.zeros((n_frames, len(EXPRESSION_NAMES)), np.float32)
    for j, name in enumerate(EXPRESSION_NAMES):
        if name in curves:
            expression[:, j] = curves[name]
    expression[:, EXPRESSION_NAMES.index("eyeBlinkLeft")] = blinks[:, 0]
    expression[:, EXPRESSION_NAMES.index("eyeBlinkRight")] = blinks[:, 1]

    rotations = np.stack([head_rotation(*a) for a in head.angles])
    translations = scene.rest_translation[None, :] + head.translation
    landmarks = np.zeros((n_frames, 468, 3), np.float32)
    opening = np.zeros(n_frames, np.float32)
    jobs = []
    for i in range(n_frames):
        weights = {name: float(expression[i, j]) for j, name in enumerate(EXPRESSION_NAMES) if expression[i, j]}
        landmarks[i] = project_landmarks(scene, weights, rotations[i], translations[i], cal.offsets)
        pts = landmark_points(scene, weights, None)
        opening[i] = 1000.0 * np.linalg.norm(pts[14] - pts[13])
        jobs.append((weights, rotations[i], translations[i]))

    chunk = 10
    batches = [jobs[i:i + chunk] for i in range(0, n_frames, chunk)]
    video_path = out / "video.mp4"
    masks: list[np.ndarray] = []
    t0 = time.time()
    with VideoWriter(video_path, config.fps, audio=speech.audio, sample_rate=SAMPLE_RATE, crf=config.crf) as writer:
        bar = tqdm(total=n_frames, disable=not progress, desc="render", unit="frame")
        if config.workers > 1:
            # spawn (not fork): MediaPipe's threads already run in this process.  An executor,
            # unlike mp.Pool, raises instead of hanging if a worker dies.
            with ProcessPoolExecutor(config.workers, mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(scene,)) as pool:
                for rendered in pool.map(_render_chunk, batches):
                    for frame, mask in rendered:
                        writer.write(frame)
                        masks.append(mask)
                    bar.update(len(rendered))
        else:
            _init_worker(scene)
            for batch in batches:
                for frame, mask in _render_chunk(batch):
                    writer.write(frame)
                    masks.append(mask)
                bar.update(len(batch))
        bar.close()
    t_render = time.time() - t0
    write_wav(out / "audio.wav", speech.audio, SAMPLE_RATE)
    save_npz_atomic(out / "masks.npz", compress=True, head_packed=np.stack(masks),
                    plate=scene.plate_u8, shape=np.array([config.size, config.size], np.int32))

    intr = scene.intrinsics
    phones = speech.phones
    save_npz_atomic(
        out / "groundtruth.npz",
        fps=np.int32(config.fps), width=np.int32(config.size), height=np.int32(config.size),
        intrinsics=intr.matrix.astype(np.float64),
        rotation=rotations.astype(np.float64), translation=translations.astype(np.float64),
        euler_deg=head.angles.astype(np.float32), head_still=head.still,
        expression=expression, expression_names=np.array(EXPRESSION_NAMES),
        blink=blinks, landmarks=landmarks, mouth_opening_mm=opening,
        phone_start=np.array([p.start for p in phones], np.float64),
        phone_end=np.array([p.end for p in phones], np.float64),
        phone_label=np.array([p.label for p in phones]),
        audio_sample_rate=np.int32(SAMPLE_RATE), landmark_offsets=cal.offsets.astype(np.float32),
        seed=np.int64(config.seed),
    )
    elapsed = time.time() - started
    report = {
        "avatar3d_version": __version__,
        "rig_version": RIG_VERSION,
        "config": to_dict(config),
        "photo_sha256": photo_sha,
        "frames": int(n_frames),
        "duration_s": n_frames / config.fps,
        "sentences": [{"start": s, "end": e, "text": t} for s, e, t in speech.sentences],
        "calibration": {k: v for k, v in dataclasses.asdict(cal).items() if k != "offsets"}
        | {"offset_median_mm": float(np.median(np.linalg.norm(cal.offsets, axis=1)) * 1000)},
        "timing_s": {"speech": t_speech, "scene": t_scene, "render_encode": t_render, "total": elapsed},
        "files": {"video": str(video_path), "audio": str(out / "audio.wav"),
                  "groundtruth": str(out / "groundtruth.npz"), "masks": str(out / "masks.npz"),
                  "config": str(out / "synth.json")},
    }
    write_json_atomic(out / "synth.json", report)
    return report
