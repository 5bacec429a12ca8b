"""The open default morphable face model: geometry, expressions, identity, I/O, torch."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from avatar3d.errors import Avatar3DError
from avatar3d.face import blendshapes as bs
from avatar3d.face import landmark_sets as rg
from avatar3d.face.default_model import DEFAULT_MODEL_PATH, build_default_model, load_face_model
from avatar3d.face.identity import rigid_fields, uniform_laplacian
from avatar3d.face.model import MorphableModel, TorchMorphableModel
from avatar3d.face.topology import triangles

MM = 1e-3
REQUIRED = ("jawOpen mouthClose mouthFunnel mouthPucker mouthSmileLeft mouthSmileRight "
            "mouthStretchLeft mouthStretchRight mouthPressLeft mouthPressRight mouthUpperUpLeft "
            "mouthUpperUpRight mouthLowerDownLeft mouthLowerDownRight mouthRollLower mouthRollUpper "
            "eyeBlinkLeft eyeBlinkRight browInnerUp browDownLeft browDownRight").split()
# (subject's right, subject's left) landmark pairs
PAIRS = ((234, 454), (33, 263), (133, 362), (61, 291), (159, 386), (145, 374), (70, 300),
         (105, 334), (58, 288), (172, 397), (48, 278), (93, 323))
EYES = (33, 133, 159, 145, 263, 362, 386, 374)


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return load_face_model("default")


def posed(m: MorphableModel, **w: float) -> np.ndarray:
    return m.vertices(expression=m.expression_vector(**w)).astype(np.float64)


def dist(v: np.ndarray, i: int, j: int) -> float:
    return float(np.linalg.norm(v[i] - v[j]))


# --- mean shape ------------------------------------------------------------
def test_shipped_file_is_small_float32_and_complete(model):
    assert DEFAULT_MODEL_PATH.stat().st_size < 2_000_000
    assert model.mean.shape == (468, 3) and model.mean.dtype == np.float32
    assert model.identity_basis.dtype == np.float32 and model.expression_basis.dtype == np.float32
    assert np.array_equal(model.triangles, triangles())
    assert 40 <= model.n_identity <= 60
    assert set(REQUIRED) <= set(model.expression_names)
    # each landmark is exactly its own vertex
    assert np.allclose(model.landmarks(), model.mean, atol=1e-7)


def test_mean_is_metric(model):
    v = model.mean.astype(np.float64)
    assert dist(v, 234, 454) == pytest.approx(0.145, abs=1e-4)
    assert 0.14 < dist(v, 10, 152) < 0.19  # upper forehead to chin
    assert 0.045 < dist(v, 61, 291) < 0.065  # neutral mouth width
    nose_depth = v[4, 2] - 0.5 * (v[234, 2] + v[454, 2])
    assert 0.09 < nose_depth < 0.115
    assert 0.028 < v[4, 2] - v[133, 2] < 0.05  # nose tip ahead of inner eye corner
    # origin between the ears: centred left-right and at the ear line's height
    assert abs(v[:, 0].mean()) < 1e-6
    assert abs(0.5 * (v[234, 1] + v[454, 1])) < 1e-6
    assert v[10, 1] > 0.05 and v[152, 1] < -0.06 and v[4, 2] > 0.1


def test_mean_is_frontal_and_symmetric(model):
    v = model.mean.astype(np.float64)
    for r, l in PAIRS:
        assert v[l, 0] > 0.01  # subject's left is +x
        assert np.linalg.norm(v[l] * [-1, 1, 1] - v[r]) < 2 * MM
    from mediapipe.python.solutions import face_mesh_connections as fmc

    mirror = bs.mirror_map(v)
    assert np.array_equal(mirror[mirror], np.arange(468))
    left_eye = {i for e in fmc.FACEMESH_LEFT_EYE for i in e}
    right_eye = {i for e in fmc.FACEMESH_RIGHT_EYE for i in e}
    assert {int(mirror[i]) for i in left_eye} == right_eye
    assert all(v[i, 0] > 0 for i in left_eye)


def test_normals_point_out_of_the_face(model):
    v = model.mean.astype(np.float64)
    p = v[triangles()]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    frontal = np.abs(p.mean(1)[:, 0]) < 0.04
    assert frontal.sum() > 500
    assert (n[frontal, 2] > 0).mean() >= 0.95


def test_mean_mouth_closed_and_eyes_open(model):
    v = model.mean.astype(np.float64)
    assert dist(v, 13, 14) < 1.5 * MM
    for u, lo in zip(rg.LIP_INNER_UPPER, rg.LIP_INNER_LOWER):
        assert dist(v, u, lo) < 1.5 * MM
    assert dist(v, 0, 17) > 8 * MM  # lips keep their thickness
    assert dist(v, 386, 374) > 7 * MM and dist(v, 159, 145) > 7 * MM
    # mouth corners sit near the lip line, not raised in a smile
    assert abs(v[291, 1] - v[13, 1]) < 3 * MM


# --- expressions -----------------------------------------------------------
def test_jaw_open(model):
    v0 = model.mean.astype(np.float64)
    v = posed(model, jawOpen=1.0)
    assert 15 * MM < dist(v, 13, 14) < 30 * MM
    assert v[152, 1] - v0[152, 1] < -15 * MM  # chin drops
    for i in (10, 151, 9, 4) + EYES:
        assert np.linalg.norm(v[i] - v0[i]) < 0.1 * MM
    # upper lip barely moves, the lower lip goes with the jaw
    assert np.linalg.norm(v[13] - v0[13]) < 1 * MM
    # mouthClose seals the lips on an open jaw
    assert dist(posed(model, jawOpen=1.0, mouthClose=1.0), 13, 14) < 2 * MM


def test_smile_left_moves_left_corner_only(model):
    v0 = model.mean.astype(np.float64)
    d = posed(model, mouthSmileLeft=1.0) - v0
    assert d[291, 1] > 4 * MM and d[291, 0] > 4 * MM  # up and outward (+x)
    assert np.linalg.norm(d[61]) < 0.5 * MM
    assert np.abs(d[list(EYES)]).max() < 0.5 * MM
    d = posed(model, mouthSmileRight=1.0) - v0
    assert d[61, 1] > 4 * MM and d[61, 0] < -4 * MM
    assert np.linalg.norm(d[291]) < 0.5 * MM


def test_blink_left_closes_only_left_eye(model):
    v0 = model.mean.astype(np.float64)
    v = posed(model, eyeBlinkLeft=1.0)
    assert dist(v, 386, 374) < 1 * MM
    assert dist(v, 385, 380) < 1 * MM and dist(v, 387, 373) < 1 * MM
    assert dist(v, 159, 145) == pytest.approx(dist(v0, 159, 145), abs=0.1 * MM)
    assert np.linalg.norm(v[374] - v0[374]) < 0.1 * MM  # the lower lid stays
    assert np.abs(v[[61, 291, 13, 14, 152]] - v0[[61, 291, 13, 14, 152]]).max() < 1e-6
    v = posed(model, eyeBlinkRight=1.0)
    assert dist(v, 159, 145) < 1 * MM and dist(v, 386, 374) > 7 * MM


def test_brows(model):
    v0 = model.mean.astype(np.float64)
    d = posed(model, browInnerUp=1.0) - v0
    assert d[336, 1] > 4 * MM and d[107, 1] > 4 * MM and abs(d[152]).max() < 1e-6
    d = posed(model, browDownLeft=1.0) - v0
    assert d[334, 1] < -3 * MM and np.linalg.norm(d[105]) < 0.1 * MM
    assert np.abs(d[[13, 14, 61, 291]]).max() < 1e-6


def test_left_right_pairs_are_mirror_images(model):
    mirror = bs.mirror_map(model.mean)
    names = model.expression_names
    n_pairs = 0
    for name in names:
        if name.endswith("Left"):
            left = model.expression_basis[model.expression_index(name)]
            right = model.expression_basis[model.expression_index(name[:-4] + "Right")]
            assert np.abs(bs.mirror_field(left, mirror) - right).max() < 1e-6, name
            n_pairs += 1
        elif not name.endswith("Right"):
            f = model.expression_basis[model.expression_index(name)]
            assert np.abs(bs.mirror_field(f, mirror) - f).max() < 1e-6, name
    assert n_pairs >= 8


def test_expression_magnitudes_are_realistic(model):
    peak = np.linalg.norm(model.expression_basis, axis=2).max(axis=1)
    assert peak.max() < 0.04  # nothing moves more than 4 cm at weight 1
    assert peak.min() > 1 * MM  # and every shape does something visible
    with pytest.raises(KeyError):
        model.expression_index("notAShape")


# --- identity --------------------------------------------------------------
def test_identity_basis_smooth_orthogonal_and_scaled(model):
    b = model.identity_basis.reshape(model.n_identity, -1).astype(np.float64)
    gram = b @ b.T
    diag = np.diag(gram)
    assert np.abs(gram - np.diag(diag)).max() < 1e-4 * diag.min()
    std_mm = 1e3 * np.sqrt(diag / 468)
    assert std_mm.max() < 2.0 and std_mm.min() > 0.3
    lap = uniform_laplacian()
    fields = model.identity_basis.astype(np.float64)
    energy = np.array([np.linalg.norm(lap @ f) ** 2 / np.linalg.norm(f) ** 2 for f in fields])
    rand = np.random.default_rng(0).normal(size=(10, 468, 3))
    energy_rand = np.mean([np.linalg.norm(lap @ f) ** 2 / np.linalg.norm(f) ** 2 for f in rand])
    assert energy.max() < 0.2 * energy_rand
    # rigid motions are left to the head pose
    rigid = rigid_fields(model.mean).reshape(6, -1)
    q, _ = np.linalg.qr(rigid.T)
    frac = np.linalg.norm(q.T @ b.T, axis=0) / np.linalg.norm(b, axis=1)
    assert frac.max() < 1e-3
    # one standard deviation changes face width by millimetres, not centimetres
    widths = [dist(model.vertices(identity=np.eye(model.n_identity)[k] * s), 234, 454)
              for k in range(model.n_identity) for s in (1,)]
    assert np.abs(np.array(widths) - 0.145).max() < 7.5 * MM


# --- persistence and loading -------------------------------------------------
def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temp file left behind
    back = MorphableModel.load(path)
    assert back.name == model.name and back.expression_names == model.expression_names
    for key in ("mean", "triangles", "identity_basis", "expression_basis",
                "landmark_faces", "landmark_bary"):
        assert np.array_equal(getattr(back, key), getattr(model, key)), key
    assert np.array_equal(load_face_model(str(path)).mean, model.mean)


def _assert_one_line_naming(exc: Avatar3DError, path) -> None:
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg


def test_load_errors_are_one_line_and_name_the_file(model, tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(Avatar3DError) as e:
        load_face_model(str(missing))
    _assert_one_line_naming(e.value, missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file\n" * 10)
    with pytest.raises(Avatar3DError) as e:
        load_face_model(str(garbage))
    _assert_one_line_naming(e.value, garbage)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mean=model.mean)
    with pytest.raises(Avatar3DError) as e:
        MorphableModel.load(wrong)
    _assert_one_line_naming(e.value, wrong)
    assert "missing keys" in str(e.value)
    bad_shape = tmp_path / "bad.npz"
    with np.load(DEFAULT_MODEL_PATH) as z:
        d = dict(z)
    d["expression_basis"] = d["expression_basis"][:, :100]
    np.savez(bad_shape, **d)
    with pytest.raises(Avatar3DError) as e:
        MorphableModel.load(bad_shape)
    _assert_one_line_naming(e.value, bad_shape)
    with pytest.raises(Avatar3DError) as e:
        load_face_model(str(tmp_path))
    _assert_one_line_naming(e.value, tmp_path)


# --- torch -------------------------------------------------------------------
def test_torch_matches_numpy_and_is_differentiable(model):
    tm = model.to_torch()
    assert isinstance(tm, TorchMorphableModel) and isinstance(tm, torch.nn.Module)
    rng = np.random.default_rng(1)
    ident = rng.normal(size=(2, model.n_identity)).astype(np.float32)
    expr = rng.uniform(0, 1, size=(2, model.n_expression)).astype(np.float32)
    out = tm(torch.from_numpy(ident), torch.from_numpy(expr))
    assert out.shape == (2, 468, 3)
    for k in range(2):
        assert np.allclose(out[k].numpy(), model.vertices(ident[k], expr[k]), atol=1e-6)
    lm = tm.landmarks(None, torch.from_numpy(expr))
    assert np.allclose(lm[1].numpy(), model.landmarks(None, expr[1]), atol=1e-6)
    # autograd recovers a jaw opening from landmarks
    target = tm.landmarks(None, torch.from_numpy(model.expression_vector(jawOpen=0.6)[None]))
    w = torch.zeros(1, model.n_expression, requires_grad=True)
    a = torch.zeros(1, model.n_identity, requires_grad=True)
    loss = ((tm.landmarks(a, w) - target) ** 2).sum()
    loss.backward()
    assert w.grad.abs().sum() > 0 and a.grad.abs().sum() > 0
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss = ((tm.landmarks(None, w) - target) ** 2).sum()
        loss.backward()
        opt.step()
    assert abs(w[0, model.expression_index("jawOpen")].item() - 0.6) < 0.05


# --- reproducibility -----------------------------------------------------------
def test_rebuild_matches_shipped_file(model):
    fresh = build_default_model()
    assert fresh.expression_names == model.expression_names
    assert np.abs(fresh.mean - model.mean).max() < 1e-5
    assert np.abs(fresh.expression_basis - model.expression_basis).max() < 1e-5
    assert fresh.identity_basis.shape == model.identity_basis.shape
    # compare identity subspaces and stds (robust to eigenvector sign/rotation)
    a = fresh.identity_basis.reshape(fresh.n_identity, -1).astype(np.float64)
    b = model.identity_basis.reshape(model.n_identity, -1).astype(np.float64)
    qa, _ = np.linalg.qr(a.T)
    qb, _ = np.linalg.qr(b.T)
    assert np.linalg.svd(qa.T @ qb, compute_uv=False).min() > 0.999
    assert np.allclose(np.sort(np.linalg.norm(a, axis=1)), np.sort(np.linalg.norm(b, axis=1)), rtol=1e-3)


def test_lip_gap_weights_are_the_inner_lip_gap_of_the_model_per_channel() -> None:
    """The linear gap render uses to size new speech's mouth equals the gap of the posed landmarks."""
    from avatar3d.face.default_model import load_face_model
    from avatar3d.face.landmark_sets import INNER_LIP_PAIRS
    from avatar3d.face.lip_gap import lip_gap_weights

    model = load_face_model()
    w = lip_gap_weights(model, list(model.expression_names) + ["notAChannel"])
    assert w[-1] == 0.0
    rng = np.random.default_rng(0)
    upper, lower = [u for u, _ in INNER_LIP_PAIRS], [v for _, v in INNER_LIP_PAIRS]
    rest = model.landmarks()
    for _ in range(3):
        e = rng.uniform(0.0, 0.6, model.n_expression).astype(np.float32)
        lm = model.landmarks(None, e)
        opened = np.mean(lm[upper, 1] - lm[lower, 1]) - np.mean(rest[upper, 1] - rest[lower, 1])
        assert float(e @ w[:-1]) == pytest.approx(float(opened), abs=1e-6)
