"""A real face: the astronaut photo (public domain) under a known camera roll, through `prep`.

The frames are 2D similarity warps of a real photograph, so every pixel is a real face;
the audio is espeak-ng speech.  Tracking must not fail, and the in-plane rotation we
applied must come back as the head's roll about the camera axis.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from avatar3d.io.video import VideoWriter
from avatar3d.synth.speech import synthesize
from data_prep.decode import DecodeConfig
from data_prep.pipeline import PrepConfig, prepare
from data_prep.track import TrackConfig

FPS = 25
N_FRAMES = 60


@pytest.fixture(scope="module")
def rolled_photo(tmp_path_factory):
    out = tmp_path_factory.mktemp("astronaut")
    photo = skimage.data.astronaut()
    roll = 6.0 * np.sin(np.linspace(0, 2 * np.pi, N_FRAMES))
    audio = synthesize("This is a real face under a rolling camera.", sample_rate=16000)
    clip = out / "astronaut.mp4"
    centre = (225.0, 160.0)  # near the face: the roll pivots there
    with VideoWriter(clip, FPS, audio=audio, sample_rate=16000) as writer:
        for angle in roll:
            warp = cv2.getRotationMatrix2D(centre, float(angle), 1.0)
            writer.write(cv2.warpAffine(photo, warp, (512, 512), borderMode=cv2.BORDER_REFLECT101))
    config = PrepConfig(decode=DecodeConfig(size=256), track=TrackConfig(iterations=150))
    prepare(clip, out / "subject", config, progress=False, log=lambda _: None)
    return out / "subject", roll


def test_real_face_tracks_in_every_frame(rolled_photo):
    subject, _ = rolled_photo
    flags = np.load(subject / "landmark_flags.npy")
    assert (flags == 1).all()  # detected in every frame, nothing interpolated or excluded
    with np.load(subject / "tracking.npz") as tracking:
        residual = tracking["residual_px"]
    assert np.nanmax(residual) < 2.0, residual.max()  # at 256², MediaPipe vs fitted model


def test_applied_camera_roll_comes_back(rolled_photo):
    subject, roll = rolled_photo
    with np.load(subject / "tracking.npz") as tracking:
        rotations = tracking["R"]
    relative = rotations @ rotations[0].T  # camera-frame rotation since frame 0
    # cv2 rotates the image counter-clockwise for positive angles; with y down that is a
    # negative rotation about the camera's +z axis.
    measured = -np.rad2deg(np.arctan2(relative[:, 1, 0], relative[:, 0, 0]))
    expected = roll - roll[0]
    assert np.abs(measured - expected).max() < 1.0, np.abs(measured - expected).max()
