"""NeRF building blocks with compiled kernels (CPU C++/OpenMP, CUDA) and pure-torch mirrors."""
from avatar3d.nerf.backend import BackendUnavailable
from avatar3d.nerf.encoding import (
    HashGridConfig,
    HashGridEncoding,
    HashGridLayout,
    hashgrid_encode,
    hashgrid_encode_cpu,
    hashgrid_encode_cuda,
    hashgrid_encode_torch,
    make_layout,
)

__all__ = [
    "BackendUnavailable",
    "HashGridConfig",
    "HashGridEncoding",
    "HashGridLayout",
    "hashgrid_encode",
    "hashgrid_encode_cpu",
    "hashgrid_encode_cuda",
    "hashgrid_encode_torch",
    "make_layout",
]
