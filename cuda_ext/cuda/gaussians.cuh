// CUDA launchers of the Gaussian rasterizer (plain CUDA, no torch headers).
//
// Why plain CUDA: compiled with nvcc alone (CI proves they build without a GPU or a CUDA torch);
// cuda_ext/bindings/gaussians_cuda_bind.cpp wraps them for torch, passes torch's current stream
// and does the scan / sort between the passes:
//   project -> exclusive scan of tiles touched -> fill (tile << 32 | depth bits, Gaussian id)
//   -> stable sort by key (torch) -> tile offsets (searchsorted) -> blend.
// Layouts match the CPU build (cuda_ext/cpu/gaussians_cpu.cpp): tile_offsets int64 [n_tiles + 1],
// ids int32 [n_instances] by tile, then depth, then index. Math: cuda_ext/include/gaussians.h.
// Pointers are device pointers of `dtype` (float32 or float64) unless typed otherwise.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "gaussians.h"

enum A3dGsDtype : int32_t { A3D_GS_F32 = 0, A3D_GS_F64 = 1 };

// Per Gaussian: mean2d [n, 2], conic [n, 3], rgb [n, 3], radii [n] (0 = culled), rects [n, 4],
// touched [n] (tiles covered). sh is [n, sh_k, 3]; view_rot [3, 3] on the device.
cudaError_t a3d_gs_project_cuda(A3dGsDtype dtype, const void* means, const void* quats, const void* scales,
                                const void* sh, int64_t sh_k, const void* dirs, const void* view_rot, int64_t n,
                                const A3dGsCamera& cam, int32_t sh_degree, void* mean2d, void* conic, void* rgb,
                                int32_t* radii, int32_t* rects, int64_t* touched, cudaStream_t stream);

// keys [n_instances] = tile << 32 | float bits of z, ids [n_instances]; offsets = exclusive scan of touched.
cudaError_t a3d_gs_fill_keys_cuda(A3dGsDtype dtype, const void* means, const int32_t* rects, const int64_t* offsets,
                                  const int64_t* touched, int64_t n, const A3dGsCamera& cam, int64_t* keys,
                                  int32_t* ids, cudaStream_t stream);

// One 16x16 block per tile: color [H, W, 3], alpha/depth/t_final [H, W], n_contrib int32 [H, W].
cudaError_t a3d_gs_blend_fwd_cuda(A3dGsDtype dtype, const A3dGsCamera& cam, const int64_t* tile_offsets,
                                  const int32_t* ids, const void* mean2d, const void* conic, const void* opacities,
                                  const void* rgb, const void* means, void* color, void* alpha, void* depth,
                                  void* t_final, int32_t* n_contrib, cudaStream_t stream);

// Per-Gaussian blend gradients grads [n, A3D_GS_N_GRAD] (must be zeroed; atomics) from the image gradients.
cudaError_t a3d_gs_blend_bwd_cuda(A3dGsDtype dtype, const A3dGsCamera& cam, const int64_t* tile_offsets,
                                  const int32_t* ids, const void* mean2d, const void* conic, const void* opacities,
                                  const void* rgb, const void* means, const void* v_color, const void* v_alpha,
                                  const void* v_depth, const void* t_final, const int32_t* n_contrib, void* grads,
                                  cudaStream_t stream);

// Projection + SH backward per visible Gaussian: v_means/v_dirs [n, 3], v_quats [n, 4], v_scales [n, 3],
// v_opacities [n], v_sh [n, sh_k, 3], v_view [n, 9] (summed by the caller), v_mean2d [n, 2]; all zeroed.
cudaError_t a3d_gs_project_bwd_cuda(A3dGsDtype dtype, const void* means, const void* quats, const void* scales,
                                    const void* sh, int64_t sh_k, const void* dirs, const void* view_rot,
                                    const void* conic, const int32_t* radii, const void* grads, int64_t n,
                                    const A3dGsCamera& cam, int32_t sh_degree, void* v_means, void* v_quats,
                                    void* v_scales, void* v_opacities, void* v_sh, void* v_dirs, void* v_view,
                                    void* v_mean2d, cudaStream_t stream);
