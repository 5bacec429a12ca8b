"""An avatar trained on a real person (the shortest shared clip in ``../shared/real``) through the commands a
user runs: `avatar3d train --config gaussians_tiny` on the clip prepared by `avatar3d prep`, then its held-out
frames (the clip's last second, never trained on) rendered through the avatar API with re-tracked poses.

Why: every other avatar test trains on the synthetic subject; this one fails when a change helps the
synthetic face and breaks a real one (a crop, a mask, a pose convention, a colour space).  The run is
step-bounded (not time-bounded), so a loaded CI machine changes its duration, not its result.
"""
from __future__ import annotations

import numpy as np
import pytest

from avatar3d.avatar.loading import load_avatar
from avatar3d.cli import main
from avatar3d.dataset.reader import LIP_IDS, load_subject
from avatar3d.eval.image_metrics import head_mask, mouth_mask, psnr
from avatar3d.io.video import probe_video
from avatar3d.train.trainer import evaluate_frames

from tests.real_clips import REAL_CLIPS, SHARED_REAL

STEPS = 1500

pytestmark = pytest.mark.skipif(not REAL_CLIPS, reason=f"no real clips in {SHARED_REAL} (shared evaluation data, "
                                                       "never in the repository)")


@pytest.fixture(scope="module")
def real_avatar(real_subject, tmp_path_factory):
    """(clip, avatar, subject data at 64² with the avatar's refined poses) for the shortest shared clip."""
    clip = min(REAL_CLIPS, key=lambda c: probe_video(c).duration)
    subject = real_subject(clip)
    out = tmp_path_factory.mktemp("real-avatar") / "run"
    assert main(["train", str(subject), "-o", str(out), "--config", "gaussians_tiny", "--steps", str(STEPS)]) == 0
    avatar = load_avatar(out)
    data = load_subject(subject, 64, progress=False)
    assert avatar.use_refined_poses(data) == len(data.R)  # training and held-out frames alike
    return clip, avatar, data


def test_held_out_frames_of_a_real_person_far_above_the_mean_image(real_avatar) -> None:
    clip, avatar, data = real_avatar
    ids = data.val_ids
    assert len(ids) >= 25  # at least the clip's last second
    metrics, images = evaluate_frames(avatar, data, ids)
    mean_image = np.mean([data.image(int(i)) for i in data.train_ids], axis=0)
    refs = [data.image(int(i)) for i in ids]
    masks = [np.asarray(data.labels[int(i)]) for i in ids]
    base = {"full": np.mean([psnr(mean_image, r) for r in refs]),
            "head": np.mean([psnr(mean_image, r, head_mask(m)) for r, m in zip(refs, masks)]),
            "mouth": np.mean([psnr(mean_image, r, mouth_mask(data.landmarks[int(i)][LIP_IDS], r.shape[:2]))
                              for r, i in zip(refs, ids)])}  # fmt: skip
    print(f"{clip.name}, {len(ids)} held-out frames at 64²: " + ", ".join(
        f"{k} {metrics['psnr_' + k]:.2f} dB (mean image {v:.2f})" for k, v in base.items()))
    # Measured (talk_man_map, 1,500 steps, 35 s of training on 2 quiet cores): full 36.27 vs 31.36, head 39.28 vs
    # 28.59, mouth 36.10 vs 28.45 dB; the margins below leave ~2-3 dB. At 300 steps the full margin was 2.2 dB.
    assert metrics["psnr_full"] > base["full"] + 3.0
    assert metrics["psnr_head"] > base["head"] + 8.0
    assert metrics["psnr_mouth"] > base["mouth"] + 5.0
