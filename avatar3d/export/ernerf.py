"""Convert a prepared subject to and from the RAD-NeRF / ER-NeRF ``data/<ID>/`` layout.

Why: most talking-head NeRF code (RAD-NeRF, ER-NeRF and their forks) reads that folder,
and many users already have one; converting both ways lets a subject move between tools.

The ER-NeRF folder (what their ``data_utils/process.py`` writes and ``nerf_triplane/provider.py`` reads):

* ``ori_imgs/<i>.jpg`` the frames, ``ori_imgs/<i>.lms`` 68 landmarks ("x y" per line, pixel-index coords);
* ``parsing/<i>.png`` labels as colours, read with cv2 (BGR): head (255,0,0), neck (0,255,0),
  torso/cloth (0,0,255), background white;
* ``gt_imgs/<i>.jpg`` the frame with background pixels replaced by ``bc.jpg``;
* ``torso_imgs/<i>.png`` BGRA: neck + torso (head removed), the neck's top edge extended upward
  behind the chin, alpha 0 elsewhere;
* ``bc.jpg`` background plate, ``aud.wav`` 16 kHz mono, ``au.csv`` (OpenFace; ER-NeRF reads ``" AU45_r"``);
* ``aud_hu.npy`` (optional, ``--speech-encoder``): float32 ``[N, 2, D]``, a HuBERT hidden state at its own
  50 Hz; row ``i`` holds encoder frames ``2i, 2i+1``, which read samples ``[640 i, 640 i + 720)`` of
  ``aud.wav`` (their ``data_utils/hubert.py`` + GeneFace's ``make_even_first_dim`` convention; ER-NeRF picks the
  file with ``--asr_model`` containing "hubert" and indexes it by ``aud_id``);
* ``transforms_{train,val}.json``: ``focal_len``, ``cx``, ``cy``, frames of ``img_id``/``aud_id``/
  ``transform_matrix`` (camera-to-head, OpenGL camera axes).

Units: their transforms are in **metres**.  Their tracker fits the BFM 2009 model (stored in
micrometres) divided by 1e5, i.e. in decimetres, and ``save_transforms`` divides the tracked
translation by 10 before writing; their NeRF then multiplies by ``--scale`` (default 4) so the
head fits ``--bound`` 1.  Our ``transforms_*.json`` are metres with the same OpenGL convention,
so poses convert with no scale factor.  Their head-space origin is the centroid of the BFM
face region (a few cm in front of ours, which sits between the ears), so a folder from their
tracker is imported with poses from our own tracker by default (see :class:`ErnerfImportConfig`).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Optional, Union

import cv2
import numpy as np
from tqdm import tqdm

from avatar3d.audio.features import AudioFeatureConfig
from avatar3d.audio.speech_encoder import load_speech_encoder
from avatar3d.dataset.contract import (AUDIO, FRAMES, LABEL_NAMES, LANDMARK_FLAGS, LANDMARKS, MANIFEST, PARSING, PLATE,
                                       TRACKING, TRANSFORMS_TRAIN, TRANSFORMS_VAL, iter_labels, read_array, read_arrays)
from avatar3d.errors import Avatar3DError, InputError, OutputError
from avatar3d.face import landmark_sets as rg
from avatar3d.face.default_model import load_face_model
from avatar3d.io.atomic import atomic_path, save_npz_atomic, write_json_atomic
from avatar3d.io.audio import read_wav, write_wav
from avatar3d.io.hashing import file_sha256
from avatar3d.io.video import VideoWriter, read_video
from data_prep.audio_features import extract_audio_features
from data_prep.landmarks import EXCLUDED, LandmarkConfig, detect_landmarks
from data_prep.segment import PARSING_NAME, LabelWriter, write_member
from data_prep.track import TrackConfig, track
from data_prep.transforms import c2w_to_head_pose, head_pose_to_c2w, write_transforms

if TYPE_CHECKING:
    from avatar3d.audio.speech_encoder import SpeechEncoder

PathLike = Union[str, Path]

__all__ = [
    "BGR_HEAD", "BGR_NECK", "BGR_TORSO", "BGR_BACKGROUND", "MEDIAPIPE_TO_68", "AU45_PER_BLINK", "AUDIO_FEATURE_NAME",
    "ErnerfExportConfig", "ErnerfImportConfig", "ExportReport", "ImportReport",
    "folder_kind", "labels_to_parsing", "parsing_to_labels", "landmarks_68", "gt_image", "torso_image",
    "blink_to_au45", "au45_to_blink", "export_ernerf", "import_ernerf",
]

BGR_HEAD, BGR_NECK, BGR_TORSO, BGR_BACKGROUND = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
"""ER-NeRF parsing colours as cv2 reads them (BGR); face-parsing classes hair/skin/ears/mouth -> head,
neck (+necklace) -> neck, cloth -> torso."""

MEDIAPIPE_TO_68 = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,  # jaw, image left -> right
    70, 63, 105, 66, 107,  # subject's right brow, outer -> inner
    336, 296, 334, 293, 300,  # subject's left brow, inner -> outer
    168, 197, 5, 4,  # nose bridge -> tip
    75, 97, 2, 326, 305,  # nose base, image left -> right
    33, 160, 158, 133, 153, 144,  # subject's right eye: outer corner, upper lid, inner corner, lower lid
    362, 385, 387, 263, 373, 380,  # subject's left eye: inner corner, upper lid, outer corner, lower lid
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips from the right corner, clockwise
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
)
"""MediaPipe face-mesh vertex standing in for each iBUG 300-W 68-point landmark (ours: chosen by
anatomy on the mesh, left/right mirror pairs kept).  The jaw points are mesh vertices on the face
oval, so they follow the mesh's contour, not the silhouette a 68-point detector would find."""

