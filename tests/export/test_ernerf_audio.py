"""ER-NeRF HuBERT audio features: `avatar3d export SUBJECT --to-ernerf DIR --speech-encoder HUBERT_DIR`.

No pretrained HuBERT weights exist on these machines, so a tiny randomly initialised HubertModel is
saved with ``save_pretrained`` and loaded back through the real local path (as in
tests/audio/test_speech_encoder.py).  The reference the file is checked against is computed here
independently: transformers' own model run on ER-NeRF's input (aud.wav, normalised, 50 Hz frames).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar3d.audio.speech_encoder import SpeechEncoderConfig, load_speech_encoder
from avatar3d.cli import main
from avatar3d.errors import Avatar3DError
from avatar3d.export.ernerf import ErnerfExportConfig, ErnerfImportConfig, export_ernerf, import_ernerf
from data_prep.track import TrackConfig
from tests.speech_encoders import TINY, one_torch_thread  # noqa: F401  (autouse fixture)

N = 24  # frames exported: the first 0.96 s of the 16 s fixture


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random HuBERTs: "large" layout (per-frame LayerNorm convs, pre-norm transformer with a closing
    LayerNorm, as hubert-large-ls960-ft which ER-NeRF uses) and "base" layout (GroupNorm convs, post-norm)."""
    from transformers import HubertConfig, HubertModel

    root = tmp_path_factory.mktemp("encoders")
    for seed, (name, extra) in enumerate((("large", dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
                                          ("base", {}))):
        torch.manual_seed(seed)
        HubertModel(HubertConfig(**TINY, **extra)).save_pretrained(root / name)
    return {"large": root / "large", "base": root / "base"}


@pytest.fixture(scope="module")
def hubert(encoders: dict[str, Path]) -> Path:
    return encoders["large"]


@pytest.fixture(scope="module")
def exported(prepared_subject, hubert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(subject, ER-NeRF folder of its first N frames with aud_hu.npy), written through the CLI."""
    subject = prepared_subject[0]
    out = tmp_path_factory.mktemp("ernerf-audio") / "data" / "synth"
    assert main(["export", str(subject), "--to-ernerf", str(out), "--frames", str(N),
                 "--speech-encoder", str(hubert)]) == 0
    return subject, out


def _reference_frames(folder: Path, wav: Path, layer: int | None) -> np.ndarray:
    """What ER-NeRF's extractor computes, by hand: aud.wav normalised (Wav2Vec2Processor), the end padded by
    receptive field - stride (80) samples so 640 N samples give 2 N frames; layer None = last_hidden_state."""
    import soundfile as sf
    from transformers import AutoModel

    x, rate = sf.read(str(wav), dtype="float32")
    assert rate == 16000 and x.ndim == 1
    x = x.astype(np.float64)
    x = np.pad((x - x.mean()) / np.sqrt(x.var() + 1e-7), (0, 80)).astype(np.float32)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(x)[None], output_hidden_states=True)
    states = out.last_hidden_state if layer is None else out.hidden_states[layer]
    return states[0].numpy()


def _one_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_aud_hu_holds_the_encoder_frames_of_aud_wav(exported, hubert: Path) -> None:
    subject, out = exported
    feats = np.load(out / "aud_hu.npy")
    assert feats.dtype == np.float32 and feats.shape == (N, 2, 32)
    ref = _reference_frames(hubert, out / "aud.wav", None)  # last_hidden_state, as their hubert.py
    assert ref.shape == (2 * N, 32)  # the model itself: 640 N + 80 samples -> 2 N frames
    assert np.abs(_reference_frames(hubert, out / "aud.wav", -1) - ref).max() > 0.1  # the final LayerNorm matters
    assert np.abs(ref[1:] - ref[:-1]).mean() > 1e-2  # neighbours differ: a one-frame shift could not pass
    for i in (0, N // 2, N - 1):  # row i = encoder frames 2i, 2i+1 (the last row included)
        np.testing.assert_allclose(feats[i, 0], ref[2 * i], atol=1e-5, err_msg=str(i))
        np.testing.assert_allclose(feats[i, 1], ref[2 * i + 1], atol=1e-5, err_msg=str(i))
    np.testing.assert_allclose(feats.reshape(2 * N, 32), ref, atol=1e-5)

    # what ER-NeRF does with it: aud_id i -> aud_hu[i], permuted to [D, 2] (its provider's 3-D branch)
    train = json.loads((out / "transforms_train.json").read_text())
    assert all(f["aud_id"] == f["img_id"] < len(feats) for f in train["frames"])

    info = (out / "avatar3d_export.txt").read_text()
    weights = hashlib.sha256((hubert / "model.safetensors").read_bytes()).hexdigest()
    assert "speech-encoder hubert layer 2/2 dim 32 (last_hidden_state" in info and weights in info
    assert str(hubert.resolve()) in info and "[640 i, 640 i + 720)" in info
    assert "32-d" in info  # the warning: ER-NeRF's network assumes 1024 for --asr_model hubert
    assert "aud_hu.npy / aud_eo.npy" not in info  # no longer listed as missing


def test_encoder_layer_option_and_plain_export_unchanged(prepared_subject, encoders: dict[str, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    subject = prepared_subject[0]
    for name, layer in (("large", 1), ("base", -1)):  # a middle layer; the base layout's last (no closing norm)
        out = tmp_path / name
        report = export_ernerf(subject, out, ErnerfExportConfig(max_frames=4, speech_encoder=encoders[name],
                                                                encoder_layer=layer), progress=False)
        assert report.audio_features == "aud_hu.npy"
        ref = _reference_frames(encoders[name], out / "aud.wav", layer if layer >= 0 else None)
        np.testing.assert_allclose(np.load(out / "aud_hu.npy").reshape(8, 32), ref, atol=1e-5, err_msg=name)
        assert f"layer {layer % 3}/2 dim 32," in (out / "avatar3d_export.txt").read_text()

    plain = tmp_path / "plain"
    assert main(["export", str(subject), "--to-ernerf", str(plain), "--frames", "2"]) == 0
    assert "not included" in capsys.readouterr().out
    assert not list(plain.glob("*.npy"))
    assert "not included: aud_ds.npy / aud_hu.npy / aud_eo.npy" in (plain / "avatar3d_export.txt").read_text()


def test_native_frames_chunked_match_one_pass(hubert: Path) -> None:
    """encode_native reuses the chunked encoder: every stride gets one frame, chunk borders leave no seam."""
    rng = np.random.default_rng(0)
    t = np.arange(6 * 16000 + 77) / 16000
    x = (rng.standard_normal(len(t)) * 0.05 * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    whole = load_speech_encoder(hubert, config=SpeechEncoderConfig(layer=0, chunk_s=60.0))
    chunked = load_speech_encoder(hubert, config=SpeechEncoderConfig(layer=0, chunk_s=1.0, overlap_s=0.2))
    a, b = whole.encode_native(x, 16000), chunked.encode_native(x, 16000)
    assert whole.frame_rate == 50.0 and a.shape == b.shape == (-(-len(x) // 320), 32)
    assert float(np.abs(a - b).max()) < 1e-4


def test_bad_encoder_or_subject_writes_nothing(prepared_subject, hubert: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    subject = prepared_subject[0]
    dest = tmp_path / "data" / "x"
    nowhere = tmp_path / "nowhere"
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(hubert / "config.json", only_config)
    cases = [(["--speech-encoder", str(nowhere)], (str(nowhere), "not found")),
             (["--speech-encoder", str(only_config)], (str(only_config), "no weight file")),
             (["--speech-encoder", "facebook/hubert-large-ls960-ft"], ("never downloads",)),
             (["--speech-encoder", str(hubert), "--encoder-layer", "5"], ("layer 5 does not exist",)),
             (["--encoder-layer", "1"], ("--encoder-layer needs --speech-encoder",))]
    for extra, needles in cases:
        assert main(["export", str(subject), "--to-ernerf", str(dest), "--frames", "2", *extra]) == 2, extra
        _one_line(capsys, *needles)
        assert not (tmp_path / "data").exists(), extra  # not even the parent folder
    assert main(["export", str(subject), "--speech-encoder", str(hubert)]) == 2
    _one_line(capsys, "--to-ernerf")

    # a 30 fps subject: two 20 ms frames are not one video frame -> refused before anything is written
    fake = tmp_path / "fake30"
    fake.mkdir()
    for p in Path(subject).iterdir():
        if p.name != "manifest.json":
            (fake / p.name).symlink_to(p.resolve(), target_is_directory=p.is_dir())
    manifest = json.loads((Path(subject) / "manifest.json").read_text())
    (fake / "manifest.json").write_text(json.dumps(dict(manifest, fps=30.0)))
    with pytest.raises(Avatar3DError, match="subject is 30 fps") as info:
        export_ernerf(fake, dest, ErnerfExportConfig(max_frames=2, speech_encoder=hubert), progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "data").exists()


def test_import_reads_a_folder_with_aud_hu(exported, tmp_path: Path) -> None:
    subject, folder = exported
    report = import_ernerf(folder, tmp_path / "subject", ErnerfImportConfig(track=TrackConfig(iterations=100)),
                           progress=False)
    assert report.n_frames == N and report.pose_source == "transforms"
    assert (tmp_path / "subject" / "manifest.json").is_file()
