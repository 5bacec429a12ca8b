"""ER-NeRF / RAD-NeRF data folders: export a prepared subject, check the layout their loader reads,
import it back and check poses, intrinsics, audio, background and labels against the original."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatar3d.cli import main
from avatar3d.errors import Avatar3DError
from avatar3d.export.ernerf import (BGR_BACKGROUND, BGR_HEAD, BGR_NECK, BGR_TORSO, ErnerfImportConfig, au45_to_blink,
                                    blink_to_au45, import_ernerf, labels_to_parsing, parsing_to_labels)
from data_prep.track import TrackConfig
from data_prep.transforms import c2w_to_head_pose

N = 40  # frames converted: the first 1.6 s of the 16 s fixture
FAST_TRACK = TrackConfig(iterations=100)  # the prepared_subject fixture's schedule


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def _labels(subject: Path, n: int) -> np.ndarray:
    from avatar3d.dataset.contract import load_labels

    return load_labels(subject / "parsing.npz", np.arange(n))


@pytest.fixture(scope="module")
def exported(prepared_subject, tmp_path_factory) -> tuple[Path, Path]:
    """(subject, ER-NeRF folder of its first N frames), written through the CLI."""
    subject = prepared_subject[0]
    out = tmp_path_factory.mktemp("ernerf") / "data" / "synth"
    assert main(["export", str(subject), "--to-ernerf", str(out), "--frames", str(N)]) == 0
    return subject, out


@pytest.fixture(scope="module")
def imported(exported, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The exported folder imported back as a subject: (subject, folder, new subject, report)."""
    subject, folder = exported
    out = tmp_path_factory.mktemp("ernerf-import") / "subject"
    report = import_ernerf(folder, out, ErnerfImportConfig(track=FAST_TRACK), progress=False)
    return subject, folder, out, report


def test_parsing_colours_and_au45_scale_invert() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[1:4, 2:6], labels[2, 3], labels[5:, :] = 1, 3, 2
    parsing = labels_to_parsing(labels, None)  # no landmarks: all of neck/torso is "torso"
    assert (parsing[labels == 0] == BGR_BACKGROUND).all() and (parsing[labels == 2] == BGR_TORSO).all()
    assert (parsing[(labels == 1) | (labels == 3)] == BGR_HEAD).all()  # mouth interior is head in ER-NeRF
    back = parsing_to_labels(parsing)
    assert (back == np.where(labels == 3, 1, labels)).all()
    noisy = np.clip(parsing.astype(int) + np.random.default_rng(0).integers(-30, 30, parsing.shape), 0, 255)
    assert (parsing_to_labels(noisy.astype(np.uint8)) == back).all()  # a lossy parsing still maps cleanly
    blink = np.array([[0.0, 0.0], [0.5, 0.3], [1.0, 1.0]])
    au45 = blink_to_au45(blink)
    assert np.allclose(au45, [0.0, 0.8, 2.0])
    assert np.allclose(np.clip(au45, 0, 2) / 2, blink.mean(1))  # what ER-NeRF's provider reads as the eye input
    assert np.allclose(au45_to_blink(au45), blink.mean(1))


