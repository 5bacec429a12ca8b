// CUDA kernels of the Gaussian rasterizer; math from cuda_ext/include/gaussians.h.
//
// Projection and its backward: one thread per Gaussian. Blending: one 16x16 block per tile, one
// thread per pixel; the tile's splats are staged through shared memory in batches of 256 and a
// block stops loading once every pixel of it has terminated. Backward: one thread per pixel,
// back to front through its own blended splats, gradients summed per Gaussian with atomicAdd
// (so float sums are in a nondeterministic order, unlike the CPU build).
#include <cuda_runtime.h>

#include "gaussians.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kBlock = A3D_GS_TILE * A3D_GS_TILE;

unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }
bool too_big(int64_t n) { return n < 0 || n / kThreads >= 0x7fffffff; }

template <typename T>
__device__ A3dGsSplat<T> load_splat(int32_t g, const T* __restrict__ mean2d, const T* __restrict__ conic,
                                    const T* __restrict__ opac, const T* __restrict__ rgb,
                                    const T* __restrict__ means) {
    A3dGsSplat<T> s;
    s.mx = mean2d[2 * g], s.my = mean2d[2 * g + 1];
    s.ca = conic[3 * g], s.cb = conic[3 * g + 1], s.cc = conic[3 * g + 2];
    s.opacity = opac[g];
    s.p_skip = a3d_gs_skip_power(s.opacity);
    s.rgb[0] = rgb[3 * g], s.rgb[1] = rgb[3 * g + 1], s.rgb[2] = rgb[3 * g + 2];
    s.z = means[3 * g + 2];
    return s;
}

template <typename T>
__global__ void project_kernel(const T* __restrict__ means, const T* __restrict__ quats, const T* __restrict__ scales,
                               const T* __restrict__ sh, int64_t sh_k, const T* __restrict__ dirs,
                               const T* __restrict__ view_rot, int64_t n, const A3dGsCamera cam, int32_t degree,
                               T* __restrict__ mean2d, T* __restrict__ conic, T* __restrict__ rgb,
                               int32_t* __restrict__ radii, int32_t* __restrict__ rects,
                               int64_t* __restrict__ touched) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T V[9];
    for (int k = 0; k < 9; ++k) V[k] = view_rot[k];
    T r;
    int32_t* rect = rects + 4 * i;
    const bool vis = a3d_gs_project_fwd(cam, means + 3 * i, quats + 4 * i, scales + 3 * i, V, mean2d + 2 * i,
                                        conic + 3 * i, &r, rect);
    radii[i] = vis ? (int32_t)a3d_gs_min(r, T(1 << 30)) : 0;
    touched[i] = vis ? (int64_t)(rect[2] - rect[0]) * (rect[3] - rect[1]) : 0;
    if (vis) {
        a3d_gs_sh_fwd(degree, dirs + 3 * i, sh + 3 * sh_k * i, rgb + 3 * i);
    } else {
        mean2d[2 * i] = mean2d[2 * i + 1] = T(0);
        conic[3 * i] = conic[3 * i + 1] = conic[3 * i + 2] = T(0);
        rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = T(0);
    }
}

