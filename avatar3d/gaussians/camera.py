"""The pinhole camera and the fixed constants of the Gaussian rasterizer.

Why one place: the compiled builds take these numbers from ``cuda_ext/include/gaussians.h``;
the torch mirror and the tests read them here, so the two stay written down side by side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from avatar3d.errors import Avatar3DError

TILE = 16  # A3D_GS_TILE: pixels per tile side
DILATION = 0.3  # A3D_GS_DILATION: low-pass added to the 2D covariance diagonal (px^2)
SIGMAS = 3.0  # A3D_GS_SIGMAS: extent of a splat in standard deviations
ALPHA_MAX = 0.99  # A3D_GS_ALPHA_MAX
ALPHA_MIN = 1.0 / 255.0  # A3D_GS_ALPHA_MIN: fainter splats are skipped
T_MIN = 1e-4  # A3D_GS_T_MIN: a pixel stops before its transmittance falls below this
MARGIN = 0.15  # A3D_GS_MARGIN: the Jacobian's x/z, y/z are clamped to the image plus this share
MAX_SH_DEGREE = 3


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics (pixels) and image size; pixel (i, j) has its centre at (i + 0.5, j + 0.5).

    ``near``: Gaussians whose camera depth z is <= near are culled (metres).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    near: float = 0.01

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0 and math.isfinite(self.fx) and math.isfinite(self.fy)):
            raise Avatar3DError(f"PinholeCamera: fx={self.fx}, fy={self.fy} must be finite and > 0 (pixels)")
        if not (1 <= int(self.width) <= 16384 and 1 <= int(self.height) <= 16384):
            raise Avatar3DError(f"PinholeCamera: image {self.width}x{self.height} must be 1..16384 pixels per side")
        if not (self.near > 0 and math.isfinite(self.near)):
            raise Avatar3DError(f"PinholeCamera: near={self.near} must be a finite distance > 0 (metres)")

    @property
    def tiles_x(self) -> int:
        return (int(self.width) + TILE - 1) // TILE

    @property
    def tiles_y(self) -> int:
        return (int(self.height) + TILE - 1) // TILE

    def ext_args(self) -> tuple[float, float, float, float, int, int, float]:
        """Arguments of the compiled ``fwd``/``bwd`` after the tensors."""
        return (float(self.fx), float(self.fy), float(self.cx), float(self.cy), int(self.width), int(self.height),
                float(self.near))  # fmt: skip
