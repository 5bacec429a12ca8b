"""The optional speech-encoder front-end: local-only loading, the 100 Hz grid, chunking, motion-model use.

No pretrained wav2vec 2.0 / HuBERT weights exist on these machines, so every test runs the real
transformers code on tiny randomly initialised checkpoints saved with ``save_pretrained`` into a
temp folder and loaded back through the real local path.  What they check is plumbing a user
relies on (errors, shapes, timing, chunking, model files); the quality of the motion a real
checkpoint gives is not measured here.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.audio.features import AudioFeatureConfig, analysis_frame_count
from avatar3d.audio.speech_encoder import SpeechEncoderConfig, load_speech_encoder
from avatar3d.errors import Avatar3DError
from tests.speech_encoders import TINY, one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random checkpoints: HuBERT (GroupNorm conv features, the *base* layout), a second HuBERT init, and
    wav2vec 2.0 with per-frame LayerNorm conv features (the *large* layout)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model

    root = tmp_path_factory.mktemp("speech-encoders")
    made = {}
    for name, seed, model in (("hubert", 0, lambda: HubertModel(HubertConfig(**TINY))),
                              ("hubert_other", 1, lambda: HubertModel(HubertConfig(**TINY))),
                              ("wav2vec2", 2, lambda: Wav2Vec2Model(Wav2Vec2Config(
                                  **TINY, feat_extract_norm="layer", do_stable_layer_norm=True)))):
        torch.manual_seed(seed)
        model().save_pretrained(root / name)
        made[name] = root / name
    return made


def _speechlike(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Noise with a 3 Hz syllable-like envelope plus a gated 180 Hz 'voice'."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = rng.standard_normal(len(t)) * 0.05 * (1.0 + np.sin(2 * np.pi * 3 * t))
    x += 0.1 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return x.astype(np.float32)


def _one_line_error(call, *needles: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Avatar3DError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_bad_paths_give_one_line_errors(encoders: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _one_line_error(lambda: load_speech_encoder(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "not found")
    _one_line_error(lambda: load_speech_encoder("facebook/hubert-large-ls960-ft"), "never downloads",
                    "huggingface-cli download facebook/hubert-large-ls960-ft --local-dir DIR")
    _one_line_error(lambda: load_speech_encoder(encoders["hubert"] / "config.json"), "is a file")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(lambda: load_speech_encoder(empty), str(empty), "no config.json")
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(encoders["hubert"] / "config.json", only_config)
    _one_line_error(lambda: load_speech_encoder(only_config), str(only_config), "no weight file")
    bert = tmp_path / "bert"
    shutil.copytree(encoders["hubert"], bert)
    cfg = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps(dict(cfg, model_type="bert")))
    _one_line_error(lambda: load_speech_encoder(bert), "model_type 'bert'", "hubert")
    _one_line_error(lambda: load_speech_encoder(encoders["hubert"], layer=3), "layer 3 does not exist", "0..2")
    with monkeypatch.context() as m:  # what a machine without the optional dependency sees
        m.setitem(sys.modules, "transformers", None)
        _one_line_error(lambda: load_speech_encoder(encoders["hubert"]), "pip install 'avatar3d[encoder]'")
    load_speech_encoder(encoders["hubert"])
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_pytorch_bin_checkpoint_loads_and_is_fingerprinted_by_its_weights(encoders: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    from safetensors.torch import load_file

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(encoders["hubert"] / "config.json", legacy)
    torch.save(load_file(encoders["hubert"] / "model.safetensors"), legacy / "pytorch_model.bin")
    a, b = load_speech_encoder(legacy), load_speech_encoder(encoders["hubert"])
    x = _speechlike(1.0)
    np.testing.assert_array_equal(a.encode(x, 16000), b.encode(x, 16000))
    assert a.fingerprint["config_sha256"] == b.fingerprint["config_sha256"]
    assert a.fingerprint["weights_sha256"] != b.fingerprint["weights_sha256"]  # the file is what is hashed


def test_stream_lies_on_the_analysis_grid(encoders: dict[str, Path]) -> None:
    for name in ("hubert", "wav2vec2"):
        enc = load_speech_encoder(encoders[name])
        for n in (16000 + 77, 200, 32000):  # 200 samples: shorter than one 400-sample encoder frame
            s = enc.encode(_speechlike(n / 16000, seed=n)[:n], 16000)
            assert s.shape == (analysis_frame_count(n, AudioFeatureConfig()), 32) and s.dtype == np.float32
            assert np.isfinite(s).all()
    enc = load_speech_encoder(encoders["hubert"])
    stereo = np.stack([_speechlike(1.5, 1, 48000), _speechlike(1.5, 2, 48000)], axis=1)[:71999]
    mono = stereo.mean(axis=1)
    s48 = enc.encode(mono, 48000)
    assert s48.shape == (analysis_frame_count(len(mono), AudioFeatureConfig(sample_rate=48000)), 32)
    from avatar3d.io.audio import resample

    np.testing.assert_array_equal(s48, enc.encode(resample(mono, 48000, 16000).astype(np.float32), 16000))
    _one_line_error(lambda: enc.encode(stereo, 48000), "mono", "average the channels")
    # the checkpoint's per-utterance normalisation (the default) makes the stream independent of the level
    x = _speechlike(1.0, seed=8)
    np.testing.assert_allclose(enc.encode(0.05 * x, 16000), enc.encode(x, 16000), atol=1e-4)


def test_encoder_frames_map_onto_the_10ms_grid_at_their_centres(encoders: dict[str, Path], tmp_path: Path) -> None:
    """Layer 0 (conv features + positional conv, no attention): a click changes the stream where it happened.

    A click at the centre ``320 j + 200`` of encoder frame ``j`` changes that frame alone; interpolated onto
    the grid its change is a triangle peaking at the click's own analysis position ``(320 j + 200) / 160 - 0.5``.
    The change-weighted centroid must land within 0.3 analysis frames (3 ms) of it (measured <= 0.12 over six
    random inits of each layout): a mapping that forgot the 200-sample centre (12.5 ms), was one encoder frame
    (20 ms) or one grid frame (10 ms) off fails.  The checkpoints here say ``do_normalize: false``
    (preprocessor_config.json): per-utterance normalisation lets a click rescale the whole clip, and a random
    net's per-frame LayerNorm can amplify that anywhere.
    """
    base = _speechlike(2.0, seed=5)
    for name in ("hubert", "wav2vec2"):
        folder = tmp_path / name
        shutil.copytree(encoders[name], folder)
        (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "sampling_rate": 16000}))
        enc = load_speech_encoder(folder, layer=0)
        assert not enc.do_normalize and not enc.fingerprint["do_normalize"]
        ref = enc.encode(base, 16000)
        for j in (17, 40, 71):
            click = 320 * j + 200
            x = base.copy()
            x[click] += 0.8
            change = np.linalg.norm(enc.encode(x, 16000) - ref, axis=1)
            k_true = click / 160 - 0.5
            assert abs(int(np.argmax(change)) - k_true) <= 0.5, (name, j)
            k = int(np.argmax(change))
            win = np.arange(k - 3, k + 4)
            w = np.clip(change[win] - np.median(change), 0.0, None)
            assert abs(float((win * w).sum() / w.sum()) - k_true) < 0.3, (name, j)
        for click in (9001, 15555, 23000):  # anywhere in a frame: the largest change is within 2 frames (20 ms)
            x = base.copy()
            x[click] += 0.8
            change = np.linalg.norm(enc.encode(x, 16000) - ref, axis=1)
            assert abs(int(np.argmax(change)) - (click / 160 - 0.5)) <= 2.0, (name, click)


def test_chunked_encoding_matches_one_pass(encoders: dict[str, Path]) -> None:
    """45 s in 5 s chunks (0.2 s overlap asked; the positional conv's reach is enforced) against one pass.

    Layer 0 must agree to 1e-4 everywhere (GroupNorm statistics from the whole clip, context covering the
    positional conv).  The last layer attends over the whole clip in one pass but over +-context in chunks:
    on these random checkpoints (near-uniform attention, the worst case) it must stay within 2 % of the
    features' mean magnitude (measured 0.6 %); a misplaced or dropped chunk frame would be ~100 %.
    """
    x = _speechlike(45.0, seed=9)
    for name in ("hubert", "wav2vec2"):
        for layer, tol in ((0, 1e-4), (-1, None)):
            whole = load_speech_encoder(encoders[name], config=SpeechEncoderConfig(layer=layer, chunk_s=60.0))
            chunked = load_speech_encoder(encoders[name], config=SpeechEncoderConfig(layer=layer, chunk_s=5.0,
                                                                                     overlap_s=0.2))
            a, b = whole.encode(x, 16000), chunked.encode(x, 16000)
            assert a.shape == b.shape == (4500, 32)
            diff = float(np.abs(a - b).max())
            assert diff < (tol if tol is not None else 0.02 * float(np.abs(a).mean())), (name, layer, diff)


def test_skipping_layers_after_the_chosen_one_changes_nothing(encoders: dict[str, Path]) -> None:
    from transformers import AutoModel

    full = AutoModel.from_pretrained(str(encoders["wav2vec2"]), local_files_only=True).eval()
    x = _speechlike(1.0, seed=3)
    xn = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    with torch.inference_mode():
        states = full(torch.from_numpy(xn.astype(np.float32))[None], output_hidden_states=True).hidden_states
    for layer in (0, 1, 2):
        enc = load_speech_encoder(encoders["wav2vec2"], layer=layer)
        assert len(enc.model.encoder.layers) == min(layer + 1, 2)
        np.testing.assert_allclose(enc._run(xn.astype(np.float32)), states[layer][0].numpy(), atol=1e-5)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_motion_model_trained_on_an_encoder_round_trips_and_refuses_others(encoders: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    from avatar3d.motion.corpus import (CorpusConfig, UtteranceSpec, build_corpus, encoder_cache_dir, load_split,
                                        read_index, utterance_audio)
    from avatar3d.motion.model import MotionModelConfig, load
    from avatar3d.motion.streaming import MotionStream
    from avatar3d.motion.train import MotionTrainConfig, pretrain

    corpus = tmp_path / "corpus"
    build_corpus(corpus, CorpusConfig(n_train=3, n_test=1, generated_sentences=10, max_sentences=1,
                                      shard_utterances=2, seed=3), progress=False)
    cfg = MotionModelConfig(channels=32, mel_project=8, dilations=(1, 2, 1))
    train = MotionTrainConfig(batch=4, crop_frames=32, warmup_steps=2, checkpoint_every=50)
    out = tmp_path / "motion.pt"
    model = pretrain(corpus, out, cfg, steps=4, train=train, progress=False, speech_encoder=encoders["hubert"],
                     encoder_layer=1)
    assert model.slot_width == 32 and model.net.mel.in_features == 32

    # the cache holds what the encoder gives on the re-spoken audio of each utterance (float16 like the log-mel)
    enc = model.speech_encoder
    cache = encoder_cache_dir(corpus, enc)
    assert sorted(p.name for p in cache.glob("*.npz")) == ["train-00000.npz", "train-00001.npz"]
    index = read_index(corpus)
    first = next(u for u in index["utterances"] if u["split"] == "train" and u["index"] == 0)
    spec = UtteranceSpec(**{k: tuple(v) if k == "sentences" else v for k, v in first.items()
                            if k in UtteranceSpec.__dataclass_fields__})
    config = CorpusConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in index["config"].items()})
    audio, _, n_frames = utterance_audio(spec, config)
    assert n_frames == len(load_split(corpus, "train")[0]["targets"])
    with np.load(cache / "train-00000.npz") as z:
        cached = z["stream"][z["offsets"][0]:z["offsets"][1]].astype(np.float32)
    np.testing.assert_allclose(cached, enc.encode(audio, 16000), atol=2e-3, rtol=2e-3)

    speech = _speechlike(2.2, seed=4)
    again = load(out, speech_encoder=encoders["hubert"])
    curves = again.predict(speech, 30, 66)
    assert set(curves) == set(model.names) and all(c.shape == (66,) and np.isfinite(c).all() for c in curves.values())
    reference = model.predict(speech, 30, 66)
    for name in curves:
        np.testing.assert_allclose(curves[name], reference[name], atol=1e-6)

    _one_line_error(lambda: load(out), str(out), "trained on a speech encoder", "--speech-encoder DIR")
    _one_line_error(lambda: load(out, speech_encoder=encoders["hubert_other"]), "another speech encoder",
                    "weights_sha256")
    _one_line_error(lambda: load(out, speech_encoder=encoders["wav2vec2"]), "model_type 'hubert' != 'wav2vec2'")
    _one_line_error(lambda: load(out, speech_encoder=load_speech_encoder(encoders["hubert"], layer=2)),
                    "layer 1 != 2")
    _one_line_error(lambda: MotionStream(again), "streaming needs a motion model on the weight-free front-end")
    plain = tmp_path / "plain.pt"
    pretrain(corpus, plain, cfg, steps=1, train=train, progress=False)
    _one_line_error(lambda: load(plain, speech_encoder=encoders["hubert"]), "weight-free")

    # the CLI: pretrain with an encoder and a layer (reusing the cached streams), and its one-line errors
    from avatar3d.cli import main

    yaml = tmp_path / "tiny.yaml"
    yaml.write_text("model: {channels: 32, mel_project: 8, dilations: [1, 2, 1]}\n"
                    "train: {batch: 4, crop_frames: 32, warmup_steps: 2, checkpoint_every: 50}\n")
    cli_out = tmp_path / "cli.pt"
    assert main(["motion", "pretrain", str(corpus), "-o", str(cli_out), "--steps", "2", "--config", str(yaml),
                 "--speech-encoder", str(encoders["hubert"]), "--encoder-layer", "1"]) == 0
    assert load(cli_out, speech_encoder=encoders["hubert"]).speech_encoder.layer == 1
    assert len(list(cache.glob("*.npz"))) == 2  # same encoder and layer: the cache was reused, not duplicated
    bad = [["motion", "pretrain", str(corpus), "-o", str(tmp_path / "x.pt"), "--speech-encoder",
            "facebook/hubert-large-ls960-ft"],
           ["motion", "pretrain", str(corpus), "-o", str(tmp_path / "x.pt"), "--encoder-layer", "3"],
           ["motion", "personalize", str(corpus), "-o", str(tmp_path / "x.pt"), "--speech-encoder",
            str(encoders["hubert"])]]
    for argv in bad:
        assert main(argv) == 2, argv
    assert not (tmp_path / "x.pt").exists()


def test_prepared_subject_corpus_uses_the_encoder_stream(encoders: dict[str, Path], prepared_subject,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    from avatar3d.io.audio import read_wav
    from avatar3d.motion.subject_corpus import load_subject_corpus

    corpus = tmp_path / "subjects"
    corpus.mkdir()
    (corpus / "s1").symlink_to(Path(prepared_subject[0]).resolve(), target_is_directory=True)  # read-only use
    enc = load_speech_encoder(encoders["wav2vec2"])
    cache = tmp_path / "cache"
    train, val, _ = load_subject_corpus(corpus, 25.0, speech_encoder=enc, cache_dir=cache)
    plain_train, _, _ = load_subject_corpus(corpus, 25.0)
    assert train[0]["log_mel"].shape == (plain_train[0]["log_mel"].shape[0], 32)
    x, _ = read_wav(Path(prepared_subject[0]) / "audio.wav", sample_rate=16000)
    whole = enc.encode(x, 16000)
    np.testing.assert_allclose(train[0]["log_mel"].astype(np.float32), whole[:len(train[0]["log_mel"])],
                               atol=2e-3, rtol=2e-3)
    assert len(list(cache.glob("*.npz"))) == 1
    stamp = next(cache.glob("*.npz")).stat().st_mtime_ns
    load_subject_corpus(corpus, 25.0, speech_encoder=enc, cache_dir=cache)  # second time: read, not rewritten
    assert next(cache.glob("*.npz")).stat().st_mtime_ns == stamp
    assert val and val[0]["log_mel"].shape[1] == 32


def test_encoder_model_personalises_and_drives_a_render(encoders: dict[str, Path], prepared_subject,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    """An encoder-trained model goes the whole way a user takes it: personalise on a subject, then the render's
    motion pass (offline, as the encoder cannot stream), whose voice gate closes the mouth in trailing silence."""
    from avatar3d.motion.model import MotionModelConfig, load
    from avatar3d.motion.personalize import PersonalizeConfig, personalize
    from avatar3d.motion.streaming import silent_output
    from avatar3d.motion.train import MotionTrainConfig, pretrain
    from avatar3d.render.speech import _own_rate_curves

    corpus = tmp_path / "subjects"
    corpus.mkdir()
    (corpus / "s1").symlink_to(Path(prepared_subject[0]).resolve(), target_is_directory=True)  # read-only use
    base = pretrain(corpus, tmp_path / "base.pt", MotionModelConfig(channels=32, mel_project=8, dilations=(1, 2, 1)),
                    steps=2, train=MotionTrainConfig(batch=4, crop_frames=32, warmup_steps=1, checkpoint_every=50),
                    progress=False, speech_encoder=encoders["wav2vec2"])
    out = tmp_path / "personal.pt"
    report = personalize(prepared_subject[0], out, base, PersonalizeConfig(steps=4, eval_every=2, batch=4,
                                                                           crop_frames=32), progress=False)
    assert report["frames"]["val"] > 0 and np.isfinite(report["table"]["personalized"]["val_l1"])
    tuned = load(out, speech_encoder=encoders["wav2vec2"])
    _one_line_error(lambda: load(out), "trained on a speech encoder")

    speech = np.concatenate([_speechlike(2.0, seed=5), np.zeros(24000, np.float32)])  # 2 s speech, 1.5 s silence
    curves, n_samples = _own_rate_curves(tuned, (speech[i:i + 16000] for i in range(0, len(speech), 16000)))
    assert n_samples == len(speech)
    weights = np.stack([curves[k] for k in tuned.names], axis=1)
    assert weights.shape == (int(np.ceil(len(speech) / 640)), len(tuned.names)) and np.isfinite(weights).all()
    np.testing.assert_allclose(weights[-20:], np.broadcast_to(silent_output(tuned), (20, len(tuned.names))),
                               atol=1e-6)  # gate closed: the last 0.8 s are the model's silent output
    assert np.abs(weights[:40] - silent_output(tuned)[None]).max() > 1e-4  # ...and open during the speech
