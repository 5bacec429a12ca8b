"""Presets by name, `avatar3d presets`, where the package finds its files, and what the sdist carries.

Why: `--config cpu_small` has to work the same from a checkout and from an installed wheel, and a
typo has to say which names exist. The wheel itself is built, installed and run end to end by
tests/test_demo.py (the suite's one demo run); here the cheap checks.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from avatar3d import resources
from avatar3d.cli import main
from avatar3d.config import load_config
from avatar3d.errors import Avatar3DError
from avatar3d.nerf.backend import KERNEL_SPECS, kernel_specs
from avatar3d.synth.generate import SynthConfig
from avatar3d.train.gaussian_config import load_train_config
from avatar3d.train.trainer import TrainConfig
from data_prep.pipeline import PrepConfig
from tests.installed_wheel import REPO, build_sdist, kernel_sources, preset_files

CONFIG_OF_COMMAND = {"train": TrainConfig, "prep": PrepConfig, "synth": SynthConfig}


def test_every_preset_names_its_command_and_loads_by_name_as_from_its_file() -> None:
    presets = {p.name: p for p in resources.presets()}
    assert sorted(presets) == [name.removesuffix(".yaml") for name in preset_files()]
    assert {"cpu_small", "gpu_512", "tiny", "prep", "synth"} <= set(presets)
    for name, preset in presets.items():
        assert preset.description and not preset.description.startswith("Use:"), preset
        assert preset.command in CONFIG_OF_COMMAND, f"{preset.path}: no `# Use: avatar3d COMMAND` line"
        cls = CONFIG_OF_COMMAND[preset.command]
        if preset.command == "train":  # a train preset names its backend (gaussians_*: GaussianTrainConfig)
            cls = type(load_train_config(name))
        by_name = load_config(cls, name)
        assert by_name == load_config(cls, REPO / "configs" / f"{name}.yaml")
        assert by_name != cls() or name in ("prep", "synth"), f"{name} changes nothing"  # those two write out defaults
    assert load_config(TrainConfig, "tiny").resolution == 64 and load_config(TrainConfig, "gpu_512").resolution == 512


def test_a_file_wins_over_a_preset_of_the_same_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny").write_text("resolution: 32\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(TrainConfig, "tiny").resolution == 32


def test_unknown_preset_and_missing_file_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["train", str(tmp_path / "subject"), "-o", str(tmp_path / "avatar"), "--config", "cpu_smal"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "'cpu_smal'" in err and all(name.removesuffix(".yaml") in err for name in preset_files()), err
    with pytest.raises(Avatar3DError, match="not found") as missing:
        load_config(TrainConfig, tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(missing.value) and "\n" not in str(missing.value)
    assert not (tmp_path / "avatar").exists()


def test_presets_command_lists_name_command_and_description(capsys: pytest.CaptureFixture) -> None:
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line and not line.startswith("(")}
    assert rows == {p.name: p.command for p in resources.presets()}
    assert "TrainConfig for two CPU cores" in out and str(resources.preset_dir()) in out


def test_checkout_finds_its_own_folders() -> None:
    """Run from the checkout (pytest with pythonpath=.): sources, presets and kernel builds stay in it."""
    assert resources.checkout_root() == REPO
    assert resources.kernel_source_dir() == REPO / "cuda_ext" and resources.preset_dir() == REPO / "configs"
    assert resources.kernel_build_dir() == REPO / "build" / "torch_extensions"
    specs = kernel_specs()
    assert [s.name for s in specs] == ["hashgrid", "raymarch", "gaussians"] and len(specs) == len(KERNEL_SPECS)
    for spec in specs:
        assert all(Path(src).is_file() and Path(src).is_relative_to(REPO / "cuda_ext") for src in spec.cpu_sources)


def test_user_cache_is_avatar3d_cache_else_xdg_else_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATAR3D_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resources.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("AVATAR3D_CACHE")
    assert resources.cache_dir() == tmp_path / "xdg" / "avatar3d"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resources.cache_dir() == tmp_path / "home" / ".cache" / "avatar3d"


def test_a_bad_kernel_registration_names_the_fix() -> None:
    with pytest.raises(Avatar3DError, match="KERNEL_SPECS"):
        kernel_specs(["avatar3d.nerf.encoding:HASH_PRIMES"])


def test_sdist_carries_kernel_sources_and_presets(tmp_path: Path) -> None:
    sdist = build_sdist(tmp_path)
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = [f"cuda_ext/{rel}" for rel in kernel_sources() if f"cuda_ext/{rel}" not in names]
    missing += [f"configs/{name}" for name in preset_files() if f"configs/{name}" not in names]
    assert not missing and {"setup.py", "MANIFEST.in", "avatar3d/resources.py"} <= names, missing
