"""Volume compositing of packed samples: weights, opacity, depth and colour per ray.

Why: the renderer's output and its gradients to the field. Per ray, in sample order,
``a_k = sigma_k (t_end_k - t_start_k)``, ``T_k = exp(-sum_{j<k} a_j)``,
``w_k = T_k (1 - exp(-a_k))``; opacity ``sum w``, depth ``sum w (t_start + t_end) / 2``,
colour ``sum w rgb``. The compiled builds run ``a3d_composite_ray_fwd/bwd`` from
``cuda_ext/include/raymarch.h`` (closed-form backward:
``dL/da_k = g_k T_{k+1} - sum_{j>k} g_j w_j`` with ``g_k = dL/dw_k`` through all outputs);
:func:`composite_torch` is the mirror (a padded per-ray cumsum, differentiated by
autograd; no Python loop over rays). Sample intervals are constants: no gradient
flows to ``t_starts``/``t_ends``.

Inference: :func:`composite_step` adds one :class:`~avatar3d.nerf.raymarch.RoundSamples`
to a :class:`~avatar3d.nerf.raymarch.RenderState` (skipping samples once the
transmittance is below ``threshold``) and compacts the alive set;
:func:`render_inference` drives march/evaluate/composite rounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from avatar3d.errors import Avatar3DError
from avatar3d.nerf.backend import requested_backend, resolve_backend
from avatar3d.nerf.occupancy import OccupancyGrid
from avatar3d.nerf.raymarch import (
    RAYMARCH_SPEC,
    FieldFn,
    MarchParams,
    PackedSamples,
    RenderState,
    RoundSamples,
    march_init,
    march_step,
)


@dataclass
class CompositeResult:
    weights: torch.Tensor  # [n_samples]
    opacity: torch.Tensor  # [n_rays]
    depth: torch.Tensor  # [n_rays] expected t (not normalised by opacity)
    color: torch.Tensor  # [n_rays, 3] (no background)


def _prepare(
    sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
    offsets: torch.Tensor, counts: torch.Tensor,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    if sigmas.dim() != 1 or rgbs.shape != (sigmas.shape[0], 3) or t_starts.shape != sigmas.shape \
            or t_ends.shape != sigmas.shape or offsets.dim() != 1 or counts.shape != offsets.shape:  # fmt: skip
        raise Avatar3DError(
            f"composite: need sigmas/t_starts/t_ends [S], rgbs [S, 3], offsets/counts [R]; got {tuple(sigmas.shape)}, "
            f"{tuple(rgbs.shape)}, {tuple(t_starts.shape)}, {tuple(t_ends.shape)}, {tuple(offsets.shape)}, "
            f"{tuple(counts.shape)}"
        )
    dtype = torch.float64 if torch.float64 in (sigmas.dtype, rgbs.dtype) else torch.float32
    return (sigmas.to(dtype), rgbs.to(dtype), t_starts.detach().to(dtype), t_ends.detach().to(dtype),
            offsets.long(), counts.long())  # fmt: skip


def composite_torch(
    sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
    offsets: torch.Tensor, counts: torch.Tensor, ray_indices: torch.Tensor | None = None,
) -> CompositeResult:  # fmt: skip
    """Pure-torch mirror: per-ray exclusive cumsum on a padded [n_rays, max_count + 1] grid; autograd backward."""
    sigmas, rgbs, t_starts, t_ends, offsets, counts = _prepare(sigmas, rgbs, t_starts, t_ends, offsets, counts)
    n_rays, dev = offsets.shape[0], sigmas.device
    if ray_indices is None:
        ray_indices = torch.repeat_interleave(torch.arange(n_rays, device=dev), counts, output_size=sigmas.shape[0])
    pos = torch.arange(sigmas.shape[0], device=dev) - offsets[ray_indices]  # [S] position within the ray
    width = int(counts.max()) + 1 if n_rays else 1
    a = sigmas * (t_ends - t_starts)  # [S]
    shifted = torch.zeros(n_rays, width, dtype=a.dtype, device=dev).index_put((ray_indices, pos + 1), a)
    acc = shifted.cumsum(1)[ray_indices, pos]  # [S] sum_{j<k} a_j
    weights = torch.exp(-acc) * -torch.expm1(-a)  # [S]
    mid = (t_starts + t_ends) * 0.5
    zeros = torch.zeros(n_rays, dtype=a.dtype, device=dev)
    opacity = zeros.index_add(0, ray_indices, weights)
    depth = zeros.index_add(0, ray_indices, weights * mid)
    color = torch.zeros(n_rays, 3, dtype=a.dtype, device=dev).index_add(0, ray_indices, weights[:, None] * rgbs)
    return CompositeResult(weights, opacity, depth, color)


class _CompositeFunction(torch.autograd.Function):
    """Compiled forward and closed-form backward; ``ops`` is the loaded extension."""

    @staticmethod
    def forward(ctx, sigmas, rgbs, t_starts, t_ends, offsets, counts, ops):  # type: ignore[override]
        weights, opacity, depth, color = ops.composite_fwd(sigmas, rgbs, t_starts, t_ends, offsets, counts)
        ctx.save_for_backward(sigmas, rgbs, t_starts, t_ends, offsets, counts)
        ctx.ops = ops
        return weights, opacity, depth, color

    @staticmethod
    @once_differentiable
    def backward(ctx, v_weights, v_opacity, v_depth, v_color):  # type: ignore[override]
        sigmas, rgbs, t_starts, t_ends, offsets, counts = ctx.saved_tensors
        v_sigmas, v_rgbs = ctx.ops.composite_bwd(
            v_weights, v_opacity, v_depth, v_color, sigmas, rgbs, t_starts, t_ends, offsets, counts
        )
        return v_sigmas, v_rgbs, None, None, None, None, None


def _composite_compiled(ops, *args: torch.Tensor) -> CompositeResult:
    return CompositeResult(*_CompositeFunction.apply(*_prepare(*args), ops))


def composite_cpu(
    sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
    offsets: torch.Tensor, counts: torch.Tensor,
) -> CompositeResult:  # fmt: skip
    """The C++/OpenMP build (raises BackendUnavailable if it cannot be built)."""
    _, ops = resolve_backend(RAYMARCH_SPEC, "cpu", sigmas.device)
    return _composite_compiled(ops, sigmas, rgbs, t_starts, t_ends, offsets, counts)


def composite_cuda(
    sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
    offsets: torch.Tensor, counts: torch.Tensor,
) -> CompositeResult:  # fmt: skip
    """The CUDA build (raises BackendUnavailable without a CUDA torch or on CPU tensors)."""
    _, ops = resolve_backend(RAYMARCH_SPEC, "cuda", sigmas.device)
    return _composite_compiled(ops, sigmas, rgbs, t_starts, t_ends, offsets, counts)


def composite(
    sigmas: torch.Tensor, rgbs: torch.Tensor, samples: PackedSamples, *, backend: str = "auto"
) -> CompositeResult:
    """Composites packed ``samples`` with per-sample ``sigmas`` [S] and ``rgbs`` [S, 3]."""
    kind, ops = resolve_backend(RAYMARCH_SPEC, requested_backend(backend), sigmas.device)
    args = (sigmas, rgbs, samples.t_starts, samples.t_ends, samples.offsets, samples.counts)
    if ops is None:
        return composite_torch(*args, ray_indices=samples.ray_indices)
    return _composite_compiled(ops, *args)


# ---------------------------------------------------------------- inference rounds


def composite_round_torch(
    state: RenderState, samples: RoundSamples, sigmas: torch.Tensor, rgbs: torch.Tensor, threshold: float
) -> None:
    """Mirror of the compiled ``composite_round``: T_k = T_in exp(-sum_{j<k} a_j), samples used while T_k >= threshold."""
    ids, dtype = samples.ray_ids, state.trans.dtype
    t0, t1 = samples.t_starts.to(dtype), samples.t_ends.to(dtype)
    valid = samples.valid()  # [A, k]
    a = torch.where(valid, sigmas.to(dtype) * (t1 - t0), torch.zeros_like(t0))  # [A, k]
    acc = torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], 1).cumsum(1)  # [A, k] exclusive
    t_in = state.trans[ids]
    trans_k = t_in[:, None] * torch.exp(-acc)  # [A, k]
    use = valid & (trans_k >= threshold)
    w = torch.where(use, trans_k * -torch.expm1(-a), torch.zeros_like(a))  # [A, k]
    state.depth[ids] += (w * (t0 + t1) * 0.5).sum(1)
    state.color[ids] += (w[..., None] * rgbs.to(dtype)).sum(1)
    state.trans[ids] = t_in * torch.exp(-(a * use).sum(1))


def composite_step(
    state: RenderState, samples: RoundSamples, sigmas: torch.Tensor, rgbs: torch.Tensor, params: MarchParams,
    *, threshold: float = 1e-4, backend: str = "auto",
) -> None:  # fmt: skip
    """Adds one round (``sigmas`` [A, k], ``rgbs`` [A, k, 3]; padding ignored) to ``state``, then compacts ``alive``."""
    kind, ops = resolve_backend(RAYMARCH_SPEC, requested_backend(backend), state.trans.device)
    with torch.no_grad():
        if ops is None:
            composite_round_torch(state, samples, sigmas, rgbs, threshold)
        else:
            ops.composite_round(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.counts, samples.ray_ids,
                                threshold, state.trans, state.depth, state.color)  # fmt: skip
    state.rounds += 1
    state.compact(params.max_samples, threshold)


MAX_RAYS_PER_PASS = 1 << 18  # 512² rays: a pass's buffers stay well under a GB at the default widths


def _concat_states(parts: list[RenderState]) -> RenderState:
    """One finished state from the states of consecutive passes (every ray done: no alive set)."""
    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(p, name) for p in parts])

    return RenderState(cat("rays_o"), cat("rays_d"), cat("t"), cat("far"), cat("n_done"), cat("trans"), cat("depth"),
                       cat("color"), parts[0].alive.new_zeros(0), rounds=max(p.rounds for p in parts))  # fmt: skip


@torch.no_grad()
def render_inference(
    rays_o: torch.Tensor, rays_d: torch.Tensor, grid: OccupancyGrid, field_fn: FieldFn, params: MarchParams,
    *, n_steps: int = 4, threshold: float = 1e-4, backend: str = "auto", sample_budget: int = 0,
    max_round_steps: int = 64, max_rays: int = MAX_RAYS_PER_PASS,
) -> RenderState:  # fmt: skip
    """Renders rays in rounds with early termination; returns the final state (``opacity``, ``depth``, ``color``).

    Each round marches ``n_steps`` samples for every alive ray, evaluates ``field_fn`` only on
    the real samples, composites them and drops finished rays.  With ``sample_budget`` > 0 a
    round marches ``sample_budget / alive rays`` steps per ray instead (at least ``n_steps``,
    at most ``max_round_steps``): as rays finish, the survivors take longer strides, so a frame
    needs a handful of rounds rather than ``max_samples / n_steps`` -- on a GPU each round costs
    launches and host syncs whatever its size (instant-ngp's schedule).

    More than ``max_rays`` rays are rendered in passes of that many: a round's sample buffers
    grow with rays x steps, and one 4096² frame in one pass reached 21.8 GB. Rays are
    independent, so the passes give the same pixels (with ``sample_budget`` > 0 the budget is
    each pass's).
    """
    if rays_o.shape[0] > max_rays > 0:
        parts = [render_inference(rays_o[i:i + max_rays], rays_d[i:i + max_rays], grid, field_fn, params,
                                  n_steps=n_steps, threshold=threshold, backend=backend, sample_budget=sample_budget,
                                  max_round_steps=max_round_steps, max_rays=0)
                 for i in range(0, rays_o.shape[0], max_rays)]  # fmt: skip
        return _concat_states(parts)
    state = march_init(rays_o, rays_d, grid, params)
    while state.alive.numel():
        steps = n_steps
        if sample_budget > 0:
            steps = int(min(max_round_steps, max(n_steps, sample_budget // state.alive.numel())))
        samples = march_step(state, grid, params, steps, backend=backend)
        valid = samples.valid()  # [A, k]
        sigmas = torch.zeros(valid.shape, device=valid.device)
        rgbs = torch.zeros(*valid.shape, 3, device=valid.device)
        if valid.any():
            t_mid = ((samples.t_starts + samples.t_ends) * 0.5)[valid]
            rows = samples.ray_ids[:, None].expand_as(valid)[valid]
            dirs = state.rays_d[rows]
            sigma_v, rgb_v = field_fn(state.rays_o[rows] + t_mid[:, None] * dirs, dirs)
            sigmas[valid], rgbs[valid] = sigma_v.float().reshape(-1), rgb_v.float().reshape(-1, 3)
        composite_step(state, samples, sigmas, rgbs, params, threshold=threshold, backend=backend)
    return state
