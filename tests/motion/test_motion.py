"""Motion model slice 1: synthetic corpus, bounded look-ahead, training beats the mean, save/load, resume."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.audio.features import AudioFeatureConfig, frame_features
from avatar3d.errors import Avatar3DError
from avatar3d.motion.corpus import CorpusConfig, build_corpus, iter_shard, load_split, read_index
from avatar3d.motion.model import MotionModel, MotionModelConfig, fit_normalisation, gather_windows, load
from avatar3d.motion.train import MotionTrainConfig, evaluate, pretrain

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

TINY = CorpusConfig(n_train=3, n_test=3, generated_sentences=10, max_sentences=1, shard_utterances=2, seed=3)
SMALL = CorpusConfig(n_train=36, n_test=9, generated_sentences=40, max_sentences=1, shard_utterances=20, seed=1)
FAST_MODEL = MotionModelConfig(channels=48, mel_project=12, dilations=(1, 2, 4, 1))
FAST_TRAIN = MotionTrainConfig(batch=12, crop_frames=48, lr=3e-3, warmup_steps=20, checkpoint_every=50)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("motion-corpus")
    build_corpus(out, SMALL, progress=False)
    return out


def test_tiny_corpus_is_deterministic_and_holds_out_voices(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ia, ib = build_corpus(a, TINY, progress=False), build_corpus(b, TINY, progress=False)
    strip = lambda idx: [{k: v for k, v in u.items()} for u in idx["utterances"]]  # noqa: E731
    assert strip(ia) == strip(ib)
    assert [s["file"] for s in ia["shards"]] == ["train-00000.npz", "train-00001.npz", "test-00000.npz",
                                                 "test-00001.npz"]
    for shard in ia["shards"]:
        for ua, ub in zip(iter_shard(a / shard["file"]), iter_shard(b / shard["file"])):
            for key in ua:
                np.testing.assert_array_equal(ua[key], ub[key])
    held_acc, held_var = set(TINY.held_out_accents), {v.lower() for v in TINY.held_out_variants}
    for u in ia["utterances"]:
        held = u["accent"] in held_acc or u["variant"].lower() in held_var
        assert held == (u["split"] == "test"), u["voice"]
        shard = next(s for s in ia["shards"] if s["file"] == u["shard"])
        assert shard["split"] == u["split"]
    # a rebuild with the same config is a no-op; another config in the same folder is refused
    assert build_corpus(a, TINY, progress=False)["utterances"] == ia["utterances"]
    with pytest.raises(Avatar3DError):
        build_corpus(a, CorpusConfig(n_train=2, n_test=1), progress=False)


def test_windows_match_the_front_end() -> None:
    audio = (np.random.default_rng(0).standard_normal(16000 * 2 + 77) * 0.1).astype(np.float32)
    feats = frame_features(audio, 25, 53)
    floor = np.full(80, np.log(1e-10), np.float32)
    np.testing.assert_array_equal(gather_windows(feats["log_mel"], np.arange(53), 25, AudioFeatureConfig(), floor),
                                  feats["mel_window"])


def _fresh_model(seed: int = 0) -> MotionModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    fake = [{"log_mel": rng.normal(-8, 3, (400, 80)).astype(np.float32), "energy_db": rng.normal(-40, 15, 100),
             "f0_hz": rng.uniform(0, 200, 100)}]
    return MotionModel(MotionModelConfig(), fit_normalisation(fake))


def test_lookahead_is_bounded_by_construction() -> None:
    model = _fresh_model()
    assert model.lookahead_ms() == pytest.approx(167.5)
    assert model.lookahead_ms() <= 200.0
    rng = np.random.default_rng(1)
    sr, fps, n = 16000, 25, 60
    audio = (rng.standard_normal(sr * n // fps) * 0.05).astype(np.float32)
    base = np.stack(list(model.predict(audio, fps, n).values()), axis=1)
    t = 30
    edge = int(np.ceil(((t + 0.5) / fps + model.lookahead_ms() / 1000.0) * sr))
    beyond = audio.copy()
    beyond[edge:] = rng.standard_normal(len(audio) - edge) * 0.5
    out = np.stack(list(model.predict(beyond, fps, n).values()), axis=1)
    np.testing.assert_allclose(out[:t + 1], base[:t + 1], atol=1e-6, rtol=0)
    assert np.abs(out[t + 1:] - base[t + 1:]).max() > 1e-4  # later frames do see it
    within = audio.copy()
    lo = int(((t + 0.5) / fps + 0.110) * sr)
    within[lo:lo + int(0.04 * sr)] = rng.standard_normal(int(0.04 * sr)) * 0.5
    out = np.stack(list(model.predict(within, fps, n).values()), axis=1)
    assert np.abs(out[t] - base[t]).max() > 1e-5  # inside the look-ahead it may (and here does) change
    # the same at the network: input frames after t + lookahead never reach output t
    mel, scal = model.inputs(np.zeros((4 * 40, 80)) - 10, np.zeros(40) - 60, np.zeros(40), np.zeros(40), np.arange(40))
    mel, scal = torch.from_numpy(mel)[None], torch.from_numpy(scal)[None]
    k = model.config.lookahead_frames
    with torch.inference_mode():
        ref = model.net(mel, scal, pad=True)
        mel2 = mel.clone()
        mel2[:, 20 + k + 1:] += 3.0
        assert torch.equal(model.net(mel2, scal, pad=True)[:, :21], ref[:, :21])
        mel2 = mel.clone()
        mel2[:, 20 + k] += 3.0
        assert not torch.equal(model.net(mel2, scal, pad=True)[:, 20], ref[:, 20])


def test_short_training_beats_the_mean_on_held_out_voices(small_corpus: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = pretrain(small_corpus, tmp_path / "m.pt", FAST_MODEL, steps=150, seed=0, train=FAST_TRAIN,
                     progress=False)
    train, test = load_split(small_corpus, "train"), load_split(small_corpus, "test")
    truth = np.concatenate([u["targets"] for u in test])
    mean = np.concatenate([u["targets"] for u in train]).mean(axis=0)
    l1_model = float(np.abs(evaluate(model, test) - truth).mean())
    l1_mean = float(np.abs(mean[None] - truth).mean())
    # measured (seeds 0-2): model 0.032-0.034 vs mean 0.053, ratio 0.61-0.65; asserted with slack
    assert l1_model < 0.75 * l1_mean, (l1_model, l1_mean)

    # save / load round trip: identical predictions through predict() as well
    loaded = load(tmp_path / "m.pt")
    audio = (np.random.default_rng(2).standard_normal(16000 * 2) * 0.05).astype(np.float32)
    a, b = model.predict(audio, 25, 50), loaded.predict(audio, 25, 50)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(evaluate(loaded, test[:2]), evaluate(model, test[:2]))
    assert read_index(small_corpus)["hours"]["train"] > 0


class _Killed(Exception):
    pass


def test_killed_training_resumes_from_its_checkpoint(small_corpus: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = MotionModelConfig(channels=24, mel_project=8, dilations=(1, 2, 1))
    tcfg = MotionTrainConfig(batch=6, crop_frames=24, checkpoint_every=10, warmup_steps=5)
    straight = pretrain(small_corpus, tmp_path / "straight.pt", cfg, steps=40, seed=5, train=tcfg, progress=False)

    def kill(step: int, loss: float) -> None:
        if step == 25:
            raise _Killed

    path = tmp_path / "resumed.pt"
    with pytest.raises(_Killed):
        pretrain(small_corpus, path, cfg, steps=40, seed=5, train=tcfg, progress=False, callback=kill)
    assert torch.load(path, weights_only=True)["training"]["step"] == 20  # the last checkpoint before the kill
    seen: list[int] = []
    resumed = pretrain(small_corpus, path, cfg, steps=40, seed=5, train=tcfg, progress=False,
                       callback=lambda s, _: seen.append(s))
    assert seen[0] == 21 and seen[-1] == 40
    for (name, p), q in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(p, q), name
    assert torch.load(path, weights_only=True)["training"]["step"] == 40


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    model = _fresh_model()
    with pytest.raises(Avatar3DError):
        model.predict(np.zeros((2, 100), np.float32), 25, 4)
    with pytest.raises(Avatar3DError):
        model.predict(np.zeros(1000, np.float32), 0, 4)
    with pytest.raises(Avatar3DError):
        load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(Avatar3DError):
        load(tmp_path / "junk.pt")
    with pytest.raises(Avatar3DError):
        pretrain(tmp_path, tmp_path / "m.pt", steps=5, progress=False)
    silent = model.predict(np.zeros(16000, np.float32), 30, 30, sample_rate=48000)
    assert all(v.shape == (30,) and np.all((v >= 0) & (v <= 1)) for v in silent.values())
