// CUDA kernels of occupancy lookup, ray marching and compositing; math from cuda_ext/include/raymarch.h.
//
// One thread per ray: a ray's march/composite is a sequential recurrence, and per-ray
// loops keep the sample order (and so the packed layout) identical to the CPU build.
#include <cuda_runtime.h>

#include "raymarch.cuh"

namespace {

constexpr int kThreads = 128;

unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }
bool too_big(int64_t n) { return n < 0 || n / kThreads >= 0x7fffffff; }

__global__ void occupied_kernel(const float* __restrict__ x, int64_t n, const uint8_t* __restrict__ bits,
                                const A3dOccGrid g, uint8_t* __restrict__ occ, int64_t* __restrict__ index) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int32_t cell[3];
    const int mip = a3d_grid_mip(g, x + 3 * i);
    const int64_t idx = a3d_grid_cell(g, x + 3 * i, mip, cell);
    index[i] = idx;
    occ[i] = a3d_bit(bits, idx) ? 1 : 0;
}

__global__ void ray_aabb_kernel(const float* __restrict__ o, const float* __restrict__ d, int64_t n,
                                const A3dOccGrid g, float near_plane, float* __restrict__ t_near,
                                float* __restrict__ t_far, uint8_t* __restrict__ hit) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    hit[r] = a3d_ray_aabb(o + 3 * r, d + 3 * r, g.outer_lo, g.outer_hi, near_plane, t_near + r, t_far + r) ? 1 : 0;
}

__global__ void march_count_kernel(const float* __restrict__ o, const float* __restrict__ d, int64_t n,
                                   const uint8_t* __restrict__ bits, const A3dOccGrid g, const A3dMarchParams p,
                                   int64_t* __restrict__ counts) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    counts[r] = a3d_march_ray(g, bits, o + 3 * r, d + 3 * r, p, nullptr, nullptr);
}

__global__ void march_fill_kernel(const float* __restrict__ o, const float* __restrict__ d, int64_t n,
                                  const uint8_t* __restrict__ bits, const A3dOccGrid g, const A3dMarchParams p,
                                  const int64_t* __restrict__ offsets, const int64_t* __restrict__ counts,
                                  int64_t* __restrict__ ray_indices, float* __restrict__ t0,
                                  float* __restrict__ t1) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n || counts[r] == 0) return;
    const int64_t base = offsets[r];
    const int32_t m = a3d_march_ray(g, bits, o + 3 * r, d + 3 * r, p, t0 + base, t1 + base);
    for (int32_t k = 0; k < m; ++k) ray_indices[base + k] = r;
}

__global__ void march_round_kernel(const float* __restrict__ o, const float* __restrict__ d,
                                   const uint8_t* __restrict__ bits, const A3dOccGrid g, const A3dMarchParams p,
                                   const int64_t* __restrict__ ids, int64_t n, float* __restrict__ t,
                                   const float* __restrict__ far, int64_t* __restrict__ n_done, int32_t n_steps,
                                   float* __restrict__ t0, float* __restrict__ t1, int64_t* __restrict__ counts) {
    const int64_t a = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n) return;
    const int64_t r = ids[a];
    float ta = t[a];
    int32_t done = (int32_t)n_done[a];
    counts[a] = a3d_march_ray_round(g, bits, o + 3 * r, d + 3 * r, far[a], p, n_steps, &ta, &done,
                                    t0 + a * n_steps, t1 + a * n_steps);
    t[a] = ta;
    n_done[a] = done;
}

template <typename T>
__global__ void composite_fwd_kernel(const T* __restrict__ s, const T* __restrict__ c, const T* __restrict__ t0,
                                     const T* __restrict__ t1, const int64_t* __restrict__ offsets,
                                     const int64_t* __restrict__ counts, int64_t n, T* __restrict__ w,
                                     T* __restrict__ opacity, T* __restrict__ depth, T* __restrict__ color) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const int64_t k = offsets[r];
    a3d_composite_ray_fwd<T>(s + k, c + 3 * k, t0 + k, t1 + k, counts[r], w + k, opacity + r, depth + r,
                             color + 3 * r);
}

