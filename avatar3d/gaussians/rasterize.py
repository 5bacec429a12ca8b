"""Rendering 3D Gaussians through a pinhole camera: colour, alpha and expected depth, with gradients.

Why: the Gaussian avatar's renderer and its backward (means, scales, rotations, opacities, SH
colour, the head pose, and the 2D mean gradient density control reads). One math, three builds:
``cuda_ext/include/gaussians.h`` compiled into a C++/OpenMP CPU build and a CUDA build (same
Python API, chosen by :func:`avatar3d.nerf.backend.resolve_backend`, ``backend=`` or env
``AVATAR3D_BACKEND``), and :func:`avatar3d.gaussians.mirror.rasterize_torch`, the reference and
last-resort fallback.

The pose enters in torch: ``means_cam = means @ R^T + t`` and the SH view directions
``R^T normalize(means_cam)`` are O(N) tensor ops, so autograd carries the gradient to ``R`` and
``t``; the kernels also return the covariance's share of ``dL/dR``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from avatar3d.errors import Avatar3DError
from avatar3d.gaussians.camera import MAX_SH_DEGREE, PinholeCamera
from avatar3d.gaussians.mirror import rasterize_torch
from avatar3d.nerf.backend import CUDA_EXT_DIR, ExtensionSpec, requested_backend, resolve_backend

GAUSSIANS_SPEC = ExtensionSpec(
    name="gaussians",
    cpu_sources=(CUDA_EXT_DIR / "cpu" / "gaussians_cpu.cpp",),
    cuda_sources=(CUDA_EXT_DIR / "bindings" / "gaussians_cuda_bind.cpp", CUDA_EXT_DIR / "cuda" / "gaussians.cu"),
)


@dataclass
class RasterOutput:
    """What one render gives back."""

    color: torch.Tensor  # [H, W, 3] premultiplied by alpha (no background)
    alpha: torch.Tensor  # [H, W] 1 - final transmittance
    depth: torch.Tensor  # [H, W] sum of weight * z (not divided by alpha)
    radii: torch.Tensor  # [N] int32 pixels, 0 where culled (behind near, or on no tile)
    means2d: torch.Tensor  # [N, 2] projected means (pixels); a leaf whose .grad is dL/d mean2d after backward
    backend: str  # "cpu" | "cuda" | "torch"


class _RasterizeFunction(torch.autograd.Function):
    """Compiled forward/backward; ``ops`` is the loaded extension, ``probe`` receives dL/d mean2d."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, sh, dirs, view_rot, probe, camera, sh_degree, ops):  # type: ignore[override]
        args = camera.ext_args()
        color, alpha, depth, mean2d, conic, rgb, radii, offsets, ids, t_final, n_contrib = ops.fwd(
            means, quats, scales, opacities, sh, dirs, view_rot, *args, sh_degree
        )
        probe.copy_(mean2d)  # the values a caller reads; its gradient comes back from backward
        ctx.save_for_backward(means, quats, scales, opacities, sh, dirs, view_rot, mean2d, conic, rgb, radii, offsets,
                              ids, t_final, n_contrib)  # fmt: skip
        ctx.camera, ctx.sh_degree, ctx.ops = camera, sh_degree, ops
        ctx.mark_non_differentiable(radii)
        ctx.set_materialize_grads(False)
        return color, alpha, depth, radii

    @staticmethod
    @once_differentiable
    def backward(ctx, v_color, v_alpha, v_depth, _v_radii):  # type: ignore[override]
        saved = ctx.saved_tensors
        ref = saved[0]
        h, w = ctx.camera.height, ctx.camera.width
        v_color = torch.zeros(h, w, 3, dtype=ref.dtype, device=ref.device) if v_color is None else v_color
        v_alpha = torch.zeros(h, w, dtype=ref.dtype, device=ref.device) if v_alpha is None else v_alpha
        v_depth = torch.zeros(h, w, dtype=ref.dtype, device=ref.device) if v_depth is None else v_depth
        grads = ctx.ops.bwd(v_color, v_alpha, v_depth, *saved, *ctx.camera.ext_args(), ctx.sh_degree)
        v_means, v_quats, v_scales, v_opac, v_sh, v_dirs, v_view, v_mean2d = grads
        return v_means, v_quats, v_scales, v_opac, v_sh, v_dirs, v_view, v_mean2d, None, None, None


