"""``AvatarBundle``: the typed content of an ``avatar.pt`` and its format-version rules.

Why typed: render, eval and export each read the avatar file; as an untyped dict every reader
spelled its keys again and a second backend had nowhere to say what it is.  On disk it stays a
plain dict of tensors / arrays / strings (``torch.save``), so a bundle is readable without the
class that wrote it; format 1 files (before the ``backend`` field) load as NeRF avatars.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar3d import __version__
from avatar3d.errors import Avatar3DError, InputError
from avatar3d.io.atomic import atomic_path

AVATAR_FILE = "avatar.pt"
FORMAT_VERSION = 2  # 2: + "backend"; 1 (no backend field, always NeRF) still loads
READABLE_VERSIONS = (1, 2)


@dataclass
class AvatarBundle:
    """Everything an avatar needs at inference time, for any backend."""

    backend: str  # "nerf" (the Gaussian backend will add "gaussians")
    config: dict[str, Any]  # the backend's model config as plain values
    state: dict[str, torch.Tensor]  # the backend's weights (state_dict)
    motion_dim: int  # expression channels + blink channels
    n_frames: int  # frames of the training subject
    resolution: int  # training image side r
    K: np.ndarray  # float64 [3, 3] training intrinsics at r
    background: np.ndarray  # uint8 [r, r, 3] the subject's background plate
    expression_names: list[str]
    R: np.ndarray  # float64 [N, 3, 3] head poses as the avatar saw them (refined where it refined them)
    t: np.ndarray  # float64 [N, 3]
    R_tracked: np.ndarray  # the subject's landmark-tracked poses (recognise the subject by them)
    t_tracked: np.ndarray
    fps: float
    expression: np.ndarray | None  # float32 [N, Ke] tracked motion (None: an old avatar, cannot be driven)
    blink: np.ndarray | None  # float32 [N, 2]
    train_ids: np.ndarray  # int64
    val_ids: np.ndarray  # int64
    subject: str = ""  # the subject folder it was trained on ("" when shipped without one)
    avatar3d_version: str = __version__
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys of the file this version does not know

    # ------------------------------------------------------------ file <-> bundle

    def to_file_dict(self) -> dict[str, Any]:
        """The on-disk dict (format-1 key names kept for weights and config: older tools read them)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("state", "config", "extra")}
        out.update(self.extra)
        out.update(model=self.state, avatar_config=self.config, format_version=FORMAT_VERSION,
                   avatar3d_version=__version__)
        return out

    @classmethod
    def from_file_dict(cls, raw: dict[str, Any], source: str) -> "AvatarBundle":
        """A bundle from the dict saved by :meth:`save` (or a format-1 avatar)."""
        version = raw.get("format_version", "none")
        if version not in READABLE_VERSIONS:
            by = raw.get("avatar3d_version", "an unknown version")
            raise InputError(f"{source}: written by avatar3d {by} in avatar format {version}; this is avatar3d "
                                f"{__version__}, which reads formats {', '.join(map(str, READABLE_VERSIONS))}: "
                                "retrain it with `avatar3d train` or use that version")
        raw = dict(raw)
        try:
            values: dict[str, Any] = {"backend": str(raw.pop("backend", "nerf")), "state": raw.pop("model"),
                                      "config": dict(raw.pop("avatar_config"))}
            names = {f.name for f in dataclasses.fields(cls)} - set(values) - {"extra"}
            for name in ("expression", "blink", "subject"):  # absent in the oldest format-1 files
                raw.setdefault(name, None if name != "subject" else "")
            for name in names:
                if name in raw:
                    values[name] = raw.pop(name)
            values["format_version"] = int(version)
            bundle = cls(**values, extra=raw)
        except (KeyError, TypeError) as exc:
            raise InputError(f"{source}: not a complete avatar file ({exc}); retrain it with `avatar3d train`") from None
        bundle.subject = str(bundle.subject or "")
        bundle.expression_names = [str(n) for n in bundle.expression_names]
        return bundle

    def save(self, path: str | Path) -> None:
        """Atomically writes the bundle (temp name + rename: a kill never leaves half a file at ``path``)."""
        with atomic_path(Path(path)) as tmp:
            torch.save(self.to_file_dict(), tmp)

    @classmethod
    def load(cls, path: str | Path) -> "AvatarBundle":
        """Reads an avatar folder's ``avatar.pt`` (or the file itself) with one-line errors."""
        path = avatar_file(path)
        if not path.is_file():
            raise InputError(f"{path} not found: train an avatar first (`avatar3d train SUBJECT -o AVATAR`)")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated / not a torch file
            raise InputError(f"{path} is not a readable avatar ({type(exc).__name__}): retrain or restore it") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path} is not an avatar file: retrain it with `avatar3d train`")
        return cls.from_file_dict(raw, str(path))

    # ------------------------------------------------------------ questions readers ask

    def require_motion(self) -> None:
        """Avatars saved before the bundle carried the subject's tracked motion cannot be driven or exported."""
        if self.expression is None or self.blink is None:
            raise Avatar3DError(f"the avatar of {self.subject or 'this subject'} has no tracked expressions "
                                "(saved by an older avatar3d): retrain it with `avatar3d train`")

    def is_trained_on(self, R_tracked: np.ndarray, t_tracked: np.ndarray) -> bool:
        """True when these tracked poses are the subject's the avatar was trained on.

        The subject is recognised by its tracked poses, not its path: a copied subject folder still
        matches and another subject never does.
        """
        return (np.shape(self.R_tracked) == np.shape(R_tracked) and np.allclose(self.R_tracked, R_tracked, atol=1e-9)
                and np.allclose(self.t_tracked, t_tracked, atol=1e-12))

    def motion_vectors(self) -> np.ndarray:
        """float32 [N, Ke + 2]: the training subject's tracked expression then blink per frame."""
        self.require_motion()
        return np.concatenate([np.asarray(self.expression, np.float32), np.asarray(self.blink, np.float32)], axis=1)


def avatar_file(path: str | Path) -> Path:
    """An avatar folder or its ``avatar.pt`` -> the file."""
    path = Path(path)
    return path / AVATAR_FILE if path.is_dir() or path.suffix != ".pt" else path
