"""Adaptive density control of the Gaussian head: prune faint Gaussians, clone or split busy ones, under a hard cap.

Why: the seeding cannot know where detail is (eyes, lip line, hair strands).  The rasterizer's
2D-mean gradient says where the image still wants splats to move; Gaussians with the largest
mean gradient are duplicated (small ones cloned, large ones split in two smaller ones) and those
that faded out are dropped.  Chosen by rank (the top share each round) rather than by 3DGS's
absolute threshold, because the gradient's scale depends on the loss weights and the image size.
The count never exceeds ``max_gaussians``.  Each Gaussian's tensors (its Adam moments included)
are sliced together, so the optimizer continues on the survivors as if nothing happened.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from avatar3d.gaussians.head import FACE, GROUP_PARAMS, PER_GAUSSIAN_BUFFERS, RIGID, GaussianHead

SPLIT_SHRINK = 1.6  # a split Gaussian's two halves have its scale divided by this


class GradientStats:
    """Running mean of |dL/d mean2d| per Gaussian over the steps it was visible."""

    def __init__(self, n: int) -> None:
        self.total = torch.zeros(n)
        self.count = torch.zeros(n)

    def add(self, means2d_grad: torch.Tensor | None, radii: torch.Tensor) -> None:
        if means2d_grad is None:
            return
        seen = radii.cpu() > 0
        self.total[seen] += means2d_grad.detach().cpu().norm(dim=-1)[seen].float()
        self.count[seen] += 1

    def mean(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


def _rebuild(head: GaussianHead, opt: torch.optim.Optimizer, group: str, keep: torch.Tensor,
             src: torch.Tensor, new_values: dict[str, torch.Tensor]) -> None:  # fmt: skip
    """Group ``group``'s tensors become rows ``keep`` then new rows (``new_values``, copied from rows ``src``)."""
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name in GROUP_PARAMS[group]:
        old = getattr(head, name)
        tail = new_values[name] if name in new_values else old.detach()[src]
        data = torch.cat([old.detach()[keep], tail.to(old.dtype)])
        if name in PER_GAUSSIAN_BUFFERS:
            setattr(head, name, data)  # a registered buffer: assignment keeps it registered
            continue
        param = nn.Parameter(data)
        g = by_param[id(old)]
        state = opt.state.pop(old, None)
        if state:
            for key in ("exp_avg", "exp_avg_sq"):
                moment = state[key]
                state[key] = torch.cat([moment[keep], torch.zeros((len(tail),) + moment.shape[1:], dtype=moment.dtype)])
            opt.state[param] = state
        g["params"] = [param if p is old else p for p in g["params"]]
        setattr(head, name, param)


@torch.no_grad()
def densify(head: GaussianHead, opt: torch.optim.Optimizer, stats: GradientStats, *, prune_opacity: float,
            max_gaussians: int, clone_fraction: float, split_scale_m: float,
            rng: np.random.Generator) -> dict[str, int]:  # fmt: skip
    """One round: returns how many were pruned, cloned and split."""
    grad = stats.mean()
    visible = stats.count > 0
    opac = torch.sigmoid(torch.cat([head.face_opacity_logit, head.rigid_opacity_logit]))
    scales = torch.exp(torch.cat([head.face_log_scale, head.rigid_log_scale]))
    n = head.n_gaussians
    keep = opac >= prune_opacity
    room = max(0, max_gaussians - int(keep.sum()))
    n_new = min(room, int(clone_fraction * int(visible.sum())))
    chosen = torch.zeros(n, dtype=torch.bool)
    if n_new > 0:
        score = torch.where(visible & keep, grad, torch.full_like(grad, -1.0))
        top = torch.topk(score, n_new).indices
        chosen[top[score[top] > 0]] = True
    split = chosen & (scales.max(-1).values > split_scale_m)
    counts = {"pruned": int((~keep).sum()), "cloned": int((chosen & ~split).sum()), "split": int(split.sum())}
    noise = torch.from_numpy(rng.standard_normal((n, 3)).astype(np.float32)) * scales
    shrink = torch.where(split[:, None], torch.full_like(scales, 1.0 / SPLIT_SHRINK), torch.ones_like(scales))
    # A split Gaussian's own row shrinks too (it becomes one of the two halves).
    log_scale = torch.log(scales * shrink)
    nf = head.n_face
    for group, rows in ((FACE, slice(0, nf)), (RIGID, slice(nf, n))):
        g_keep, g_chosen = keep[rows], chosen[rows]
        src = torch.nonzero(g_chosen).squeeze(1)
        moved = noise[rows][src]
        if group == FACE:
            head.face_log_scale.data.copy_(log_scale[rows])
            new = {"face_offset": head.face_offset.detach()[src] + moved, "face_log_scale": log_scale[rows][src]}
        else:
            head.rigid_log_scale.data.copy_(log_scale[rows])
            new = {"rigid_means": head.rigid_means.detach()[src] + moved, "rigid_log_scale": log_scale[rows][src]}
        _rebuild(head, opt, group, torch.nonzero(g_keep).squeeze(1), src, new)
    return counts
