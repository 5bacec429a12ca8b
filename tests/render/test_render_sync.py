"""Render path timing: frame i of the rendered mp4 is drawn from track i, and the sound track spans the frames.

Why: issue 7 measured the rendered mouth 1-3 frames behind the speech.  The tests' 64² avatar is
too small and too briefly trained for its mouth to respond to the motion (a jawOpen change moves no
pixel by more than 1/255), so MediaPipe cannot read its lips; what *can* be checked on it is the
path every frame takes (tracks -> ViewRenderer -> Outputs -> Mp4Sink -> H.264 -> decode): a head
moved on a few known frames must show up on exactly those decoded frames, not one later.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avatar3d.avatar.bundle import AvatarBundle
from avatar3d.avatar.loading import load_avatar
from avatar3d.io.video import probe_video, read_audio, read_video
from avatar3d.render.camera import ViewRenderer, camera_track, stereo_eyes
from avatar3d.render.drive import DriveTracks
from avatar3d.render.outputs import Frame
from avatar3d.render.speech import SAMPLE_RATE, render_tracks

MOVED = (4, 5, 11, 16)  # frames whose head is shifted: a pair, a single, the one before last
N_FRAMES = 18
SHIFT_M = 0.012  # 12 mm sideways: a clearly different picture at 64²


def _tracks(bundle: AvatarBundle, moved: np.ndarray) -> DriveTracks:
    k = int(np.asarray(bundle.train_ids)[0])
    R = np.repeat(np.asarray(bundle.R, np.float64)[k:k + 1], N_FRAMES, 0)
    t = np.repeat(np.asarray(bundle.t, np.float64)[k:k + 1], N_FRAMES, 0)
    t[moved, 0] += SHIFT_M
    expression = np.repeat(np.asarray(bundle.expression, np.float32)[k:k + 1], N_FRAMES, 0)
    blink = np.repeat(np.asarray(bundle.blink, np.float32)[k:k + 1], N_FRAMES, 0)
    return DriveTracks(R=R, t=t, expression=expression, blink=blink, source_frames=np.full(N_FRAMES, k),
                       expression_names=list(bundle.expression_names))  # fmt: skip


def test_mp4_frame_i_is_rendered_from_track_i(tiny_avatar_run, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    avatar = load_avatar(tiny_avatar_run[0])
    bundle = avatar.bundle
    moved = np.zeros(N_FRAMES, bool)
    moved[list(MOVED)] = True
    tracks = _tracks(bundle, moved)
    size, fps = int(bundle.resolution), float(bundle.fps)
    out = tmp_path / "impulses.mp4"
    n_samples = int(round(N_FRAMES / fps * SAMPLE_RATE))
    render_tracks(avatar, tracks, out, np.zeros(n_samples, np.float32), size, progress=False,
                  log=lambda s: None)  # fmt: skip

    # the two pictures the track alternates between, rendered directly (no encoder)
    views = ViewRenderer(avatar, size, camera_track("training", tracks.R, tracks.t, bundle), tracks.R,
                         tracks.t, tracks.motion, stereo_eyes(None))  # fmt: skip
    with torch.no_grad():
        still = Frame.from_views(views.render(0)).rgb * 255.0
        shifted = Frame.from_views(views.render(MOVED[0])).rgb * 255.0
    assert np.abs(shifted - still).mean() > 3.0  # the shift is visible, so the check below means something

    decoded = np.stack(list(read_video(out))).astype(np.float32)
    assert len(decoded) == N_FRAMES
    to_still = np.abs(decoded - still).mean(axis=(1, 2, 3))
    to_shifted = np.abs(decoded - shifted).mean(axis=(1, 2, 3))
    assert np.flatnonzero(to_shifted < to_still).tolist() == list(MOVED), (to_still.round(2), to_shifted.round(2))
    # every decoded frame is nearer its own picture than any frame is to the other one (H.264 at crf 18 and
    # 4:2:0 chroma cost ~3.6/255 at 64²; the two pictures are ~8.3/255 apart)
    own = np.where(moved, to_shifted, to_still)
    other = np.where(moved, to_still, to_shifted)
    assert own.max() < 0.7 * other.min(), (own.round(2), other.round(2))

    # the sound track starts with the picture and spans the same time (within one AAC frame)
    info = probe_video(out)
    assert abs(float(info.fps) - fps) < 1e-6
    assert abs(len(read_audio(out, SAMPLE_RATE)) - n_samples) <= 1024