def test_export_layout_matches_what_ernerf_reads(exported) -> None:
    subject, out = exported
    for name, ext in (("ori_imgs", "jpg"), ("ori_imgs", "lms"), ("parsing", "png"), ("gt_imgs", "jpg"),
                      ("torso_imgs", "png")):
        assert sorted(int(p.stem) for p in (out / name).glob(f"*.{ext}")) == list(range(N)), (name, ext)
    assert not list(out.parent.glob(".synth.tmp-*"))  # the temp folder was renamed, nothing left behind
    # ER-NeRF's "all" split reads every *.json in the folder as a transforms file
    assert sorted(p.name for p in out.glob("*.json")) == ["transforms_train.json", "transforms_val.json"]

    # transforms: their keys; poses back to the subject's tracked head pose (metres, no scale)
    train, val = (json.loads((out / f"transforms_{s}.json").read_text()) for s in ("train", "val"))
    manifest = json.loads((subject / "manifest.json").read_text())
    assert [f["img_id"] for f in train["frames"] + val["frames"]] == list(range(N))
    assert len(val["frames"]) == 4  # the subject's 1/11 held out, from the end of the span
    assert train["focal_len"] == pytest.approx(manifest["intrinsics"]["fx"]) and train["cx"] == 256.0
    with np.load(subject / "tracking.npz") as z:
        R0, t0 = z["R"][:N], z["t"][:N]
    c2w = np.array([f["transform_matrix"] for f in train["frames"] + val["frames"]])
    R, t = c2w_to_head_pose(c2w)
    assert np.abs(R - R0).max() < 1e-6 and np.abs(t - t0).max() < 1e-6
    assert 0.3 < np.linalg.norm(c2w[:, :3, 3], axis=1).mean() < 1.5  # camera distance in metres, as their tracker

    # parsing: only their four colours; back to our labels exactly (mouth interior -> head)
    labels0 = _labels(subject, N)
    colours = {tuple(c) for c in (BGR_HEAD, BGR_NECK, BGR_TORSO, BGR_BACKGROUND)}
    neck_px = 0
    for i in (0, N // 2, N - 1):
        parsing = cv2.imread(str(out / "parsing" / f"{i}.png"))
        assert {tuple(c) for c in np.unique(parsing.reshape(-1, 3), axis=0)} <= colours
        assert (parsing_to_labels(parsing) == np.where(labels0[i] == 3, 1, labels0[i])).all()
        neck_px += int((parsing == BGR_NECK).all(-1).sum())
    assert neck_px > 0

    # gt_imgs: background from bc.jpg, person from the frame; torso_imgs: alpha on neck/torso only
    i = N // 2
    ori, gt, bc = (cv2.imread(str(p)) for p in (out / "ori_imgs" / f"{i}.jpg", out / "gt_imgs" / f"{i}.jpg",
                                                 out / "bc.jpg"))
    torso = cv2.imread(str(out / "torso_imgs" / f"{i}.png"), cv2.IMREAD_UNCHANGED)
    lab = labels0[i]
    assert _psnr(gt[lab == 0], bc[lab == 0]) > 30 and _psnr(gt[lab != 0], ori[lab != 0]) > 35
    assert torso.shape[2] == 4 and (torso[lab == 2, 3] == 255).all() and (torso[lab == 0, 3] == 0).mean() > 0.99
    head = (lab == 1) | (lab == 3)
    assert 0 < (torso[head, 3] == 255).mean() < 0.25  # only the band behind the chin is filled in

    # .lms: 68 "x y" rows; ER-NeRF's lips box (points 48-59) holds the mouth interior, eyes in order
    lms = np.loadtxt(out / "ori_imgs" / f"{i}.lms")
    assert lms.shape == (68, 2)
    assert lms[36:42, 0].mean() < lms[27:31, 0].mean() < lms[42:48, 0].mean()  # right eye, nose, left eye
    assert lms[8, 1] == lms[:17, 1].max() and lms[48:60, 1].min() > lms[30, 1]  # chin lowest, lips below nose tip
    mouth_frames = [k for k in range(N) if (labels0[k] == 3).sum() > 50]
    assert mouth_frames
    for k in mouth_frames:
        pts = np.loadtxt(out / "ori_imgs" / f"{k}.lms")[48:60]
        ys, xs = np.nonzero(labels0[k] == 3)
        inside = (xs >= pts[:, 0].min() - 1) & (xs <= pts[:, 0].max() + 1) & \
                 (ys >= pts[:, 1].min() - 1) & (ys <= pts[:, 1].max() + 1)
        assert inside.mean() > 0.95, k

    # audio: 16 kHz, the span's samples unchanged; au.csv: OpenFace's ", " header -> column " AU45_r"
    from avatar3d.io.audio import read_wav

    aud, rate = read_wav(out / "aud.wav")
    orig, _ = read_wav(subject / "audio.wav")
    assert rate == 16000 and len(aud) == N * 16000 // 25 and np.abs(aud - orig[: len(aud)]).max() < 1e-4
    with open(out / "au.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert " AU45_r" in rows[0] and len(rows) == N + 1
    au45 = np.array([float(r[rows[0].index(" AU45_r")]) for r in rows[1:]])
    with np.load(subject / "tracking.npz") as z:
        assert np.allclose(au45, 2 * z["blink"][:N].mean(1), atol=1e-4)


def test_import_round_trip_trains(imported) -> None:
    from avatar3d.dataset.reader import load_subject
    from avatar3d.io.audio import read_wav
    from avatar3d.io.video import read_video

    subject, folder, out, report = imported
    assert report.pose_source == "transforms" and report.n_frames == N and report.n_excluded == 0
    assert report.rotation_disagreement_deg is not None and report.rotation_disagreement_deg < 1.0
    with np.load(subject / "tracking.npz") as a, np.load(out / "tracking.npz") as b:
        assert np.abs(a["R"][:N] - b["R"]).max() < 1e-6 and np.abs(a["t"][:N] - b["t"]).max() < 1e-6
        names = [str(s) for s in b["expression_names"]]
        jaw = names.index("jawOpen")
        assert np.corrcoef(a["expression"][:N, jaw], b["expression"][:, jaw])[0, 1] > 0.9  # re-tracked mouth
    m0, m1 = (json.loads((p / "manifest.json").read_text()) for p in (subject, out))
    assert m1["intrinsics"] == pytest.approx(m0["intrinsics"]) and m1["split"] == {"train": [0, 36], "val": [36, 40]}
    a0, _ = read_wav(subject / "audio.wav")
    a1, _ = read_wav(out / "audio.wav")
    assert len(a1) == N * 640 and np.abs(a1 - a0[: len(a1)]).max() < 1e-4
    bg0, bg1 = (cv2.imread(str(p / "background.png")).astype(np.float64) for p in (subject, out))
    assert np.abs(bg0 - bg1).mean() < 2.0  # one JPEG pass (q95)
    lab0, lab1 = _labels(subject, N), _labels(out, N)
    assert (np.where(lab0 == 3, 1, lab0) == np.where(lab1 == 3, 1, lab1)).all()
    inter, union = ((lab0 == 3) & (lab1 == 3)).sum(), ((lab0 == 3) | (lab1 == 3)).sum()
    assert union > 0 and inter / union > 0.8  # mouth interior re-derived from re-detected landmarks
    frames0 = [f for f, _ in zip(read_video(subject / "frames.mp4"), range(N))]
    assert np.mean([_psnr(x, y) for x, y in zip(frames0, read_video(out / "frames.mp4"))]) > 35

    data = load_subject(out, 64, progress=False)
    assert data.n_frames == N and len(data.train_ids) == 36 and len(data.val_ids) == 4
    assert data.expression.shape == (N, 39) and np.isfinite(data.R).all()


def test_foreign_folder_uses_our_tracker_poses(exported, tmp_path) -> None:
    """A folder their tracker wrote (no avatar3d block; head origin on the BFM face centroid, simulated
    here by moving ours 6 cm forward): auto takes poses and focal from our tracker, and reports how far
    the two trackers' head rotations disagree."""
    subject, folder = exported
    n = 16
    foreign = tmp_path / "foreign"
    for name in ("ori_imgs", "parsing"):
        (foreign / name).mkdir(parents=True)
        for i in range(n):
            for p in (folder / name).glob(f"{i}.*"):
                shutil.copy(p, foreign / name / p.name)
    for name in ("bc.jpg", "aud.wav"):
        shutil.copy(folder / name, foreign / name)
    by_id = {f["img_id"]: np.array(f["transform_matrix"]) for s in ("train", "val")
             for f in json.loads((folder / f"transforms_{s}.json").read_text())["frames"]}
    for split, ids in (("train", range(0, 14)), ("val", range(14, n))):
        data = json.loads((folder / f"transforms_{split}.json").read_text())
        data.pop("avatar3d")
        shifted = {i: by_id[i] - np.pad(np.array([[0.0], [0.0], [0.06]]), ((0, 1), (3, 0))) for i in ids}
        data["frames"] = [{"img_id": i, "aud_id": i, "transform_matrix": shifted[i].tolist()} for i in ids]
        (foreign / f"transforms_{split}.json").write_text(json.dumps(data))
    out = tmp_path / "subject"
    report = import_ernerf(foreign, out, ErnerfImportConfig(track=FAST_TRACK), progress=False)
    assert report.pose_source == "track"
    assert report.rotation_disagreement_deg is not None and report.rotation_disagreement_deg < 1.0
    with np.load(subject / "tracking.npz") as a, np.load(out / "tracking.npz") as b:
        assert np.array_equal(b["R"], b["R_track"]) and float(b["focal"]) == float(b["focal_track"])
        cos = (np.trace(np.einsum("nij,nkj->nik", a["R"][:n], b["R"]), axis1=1, axis2=2) - 1) / 2
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 3.0  # our tracker on the same frames
        assert np.abs(b["t"] - a["t"][:n]).max() < 0.03  # metres
        assert "au45" not in b.files  # this folder has no au.csv


def test_bad_input(exported, prepared_subject, tiny_avatar_run, tmp_path, capsys) -> None:
    subject, folder = exported
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("*_imgs", "parsing"))
    (broken / "ori_imgs").mkdir()
    (broken / "transforms_train.json").unlink()
    with pytest.raises(Avatar3DError, match=r"transforms_train\.json is missing"):
        import_ernerf(broken, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(Avatar3DError, match="not an empty folder"):
        import_ernerf(folder, taken, progress=False)
    assert main(["export", str(subject), "--to-ernerf", str(taken), "--frames", "2"]) == 4
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]

    gap = tmp_path / "gap"
    shutil.copytree(folder, gap, ignore=shutil.ignore_patterns("gt_imgs", "torso_imgs"))
    (gap / "ori_imgs" / "7.jpg").unlink()
    with pytest.raises(Avatar3DError, match=r"7\.jpg is missing"):
        import_ernerf(gap, tmp_path / "gap-subject", progress=False)

    avatar = tiny_avatar_run[0]
    assert main(["export", str(avatar), "--to-ernerf", str(tmp_path / "x")]) == 2
    assert "is an avatar folder" in capsys.readouterr().err
    assert main(["export", str(subject), "--blendshapes", str(tmp_path / "x.csv")]) == 2
    assert "is a prepared subject folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.csv").exists()
