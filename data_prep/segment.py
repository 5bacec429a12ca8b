"""Stage 3 of ``avatar3d prep``: per-frame parsing into background / head / neck+torso / mouth.

Outputs in ``out_dir`` (atomic writes):

* ``parsing.npz`` - ``labels`` uint8 [N, H, W] (0 background, 1 head, 2 neck/torso,
  3 mouth interior), ``has_face`` bool [N] (False where the landmark stage
  excluded the frame: there the whole person is labelled 2, since head and torso
  cannot be told apart), ``label_names``.  One deflated array rather than a folder
  of PNGs: it is one file that appears atomically, ``np.load`` reads it, and
  label maps compress ~100x.  It is written and read frame by frame
  (:func:`iter_labels`), so a long clip never has to fit in memory.
* ``parsing.json`` - label pixel fractions, speed; written last (completion marker).

How a frame is parsed:

1. *person*: MediaPipe selfie segmentation (soft mask, thresholded).
2. *neck line*: the lower face contour (jaw, from one jaw angle through the chin
   to the other) continued outward along the face's own left-right axis, then
   straight up (in face coordinates, so it follows roll).  Everything of the
   person above that line and within ``lateral_margin`` face widths of the face
   is a head candidate: hair and ears sit there, shoulders sit below the line.
3. *head*: the filled face-oval polygon (always, even where the person mask
   misses skin), plus the head candidates that are connected to it - a shoulder
   or raised collar that pokes above the line beside the head, separated by
   background, stays torso.
4. *neck/torso*: the rest of the person.  *mouth*: the inner-lip polygon when
   the lips are apart.
"""
from __future__ import annotations

import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from tqdm import tqdm

from avatar3d.dataset.contract import (BACKGROUND_LABEL, FRAMES, HEAD_LABEL, LABEL_NAMES, LABELS_MEMBER, LANDMARKS,
                                       MOUTH_LABEL, PARSING, TORSO_LABEL)
from avatar3d.errors import Avatar3DError
from avatar3d.face import landmark_sets as rg
from avatar3d.io.atomic import atomic_path, write_json_atomic
from avatar3d.io.video import probe_video, read_video
from avatar3d.vision.face_mesh import PersonSegmenter

PathLike = Union[str, Path]

__all__ = [
    "BACKGROUND", "HEAD", "TORSO", "MOUTH", "LABEL_NAMES",
    "SegmentConfig", "SegmentResult", "PersonSegmenter", "parse_frame", "segment", "LabelWriter", "write_member",
]

BACKGROUND, HEAD, TORSO, MOUTH = BACKGROUND_LABEL, HEAD_LABEL, TORSO_LABEL, MOUTH_LABEL
PARSING_NAME = PARSING
REPORT_NAME = "parsing.json"

# Lower face contour from the subject's left jaw angle (image right) through the chin to the right one.
_JAW = [288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58]
_SIDE = (234, 454)  # cheek points at ear level: the face's left-right axis and width
_INNER_LIPS = rg.loop(rg.LIP_INNER_UPPER, rg.LIP_INNER_LOWER)
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly


@dataclass
class SegmentConfig:
    """Thresholds of the parsing rules (face widths are the 234-454 cheek distance)."""

    person_threshold: float = 0.5
    """Selfie-segmentation probability above which a pixel is the person."""
    lateral_margin: float = 0.6
    """How far (face widths) beyond each jaw angle hair may still count as head."""
    neck_drop: float = 0.0
    """Moves the neck line down (face widths) below the jaw, e.g. to give part of the neck to the head."""
    min_mouth_area: float = 0.002
    """Inner-lip polygon area (face width² units) below which the mouth counts as closed."""
    model_selection: int = 0
    """MediaPipe selfie model: 0 general (256², finer), 1 landscape (faster)."""


@dataclass
class SegmentResult:
    """Summary saved as ``parsing.json``."""

    n_frames: int
    width: int
    height: int
    n_without_face: int
    label_fractions: dict[str, float]
    wall_s: float
    frames_per_s: float
    config: dict