template <typename T>
__global__ void fill_keys_kernel(const T* __restrict__ means, const int32_t* __restrict__ rects,
                                 const int64_t* __restrict__ offsets, const int64_t* __restrict__ touched, int64_t n,
                                 int32_t tiles_x, int64_t* __restrict__ keys, int32_t* __restrict__ ids) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || touched[i] == 0) return;
    const int32_t* r = rects + 4 * i;
    // z > near > 0: the float bit pattern orders like the value
    const uint64_t depth_bits = (uint64_t)__float_as_uint((float)means[3 * i + 2]);
    int64_t k = offsets[i];
    for (int32_t ty = r[1]; ty < r[3]; ++ty)
        for (int32_t tx = r[0]; tx < r[2]; ++tx, ++k) {
            keys[k] = (int64_t)(((uint64_t)((int64_t)ty * tiles_x + tx) << 32) | depth_bits);
            ids[k] = (int32_t)i;
        }
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    blend_fwd_kernel(const A3dGsCamera cam, const int64_t* __restrict__ tile_offsets, const int32_t* __restrict__ ids,
                     const T* __restrict__ mean2d, const T* __restrict__ conic, const T* __restrict__ opac,
                     const T* __restrict__ rgb, const T* __restrict__ means, T* __restrict__ color,
                     T* __restrict__ alpha, T* __restrict__ depth, T* __restrict__ t_final,
                     int32_t* __restrict__ n_contrib) {
    __shared__ A3dGsSplat<T> batch[kBlock];
    const int32_t tile = blockIdx.y * cam.tiles_x + blockIdx.x;
    const int32_t x = blockIdx.x * A3D_GS_TILE + threadIdx.x, y = blockIdx.y * A3D_GS_TILE + threadIdx.y;
    const int32_t rank = threadIdx.y * A3D_GS_TILE + threadIdx.x;
    const bool inside = x < cam.width && y < cam.height;
    const T px = T(x) + T(0.5), py = T(y) + T(0.5);
    const int64_t begin = tile_offsets[tile], end = tile_offsets[tile + 1];
    T trans = T(1), c[3] = {T(0), T(0), T(0)}, dep = T(0);
    int32_t last = 0;
    bool done = !inside;
    for (int64_t base = begin; base < end; base += kBlock) {
        if (__syncthreads_count(done) == kBlock) break;  // every pixel of the tile has terminated
        if (base + rank < end) batch[rank] = load_splat<T>(ids[base + rank], mean2d, conic, opac, rgb, means);
        __syncthreads();
        const int32_t count = (int32_t)(end - base < kBlock ? end - base : kBlock);
        for (int32_t j = 0; j < count && !done; ++j) {
            const int step = a3d_gs_blend_fwd(batch[j], px, py, &trans, c, &dep);
            if (step == 2) done = true;
            else if (step == 1) last = (int32_t)(base - begin + j + 1);
        }
    }
    if (!inside) return;
    const int64_t p = (int64_t)y * cam.width + x;
    color[3 * p] = c[0], color[3 * p + 1] = c[1], color[3 * p + 2] = c[2];
    alpha[p] = T(1) - trans;
    depth[p] = dep;
    t_final[p] = trans;
    n_contrib[p] = last;
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    blend_bwd_kernel(const A3dGsCamera cam, const int64_t* __restrict__ tile_offsets, const int32_t* __restrict__ ids,
                     const T* __restrict__ mean2d, const T* __restrict__ conic, const T* __restrict__ opac,
                     const T* __restrict__ rgb, const T* __restrict__ means, const T* __restrict__ v_color,
                     const T* __restrict__ v_alpha, const T* __restrict__ v_depth, const T* __restrict__ t_final,
                     const int32_t* __restrict__ n_contrib, T* __restrict__ grads) {
    const int32_t tile = blockIdx.y * cam.tiles_x + blockIdx.x;
    const int32_t x = blockIdx.x * A3D_GS_TILE + threadIdx.x, y = blockIdx.y * A3D_GS_TILE + threadIdx.y;
    if (x >= cam.width || y >= cam.height) return;
    const int64_t p = (int64_t)y * cam.width + x;
    const T px = T(x) + T(0.5), py = T(y) + T(0.5);
    const T vc[3] = {v_color[3 * p], v_color[3 * p + 1], v_color[3 * p + 2]};
    const T va = v_alpha[p], vd = v_depth[p], tf = t_final[p];
    T trans = tf, acc[3] = {T(0), T(0), T(0)}, acc_z = T(0);
    const int64_t begin = tile_offsets[tile];
    for (int64_t j = (int64_t)n_contrib[p] - 1; j >= 0; --j) {
        const int32_t g = ids[begin + j];
        const A3dGsSplat<T> s = load_splat<T>(g, mean2d, conic, opac, rgb, means);
        T grad[A3D_GS_N_GRAD];
        for (int k = 0; k < A3D_GS_N_GRAD; ++k) grad[k] = T(0);
        if (!a3d_gs_blend_bwd(s, px, py, vc, va, vd, tf, &trans, acc, &acc_z, grad)) continue;
        for (int k = 0; k < A3D_GS_N_GRAD; ++k) atomicAdd(grads + (int64_t)A3D_GS_N_GRAD * g + k, grad[k]);
    }
}

template <typename T>
__global__ void project_bwd_kernel(const T* __restrict__ means, const T* __restrict__ quats,
                                   const T* __restrict__ scales, const T* __restrict__ sh, int64_t sh_k,
                                   const T* __restrict__ dirs, const T* __restrict__ view_rot,
                                   const T* __restrict__ conic, const int32_t* __restrict__ radii,
                                   const T* __restrict__ grads, int64_t n, const A3dGsCamera cam, int32_t degree,
                                   T* __restrict__ v_means, T* __restrict__ v_quats, T* __restrict__ v_scales,
                                   T* __restrict__ v_opac, T* __restrict__ v_sh, T* __restrict__ v_dirs,
                                   T* __restrict__ v_view, T* __restrict__ v_mean2d) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || radii[i] <= 0) return;
    T V[9];
    for (int k = 0; k < 9; ++k) V[k] = view_rot[k];
    const T* g = grads + (int64_t)A3D_GS_N_GRAD * i;
    v_mean2d[2 * i] = g[0], v_mean2d[2 * i + 1] = g[1];
    v_opac[i] = g[5];
    a3d_gs_project_bwd(cam, means + 3 * i, quats + 4 * i, scales + 3 * i, V, conic + 3 * i, g, g + 2, g[9],
                       v_means + 3 * i, v_quats + 4 * i, v_scales + 3 * i, v_view + 9 * i);
    a3d_gs_sh_bwd(degree, dirs + 3 * i, sh + 3 * sh_k * i, g + 6, v_sh + 3 * sh_k * i, v_dirs + 3 * i);
}

