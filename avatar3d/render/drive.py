"""Per-frame driving signals for an avatar from new speech: head pose, blinks and expression.

Why: the avatar only knows the motions of its training clip.  New speech gives the mouth
(from the audio-to-motion model); everything speech does not determine -- where the head
is, when the eyes blink, what the brows do -- must come from somewhere plausible.  This
module builds those tracks from the subject's own clip, so the avatar is only ever asked
for poses and expressions it has seen:

* pose ``subject``: the training frames' poses played forward then backward (no jump at the
  loop point); ``static``: the training pose closest to the average one; ``generated``: head
  motion sampled from a model fitted to the training poses; a video path: the head motion
  tracked in that video (both in :mod:`avatar3d.render.pose_sources`, relative to the
  ``static`` pose and inside the range the training poses cover).
* blink ``auto``: blinks placed at intervals drawn from the subject's own inter-blink
  intervals, each with the subject's average blink shape; ``off``: eyes at their resting
  value; ``from-pose-source``: the tracked blinks of the frames the pose comes from (for a
  driving video: its own tracked blinks; for ``generated``: the training frames played as for
  ``subject``, since a generated pose has no frames of its own).
* expression: the 16 mouth channels from the motion model (times ``mouth_scale`` around
  their resting value), every channel that is neither mouth nor upper face at its median.
  ``mouth_amplitude`` ``subject`` (default) first rescales them, all by one gain, so that the
  lips part as widely over the new speech as the subject's did over the training clip
  (:func:`mouth_amplitude_gain`): a motion model fitted to seconds of one voice hedges on
  another voice and opens the mouth less (shared real clips: 0.3-0.99x the subject's lip-gap range).
* idle (the upper face: eyes, brows, cheeks): ``subject``, the training frames' tracked values
  played forward then backward (the pose's own frames for ``--pose subject``); ``generated``,
  sampled from a model fitted to the training frames (:mod:`avatar3d.render.idle_motion`, with
  the seed on a stream of its own: changing ``--blink`` or ``--pose`` does not change it);
  ``static``, the median.  ``auto`` (default) follows the pose: ``generated`` for a generated
  pose (it has no frames of its own), ``static`` for a static one, the driving video's own upper
  face moved into the avatar's scale for a video (see
  :func:`avatar3d.render.pose_sources.transfer_upper_face`), ``subject`` otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from avatar3d.errors import Avatar3DError
from avatar3d.face.blendshape_names import UPPER_FACE_PREFIXES
from avatar3d.render.frame_order import ping_pong
from avatar3d.render.idle_motion import generated_idle
from avatar3d.render.pose_sources import check_driving_video, generated_pose, track_driving_video, video_pose

POSE_MODES = ("subject", "static", "generated")  # or the path of a driving video
BLINK_MODES = ("auto", "off", "from-pose-source")
IDLE_MODES = ("auto", "subject", "generated", "static")
MOUTH_AMPLITUDE_MODES = ("subject", "predicted")
AMPLITUDE_GAIN_RANGE = (0.5, 3.0)
"""Bounds of the amplitude gain: 3x covers the largest shortfall measured (a half-body clip, 2.3-3x); beyond,
the prediction is too flat for its shape to be worth enlarging."""
AMPLITUDE_MIN_SECONDS = 2.0
"""Shorter speech keeps the predicted amplitude: a range over a word or two says little."""
DEFAULT_BLINK_INTERVAL_S = (2.0, 6.0)


@dataclass(frozen=True)
class DriveConfig:
    """How the signals speech does not determine are filled in."""

    pose: str = "subject"
    """subject (training poses, looped back and forth), static (the most average training pose),
    generated (sampled from a model of the subject's head motion) or the path of a driving video."""
    blink: str = "auto"
    """auto (sampled from the subject's own blink statistics), off, or from-pose-source."""
    mouth_scale: float = 1.0
    """Multiplies the predicted mouth motion around its resting value (1 = as predicted)."""
    seed: int = 0
    """Seed of the blink sampler, the generated head pose and the generated upper face (a render is reproducible)."""
    idle: str = "auto"
    """Upper face (eyes, brows, cheeks): subject (the training frames played back), generated (sampled from a
    model fitted to them), static (their median), or auto (follows the pose: generated for a generated pose,
    static for a static one, the video's own for a driving video, else subject)."""
    mouth_amplitude: str = "subject"
    """subject (the predicted mouth rescaled so the inner lips part over the speech as widely as the subject's did,
    kept inside what the training clip showed) or predicted (as the motion model gives it); ``mouth_scale``
    applies after."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pose", str(self.pose))  # a Path is accepted and kept as its text
        if self.pose not in POSE_MODES:
            check_driving_video(self.pose)  # missing / not a video: one line naming the file, before any work
        if self.blink not in BLINK_MODES:
            raise Avatar3DError(f"--blink {self.blink!r}: use one of {', '.join(BLINK_MODES)}")
        if self.idle not in IDLE_MODES:
            raise Avatar3DError(f"--idle {self.idle!r}: use one of {', '.join(IDLE_MODES)}")
        if self.mouth_amplitude not in MOUTH_AMPLITUDE_MODES:
            raise Avatar3DError(f"--mouth-amplitude {self.mouth_amplitude!r}: use one of "
                                f"{', '.join(MOUTH_AMPLITUDE_MODES)}")
        if not (np.isfinite(self.mouth_scale) and 0.0 <= self.mouth_scale <= 3.0):
            raise Avatar3DError(f"--mouth-scale {self.mouth_scale}: use a value between 0 and 3 (1 = as predicted)")

    @property
    def pose_video(self) -> Path | None:
        """The driving video when ``pose`` is a path, else None."""
        return None if self.pose in POSE_MODES else Path(self.pose)

    @property
    def idle_source(self) -> str:
        """Where the upper face comes from: subject, generated, static, or video (``auto`` resolved)."""
        if self.idle != "auto":
            return self.idle
        if self.pose in ("generated", "static"):
            return self.pose
        return "subject" if self.pose_video is None else "video"


@dataclass
class DriveTracks:
    """Everything one render needs per frame."""

    R: np.ndarray  # [T, 3, 3] head -> camera
    t: np.ndarray  # [T, 3] metres
    expression: np.ndarray  # [T, Ke] in the avatar's tracked coefficient scale
    blink: np.ndarray  # [T, 2]
    source_frames: np.ndarray  # [T] training frame each pose (subject/static) came from, or played for a generated one
    expression_names: list[str]
    pose_clamped: int = 0  # frames a generated or video pose was held inside the trained range
    pose_note: str = ""  # one line on where the pose came from (empty for subject/static)
    idle_note: str = ""  # one line on the generated upper face (empty otherwise)
    mouth_gain: float = 1.0  # the amplitude gain applied to the predicted mouth (1 with --mouth-amplitude predicted)

    @property
    def motion(self) -> np.ndarray:
        """[T, Ke + 2] float32: the avatar's motion vector (expression then blink)."""
        return np.concatenate([self.expression, self.blink], axis=1).astype(np.float32)


def most_average_frame(R: np.ndarray, t: np.ndarray, ids: np.ndarray) -> int:
    """The frame of ``ids`` whose pose is closest to the chordal mean rotation (ties: translation)."""
    Rs = R[ids]
    u, _, vt = np.linalg.svd(Rs.mean(axis=0))
    mean_r = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    cos = (np.einsum("nij,ij->n", Rs, mean_r) - 1.0) / 2.0
    angle = np.arccos(np.clip(cos, -1.0, 1.0))
    offset = np.linalg.norm(t[ids] - np.median(t[ids], axis=0), axis=1)
    return int(ids[np.argmin(angle + 0.5 * offset)])  # 0.5 rad per metre: 1 cm weighs as ~0.3°


def spread(curve: np.ndarray) -> float:
    """p95 - p5 of a curve: its working range, blind to a few outlier frames."""
    return float(np.percentile(curve, 95) - np.percentile(curve, 5)) if len(curve) else 0.0


def mouth_amplitude_gain(mouth: dict[str, np.ndarray], subject: np.ndarray, names: list[str], fps: float,
                         lip_gap: np.ndarray | None = None) -> tuple[float, str]:
    """(gain, why): the factor on the predicted mouth channels' motion that gives the new speech the inner-lip gap
    range (p95 - p5) the subject showed; ``subject`` the tracked expression of the training frames ([N, K], in
    ``names`` order), ``lip_gap`` the gap per unit of each channel (default: the shipped face model's,
    :func:`avatar3d.face.lip_gap.lip_gap_weights`).

    Why the lip gap and not one channel: ``mouthClose`` cancels ``jawOpen`` exactly, so a jaw that opens as wide
    as the subject's can still show a smaller mouth.  Why one gain for every mouth channel: it keeps the model's
    mix of shapes (a rounded "oo" stays rounded) and only restores the size the model lost hedging on an
    unfamiliar voice.  Why the range over the whole speech: pauses hold the mouth at rest in the subject's clip
    and in new speech alike, so their p5s agree.
    """
    n = min((len(v) for v in mouth.values()), default=0)
    if n < AMPLITUDE_MIN_SECONDS * fps:
        return 1.0, f"speech under {AMPLITUDE_MIN_SECONDS:g} s; mouth as predicted"
    if lip_gap is None:
        from avatar3d.face.default_model import load_face_model  # lazy: read once per render, not at import
        from avatar3d.face.lip_gap import lip_gap_weights

        lip_gap = lip_gap_weights(load_face_model(), names)
    lip_gap = np.asarray(lip_gap, np.float64)
    predicted = [(names.index(k), np.asarray(v, np.float64)[:n]) for k, v in mouth.items() if k in names]
    got = spread(sum((lip_gap[j] * curve for j, curve in predicted), np.zeros(n)))
    want = spread(np.asarray(subject, np.float64) @ lip_gap)
    if want < 1e-5 or got < 1e-6:  # metres: a hundredth of a millimetre
        return 1.0, (f"{'the subject' if want < 1e-5 else 'the prediction'} barely opens the lips; mouth as "
                     "predicted")
    gain = float(np.clip(want / got, *AMPLITUDE_GAIN_RANGE))
    return gain, (f"mouth amplitude matched to the subject's: x{gain:.2f} (inner-lip gap range {1e3 * got:.1f} mm "
                  f"predicted, {1e3 * want:.1f} mm in the training clip; --mouth-amplitude predicted keeps the "
                  "model's)")


def blink_events(blink: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Frame indices of blink peaks in a [N] eye-closure curve (rising above ``threshold`` of its range)."""
    rest = float(np.median(blink))
    span = float(blink.max() - rest)
    if span < 0.2:  # never clearly closes: no blinks to learn from
        return np.zeros(0, dtype=np.int64)
    above = blink > rest + threshold * span
    starts = np.flatnonzero(above & ~np.concatenate([[False], above[:-1]]))
    ends = np.flatnonzero(above & ~np.concatenate([above[1:], [False]]))
    return np.array([s + int(np.argmax(blink[s:e + 1])) for s, e in zip(starts, ends)], dtype=np.int64)


def blinks_seen(blink: np.ndarray) -> bool:
    """Whether a [N, eyes] closure track holds at least one blink (what ``--blink auto`` can imitate)."""
    return len(blink_events(np.asarray(blink).mean(axis=1))) > 0


def blink_shape(blink: np.ndarray, peaks: np.ndarray, half_width: int) -> np.ndarray:
    """[2 * half_width + 1, eyes] average closure above rest around the peaks (a raised cosine if none)."""
    rest = np.median(blink, axis=0)
    windows = [blink[p - half_width:p + half_width + 1] - rest for p in peaks
               if p - half_width >= 0 and p + half_width < len(blink)]  # fmt: skip
    if windows:
        return np.clip(np.mean(windows, axis=0), 0.0, None)
    x = np.linspace(-1.0, 1.0, 2 * half_width + 1)  # peaks only at the clip's ends: their depth, a raised cosine
    depth = np.clip(blink[peaks].mean(axis=0) - rest, 0.0, None) if len(peaks) else 1.0 - rest
    return (0.5 + 0.5 * np.cos(np.pi * x))[:, None] * depth[None]


def sample_blinks(n: int, fps: float, subject_blink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n, eyes] blink track: the subject's blink shape at intervals drawn from its own inter-blink intervals.

    A subject whose clip shows no blink keeps its eyes at rest: the avatar never saw them closed,
    and a closure it must invent looks worse than none (see :func:`blinks_seen`).
    """
    rest = np.median(subject_blink, axis=0)
    peaks = blink_events(subject_blink.mean(axis=1))
    if len(peaks) == 0:
        return np.repeat(rest[None], n, axis=0).astype(np.float32)
    intervals = np.diff(peaks) / fps
    half = max(1, int(round(0.12 * fps)))  # a blink lasts ~0.25 s
    shape = blink_shape(subject_blink, peaks, half)
    track = np.repeat(rest[None].astype(np.float64), n, axis=0)
    time = rng.uniform(0.5, 2.0)  # first blink soon, not exactly at the start
    while True:
        centre = int(round(time * fps))
        if centre >= n:
            break
        lo, hi = max(0, centre - half), min(n, centre + half + 1)
        track[lo:hi] = np.maximum(track[lo:hi], rest + shape[lo - centre + half:hi - centre + half])
        gap = rng.choice(intervals) if len(intervals) >= 2 else rng.uniform(*DEFAULT_BLINK_INTERVAL_S)
        time += max(float(gap), 0.6)
    return np.clip(track, 0.0, 1.0).astype(np.float32)


def build_tracks(
    mouth: dict[str, np.ndarray], n_frames: int, fps: float, *, expression_names: list[str], expression: np.ndarray,
    blink: np.ndarray, R: np.ndarray, t: np.ndarray, train_ids: np.ndarray, config: DriveConfig = DriveConfig(),
    log: Callable[[str], None] = print,
) -> DriveTracks:  # fmt: skip
    """Combine predicted mouth curves ``{name: [n_frames]}`` with the subject's clip into per-frame tracks.

    ``expression``/``blink``/``R``/``t`` are the subject's tracked per-frame values (the avatar
    bundle's), ``train_ids`` the frames the avatar trained on -- the only ones drawn from.
    A generated or video pose is announced through ``log`` (with the number of clamped frames),
    then a generated upper face (``DriveTracks.idle_note``); a driving video is tracked here (minutes
    for a long video; cached, see pose_sources).
    """
    train_ids = np.asarray(train_ids, dtype=np.int64)
    if config.pose == "static":
        source = np.full(n_frames, most_average_frame(R, t, train_ids), dtype=np.int64)
    else:
        source = ping_pong(train_ids, n_frames)
    pose = None
    if config.pose == "generated":
        pose = generated_pose(R, t, train_ids, n_frames, config.seed)
    elif config.pose_video is not None:
        driving = track_driving_video(config.pose_video, progress=True, log=log)
        pose = video_pose(driving, R, t, train_ids, fps, n_frames, expression=expression,
                          expression_names=list(expression_names))  # fmt: skip
    if pose is not None:
        log(f"[render] {pose.description}")
    names = list(expression_names)
    median = np.median(expression[train_ids], axis=0)
    expr = np.repeat(median[None], n_frames, axis=0).astype(np.float32)
    upper = [j for j, name in enumerate(names) if name.startswith(UPPER_FACE_PREFIXES)]
    idle, idle_note = config.idle_source, ""
    if idle in ("subject", "video") and upper:  # a video's own channels replace these below
        played = source if config.pose == "subject" else ping_pong(train_ids, n_frames)
        expr[:, upper] = expression[played][:, upper]
    if idle == "generated" and upper:
        curves, idle_note = generated_idle(expression, names, train_ids, n_frames, config.seed)
        log(f"[render] {idle_note}")
        for name, curve in curves.items():
            expr[:, names.index(name)] = curve
    elif idle == "video" and pose is not None:
        for name, curve in pose.upper.items():
            expr[:, names.index(name)] = curve
    unknown = sorted(set(mouth) - set(names))
    if unknown:
        raise Avatar3DError(f"the motion model drives channels the avatar lacks: {', '.join(unknown)}; "
                            "use a motion model made for this face model")  # fmt: skip
    gain = 1.0
    if config.mouth_amplitude == "subject" and mouth:
        gain, note = mouth_amplitude_gain({k: np.asarray(v)[:n_frames] for k, v in mouth.items()},
                                          expression[train_ids], names, fps)
        log(f"[render] {note}")
    for name, curve in mouth.items():
        j = names.index(name)
        curve = np.asarray(curve, dtype=np.float32)[:n_frames]
        rest = float(np.percentile(curve, 5)) if len(curve) else 0.0  # the closed, silent mouth
        matched = rest + gain * (curve - rest)
        if gain != 1.0:  # a larger mouth, but never one the avatar was not shown (--mouth-scale may go further)
            seen = expression[train_ids, j]
            matched = np.clip(matched, min(float(seen.min()), rest), max(float(seen.max()), float(curve.max())))
        expr[:, j] = rest + config.mouth_scale * (matched - rest)
    if config.blink == "auto":
        blinks = sample_blinks(n_frames, fps, blink[train_ids], np.random.default_rng(config.seed))
        if not blinks_seen(blink[train_ids]):
            log("[render] blinks: the training clip shows none, so the eyes stay open (--blink auto draws the "
                "subject's own blinks)")
    elif config.blink == "off":
        blinks = np.repeat(np.median(blink[train_ids], axis=0)[None], n_frames, axis=0).astype(np.float32)
    elif pose is not None and pose.blink is not None:
        blinks = pose.blink
    else:
        blinks = blink[source].astype(np.float32)
    if pose is None:
        return DriveTracks(R=R[source], t=t[source], expression=expr, blink=blinks, source_frames=source,
                           expression_names=names, idle_note=idle_note, mouth_gain=gain)  # fmt: skip
    return DriveTracks(R=pose.R, t=pose.t, expression=expr, blink=blinks, source_frames=source, expression_names=names,
                       pose_clamped=pose.clamped, pose_note=pose.description, idle_note=idle_note,
                       mouth_gain=gain)  # fmt: skip