AU45_PER_BLINK = 2.0
"""au.csv ``AU45_r`` = 2 x eye closure (mean of both eyes, 0 open .. 1 closed).  OpenFace's AU45
intensity runs 0..5, but ER-NeRF reads ``clip(AU45_r, 0, 2) / 2`` as its eye input, so 2 is
"closed" there; this scale makes ER-NeRF see exactly our closure, and import inverts it."""

TRAIN_JSON, VAL_JSON = TRANSFORMS_TRAIN, TRANSFORMS_VAL
INFO_NAME = "avatar3d_export.txt"  # not .json: ER-NeRF's "all" split globs every *.json as transforms
_COLOURS = np.array([BGR_BACKGROUND, BGR_HEAD, BGR_NECK, BGR_TORSO], np.int32)  # index -> colour
_COLOUR_LABEL = np.array([0, 1, 2, 2], np.uint8)  # colour index -> our label (neck and torso are one class)
_INNER_LIPS = rg.loop(rg.LIP_INNER_UPPER, rg.LIP_INNER_LOWER)
_SIDE = (234, 454)  # cheek points at ear level: face width
_JAW_ANGLES = (58, 288)
_CHIN = rg.CHIN


# ---------------------------------------------------------------------------
# configs and reports
# ---------------------------------------------------------------------------
@dataclass
class ErnerfExportConfig:
    """What `avatar3d export SUBJECT --to-ernerf DIR` writes."""

    max_frames: Optional[int] = None
    """Convert only the first this many frames (None: all)."""
    jpeg_quality: int = 95
    """JPEG quality of ori_imgs / gt_imgs / bc.jpg."""
    neck_depth: float = 0.5
    """Neck/torso pixels above chin + this many face widths, between the jaw angles, are "neck"."""
    neck_extend_px: int = 48
    """How far torso_imgs extends the neck's top edge upward behind the chin (ER-NeRF: 48)."""
    speech_encoder: Optional[Path] = None
    """Local HuBERT checkpoint folder (wav2vec 2.0 / WavLM / data2vec-audio load too): write aud_hu.npy from
    it.  None: no audio features (ER-NeRF's own extractor has to be run on aud.wav)."""
    encoder_layer: int = -1
    """Hidden state written to aud_hu.npy (-1 = the last, what ER-NeRF uses)."""


@dataclass
class ErnerfImportConfig:
    """How `avatar3d import-ernerf DIR -o SUBJECT` builds a subject."""

    fps: float = 25.0
    """Frame rate of ori_imgs (RAD-NeRF / ER-NeRF extract at 25)."""
    poses: Literal["auto", "transforms", "track"] = "auto"
    """Head poses and focal length: "transforms" from the folder's transform matrices, "track" from our
    tracker run on the frames; "auto" uses the matrices only when avatar3d wrote them (same head frame)."""
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    """MediaPipe landmark stage settings (landmarks are needed for expressions and mouth boxes)."""
    track: TrackConfig = field(default_factory=TrackConfig)
    """Face-model fit settings (expressions and blink always come from it)."""
    face_model: str = "default"
    """Face model for the fit: "default" or the path of a saved model .npz."""
    audio: AudioFeatureConfig = field(default_factory=AudioFeatureConfig)
    """Audio front-end for audio_features.npz."""
    min_mouth_area: float = 0.002
    """Inner-lip polygon area (face width² units) above which the mouth interior gets label 3."""


@dataclass
class ExportReport:
    path: Path
    n_frames: int
    n_landmark_files: int
    n_train: int
    n_val: int
    seconds: float
    warnings: list[str]
    audio_features: Optional[str] = None
    """Name of the audio-feature file written (``aud_hu.npy``), None without a speech encoder."""


@dataclass
class ImportReport:
    path: Path
    n_frames: int
    pose_source: str
    n_excluded: int
    rotation_disagreement_deg: Optional[float]
    """Median angle between the folder's and our tracker's frame-to-frame head rotations (None if unknown)."""
    seconds: float


# ---------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------
def folder_kind(path: PathLike) -> Optional[str]:
    """"avatar" (avatar.pt), "subject" (manifest.json + frames.mp4), "ernerf" (transforms + ori_imgs) or None."""
    p = Path(path)
    if (p / "avatar.pt").is_file():
        return "avatar"
    if (p / MANIFEST).is_file() and (p / FRAMES).is_file():
        return "subject"
    if (p / TRAIN_JSON).is_file() and (p / "ori_imgs").is_dir():
        return "ernerf"
    return None


def _check_new_folder(out: Path) -> None:
    """Refuse to write into an existing non-empty folder (or onto a file): nothing is ever overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out} already exists and is not an empty folder; give a new folder to write into")


def _temp_folder(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder onto ``out`` (an empty ``out`` is replaced)."""
    _check_new_folder(out)
    if out.is_dir():
        out.rmdir()
    os.rename(tmp, out)