def _fill(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    """Boolean mask of a polygon given in continuous pixel coordinates (pixel j spans [j, j+1))."""
    mask = np.zeros(shape, np.uint8)
    pts = np.round((polygon - 0.5) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask.astype(bool)


def head_region(landmarks: np.ndarray, shape: tuple[int, int], config: SegmentConfig) -> np.ndarray:
    """Pixels above the neck line and within the lateral margin: where head (face, hair, ears) may be."""
    xy = landmarks[:, :2].astype(np.float64)
    left, right = xy[_SIDE[0]], xy[_SIDE[1]]
    width = float(np.linalg.norm(right - left))
    u = (right - left) / max(width, 1e-6)  # face's left-right axis, image right
    v = np.array([-u[1], u[0]])  # face's down axis
    centre = xy[rg.FACE_OVAL].mean(axis=0)
    jaw = xy[_JAW] + config.neck_drop * width * v
    reach = float(np.hypot(*shape)) + width  # far enough to leave the image in any direction
    s_out = 0.5 * width + config.lateral_margin * width

    def at(s: float, point: np.ndarray) -> np.ndarray:
        """The point at lateral offset s from the centre, on the jaw point's face-vertical level."""
        return centre + s * u + float(np.dot(point - centre, v)) * v

    outer_r, outer_l = at(s_out, jaw[0]), at(-s_out, jaw[-1])
    polygon = np.vstack([outer_r - reach * v, outer_r, jaw, outer_l, outer_l - reach * v])
    return _fill(shape, polygon)


def parse_frame(person: np.ndarray, landmarks: Optional[np.ndarray], config: SegmentConfig) -> np.ndarray:
    """Label map uint8 [H, W] from a soft person mask and (optional) 478 landmarks in pixels."""
    shape = person.shape[:2]
    is_person = person > config.person_threshold
    labels = np.where(is_person, TORSO, BACKGROUND).astype(np.uint8)
    if landmarks is None or not np.isfinite(landmarks[:, :2]).all():
        return labels
    xy = landmarks[:, :2]
    face = _fill(shape, xy[rg.FACE_OVAL])
    candidates = (is_person & head_region(landmarks, shape, config)) | face
    n, comp = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[np.unique(comp[face])] = True
    keep[0] = False
    head = keep[comp]
    labels[head] = HEAD
    mouth_poly = xy[_INNER_LIPS]
    width = float(np.linalg.norm(xy[_SIDE[1]] - xy[_SIDE[0]]))
    if abs(cv2.contourArea(mouth_poly.astype(np.float32))) >= config.min_mouth_area * width * width:
        labels[_fill(shape, mouth_poly) & head] = MOUTH
    return labels


class LabelWriter:
    """Streams label maps into ``labels.npy`` of a deflated npz, one frame at a time."""

    def __init__(self, zf: zipfile.ZipFile, n: int, height: int, width: int) -> None:
        self._member = zf.open(LABELS_MEMBER, "w", force_zip64=True)
        header = {"descr": "|u1", "fortran_order": False, "shape": (n, height, width)}
        np.lib.format.write_array_header_2_0(self._member, header)
        self.expected, self.written, self.shape = n, 0, (height, width)

    def write(self, labels: np.ndarray) -> None:
        self._member.write(np.ascontiguousarray(labels, np.uint8).tobytes())
        self.written += 1

    def close(self) -> None:
        self._member.close()

    def __enter__(self) -> "LabelWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on errors: the zip cannot close (and be discarded) with a member open


def write_member(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """Writes ``array`` as ``name``.npy into an open npz (zip) without pickling."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def _load_landmarks(path: Path) -> np.ndarray:
    if not path.is_file():
        raise Avatar3DError(f"{path}: not found; run the landmarks stage (avatar3d prep) first")
    try:
        lm = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise Avatar3DError(f"{path}: unreadable ({exc}); re-run the landmarks stage") from exc
    if lm.ndim != 3 or lm.shape[1] < 468 or lm.shape[2] < 2:
        raise Avatar3DError(f"{path}: expected landmarks [N, 478, 3], got shape {lm.shape}; re-run the landmarks stage")
    return lm


def segment(
    out_dir: PathLike,
    config: Optional[SegmentConfig] = None,
    frames_path: Optional[PathLike] = None,
    landmarks_path: Optional[PathLike] = None,
    progress: bool = True,
) -> SegmentResult:
    """Parse every frame of ``out_dir/frames.mp4`` with ``out_dir/landmarks.npy``; write ``parsing.npz``."""
    config = config or SegmentConfig()
    out = Path(out_dir)
    frames_path = Path(frames_path) if frames_path is not None else out / FRAMES
    landmarks_path = Path(landmarks_path) if landmarks_path is not None else out / LANDMARKS
    if not frames_path.is_file():
        raise Avatar3DError(f"{frames_path}: not found; run the decode stage (avatar3d prep) first")
    landmarks = _load_landmarks(landmarks_path)
    info = probe_video(frames_path)
    n, height, width = int(landmarks.shape[0]), info.height, info.width
    if n == 0:
        raise Avatar3DError(f"{landmarks_path}: holds no frames; re-run the landmarks stage")
    (out / REPORT_NAME).unlink(missing_ok=True)  # completion marker goes first
    has_face = np.isfinite(landmarks[:, :468, :2]).all(axis=(1, 2))
    counts = np.zeros(len(LABEL_NAMES), np.int64)
    started = time.perf_counter()
    with atomic_path(out / PARSING_NAME) as tmp, PersonSegmenter(config.model_selection) as seg:
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            with LabelWriter(zf, n, height, width) as writer:
                frames = read_video(frames_path)
                for i, rgb in enumerate(tqdm(frames, total=n, desc="segment", unit="frame", disable=not progress)):
                    if i >= n:
                        raise Avatar3DError(
                            f"{frames_path}: has more frames than {landmarks_path} ({n}); re-run the landmarks stage"
                        )
                    labels = parse_frame(seg(rgb), landmarks[i] if has_face[i] else None, config)
                    counts += np.bincount(labels.ravel(), minlength=len(LABEL_NAMES))[: len(LABEL_NAMES)]
                    writer.write(labels)
            if writer.written != n:
                raise Avatar3DError(
                    f"{frames_path}: has {writer.written} frames but {landmarks_path} has {n}; re-run the landmarks stage"
                )
            write_member(zf, "has_face", has_face)
            write_member(zf, "label_names", np.array(LABEL_NAMES))
    elapsed = time.perf_counter() - started
    result = SegmentResult(
        n_frames=n, width=width, height=height, n_without_face=int((~has_face).sum()),
        label_fractions={name: float(c / max(counts.sum(), 1)) for name, c in zip(LABEL_NAMES, counts)},
        wall_s=elapsed, frames_per_s=n / max(elapsed, 1e-9), config=asdict(config),
    )
    write_json_atomic(out / REPORT_NAME, asdict(result))
    return result