template <typename T>
__global__ void composite_bwd_kernel(const T* __restrict__ vw, const T* __restrict__ vo, const T* __restrict__ vd,
                                     const T* __restrict__ vc, const T* __restrict__ s, const T* __restrict__ c,
                                     const T* __restrict__ t0, const T* __restrict__ t1,
                                     const int64_t* __restrict__ offsets, const int64_t* __restrict__ counts,
                                     int64_t n, T* __restrict__ gs, T* __restrict__ gc) {
    const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const int64_t k = offsets[r];
    a3d_composite_ray_bwd<T>(vw + k, vo[r], vd[r], vc + 3 * r, s + k, c + 3 * k, t0 + k, t1 + k, counts[r], gs + k,
                             gc + 3 * k);
}

template <typename T>
__global__ void composite_round_kernel(const T* __restrict__ s, const T* __restrict__ c, const T* __restrict__ t0,
                                       const T* __restrict__ t1, const int64_t* __restrict__ counts,
                                       const int64_t* __restrict__ ids, int64_t n, int64_t k, T threshold,
                                       T* __restrict__ trans, T* __restrict__ depth, T* __restrict__ color) {
    const int64_t a = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= n) return;
    const int64_t r = ids[a];
    const int64_t m = counts[a] < k ? counts[a] : k;
    a3d_composite_ray_round<T>(s + a * k, c + 3 * a * k, t0 + a * k, t1 + a * k, m, threshold, trans + r, depth + r,
                               color + 3 * r);
}

}  // namespace

cudaError_t a3d_occupied_cuda(const float* points, int64_t n, const uint8_t* bits, const A3dOccGrid& grid,
                              uint8_t* occupied, int64_t* index, cudaStream_t stream) {
    if (too_big(n)) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    occupied_kernel<<<blocks_for(n), kThreads, 0, stream>>>(points, n, bits, grid, occupied, index);
    return cudaGetLastError();
}

cudaError_t a3d_ray_aabb_cuda(const float* rays_o, const float* rays_d, int64_t n_rays, const A3dOccGrid& grid,
                              float near_plane, float* t_near, float* t_far, uint8_t* hit, cudaStream_t stream) {
    if (too_big(n_rays)) return cudaErrorInvalidValue;
    if (n_rays == 0) return cudaSuccess;
    ray_aabb_kernel<<<blocks_for(n_rays), kThreads, 0, stream>>>(rays_o, rays_d, n_rays, grid, near_plane, t_near,
                                                                  t_far, hit);
    return cudaGetLastError();
}

cudaError_t a3d_march_count_cuda(const float* rays_o, const float* rays_d, int64_t n_rays, const uint8_t* bits,
                                 const A3dOccGrid& grid, const A3dMarchParams& params, int64_t* counts,
                                 cudaStream_t stream) {
    if (too_big(n_rays)) return cudaErrorInvalidValue;
    if (n_rays == 0) return cudaSuccess;
    march_count_kernel<<<blocks_for(n_rays), kThreads, 0, stream>>>(rays_o, rays_d, n_rays, bits, grid, params,
                                                                     counts);
    return cudaGetLastError();
}

cudaError_t a3d_march_fill_cuda(const float* rays_o, const float* rays_d, int64_t n_rays, const uint8_t* bits,
                                const A3dOccGrid& grid, const A3dMarchParams& params, const int64_t* offsets,
                                const int64_t* counts, int64_t* ray_indices, float* t_starts, float* t_ends,
                                cudaStream_t stream) {
    if (too_big(n_rays)) return cudaErrorInvalidValue;
    if (n_rays == 0) return cudaSuccess;
    march_fill_kernel<<<blocks_for(n_rays), kThreads, 0, stream>>>(rays_o, rays_d, n_rays, bits, grid, params,
                                                                    offsets, counts, ray_indices, t_starts, t_ends);
    return cudaGetLastError();
}

cudaError_t a3d_march_round_cuda(const float* rays_o, const float* rays_d, const uint8_t* bits,
                                 const A3dOccGrid& grid, const A3dMarchParams& params, const int64_t* ray_ids,
                                 int64_t n_alive, float* t, const float* far, int64_t* n_done, int32_t n_steps,
                                 float* t_starts, float* t_ends, int64_t* counts, cudaStream_t stream) {
    if (too_big(n_alive) || n_steps < 1) return cudaErrorInvalidValue;
    if (n_alive == 0) return cudaSuccess;
    march_round_kernel<<<blocks_for(n_alive), kThreads, 0, stream>>>(rays_o, rays_d, bits, grid, params, ray_ids,
                                                                      n_alive, t, far, n_done, n_steps, t_starts,
                                                                      t_ends, counts);
    return cudaGetLastError();
}