def _check(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
           sh: torch.Tensor, view_rot: torch.Tensor, view_trans: torch.Tensor, sh_degree: int) -> None:  # fmt: skip
    n = means.shape[0] if means.dim() == 2 else -1
    checks = [
        (means.dim() == 2 and means.shape[1] == 3, f"means must be [N, 3], got {tuple(means.shape)}"),
        (quats.shape == (n, 4), f"quats must be [N, 4] (w, x, y, z) with N={n}, got {tuple(quats.shape)}"),
        (scales.shape == (n, 3), f"scales must be [N, 3] (linear, not log) with N={n}, got {tuple(scales.shape)}"),
        (opacities.shape == (n,), f"opacities must be [N] in [0, 1] with N={n}, got {tuple(opacities.shape)}"),
        (0 <= sh_degree <= MAX_SH_DEGREE, f"sh_degree={sh_degree} must be 0..{MAX_SH_DEGREE}"),
        (sh.dim() == 3 and sh.shape[0] == n and sh.shape[2] == 3 and sh.shape[1] >= (sh_degree + 1) ** 2,
         f"sh_coeffs must be [N, K >= {(sh_degree + 1) ** 2}, 3] for sh_degree={sh_degree}, got {tuple(sh.shape)}"),
        (view_rot.shape == (3, 3), f"view_rot must be a [3, 3] rotation, got {tuple(view_rot.shape)}"),
        (view_trans.shape == (3,), f"view_trans must be [3], got {tuple(view_trans.shape)}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise Avatar3DError(f"rasterize_gaussians: {message}")
    devices = {t.device for t in (means, quats, scales, opacities, sh, view_rot, view_trans)}
    if len(devices) > 1:
        raise Avatar3DError(f"rasterize_gaussians: inputs are on several devices {sorted(map(str, devices))}: move "
                            "them to one")  # fmt: skip


def rasterize_gaussians(
    means: torch.Tensor,  # [N, 3] canonical (head) frame, metres
    quats: torch.Tensor,  # [N, 4] (w, x, y, z), any norm, canonical frame
    scales: torch.Tensor,  # [N, 3] standard deviations (linear)
    opacities: torch.Tensor,  # [N] in [0, 1]
    sh_coeffs: torch.Tensor,  # [N, K, 3] real SH, K >= (sh_degree + 1)^2; the DC term is offset by +0.5
    camera: PinholeCamera,
    view_rot: torch.Tensor | None = None,  # [3, 3] canonical -> camera (OpenCV); identity if None
    view_trans: torch.Tensor | None = None,  # [3]; zero if None
    *,
    sh_degree: int | None = None,
    backend: str = "auto",
) -> RasterOutput:
    """Renders the Gaussians (``x_cam = view_rot @ x + view_trans``) into ``camera``'s image.

    Differentiable with respect to every tensor argument, the pose included. ``sh_degree``
    defaults to the largest the coefficients hold (at most 3).
    """
    dev = means.device
    dtype = torch.float64 if torch.float64 in (means.dtype, scales.dtype, sh_coeffs.dtype) else torch.float32
    view_rot = torch.eye(3, dtype=dtype, device=dev) if view_rot is None else view_rot
    view_trans = torch.zeros(3, dtype=dtype, device=dev) if view_trans is None else view_trans
    if sh_degree is None:
        k = sh_coeffs.shape[1] if sh_coeffs.dim() == 3 else 1
        sh_degree = min(MAX_SH_DEGREE, int(k**0.5) - 1)
    _check(means, quats, scales, opacities, sh_coeffs, view_rot, view_trans, int(sh_degree))
    means, quats, scales, opacities, sh_coeffs, view_rot, view_trans = (
        t.to(dtype) for t in (means, quats, scales, opacities, sh_coeffs, view_rot, view_trans)
    )
    means_cam = means @ view_rot.T + view_trans  # [N, 3]
    dirs = torch.nn.functional.normalize(means_cam, dim=-1, eps=1e-12) @ view_rot  # [N, 3] SH frame: R^T d
    tensors = (means_cam, quats, scales, opacities, sh_coeffs, dirs, view_rot)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    probe = torch.zeros(means.shape[0], 2, dtype=dtype, device=dev, requires_grad=needs_grad)
    kind, ops = resolve_backend(GAUSSIANS_SPEC, requested_backend(backend), dev)
    if ops is None:
        color, alpha, depth, mean2d, radii = rasterize_torch(*tensors, camera, int(sh_degree),
                                                             probe if needs_grad else None)  # fmt: skip
        with torch.no_grad():
            probe.copy_(mean2d)
        return RasterOutput(color, alpha, depth, radii, probe, "torch")
    contiguous = tuple(t.contiguous() for t in tensors)
    color, alpha, depth, radii = _RasterizeFunction.apply(*contiguous, probe, camera, int(sh_degree), ops)
    return RasterOutput(color, alpha, depth, radii, probe, kind)