dim3 tile_grid(const A3dGsCamera& cam) { return dim3((unsigned)cam.tiles_x, (unsigned)cam.tiles_y, 1); }
dim3 tile_block() { return dim3(A3D_GS_TILE, A3D_GS_TILE, 1); }

}  // namespace

#define A3D_GS_CUDA_DISPATCH(dtype_, ...) \
    do {                                  \
        if ((dtype_) == A3D_GS_F64) {     \
            using T = double;             \
            __VA_ARGS__;                  \
        } else {                          \
            using T = float;              \
            __VA_ARGS__;                  \
        }                                 \
    } while (0)

cudaError_t a3d_gs_project_cuda(A3dGsDtype dtype, const void* means, const void* quats, const void* scales,
                                const void* sh, int64_t sh_k, const void* dirs, const void* view_rot, int64_t n,
                                const A3dGsCamera& cam, int32_t sh_degree, void* mean2d, void* conic, void* rgb,
                                int32_t* radii, int32_t* rects, int64_t* touched, cudaStream_t stream) {
    if (too_big(n)) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    A3D_GS_CUDA_DISPATCH(dtype, project_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
                                    (const T*)means, (const T*)quats, (const T*)scales, (const T*)sh, sh_k,
                                    (const T*)dirs, (const T*)view_rot, n, cam, sh_degree, (T*)mean2d, (T*)conic,
                                    (T*)rgb, radii, rects, touched));
    return cudaGetLastError();
}

cudaError_t a3d_gs_fill_keys_cuda(A3dGsDtype dtype, const void* means, const int32_t* rects, const int64_t* offsets,
                                  const int64_t* touched, int64_t n, const A3dGsCamera& cam, int64_t* keys,
                                  int32_t* ids, cudaStream_t stream) {
    if (too_big(n)) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    A3D_GS_CUDA_DISPATCH(dtype, fill_keys_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
                                    (const T*)means, rects, offsets, touched, n, cam.tiles_x, keys, ids));
    return cudaGetLastError();
}

cudaError_t a3d_gs_blend_fwd_cuda(A3dGsDtype dtype, const A3dGsCamera& cam, const int64_t* tile_offsets,
                                  const int32_t* ids, const void* mean2d, const void* conic, const void* opacities,
                                  const void* rgb, const void* means, void* color, void* alpha, void* depth,
                                  void* t_final, int32_t* n_contrib, cudaStream_t stream) {
    if (cam.tiles_x <= 0 || cam.tiles_y <= 0) return cudaErrorInvalidValue;
    A3D_GS_CUDA_DISPATCH(dtype, blend_fwd_kernel<T><<<tile_grid(cam), tile_block(), 0, stream>>>(
                                    cam, tile_offsets, ids, (const T*)mean2d, (const T*)conic, (const T*)opacities,
                                    (const T*)rgb, (const T*)means, (T*)color, (T*)alpha, (T*)depth, (T*)t_final,
                                    n_contrib));
    return cudaGetLastError();
}

cudaError_t a3d_gs_blend_bwd_cuda(A3dGsDtype dtype, const A3dGsCamera& cam, const int64_t* tile_offsets,
                                  const int32_t* ids, const void* mean2d, const void* conic, const void* opacities,
                                  const void* rgb, const void* means, const void* v_color, const void* v_alpha,
                                  const void* v_depth, const void* t_final, const int32_t* n_contrib, void* grads,
                                  cudaStream_t stream) {
    if (cam.tiles_x <= 0 || cam.tiles_y <= 0) return cudaErrorInvalidValue;
    A3D_GS_CUDA_DISPATCH(dtype, blend_bwd_kernel<T><<<tile_grid(cam), tile_block(), 0, stream>>>(
                                    cam, tile_offsets, ids, (const T*)mean2d, (const T*)conic, (const T*)opacities,
                                    (const T*)rgb, (const T*)means, (const T*)v_color, (const T*)v_alpha,
                                    (const T*)v_depth, (const T*)t_final, n_contrib, (T*)grads));
    return cudaGetLastError();
}

cudaError_t a3d_gs_project_bwd_cuda(A3dGsDtype dtype, const void* means, const void* quats, const void* scales,
                                    const void* sh, int64_t sh_k, const void* dirs, const void* view_rot,
                                    const void* conic, const int32_t* radii, const void* grads, int64_t n,
                                    const A3dGsCamera& cam, int32_t sh_degree, void* v_means, void* v_quats,
                                    void* v_scales, void* v_opacities, void* v_sh, void* v_dirs, void* v_view,
                                    void* v_mean2d, cudaStream_t stream) {
    if (too_big(n)) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    A3D_GS_CUDA_DISPATCH(dtype, project_bwd_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(
                                    (const T*)means, (const T*)quats, (const T*)scales, (const T*)sh, sh_k,
                                    (const T*)dirs, (const T*)view_rot, (const T*)conic, radii, (const T*)grads, n,
                                    cam, sh_degree, (T*)v_means, (T*)v_quats, (T*)v_scales, (T*)v_opacities,
                                    (T*)v_sh, (T*)v_dirs, (T*)v_view, (T*)v_mean2d));
    return cudaGetLastError();
}
