"""File names, format version and readers of a prepared subject folder (the dataset contract).

Why one module: the names and the manifest layout were spelled in a dozen files; now
``data_prep`` (the only writer) and train / render / eval / export (the readers) import them
from here, so a renamed file or a new format version is one edit.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from avatar3d.errors import Avatar3DError, InputError

PathLike = Union[str, Path]

FORMAT_VERSION = 1  # manifest.json "format_version" written by `avatar3d prep`

MANIFEST = "manifest.json"
FRAMES = "frames.mp4"  # cropped frames, H.264, manifest fps and size
AUDIO = "audio.wav"  # 16 kHz mono, the clip's duration
LANDMARKS = "landmarks.npy"  # float [N, 478, 3], NaN where excluded
LANDMARK_FLAGS = "landmark_flags.npy"  # uint8 [N]: EXCLUDED / DETECTED / INTERPOLATED
TRACKING = "tracking.npz"  # R, t, identity, expression (+ names), blink, focal, depth_scale, residual
PARSING = "parsing.npz"  # labels uint8 [N, H, W] (LABEL_NAMES) + has_face
PLATE = "background.png"  # clean background plate
PLATE_UNSEEN = "background_unseen.png"  # where the plate was never seen
AUDIO_FEATURES = "audio_features.npz"
TRANSFORMS_TRAIN = "transforms_train.json"  # RAD-NeRF / ER-NeRF layout, metres
TRANSFORMS_VAL = "transforms_val.json"
PREVIEW = "preview.mp4"
CACHE_DIR = "cache"  # uint8 memory maps at training resolutions (avatar3d.dataset.reader)

# What a subject must hold before an avatar can be trained from it.
REQUIRED_FOR_TRAINING = (MANIFEST, FRAMES, AUDIO, LANDMARKS, LANDMARK_FLAGS, TRACKING, PARSING, PLATE)

# landmark_flags.npy values
EXCLUDED, DETECTED, INTERPOLATED = 0, 1, 2

# parsing.npz label values
LABEL_NAMES = ("background", "head", "neck_torso", "mouth")
BACKGROUND_LABEL, HEAD_LABEL, TORSO_LABEL, MOUTH_LABEL = 0, 1, 2, 3
LABELS_MEMBER = "labels.npy"  # the member of parsing.npz that holds the label maps

MANIFEST_KEYS = ("fps", "width", "height", "n_frames", "intrinsics", "split")


def prep_fix(root: PathLike) -> str:
    """The fix for a missing or broken subject file: prepare the clip (again)."""
    return f"run `avatar3d prep CLIP -o {root}` first"


def is_subject(path: PathLike) -> bool:
    """True for a folder `avatar3d prep` wrote (its manifest and frames are there)."""
    p = Path(path)
    return (p / MANIFEST).is_file() and (p / FRAMES).is_file()


def require_files(root: PathLike, names: tuple[str, ...] = REQUIRED_FOR_TRAINING) -> None:
    """One-line error naming the first missing file of ``names`` in the subject ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"subject folder {root} not found: {prep_fix(root)}")
    for name in names:
        if not (root / name).is_file():
            raise InputError(f"{root / name} is missing: {prep_fix(root)}")


def read_arrays(path: PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of a subject's .npz (e.g. tracking.npz); one line when it is missing, corrupt or short.

    Why here: a truncated .npz raises zipfile's BadZipFile, which no caller expected (an internal error).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in names}
    except FileNotFoundError as exc:
        raise InputError(f"{path} is missing: {prep_fix(path.parent)}") from exc
    except KeyError as exc:
        raise InputError(f"{path} lacks {exc}: {prep_fix(path.parent)}") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is unreadable or corrupt ({type(exc).__name__}): {prep_fix(path.parent)}") from exc


def read_array(path: PathLike, mmap_mode: Optional[str] = None) -> np.ndarray:
    """A subject's .npy (landmarks, flags), with the same one-line errors as :func:`read_arrays`."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError as exc:
        raise InputError(f"{path} is missing: {prep_fix(path.parent)}") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path} is unreadable or corrupt ({type(exc).__name__}): {prep_fix(path.parent)}") from exc


def read_manifest(root: PathLike) -> dict[str, Any]:
    """The finished subject's manifest; a manifest of an unfinished or newer prep is a one-line error."""
    path = Path(root) / MANIFEST
    fix = prep_fix(Path(root))
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({exc}): {fix}") from exc
    if not isinstance(manifest, dict):
        raise InputError(f"{path} is not a subject manifest: {fix}")
    version = manifest.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: subject format {version}, this avatar3d reads format {FORMAT_VERSION}: "
                            f"prepare the clip again with this version (`avatar3d prep CLIP -o NEW_FOLDER`)")
    for key in MANIFEST_KEYS:
        if key not in manifest:
            raise InputError(f"{path} has no {key!r} (prep did not finish): {fix}")
    return manifest


def iter_labels(path: PathLike) -> Iterator[np.ndarray]:
    """Yield the label maps of ``parsing.npz`` one frame at a time (uint8 [H, W]) without loading the clip."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found; run the segment stage (avatar3d prep) first")
    try:
        zf = zipfile.ZipFile(path)
        member = zf.open(LABELS_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise Avatar3DError(f"{path}: not a parsing file ({exc}); re-run the segment stage") from exc
    return _iter_member(zf, member, path)


def _iter_member(zf: zipfile.ZipFile, member, path: Path) -> Iterator[np.ndarray]:  # type: ignore[no-untyped-def]
    try:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(member)
        if dtype != np.uint8 or fortran or len(shape) != 3:
            raise Avatar3DError(f"{path}: labels have dtype {dtype} shape {shape}; re-run the segment stage")
        size = int(shape[1] * shape[2])
        for _ in range(int(shape[0])):
            buf = member.read(size)
            if len(buf) != size:
                raise Avatar3DError(f"{path}: truncated label array; re-run the segment stage")
            yield np.frombuffer(buf, np.uint8).reshape(shape[1], shape[2])
    finally:
        member.close()
        zf.close()


def load_labels(path: PathLike, frames: Optional[np.ndarray] = None) -> np.ndarray:
    """Label maps [len(frames) or N, H, W] for the given frame indices (all if None), read in one stream."""
    if frames is None:
        return np.stack([lab.copy() for lab in iter_labels(path)])
    wanted = [int(i) for i in np.asarray(frames).ravel()]
    got: dict[int, np.ndarray] = {}
    last = max(wanted, default=-1)
    for i, lab in enumerate(iter_labels(path)):
        if i > last:
            break
        if i in wanted:
            got[i] = lab.copy()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise Avatar3DError(f"{path}: has no frame {missing[0]}; re-run the segment stage or ask for fewer frames")
    return np.stack([got[i] for i in wanted]) if wanted else np.zeros((0, 0, 0), np.uint8)
