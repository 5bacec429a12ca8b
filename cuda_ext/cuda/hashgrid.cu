// CUDA kernels of the multi-resolution hash encoding; math from cuda_ext/include/hashgrid.h.
//
// Forward and table-backward: one thread per (point, level) (grid.y = level), so a
// warp reads one level's table region. Input-backward: one thread per point looping
// over levels, so v_x needs no atomics.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "hashgrid.cuh"

namespace {

constexpr int kThreads = 128;

// Table loads in the math type; half goes through __half2float (torch builds define
// __CUDA_NO_HALF_CONVERSIONS__, so no implicit conversions).
template <typename T>
__device__ __forceinline__ T load_as(const float* p) { return (T)__ldg(p); }
template <typename T>
__device__ __forceinline__ T load_as(const double* p) { return (T)__ldg(p); }
template <typename T>
__device__ __forceinline__ T load_as(const __half* p) { return (T)__half2float(__ldg(p)); }

template <typename T, typename TableT, int D>
__global__ void hashgrid_fwd_kernel(const T* __restrict__ x, const TableT* __restrict__ table, T* __restrict__ out,
                                    int64_t n, const A3dHashGridLayout lay) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int l = blockIdx.y;
    if (i >= n) return;
    const int F = lay.n_features;
    const uint32_t res = lay.resolution[l];
    const bool hashed = (lay.hashed_mask >> l) & 1u;
    uint32_t cell[D];
    T frac[D];
    a3d_locate<T, D>(x + i * D, res, cell, frac);
    T acc[A3D_MAX_FEATURES];
#pragma unroll
    for (int f = 0; f < A3D_MAX_FEATURES; ++f) acc[f] = (T)0;
#pragma unroll
    for (uint32_t c = 0; c < (1u << D); ++c) {
        const T w = a3d_corner_weight<T, D>(c, frac);
        const int64_t row = lay.offset[l] + a3d_corner_row<D>(c, cell, res, lay.table_size, hashed);
        const TableT* e = table + row * F;
#pragma unroll
        for (int f = 0; f < A3D_MAX_FEATURES; ++f)
            if (f < F) acc[f] += w * load_as<T>(e + f);
    }
    T* o = out + (i * lay.n_levels + l) * F;
#pragma unroll
    for (int f = 0; f < A3D_MAX_FEATURES; ++f)
        if (f < F) o[f] = acc[f];
}

template <typename T, int D>
__global__ void hashgrid_bwd_table_kernel(const T* __restrict__ v_out, const T* __restrict__ x, T* __restrict__ v_table,
                                          int64_t n, const A3dHashGridLayout lay) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int l = blockIdx.y;
    if (i >= n) return;
    const int F = lay.n_features;
    const uint32_t res = lay.resolution[l];
    const bool hashed = (lay.hashed_mask >> l) & 1u;
    uint32_t cell[D];
    T frac[D];
    a3d_locate<T, D>(x + i * D, res, cell, frac);
    T g[A3D_MAX_FEATURES];
    const T* gp = v_out + (i * lay.n_levels + l) * F;
#pragma unroll
    for (int f = 0; f < A3D_MAX_FEATURES; ++f) g[f] = f < F ? gp[f] : (T)0;
#pragma unroll
    for (uint32_t c = 0; c < (1u << D); ++c) {
        const T w = a3d_corner_weight<T, D>(c, frac);
        const int64_t row = lay.offset[l] + a3d_corner_row<D>(c, cell, res, lay.table_size, hashed);
        T* v = v_table + row * F;
#pragma unroll
        for (int f = 0; f < A3D_MAX_FEATURES; ++f)
            if (f < F) atomicAdd(v + f, w * g[f]);
    }
}

template <typename T, typename TableT, int D>
__global__ void hashgrid_bwd_input_kernel(const T* __restrict__ v_out, const T* __restrict__ x,
                                          const TableT* __restrict__ table, T* __restrict__ v_x, int64_t n,
                                          const A3dHashGridLayout lay) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int F = lay.n_features;
    T acc[D];
#pragma unroll
    for (int d = 0; d < D; ++d) acc[d] = (T)0;
    uint32_t inside = 0u;
    for (int l = 0; l < lay.n_levels; ++l) {
        const uint32_t res = lay.resolution[l];
        const bool hashed = (lay.hashed_mask >> l) & 1u;
        uint32_t cell[D];
        T frac[D];
        inside = a3d_locate<T, D>(x + i * D, res, cell, frac);
        const T* g = v_out + (i * lay.n_levels + l) * F;
#pragma unroll
        for (uint32_t c = 0; c < (1u << D); ++c) {
            const int64_t row = lay.offset[l] + a3d_corner_row<D>(c, cell, res, lay.table_size, hashed);
            const TableT* e = table + row * F;
            T dot = (T)0;
#pragma unroll
            for (int f = 0; f < A3D_MAX_FEATURES; ++f)
                if (f < F) dot += g[f] * load_as<T>(e + f);
            T dw[D];
            a3d_corner_weight_grad<T, D>(c, frac, res, dw);
#pragma unroll
            for (int d = 0; d < D; ++d) acc[d] += dw[d] * dot;
        }
    }
#pragma unroll
    for (int d = 0; d < D; ++d) v_x[i * D + d] = ((inside >> d) & 1u) ? acc[d] : (T)0;
}

