"""`avatar3d train`'s entry: the trainer of the backend the config (or the run being resumed) names.

Why a dispatcher: the CLI, the demo and benchmarks pass a config or a run folder; which backend
trains follows from the config's ``backend:`` (a resumed run: from the ``config.yaml`` it saved).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from avatar3d.train.config import TrainConfig
from avatar3d.train.gaussian_config import GAUSSIANS, AnyTrainConfig, GaussianTrainConfig, config_backend
from avatar3d.train.gaussian_trainer import train_gaussians
from avatar3d.train.trainer import CONFIG_NAME, train


def saved_backend(out: Path) -> str:
    """The backend of the run in ``out`` (nerf when it has no readable config yet: the NeRF trainer reports that)."""
    try:
        return config_backend(yaml.safe_load((Path(out) / CONFIG_NAME).read_text()) or {})
    except (OSError, yaml.YAMLError):
        return "nerf"


def train_any(subject: str | Path, out: str | Path, config: AnyTrainConfig | None, *, resume: bool = False,
              **kwargs: Any) -> dict[str, Any]:  # fmt: skip
    """Trains (or resumes) with the trainer of ``config``'s backend (``config`` None: the saved run's, or NeRF)."""
    if isinstance(config, GaussianTrainConfig) or (config is None and resume and saved_backend(Path(out)) == GAUSSIANS):
        return train_gaussians(subject, out, config, resume=resume, **kwargs)  # type: ignore[arg-type]
    assert config is None or isinstance(config, TrainConfig)
    return train(subject, out, config, resume=resume, **kwargs)