class _BuildFolder:
    """Context: a hidden temp folder beside ``out``, renamed onto it on success, removed on any error."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def __enter__(self) -> Path:
        _check_new_folder(self.out)
        self.tmp = _temp_folder(self.out)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is None:
            try:
                _publish(self.tmp, self.out)
                return
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# per-frame conversions (both directions)
# ---------------------------------------------------------------------------
def _face_width(xy: np.ndarray) -> float:
    return float(np.linalg.norm(xy[_SIDE[1]] - xy[_SIDE[0]]))


def neck_mask(torso: np.ndarray, landmarks: Optional[np.ndarray], depth: float) -> np.ndarray:
    """Part of our neck/torso mask that ER-NeRF calls "neck": between the jaw angles (image x) and
    above chin + ``depth`` face widths; empty without landmarks.  Image axes, so it ignores head roll."""
    out = np.zeros_like(torso, dtype=bool)
    if landmarks is None or not np.isfinite(landmarks[:468, :2]).all():
        return out
    xy = landmarks[:, :2]
    x0, x1 = sorted(float(xy[i, 0]) for i in _JAW_ANGLES)
    bottom = float(xy[_CHIN, 1]) + depth * _face_width(xy)
    h, w = torso.shape
    cols = slice(max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w))
    rows = slice(0, min(max(int(np.ceil(bottom)), 0), h))
    out[rows, cols] = torso[rows, cols]
    return out


def labels_to_parsing(labels: np.ndarray, landmarks: Optional[np.ndarray], neck_depth: float = 0.5) -> np.ndarray:
    """Our label map (0 bg, 1 head, 2 neck/torso, 3 mouth) -> ER-NeRF parsing image, BGR uint8 [H,W,3].

    The mouth interior is part of ER-NeRF's head; our neck/torso class is split by :func:`neck_mask`."""
    torso = labels == 2
    neck = neck_mask(torso, landmarks, neck_depth)
    out = np.empty(labels.shape + (3,), np.uint8)
    out[:] = BGR_BACKGROUND
    out[(labels == 1) | (labels == 3)] = BGR_HEAD
    out[torso & ~neck] = BGR_TORSO
    out[neck] = BGR_NECK
    return out


def parsing_to_labels(parsing_bgr: np.ndarray) -> np.ndarray:
    """ER-NeRF parsing image (BGR) -> our labels 0/1/2; each pixel takes the nearest of the four colours,
    so a parsing saved lossily still maps cleanly."""
    px = parsing_bgr[..., :3].astype(np.int32)
    dist = ((px[..., None, :] - _COLOURS[None, None]) ** 2).sum(-1)  # [H,W,4]
    return _COLOUR_LABEL[np.argmin(dist, axis=-1)]


