// CUDA launchers of occupancy lookup, ray marching and volume compositing (plain CUDA, no torch headers).
//
// Why plain CUDA: compiled with nvcc alone (CI proves they build without a GPU or a CUDA
// torch); cuda_ext/bindings/raymarch_cuda_bind.cpp wraps them for torch, passes torch's
// current stream and does the exclusive scan between march_count and march_fill.
//
// One thread per ray (or point) everywhere, no atomics: outputs are deterministic and
// the samples equal the CPU build's and the torch mirror's (raymarch.h rounds each
// marching op explicitly). Index tensors are int64; marching is float32; compositing is
// float32 or float64 (`dtype`).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "raymarch.h"

enum A3dRmDtype : int32_t { A3D_RM_F32 = 0, A3D_RM_F64 = 1 };

// occupied [n] (uint8 0/1) and cell index [n] of points [n, 3].
cudaError_t a3d_occupied_cuda(const float* points, int64_t n, const uint8_t* bits, const A3dOccGrid& grid,
                              uint8_t* occupied, int64_t* index, cudaStream_t stream);

// t_near/t_far [n_rays], hit [n_rays] (uint8) against the marching box.
cudaError_t a3d_ray_aabb_cuda(const float* rays_o, const float* rays_d, int64_t n_rays, const A3dOccGrid& grid,
                              float near_plane, float* t_near, float* t_far, uint8_t* hit, cudaStream_t stream);

// Pass 1: counts [n_rays] of samples per ray.
cudaError_t a3d_march_count_cuda(const float* rays_o, const float* rays_d, int64_t n_rays, const uint8_t* bits,
                                 const A3dOccGrid& grid, const A3dMarchParams& params, int64_t* counts,
                                 cudaStream_t stream);

// Pass 2 (offsets = exclusive scan of counts): ray_indices, t_starts, t_ends [n_samples].
cudaError_t a3d_march_fill_cuda(const float* rays_o, const float* rays_d, int64_t n_rays, const uint8_t* bits,
                                const A3dOccGrid& grid, const A3dMarchParams& params, const int64_t* offsets,
                                const int64_t* counts, int64_t* ray_indices, float* t_starts, float* t_ends,
                                cudaStream_t stream);

// Inference round over n_alive rays: t [n_alive] and n_done [n_alive] updated in place;
// t_starts/t_ends [n_alive, n_steps] (must be zeroed), counts [n_alive].
cudaError_t a3d_march_round_cuda(const float* rays_o, const float* rays_d, const uint8_t* bits,
                                 const A3dOccGrid& grid, const A3dMarchParams& params, const int64_t* ray_ids,
                                 int64_t n_alive, float* t, const float* far, int64_t* n_done, int32_t n_steps,
                                 float* t_starts, float* t_ends, int64_t* counts, cudaStream_t stream);

// weights [S], opacity/depth [R], color [R, 3] from sigmas [S], rgbs [S, 3], t_starts/t_ends [S].
cudaError_t a3d_composite_fwd_cuda(A3dRmDtype dtype, const void* sigmas, const void* rgbs, const void* t_starts,
                                   const void* t_ends, const int64_t* offsets, const int64_t* counts, int64_t n_rays,
                                   void* weights, void* opacity, void* depth, void* color, cudaStream_t stream);

// v_sigmas [S], v_rgbs [S, 3] (closed form) from v_weights [S], v_opacity/v_depth [R], v_color [R, 3].
cudaError_t a3d_composite_bwd_cuda(A3dRmDtype dtype, const void* v_weights, const void* v_opacity,
                                   const void* v_depth, const void* v_color, const void* sigmas, const void* rgbs,
                                   const void* t_starts, const void* t_ends, const int64_t* offsets,
                                   const int64_t* counts, int64_t n_rays, void* v_sigmas, void* v_rgbs,
                                   cudaStream_t stream);

// Inference round of compositing: [n_alive, k] samples onto trans/depth [R], color [R, 3] at ray_ids (distinct).
cudaError_t a3d_composite_round_cuda(A3dRmDtype dtype, const void* sigmas, const void* rgbs, const void* t_starts,
                                     const void* t_ends, const int64_t* counts, const int64_t* ray_ids,
                                     int64_t n_alive, int64_t k, double threshold, void* trans, void* depth,
                                     void* color, cudaStream_t stream);