bool valid(const A3dHashGridLayout& lay, int64_t n) {
    return n >= 0 && (lay.n_dims == 2 || lay.n_dims == 3) && lay.n_levels >= 1 && lay.n_levels <= A3D_MAX_LEVELS &&
           lay.n_features >= 1 && lay.n_features <= A3D_MAX_FEATURES && n / kThreads < 0x7fffffff;
}

dim3 point_level_grid(int64_t n, int n_levels) {
    return dim3((unsigned)((n + kThreads - 1) / kThreads), (unsigned)n_levels);
}

template <typename T, typename TableT>
void launch_fwd(const void* x, const void* table, void* out, int64_t n, const A3dHashGridLayout& lay,
                cudaStream_t s) {
    const dim3 grid = point_level_grid(n, lay.n_levels);
    if (lay.n_dims == 2)
        hashgrid_fwd_kernel<T, TableT, 2><<<grid, kThreads, 0, s>>>((const T*)x, (const TableT*)table, (T*)out, n, lay);
    else
        hashgrid_fwd_kernel<T, TableT, 3><<<grid, kThreads, 0, s>>>((const T*)x, (const TableT*)table, (T*)out, n, lay);
}

template <typename T, typename TableT>
void launch_bwd_input(const void* v_out, const void* x, const void* table, void* v_x, int64_t n,
                      const A3dHashGridLayout& lay, cudaStream_t s) {
    const unsigned blocks = (unsigned)((n + kThreads - 1) / kThreads);
    if (lay.n_dims == 2)
        hashgrid_bwd_input_kernel<T, TableT, 2>
            <<<blocks, kThreads, 0, s>>>((const T*)v_out, (const T*)x, (const TableT*)table, (T*)v_x, n, lay);
    else
        hashgrid_bwd_input_kernel<T, TableT, 3>
            <<<blocks, kThreads, 0, s>>>((const T*)v_out, (const T*)x, (const TableT*)table, (T*)v_x, n, lay);
}

}  // namespace

cudaError_t a3d_hashgrid_fwd_cuda(const void* x, A3dDtype x_dtype, const void* table, A3dDtype table_dtype,
                                  void* out, int64_t n_points, const A3dHashGridLayout& layout,
                                  cudaStream_t stream) {
    if (!valid(layout, n_points)) return cudaErrorInvalidValue;
    if (n_points == 0) return cudaSuccess;
    if (x_dtype == A3D_F64 && table_dtype == A3D_F64)
        launch_fwd<double, double>(x, table, out, n_points, layout, stream);
    else if (x_dtype == A3D_F32 && table_dtype == A3D_F32)
        launch_fwd<float, float>(x, table, out, n_points, layout, stream);
    else if (x_dtype == A3D_F32 && table_dtype == A3D_F16)
        launch_fwd<float, __half>(x, table, out, n_points, layout, stream);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}

cudaError_t a3d_hashgrid_bwd_table_cuda(const void* v_out, const void* x, A3dDtype x_dtype, void* v_table,
                                        int64_t n_points, const A3dHashGridLayout& layout, cudaStream_t stream) {
    if (!valid(layout, n_points)) return cudaErrorInvalidValue;
    if (n_points == 0) return cudaSuccess;
    const dim3 grid = point_level_grid(n_points, layout.n_levels);
    if (x_dtype == A3D_F32) {
        if (layout.n_dims == 2)
            hashgrid_bwd_table_kernel<float, 2><<<grid, kThreads, 0, stream>>>(
                (const float*)v_out, (const float*)x, (float*)v_table, n_points, layout);
        else
            hashgrid_bwd_table_kernel<float, 3><<<grid, kThreads, 0, stream>>>(
                (const float*)v_out, (const float*)x, (float*)v_table, n_points, layout);
    } else if (x_dtype == A3D_F64) {
        if (layout.n_dims == 2)
            hashgrid_bwd_table_kernel<double, 2><<<grid, kThreads, 0, stream>>>(
                (const double*)v_out, (const double*)x, (double*)v_table, n_points, layout);
        else
            hashgrid_bwd_table_kernel<double, 3><<<grid, kThreads, 0, stream>>>(
                (const double*)v_out, (const double*)x, (double*)v_table, n_points, layout);
    } else {
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

cudaError_t a3d_hashgrid_bwd_input_cuda(const void* v_out, const void* x, A3dDtype x_dtype, const void* table,
                                        A3dDtype table_dtype, void* v_x, int64_t n_points,
                                        const A3dHashGridLayout& layout, cudaStream_t stream) {
    if (!valid(layout, n_points)) return cudaErrorInvalidValue;
    if (n_points == 0) return cudaSuccess;
    if (x_dtype == A3D_F64 && table_dtype == A3D_F64)
        launch_bwd_input<double, double>(v_out, x, table, v_x, n_points, layout, stream);
    else if (x_dtype == A3D_F32 && table_dtype == A3D_F32)
        launch_bwd_input<float, float>(v_out, x, table, v_x, n_points, layout, stream);
    else if (x_dtype == A3D_F32 && table_dtype == A3D_F16)
        launch_bwd_input<float, __half>(v_out, x, table, v_x, n_points, layout, stream);
    else
        return cudaErrorInvalidValue;
    return cudaGetLastError();
}