def mouth_mask(landmarks: Optional[np.ndarray], shape: tuple[int, int], min_area: float) -> np.ndarray:
    """Inner-lip polygon when the lips are apart (same rule as the segment stage); empty otherwise."""
    out = np.zeros(shape, np.uint8)
    if landmarks is None or not np.isfinite(landmarks[:468, :2]).all():
        return out.astype(bool)
    xy = landmarks[:, :2].astype(np.float64)
    poly = xy[_INNER_LIPS]
    width = _face_width(xy)
    if abs(cv2.contourArea(poly.astype(np.float32))) < min_area * width * width:
        return out.astype(bool)
    cv2.fillPoly(out, [np.round((poly - 0.5) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return out.astype(bool)


def landmarks_68(landmarks: np.ndarray) -> np.ndarray:
    """[478,>=2] MediaPipe landmarks (continuous pixels: pixel j spans [j, j+1)) -> [68,2] iBUG points in
    pixel-index coordinates (pixel centres at integers, as face_alignment writes ``.lms``)."""
    return landmarks[list(MEDIAPIPE_TO_68), :2].astype(np.float64) - 0.5


def blink_to_au45(blink: np.ndarray) -> np.ndarray:
    """[N,2] eye closure in [0,1] -> [N] AU45_r (see :data:`AU45_PER_BLINK`)."""
    return AU45_PER_BLINK * np.clip(np.asarray(blink, np.float64).reshape(len(blink), -1).mean(axis=1), 0.0, 1.0)


def au45_to_blink(au45: np.ndarray) -> np.ndarray:
    """[N] AU45_r -> [N] closure in [0,1], as ER-NeRF reads it: clip(AU45_r, 0, 2) / 2."""
    return np.clip(np.asarray(au45, np.float64), 0.0, AU45_PER_BLINK) / AU45_PER_BLINK


def _colour_key(image: np.ndarray) -> np.ndarray:
    """[H,W] int32 packing of a BGR image, so a colour test is one comparison instead of three."""
    px = image[..., :3].astype(np.int32)
    return (px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]


def _is(key: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return key == ((colour[0] << 16) | (colour[1] << 8) | colour[2])


def gt_image(frame_bgr: np.ndarray, parsing_bgr: np.ndarray, bc_bgr: np.ndarray) -> np.ndarray:
    """ER-NeRF's gt_imgs: the frame with its background pixels (white in the parsing) taken from bc."""
    out = frame_bgr.copy()
    bg = _is(_colour_key(parsing_bgr), BGR_BACKGROUND)
    out[bg] = bc_bgr[bg]
    return out


def _extend_up(image: np.ndarray, part: np.ndarray, head: np.ndarray, length: int, push_down: int) -> np.ndarray:
    """Paint each column's top pixel of ``part`` (where head lies directly above it) upward ``length`` px,
    darkening 2 % per pixel; returns the painted mask.  ER-NeRF does this so the torso field has a
    plausible neck / collar behind the chin instead of a hole where the head was."""
    painted = np.zeros(part.shape, bool)
    h = part.shape[0]
    has = part.any(axis=0)
    top = np.argmax(part, axis=0)
    cols = np.nonzero(has & (top > 0))[0]
    cols = cols[head[top[cols] - 1, cols]]
    if cols.size == 0:
        return painted
    gap = ~part[:, cols] & (np.arange(h)[:, None] >= top[cols][None])  # first non-part pixel below the top
    run = np.where(gap.any(axis=0), np.argmax(gap, axis=0), h) - top[cols]
    start = top[cols] + np.minimum(np.maximum(run - 1, 0), push_down)
    colour = image[start, cols].astype(np.float64)  # [m,3]
    for k in range(length + push_down + 1):
        rows = start - k
        ok = rows >= 0
        image[rows[ok], cols[ok]] = np.clip(colour[ok] * 0.98 ** k, 0, 255).astype(np.uint8)
        painted[rows[ok], cols[ok]] = True
    return painted


def torso_image(gt_bgr: np.ndarray, parsing_bgr: np.ndarray, bc_bgr: np.ndarray,
                neck_extend_px: int = 48) -> np.ndarray:
    """ER-NeRF's torso_imgs (BGRA): neck + torso with their top edges extended upward into the head
    area (torso 8 px, neck ``neck_extend_px`` px, blurred), alpha 255 there and 0 elsewhere."""
    key = _colour_key(parsing_bgr)
    head, neck, torso = _is(key, BGR_HEAD), _is(key, BGR_NECK), _is(key, BGR_TORSO)
    image = gt_bgr.copy()
    image[head] = bc_bgr[head]
    torso_paint = _extend_up(image, torso, head, 8, 0)
    neck = cv2.dilate(neck.astype(np.uint8), np.ones((7, 1), np.uint8)).astype(bool)  # 3 px up and down
    neck_paint = _extend_up(image, neck, head, neck_extend_px, 4)
    blurred = cv2.GaussianBlur(image, (5, 5), 0)
    image[neck_paint] = blurred[neck_paint]
    keep = neck | torso | neck_paint | torso_paint
    out = np.zeros(gt_bgr.shape[:2] + (4,), np.uint8)
    out[keep, :3] = image[keep]
    out[keep, 3] = 255
    return out


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
def _read_subject(subject: Path) -> dict:
    kind = folder_kind(subject)
    if kind == "avatar":
        raise Avatar3DError(f"{subject} is an avatar folder (avatar.pt); --to-ernerf converts a prepared subject: "
                            "pass the folder `avatar3d prep -o` wrote")
    if kind != "subject":
        raise InputError(f"{subject} is not a prepared subject (no manifest.json + frames.mp4); "
                            "run `avatar3d prep CLIP -o SUBJECT` first")
    for name in (TRACKING, LANDMARKS, LANDMARK_FLAGS, PARSING, PLATE, AUDIO):
        if not (subject / name).is_file():
            raise Avatar3DError(f"{subject / name} is missing; re-run `avatar3d prep` so the subject is complete")
    manifest = json.loads((subject / MANIFEST).read_text())
    for key in ("fps", "width", "height", "n_frames", "intrinsics", "split"):
        if key not in manifest:
            raise Avatar3DError(f"{subject / 'manifest.json'} has no {key!r} (prep did not finish); re-run prep")
    return manifest


def _export_split(manifest: dict, n: int) -> tuple[int, int]:
    """(train end, val end) for the first ``n`` frames: the subject's own split when all frames go,
    else the same held-out fraction taken from the end of the span."""
    if n == int(manifest["n_frames"]):
        return int(manifest["split"]["train"][1]), n
    total = int(manifest["n_frames"])
    val_fraction = (int(manifest["split"]["val"][1]) - int(manifest["split"]["val"][0])) / max(total, 1)
    n_val = max(1, int(round(n * val_fraction)))
    return n - n_val, n


def _transforms_json(c2w: np.ndarray, ids: list[int], intrinsics: dict, size: tuple[int, int], split: str,
                     frame_range: tuple[int, int], fps: float) -> dict:
    return {
        "focal_len": float(intrinsics["fx"]), "cx": float(intrinsics["cx"]), "cy": float(intrinsics["cy"]),
        "h": int(size[1]), "w": int(size[0]),
        "avatar3d": {"units": "m", "camera": "opengl", "head_space": "avatar3d canonical head (origin between "
                     "the ears, +y up, +z out of the face)", "split": split, "frame_range": list(frame_range),
                     "fps": fps},
        "frames": [{"img_id": i, "aud_id": i, "transform_matrix": c2w[i].tolist()} for i in ids],
    }


def _write_au_csv(path: Path, au45: np.ndarray, has_face: np.ndarray, fps: float) -> None:
    """OpenFace-style CSV (", " separated, so pandas names the column " AU45_r"); one row per frame from 0."""
    lines = ["frame, face_id, timestamp, success, AU45_r"]
    for i, (value, ok) in enumerate(zip(au45, has_face)):
        lines.append(f"{i + 1}, 0, {i / fps:.3f}, {int(bool(ok))}, {value:.4f}")
    path.write_text("\n".join(lines) + "\n")


ERNERF_HUBERT_DIM = 1024
"""Width ER-NeRF's network assumes for ``--asr_model`` *hubert* (hubert-large-ls960-ft's hidden size)."""
AUDIO_FEATURE_NAME = "aud_hu.npy"


def _load_encoder(config: ErnerfExportConfig, fps: float, warnings: list[str]) -> SpeechEncoder:
    """The encoder for aud_hu.npy, checked before anything is written: two of its frames per video frame."""
    enc = load_speech_encoder(config.speech_encoder, config.encoder_layer)
    if abs(enc.frame_rate - 2.0 * fps) > 1e-6:
        raise Avatar3DError(f"--speech-encoder {enc.folder}: {AUDIO_FEATURE_NAME} holds two encoder frames per video "
                            f"frame, but the encoder gives {enc.frame_rate:g} frames/s and the subject is {fps:g} fps; "
                            "re-run `avatar3d prep --fps 25` (standard checkpoints give 50 frames/s)")
    if enc.model_type != "hubert":
        warnings.append(f"{AUDIO_FEATURE_NAME} is written from a {enc.model_type} checkpoint; ER-NeRF loads it with "
                        "--asr_model hubert all the same (it picks the file by name)")
    if enc.dim != ERNERF_HUBERT_DIM:
        warnings.append(f"{AUDIO_FEATURE_NAME} is {enc.dim}-d; ER-NeRF's network assumes {ERNERF_HUBERT_DIM} for "
                        f"--asr_model hubert (hubert-large): set its audio_in_dim to {enc.dim} or use a large "
                        "checkpoint")
    return enc


def _write_audio_features(tmp: Path, enc: SpeechEncoder, n: int, fps: float) -> None:
    """aud_hu.npy from the aud.wav just written (its 16-bit samples, what ER-NeRF's extractor would read)."""
    audio, rate = read_wav(tmp / "aud.wav")
    want = int(round(n / fps * rate))
    audio = np.pad(audio[:want], (0, max(0, want - len(audio))))  # a subject whose audio ends early: silence
    frames = enc.encode_native(audio, rate, final_norm=True)  # = last_hidden_state, what ER-NeRF reads
    if len(frames) != 2 * n:
        raise AssertionError(f"{len(frames)} encoder frames for {n} video frames")
    np.save(tmp / AUDIO_FEATURE_NAME, frames.reshape(n, 2, enc.dim).astype(np.float32))


def _encoder_info(enc: SpeechEncoder) -> list[str]:
    """info.txt lines naming the encoder exactly (a re-export with another checkpoint is told apart)."""
    fp = enc.fingerprint
    return [
        f"{AUDIO_FEATURE_NAME}: float32 [N, 2, {enc.dim}], {enc.name}"
        f"{' (last_hidden_state: after the final LayerNorm)' if enc.has_final_norm else ''}, "
        f"from {Path(enc.folder).resolve()} "
        f"(config sha256 {fp['config_sha256']}, weights sha256 {fp['weights_sha256']}, "
        f"normalised: {fp['do_normalize']})",
        f"{AUDIO_FEATURE_NAME}: row i = encoder frames 2i, 2i+1 at {enc.frame_rate:g} Hz, reading samples "
        f"[{2 * enc.stride} i, {2 * enc.stride} i + {enc.stride + enc.receptive_field}) of aud.wav at "
        f"{enc.sample_rate} Hz (the end zero-padded); ER-NeRF: --asr_model hubert",
    ]


def _info_text(subject: Path, n: int, fps: float, config: ErnerfExportConfig, warnings: list[str],
               encoder_lines: Optional[list[str]] = None) -> str:
    """What the folder is and how it was converted, for whoever opens it later."""
    lines = [
        f"written by avatar3d from {subject.resolve()}: first {n} frames at {fps:g} fps",
        "transforms_*.json: metres, OpenGL camera-to-head, avatar3d's canonical head frame",
        "parsing: our head + mouth interior -> head; our neck/torso -> neck between the jaw angles down to "
        f"chin + {config.neck_depth:g} face widths, torso elsewhere",
        "ori_imgs/*.lms: MediaPipe vertices standing in for the 68 iBUG points "
        "(avatar3d.export.ernerf.MEDIAPIPE_TO_68)",
        f"au.csv: AU45_r = {AU45_PER_BLINK:g} x mean eye closure (ER-NeRF reads clip(AU45_r, 0, 2) / 2)",
    ]
    if encoder_lines:
        lines += encoder_lines + ["not included: aud_ds.npy / aud_eo.npy (DeepSpeech / Esperanto features)"]
    else:
        lines.append("not included: aud_ds.npy / aud_hu.npy / aud_eo.npy -- run ER-NeRF's audio feature extractor "
                     "on aud.wav, or export again with --speech-encoder HUBERT_DIR")
    return "\n".join(lines + [f"warning: {w}" for w in warnings]) + "\n"


def _imwrite(path: Path, image: np.ndarray, params: Optional[list[int]] = None) -> None:
    if not cv2.imwrite(str(path), image, params or []):
        raise Avatar3DError(f"{path}: could not be written; check the disk space and permissions")


def _subject_frames(subject: Path, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(RGB frame, labels) pairs for the first ``n`` frames, streamed in step."""

    frames, labels = read_video(subject / FRAMES), iter_labels(subject / PARSING)
    for i in range(n):
        frame, label = next(frames, None), next(labels, None)
        if frame is None or label is None:
            raise Avatar3DError(f"{subject}: frames.mp4 / parsing.npz end before frame {i} of {n}; re-run prep")
        yield frame, label


def export_ernerf(subject_dir: PathLike, out_dir: PathLike, config: Optional[ErnerfExportConfig] = None,
                  progress: bool = True) -> ExportReport:
    """Write the subject (or its first ``config.max_frames`` frames) as an ER-NeRF data folder ``out_dir``."""
    config = config or ErnerfExportConfig()
    subject, out = Path(subject_dir), Path(out_dir)
    started = time.perf_counter()
    manifest = _read_subject(subject)
    _check_new_folder(out)
    total, fps = int(manifest["n_frames"]), float(manifest["fps"])
    n = total if config.max_frames is None else min(int(config.max_frames), total)
    if n < 2:
        raise Avatar3DError(f"--frames {config.max_frames}: need at least 2 frames (one train, one val)")
    warnings = [] if abs(fps - 25.0) < 1e-6 else [f"the subject is {fps:g} fps; RAD-NeRF / ER-NeRF assume 25 fps "
                                                 "(audio features at 50 Hz): re-run `avatar3d prep --fps 25`"]
    landmarks = read_array(subject / LANDMARKS, mmap_mode="r")
    flags = read_array(subject / LANDMARK_FLAGS)[:n]
    tracked = read_arrays(subject / TRACKING, ("R", "t", "blink"))
    R, t, blink = tracked["R"][:n].astype(np.float64), tracked["t"][:n].astype(np.float64), tracked["blink"][:n]
    encoder = None if config.speech_encoder is None else _load_encoder(config, fps, warnings)
    plate = cv2.imread(str(subject / PLATE), cv2.IMREAD_COLOR)  # BGR, as ER-NeRF's images
    if plate is None:
        raise Avatar3DError(f"{subject / 'background.png'} is unreadable; re-run `avatar3d prep`")
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)]
    n_lms = 0
    with _BuildFolder(out) as tmp:
        for name in ("ori_imgs", "parsing", "gt_imgs", "torso_imgs"):
            (tmp / name).mkdir()
        _imwrite(tmp / "bc.jpg", plate, jpeg)
        bc = cv2.imread(str(tmp / "bc.jpg"))  # what ER-NeRF will composite with
        for i, (frame, labels) in enumerate(tqdm(_subject_frames(subject, n), total=n, desc="export ER-NeRF",
                                                 unit="frame", disable=not progress)):
            lm = np.asarray(landmarks[i], np.float64)
            face = lm if np.isfinite(lm[:468, :2]).all() else None
            bgr = np.ascontiguousarray(frame[..., ::-1])
            parsing = labels_to_parsing(labels, face, config.neck_depth)
            gt = gt_image(bgr, parsing, bc)
            _imwrite(tmp / "ori_imgs" / f"{i}.jpg", bgr, jpeg)
            _imwrite(tmp / "parsing" / f"{i}.png", parsing)
            _imwrite(tmp / "gt_imgs" / f"{i}.jpg", gt, jpeg)
            _imwrite(tmp / "torso_imgs" / f"{i}.png", torso_image(gt, parsing, bc, config.neck_extend_px))
            if face is not None:
                np.savetxt(tmp / "ori_imgs" / f"{i}.lms", landmarks_68(face), "%f")
                n_lms += 1
        audio, rate = read_wav(subject / AUDIO, 16000)
        write_wav(tmp / "aud.wav", audio[: int(round(n / fps * rate))], rate)
        if encoder is not None:
            _write_audio_features(tmp, encoder, n, fps)
        _write_au_csv(tmp / "au.csv", blink_to_au45(blink), flags != EXCLUDED, fps)
        c2w = head_pose_to_c2w(R, t)
        train_end, val_end = _export_split(manifest, n)
        size = (int(manifest["width"]), int(manifest["height"]))
        counts = {}
        for split, name, (a, b) in (("train", TRAIN_JSON, (0, train_end)), ("val", VAL_JSON, (train_end, val_end))):
            ids = [i for i in range(a, b) if flags[i] != EXCLUDED]
            counts[split] = len(ids)
            write_json_atomic(tmp / name, _transforms_json(c2w, ids, manifest["intrinsics"], size, split, (a, b), fps))
        (tmp / INFO_NAME).write_text(_info_text(subject, n, fps, config, warnings,
                                                None if encoder is None else _encoder_info(encoder)))
    return ExportReport(path=out, n_frames=n, n_landmark_files=n_lms, n_train=counts["train"], n_val=counts["val"],
                        seconds=time.perf_counter() - started, warnings=warnings,
                        audio_features=None if encoder is None else AUDIO_FEATURE_NAME)


# ---------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------
@dataclass
class ErnerfFolder:
    """What an ER-NeRF data folder holds, validated."""

    root: Path
    n_frames: int
    size: int
    train: dict
    val: dict
    written_by_avatar3d: bool

    def frame(self, i: int) -> Path:
        return self.root / "ori_imgs" / f"{i}.jpg"

    def parsing(self, i: int) -> Path:
        return self.root / "parsing" / f"{i}.png"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise Avatar3DError(f"{path} is missing: an ER-NeRF / RAD-NeRF data folder needs it (their "
                            "data_utils/process.py writes it in its last step)")
    try:
        data = json.loads(path.read_text())
        _ = [(int(f["img_id"]), np.asarray(f["transform_matrix"], float).reshape(4, 4)) for f in data["frames"]]
        float(data["focal_len"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Avatar3DError(f"{path} is not a transforms file with focal_len and frames of img_id / "
                            f"transform_matrix ({exc}); regenerate it with their process.py") from exc
    return data


def read_ernerf_folder(root: PathLike) -> ErnerfFolder:
    """Validate an ER-NeRF folder: transforms, contiguous ori_imgs/<i>.jpg from 0, parsing for each, bc.jpg, aud.wav."""
    root = Path(root)
    if not root.is_dir():
        raise Avatar3DError(f"{root} is not a folder; pass an ER-NeRF / RAD-NeRF data folder (data/<ID>)")
    train, val = _read_json(root / TRAIN_JSON), _read_json(root / VAL_JSON)
    for name in ("bc.jpg", "aud.wav"):
        if not (root / name).is_file():
            raise Avatar3DError(f"{root / name} is missing; run their data_utils/process.py on the video first")
    ids = sorted(int(m.group(1)) for p in (root / "ori_imgs").glob("*.jpg")
                 if (m := re.fullmatch(r"(\d+)\.jpg", p.name))) if (root / "ori_imgs").is_dir() else []
    if not ids:
        raise Avatar3DError(f"{root / 'ori_imgs'} has no <i>.jpg frames; run their data_utils/process.py (its frame extraction) first")
    if ids != list(range(len(ids))):
        gap = next(i for i, v in enumerate(ids) if v != i)
        raise Avatar3DError(f"{root / 'ori_imgs'}: frame {gap}.jpg is missing (frames must run 0..N-1)")
    n = len(ids)
    missing = [i for i in range(n) if not (root / "parsing" / f"{i}.png").is_file()]
    if missing:
        raise Avatar3DError(f"{root / 'parsing' / f'{missing[0]}.png'} is missing ({len(missing)} parsing maps); "
                            "run their data_utils/process.py (its face-parsing step)")
    first = cv2.imread(str(root / "ori_imgs" / "0.jpg"))
    if first is None:
        raise Avatar3DError(f"{root / 'ori_imgs' / '0.jpg'} is unreadable; re-extract the frames")
    h, w = first.shape[:2]
    if h != w or h % 2:
        raise Avatar3DError(f"{root / 'ori_imgs'}: frames are {w}x{h}; training needs square frames of even size: "
                            "crop them square (e.g. 512x512) and re-run their process.py")
    for data, name in ((train, TRAIN_JSON), (val, VAL_JSON)):
        bad = [int(f["img_id"]) for f in data["frames"] if not 0 <= int(f["img_id"]) < n]
        if bad:
            raise Avatar3DError(f"{root / name}: img_id {bad[0]} has no ori_imgs/{bad[0]}.jpg")
    return ErnerfFolder(root=root, n_frames=n, size=w, train=train, val=val,
                        written_by_avatar3d="avatar3d" in train)


def _folder_poses(folder: ErnerfFolder) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, tuple[float, float]]:
    """(has_pose [N] bool, R [N,3,3], t [N,3], focal, (cx, cy)) from the transform matrices; frames
    without a matrix get the nearest listed frame's pose (they are excluded from training)."""
    n = folder.n_frames
    has = np.zeros(n, bool)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for data in (folder.train, folder.val):
        for f in data["frames"]:
            c2w[int(f["img_id"])] = np.asarray(f["transform_matrix"], np.float64).reshape(4, 4)
            has[int(f["img_id"])] = True
    listed = np.nonzero(has)[0]
    if listed.size == 0:
        raise Avatar3DError(f"{folder.root}: the transforms files list no frames; regenerate them")
    nearest = listed[np.abs(np.arange(n)[:, None] - listed[None]).argmin(axis=1)]
    R, t = c2w_to_head_pose(c2w[nearest])
    data = folder.train
    cx, cy = float(data.get("cx", folder.size / 2)), float(data.get("cy", folder.size / 2))
    return has, R, t, float(data["focal_len"]), (cx, cy)


def _split_from(folder: ErnerfFolder) -> dict:
    """Contiguous train / val ranges of our contract: val starts at the first val img_id."""
    val_ids = [int(f["img_id"]) for f in folder.val["frames"]]
    start = min(val_ids) if val_ids else folder.n_frames
    return {"train": [0, start], "val": [start, folder.n_frames]}


def _write_frames(folder: ErnerfFolder, out: Path, fps: float, audio: np.ndarray, progress: bool) -> None:
    with VideoWriter(out / FRAMES, fps, audio=audio, sample_rate=16000, crf=16,
                     size=(folder.size, folder.size)) as writer:
        for i in tqdm(range(folder.n_frames), desc="import: frames", unit="frame", disable=not progress):
            bgr = cv2.imread(str(folder.frame(i)), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape[:2] != (folder.size, folder.size):
                raise Avatar3DError(f"{folder.frame(i)} is unreadable or not {folder.size}x{folder.size}; "
                                    "re-extract the frames")
            writer.write(np.ascontiguousarray(bgr[..., ::-1]))


def _write_audio(folder: ErnerfFolder, out: Path, fps: float) -> np.ndarray:
    """aud.wav -> audio.wav: 16 kHz mono, trimmed or zero-padded to exactly N / fps seconds."""
    audio, rate = read_wav(folder.root / "aud.wav", 16000)
    want = int(round(folder.n_frames / fps * rate))
    audio = np.pad(audio[:want], (0, max(0, want - len(audio))))
    write_wav(out / AUDIO, audio, rate)
    return audio


def _write_parsing(folder: ErnerfFolder, out: Path, landmarks: np.ndarray, min_mouth_area: float) -> None:
    """parsing/<i>.png -> parsing.npz (the segment stage's format), with the mouth interior from landmarks."""
    n, s = folder.n_frames, folder.size
    has_face = np.isfinite(landmarks[:, :468, :2]).all(axis=(1, 2))
    with atomic_path(out / PARSING_NAME) as tmp:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            with LabelWriter(zf, n, s, s) as writer:
                for i in range(n):
                    bgr = cv2.imread(str(folder.parsing(i)), cv2.IMREAD_COLOR)
                    if bgr is None:
                        raise Avatar3DError(f"{folder.parsing(i)} is unreadable; re-run their face parsing")
                    if bgr.shape[:2] != (s, s):
                        bgr = cv2.resize(bgr, (s, s), interpolation=cv2.INTER_NEAREST)
                    labels = parsing_to_labels(bgr)
                    face = landmarks[i] if has_face[i] else None
                    labels[mouth_mask(face, (s, s), min_mouth_area) & (labels == 1)] = 3
                    writer.write(labels)
            write_member(zf, "has_face", has_face)
            write_member(zf, "label_names", np.array(LABEL_NAMES))


def _write_background(folder: ErnerfFolder, out: Path) -> None:
    bgr = cv2.imread(str(folder.root / "bc.jpg"), cv2.IMREAD_COLOR)
    if bgr is None:
        raise Avatar3DError(f"{folder.root / 'bc.jpg'} is unreadable; re-run their data_utils/process.py (its background step)")
    if bgr.shape[:2] != (folder.size, folder.size):
        bgr = cv2.resize(bgr, (folder.size, folder.size), interpolation=cv2.INTER_AREA)
    with atomic_path(out / PLATE) as tmp:  # the temp name keeps .png, so cv2 picks the format
        _imwrite(tmp, bgr)


def _read_au45(folder: ErnerfFolder) -> Optional[np.ndarray]:
    """AU45_r column of au.csv (OpenFace writes ", " separators), or None when the file is absent."""
    path = folder.root / "au.csv"
    if not path.is_file():
        return None
    rows = [line.split(",") for line in path.read_text().splitlines() if line.strip()]
    header = [h.strip() for h in rows[0]] if rows else []
    if "AU45_r" not in header:
        raise Avatar3DError(f"{path} has no AU45_r column; re-run OpenFace FeatureExtraction with -aus")
    col = header.index("AU45_r")
    try:
        return np.array([float(r[col]) for r in rows[1:]], np.float64)
    except (ValueError, IndexError) as exc:
        raise Avatar3DError(f"{path}: unreadable AU45_r value ({exc}); re-run OpenFace or delete au.csv") from exc


def _rotation_disagreement(R_a: np.ndarray, R_b: np.ndarray, ok: np.ndarray) -> Optional[float]:
    """Median angle (deg) between two trackers' head rotations relative to their first good frame.
    Relative rotations R_i R_0^T live in the camera frame, so the two head-space conventions cancel."""
    idx = np.nonzero(ok)[0]
    if idx.size < 2:
        return None
    rel_a = R_a[idx] @ R_a[idx[0]].T
    rel_b = R_b[idx] @ R_b[idx[0]].T
    diff = np.einsum("nij,nkj->nik", rel_a, rel_b)
    cos = np.clip((np.trace(diff, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return float(np.degrees(np.median(np.arccos(cos))))


def _track_and_pose(folder: ErnerfFolder, out: Path, config: ErnerfImportConfig, progress: bool) -> dict:
    """Run our landmark + tracking stages on the imported frames, then choose the poses; returns a summary."""
    detect_landmarks(out, config.landmarks, progress=progress)
    landmarks = np.load(out / LANDMARKS)
    result = track(landmarks, folder.size, folder.size, load_face_model(config.face_model), config.track,
                   progress=progress)
    has_pose, R, t, focal, (cx, cy) = _folder_poses(folder)
    mode = config.poses
    if mode == "auto":
        mode = "transforms" if folder.written_by_avatar3d else "track"
    flags = np.load(out / LANDMARK_FLAGS)
    listed = has_pose
    agreement = _rotation_disagreement(R, result.rotation, listed & (flags != EXCLUDED))
    if mode == "track":
        R, t, focal, (cx, cy) = result.rotation, result.translation, float(result.focal), (folder.size / 2,) * 2
    flags = np.where(listed, flags, EXCLUDED).astype(flags.dtype)  # frames their split left out stay out
    np.save(out / LANDMARK_FLAGS, flags)
    extra = {} if (au45 := _read_au45(folder)) is None else {"au45": au45}
    save_npz_atomic(out / TRACKING, R=R, t=t, identity=result.identity, expression=result.expression,
                    expression_names=np.array(result.expression_names), blink=result.blink,
                    focal=np.float64(focal), depth_scale=np.float64(result.depth_scale),
                    residual_px=result.residual_px, fps=np.float64(config.fps), pose_source=np.array(mode),
                    R_track=result.rotation, t_track=result.translation, focal_track=np.float64(result.focal),
                    **extra)
    return {"pose_source": mode, "focal": focal, "cx": cx, "cy": cy, "n_excluded": int((flags == EXCLUDED).sum()),
            "rotation_disagreement_deg": agreement, "landmarks": landmarks}


def import_ernerf(ernerf_dir: PathLike, subject_dir: PathLike, config: Optional[ErnerfImportConfig] = None,
                  progress: bool = True) -> ImportReport:
    """Build a subject folder (our dataset contract) from an ER-NeRF / RAD-NeRF data folder.

    Frames, parsing, background and audio are taken as they are; landmarks, expressions and blink
    come from our own stages run on the frames (ER-NeRF has no expression coefficients); head
    poses per ``config.poses``."""
    config = config or ErnerfImportConfig()
    started = time.perf_counter()
    folder = read_ernerf_folder(ernerf_dir)
    out = Path(subject_dir)
    with _BuildFolder(out) as tmp:
        audio = _write_audio(folder, tmp, config.fps)
        _write_frames(folder, tmp, config.fps, audio, progress)
        info = _track_and_pose(folder, tmp, config, progress)
        _write_parsing(folder, tmp, info.pop("landmarks"), config.min_mouth_area)
        _write_background(folder, tmp)
        extract_audio_features(tmp, config.fps, folder.n_frames, config.audio, force=True)
        s = folder.size
        summary = {"fps": config.fps, "width": s, "height": s, "n_frames": folder.n_frames,
                   "intrinsics": {"fx": info["focal"], "fy": info["focal"], "cx": info["cx"], "cy": info["cy"]},
                   "split": _split_from(folder), "excluded_frames": info["n_excluded"]}
        write_transforms(tmp, summary)
        manifest = {"format_version": 1,
                    "source": {"kind": "ernerf", "path": str(folder.root.resolve()),
                               "sha256": file_sha256(folder.root / TRAIN_JSON)},
                    "import": {"pose_source": info["pose_source"], "wall_s": round(time.perf_counter() - started, 2),
                               "rotation_disagreement_deg": info["rotation_disagreement_deg"],
                               "expressions": "our tracker on the imported frames", "blink": "our tracker "
                               "(eyelid landmarks); au.csv AU45_r kept as tracking.npz au45 when present"},
                    "stages": {}, **summary}
        write_json_atomic(tmp / MANIFEST, manifest)
    return ImportReport(path=out, n_frames=folder.n_frames, pose_source=info["pose_source"],
                        n_excluded=info["n_excluded"], rotation_disagreement_deg=info["rotation_disagreement_deg"],
                        seconds=time.perf_counter() - started)