cudaError_t a3d_composite_fwd_cuda(A3dRmDtype dtype, const void* sigmas, const void* rgbs, const void* t_starts,
                                   const void* t_ends, const int64_t* offsets, const int64_t* counts, int64_t n_rays,
                                   void* weights, void* opacity, void* depth, void* color, cudaStream_t stream) {
    if (too_big(n_rays)) return cudaErrorInvalidValue;
    if (n_rays == 0) return cudaSuccess;
    if (dtype == A3D_RM_F32)
        composite_fwd_kernel<float><<<blocks_for(n_rays), kThreads, 0, stream>>>(
            (const float*)sigmas, (const float*)rgbs, (const float*)t_starts, (const float*)t_ends, offsets, counts,
            n_rays, (float*)weights, (float*)opacity, (float*)depth, (float*)color);
    else if (dtype == A3D_RM_F64)
        composite_fwd_kernel<double><<<blocks_for(n_rays), kThreads, 0, stream>>>(
            (const double*)sigmas, (const double*)rgbs, (const double*)t_starts, (const double*)t_ends, offsets,
            counts, n_rays, (double*)weights, (double*)opacity, (double*)depth, (double*)color);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

cudaError_t a3d_composite_bwd_cuda(A3dRmDtype dtype, const void* v_weights, const void* v_opacity,
                                   const void* v_depth, const void* v_color, const void* sigmas, const void* rgbs,
                                   const void* t_starts, const void* t_ends, const int64_t* offsets,
                                   const int64_t* counts, int64_t n_rays, void* v_sigmas, void* v_rgbs,
                                   cudaStream_t stream) {
    if (too_big(n_rays)) return cudaErrorInvalidValue;
    if (n_rays == 0) return cudaSuccess;
    if (dtype == A3D_RM_F32)
        composite_bwd_kernel<float><<<blocks_for(n_rays), kThreads, 0, stream>>>(
            (const float*)v_weights, (const float*)v_opacity, (const float*)v_depth, (const float*)v_color,
            (const float*)sigmas, (const float*)rgbs, (const float*)t_starts, (const float*)t_ends, offsets, counts,
            n_rays, (float*)v_sigmas, (float*)v_rgbs);
    else if (dtype == A3D_RM_F64)
        composite_bwd_kernel<double><<<blocks_for(n_rays), kThreads, 0, stream>>>(
            (const double*)v_weights, (const double*)v_opacity, (const double*)v_depth, (const double*)v_color,
            (const double*)sigmas, (const double*)rgbs, (const double*)t_starts, (const double*)t_ends, offsets,
            counts, n_rays, (double*)v_sigmas, (double*)v_rgbs);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

cudaError_t a3d_composite_round_cuda(A3dRmDtype dtype, const void* sigmas, const void* rgbs, const void* t_starts,
                                     const void* t_ends, const int64_t* counts, const int64_t* ray_ids,
                                     int64_t n_alive, int64_t k, double threshold, void* trans, void* depth,
                                     void* color, cudaStream_t stream) {
    if (too_big(n_alive) || k < 1) return cudaErrorInvalidValue;
    if (n_alive == 0) return cudaSuccess;
    if (dtype == A3D_RM_F32)
        composite_round_kernel<float><<<blocks_for(n_alive), kThreads, 0, stream>>>(
            (const float*)sigmas, (const float*)rgbs, (const float*)t_starts, (const float*)t_ends, counts, ray_ids,
            n_alive, k, (float)threshold, (float*)trans, (float*)depth, (float*)color);
    else if (dtype == A3D_RM_F64)
        composite_round_kernel<double><<<blocks_for(n_alive), kThreads, 0, stream>>>(
            (const double*)sigmas, (const double*)rgbs, (const double*)t_starts, (const double*)t_ends, counts,
            ray_ids, n_alive, k, threshold, (double*)trans, (double*)depth, (double*)color);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}
