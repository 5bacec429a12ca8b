"""3D Gaussian splatting: the rasterizer (compiled CPU/CUDA builds + a pure-torch mirror)."""
from avatar3d.gaussians.camera import PinholeCamera
from avatar3d.gaussians.mirror import rasterize_torch
from avatar3d.gaussians.rasterize import GAUSSIANS_SPEC, RasterOutput, rasterize_gaussians

__all__ = ["GAUSSIANS_SPEC", "PinholeCamera", "RasterOutput", "rasterize_gaussians", "rasterize_torch"]
