"""The source photo of the synthetic subject: load, find the face, crop, segment.

The photo is cropped square around the head and shoulders and resized to the output
size, so that the rendered face stays near the photo's own resolution (MediaPipe's
agreement degrades when a face is upscaled a lot; see SYNTH_NOTES.md).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatar3d.errors import Avatar3DError, InputError
from avatar3d.vision.face_mesh import FaceMeshDetector, person_mask

DEFAULT_PHOTO = "astronaut"


@dataclass
class SourcePhoto:
    """The cropped photo at output size with its landmarks and person mask."""

    image: np.ndarray  # [S,S,3] uint8
    landmarks: np.ndarray  # [478,3] pixels (MediaPipe, static mode)
    person: np.ndarray  # [S,S] float32 in [0,1]
    name: str
    sha256: str


def load_photo(photo: str | None) -> tuple[np.ndarray, str]:
    """RGB uint8 image and a display name; ``None`` or "astronaut" gives skimage's astronaut."""
    if photo is None or photo == DEFAULT_PHOTO:
        import skimage.data  # lazy: heavy (~0.5 s); only the default photo needs it

        return np.ascontiguousarray(skimage.data.astronaut()), "skimage.data.astronaut (NASA, public domain)"
    path = Path(photo)
    if not path.is_file():
        raise InputError(f"photo {path} not found: pass an existing image file with --photo")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"photo {path} could not be decoded: pass a PNG or JPEG image with --photo")
    return np.ascontiguousarray(bgr[:, :, ::-1]), str(path)


def prepare_source(rgb: np.ndarray, name: str, size: int, face_width_fraction: float = 0.30,
                   face_centre_height: float = 0.42) -> SourcePhoto:
    """Crop ``rgb`` square so the face is ``face_width_fraction`` of ``size`` wide, centred at that height."""
    with FaceMeshDetector(video=False) as detect:
        first = detect(rgb)
        if first is None:
            raise Avatar3DError(
                f"no face found in photo {name}: use a photo with one clearly visible, roughly frontal face"
            )
        face_width = float(np.linalg.norm(first[454, :2] - first[234, :2]))
        if face_width < 40:
            raise Avatar3DError(
                f"the face in photo {name} is only {face_width:.0f} px wide: use a photo where it is at least 40 px"
            )
        centre = first[:468, :2].mean(axis=0)
        crop = face_width / face_width_fraction  # side of the square crop in photo pixels
        x0 = centre[0] - crop / 2.0
        y0 = centre[1] - crop * face_centre_height
        scale = size / crop
        affine = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
        image = cv2.warpAffine(rgb, affine, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REFLECT101)
        landmarks = detect(image)
    if landmarks is None:
        raise Avatar3DError(f"the face in photo {name} was lost after cropping: use a larger, frontal face photo")
    digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()
    return SourcePhoto(image=image, landmarks=landmarks, person=person_mask(image), name=name, sha256=digest)
