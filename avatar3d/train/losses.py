"""The training objective: photometric error plus mask and regulariser terms, each weighted.

Why these terms: the composite's colour alone cannot tell head from torso from plate; the parsing
masks (trusted away from their edges) can.  Opacities use binary cross-entropy, not MSE, so a 5 %
leak over the background keeps being pushed to 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossConfig:
    """Weights of the terms next to the photometric MSE."""

    head_mask_weight: float = 0.02
    torso_mask_weight: float = 0.02
    attention_weight: float = 1e-3  # L1 on the region attention: motion stays local
    offset_weight: float = 1e-2  # on the torso deformation


def opacity_bce(alpha: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of an opacity: unlike MSE it keeps pushing a 5% leak over the background to 0."""
    if alpha.numel() == 0:
        return alpha.new_zeros(())
    return torch.nn.functional.binary_cross_entropy(alpha.clamp(1e-4, 1 - 1e-4), target)


def losses(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor], config: LossConfig) -> dict[str, torch.Tensor]:
    """Named loss terms and their weighted total (``"total"``)."""
    labels = target["labels"]
    ok = target["mask_ok"]  # masks are trusted away from label edges only (parsing is uncertain there)
    is_head = ((labels == 1) | (labels == 3)).float()
    photo = torch.mean((out["rgb"] - target["rgb"]) ** 2)
    head_ok = ok & ~target["head_free"] if "head_free" in target else ok
    head_mask = opacity_bce(out["head_alpha"][head_ok], is_head[head_ok])
    torso_sup = (is_head == 0) & ok
    if "torso_clear" in target:
        torso_sup = torso_sup | target["torso_clear"]
    torso_mask = opacity_bce(out["torso_alpha"][torso_sup], ((labels[torso_sup] == 2)).float())
    offset = torch.mean(out["offset"] ** 2)
    total = (photo + config.head_mask_weight * head_mask + config.torso_mask_weight * torso_mask
             + config.attention_weight * out["attention"] + config.offset_weight * offset)  # fmt: skip
    return {"total": total, "photo": photo, "head_mask": head_mask, "torso_mask": torso_mask,
            "attention": out["attention"], "offset": offset}  # fmt: skip
