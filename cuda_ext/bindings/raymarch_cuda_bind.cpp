// torch binding of the CUDA ray-marching/compositing launchers (cuda_ext/cuda/raymarch.cu).
//
// Why separate: needs a CUDA build of torch (current stream, device guard); the kernels
// are plain CUDA and compile-checked without torch. Same Python API as the CPU build
// (raymarch_cpu.cpp). The packed march does count -> exclusive cumsum (torch) -> one
// device-to-host copy of the total -> fill.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <tuple>
#include <vector>

#include "raymarch.cuh"
#include "raymarch_host.h"

namespace {

constexpr const char* kWho = "raymarch_cuda";

A3dOccGrid make_grid(const std::vector<double>& aabb, int64_t resolution, int64_t n_cascades) {
    return a3d_host::make_grid(aabb, resolution, n_cascades, kWho);
}

A3dMarchParams make_params(double near_plane, double cone_angle, double dt_min, double dt_max, int64_t max_samples) {
    return a3d_host::make_params(near_plane, cone_angle, dt_min, dt_max, max_samples, kWho);
}

void check_bits(const torch::Tensor& bits, const A3dOccGrid& g) {
    const int64_t cells = (int64_t)g.n_cascades * g.resolution * g.resolution * g.resolution;
    TORCH_CHECK(bits.is_cuda() && bits.scalar_type() == at::kByte && bits.dim() == 1 && bits.size(0) == (cells + 7) / 8,
                "raymarch_cuda: bitfield must be a CUDA uint8 tensor of ", (cells + 7) / 8, " bytes");
}

void check_rays(const torch::Tensor& o, const torch::Tensor& d) {
    TORCH_CHECK(o.is_cuda() && d.is_cuda() && o.scalar_type() == at::kFloat && d.scalar_type() == at::kFloat &&
                    o.dim() == 2 && o.size(1) == 3 && d.sizes() == o.sizes(),
                "raymarch_cuda: rays_o/rays_d must be CUDA float32 [n_rays, 3]");
}

A3dRmDtype rm_dtype(at::ScalarType t) {
    TORCH_CHECK(t == at::kFloat || t == at::kDouble, "raymarch_cuda: compositing needs float32 or float64");
    return t == at::kDouble ? A3D_RM_F64 : A3D_RM_F32;
}

void check(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, "raymarch_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

}  // namespace

std::vector<std::vector<double>> grid_info(std::vector<double> aabb, int64_t resolution, int64_t n_cascades) {
    return a3d_host::grid_info(make_grid(aabb, resolution, n_cascades));
}

std::tuple<torch::Tensor, torch::Tensor> occupied(torch::Tensor points, torch::Tensor bits, std::vector<double> aabb,
                                                  int64_t resolution, int64_t n_cascades) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    check_bits(bits, g);
    TORCH_CHECK(points.is_cuda() && points.scalar_type() == at::kFloat && points.dim() == 2 && points.size(1) == 3,
                "raymarch_cuda: points must be CUDA float32 [n, 3]");
    const c10::cuda::CUDAGuard guard(points.device());
    points = points.contiguous();
    bits = bits.contiguous();
    const int64_t n = points.size(0);
    auto occ = torch::empty({n}, points.options().dtype(at::kByte));
    auto idx = torch::empty({n}, points.options().dtype(at::kLong));
    check(a3d_occupied_cuda(points.data_ptr<float>(), n, bits.data_ptr<uint8_t>(), g, occ.data_ptr<uint8_t>(),
                            idx.data_ptr<int64_t>(), stream()),
          "occupied");
    return {occ.to(at::kBool), idx};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> ray_aabb(torch::Tensor rays_o, torch::Tensor rays_d,
                                                                 std::vector<double> aabb, int64_t resolution,
                                                                 int64_t n_cascades, double near_plane) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    check_rays(rays_o, rays_d);
    const c10::cuda::CUDAGuard guard(rays_o.device());
    rays_o = rays_o.contiguous();
    rays_d = rays_d.contiguous();
    const int64_t n = rays_o.size(0);
    auto t_near = torch::empty({n}, rays_o.options());
    auto t_far = torch::empty({n}, rays_o.options());
    auto hit = torch::empty({n}, rays_o.options().dtype(at::kByte));
    check(a3d_ray_aabb_cuda(rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), n, g, (float)near_plane,
                            t_near.data_ptr<float>(), t_far.data_ptr<float>(), hit.data_ptr<uint8_t>(), stream()),
          "ray_aabb");
    return {t_near, t_far, hit.to(at::kBool)};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> march(
    torch::Tensor rays_o, torch::Tensor rays_d, torch::Tensor bits, std::vector<double> aabb, int64_t resolution,
    int64_t n_cascades, double near_plane, double cone_angle, double dt_min, double dt_max, int64_t max_samples) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    const A3dMarchParams p = make_params(near_plane, cone_angle, dt_min, dt_max, max_samples);
    check_bits(bits, g);
    check_rays(rays_o, rays_d);
    const c10::cuda::CUDAGuard guard(rays_o.device());
    rays_o = rays_o.contiguous();
    rays_d = rays_d.contiguous();
    bits = bits.contiguous();
    const int64_t n = rays_o.size(0);
    auto counts = torch::zeros({n}, rays_o.options().dtype(at::kLong));
    check(a3d_march_count_cuda(rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), n, bits.data_ptr<uint8_t>(), g, p,
                               counts.data_ptr<int64_t>(), stream()),
          "march (count)");
    auto offsets = counts.cumsum(0) - counts;
    const int64_t total = n ? counts.sum().item<int64_t>() : 0;  // the one host sync
    auto t_starts = torch::empty({total}, rays_o.options());
    auto t_ends = torch::empty({total}, rays_o.options());
    auto ray_indices = torch::empty({total}, counts.options());
    check(a3d_march_fill_cuda(rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), n, bits.data_ptr<uint8_t>(), g, p,
                              offsets.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                              ray_indices.data_ptr<int64_t>(), t_starts.data_ptr<float>(), t_ends.data_ptr<float>(),
                              stream()),
          "march (fill)");
    return {ray_indices, t_starts, t_ends, offsets, counts};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> march_round(
    torch::Tensor rays_o, torch::Tensor rays_d, torch::Tensor bits, std::vector<double> aabb, int64_t resolution,
    int64_t n_cascades, double near_plane, double cone_angle, double dt_min, double dt_max, int64_t max_samples,
    torch::Tensor ray_ids, torch::Tensor t, torch::Tensor far, torch::Tensor n_done, int64_t n_steps) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    const A3dMarchParams p = make_params(near_plane, cone_angle, dt_min, dt_max, max_samples);
    check_bits(bits, g);
    check_rays(rays_o, rays_d);
    TORCH_CHECK(n_steps >= 1, "raymarch_cuda: n_steps must be >= 1");
    const int64_t n = ray_ids.size(0);
    TORCH_CHECK(ray_ids.scalar_type() == at::kLong && t.scalar_type() == at::kFloat && far.scalar_type() == at::kFloat &&
                    n_done.scalar_type() == at::kLong && t.size(0) == n && far.size(0) == n && n_done.size(0) == n,
                "raymarch_cuda: march_round needs ray_ids int64, t/far float32, n_done int64, all [n_alive]");
    const c10::cuda::CUDAGuard guard(rays_o.device());
    rays_o = rays_o.contiguous();
    rays_d = rays_d.contiguous();
    bits = bits.contiguous();
    ray_ids = ray_ids.contiguous();
    far = far.contiguous();
    auto t_new = t.contiguous().clone();
    auto done_new = n_done.contiguous().clone();
    auto t_starts = torch::zeros({n, n_steps}, rays_o.options());
    auto t_ends = torch::zeros({n, n_steps}, rays_o.options());
    auto counts = torch::zeros({n}, ray_ids.options());
    check(a3d_march_round_cuda(rays_o.data_ptr<float>(), rays_d.data_ptr<float>(), bits.data_ptr<uint8_t>(), g, p,
                               ray_ids.data_ptr<int64_t>(), n, t_new.data_ptr<float>(), far.data_ptr<float>(),
                               done_new.data_ptr<int64_t>(), (int32_t)n_steps, t_starts.data_ptr<float>(),
                               t_ends.data_ptr<float>(), counts.data_ptr<int64_t>(), stream()),
          "march_round");
    return {t_starts, t_ends, counts, t_new, done_new};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> composite_fwd(
    torch::Tensor sigmas, torch::Tensor rgbs, torch::Tensor t_starts, torch::Tensor t_ends, torch::Tensor offsets,
    torch::Tensor counts) {
    const auto dt = sigmas.scalar_type();
    TORCH_CHECK(sigmas.is_cuda() && rgbs.scalar_type() == dt && t_starts.scalar_type() == dt &&
                    t_ends.scalar_type() == dt && offsets.scalar_type() == at::kLong && counts.scalar_type() == at::kLong,
                "raymarch_cuda: composite needs CUDA tensors sharing a float dtype and int64 offsets/counts");
    const c10::cuda::CUDAGuard guard(sigmas.device());
    sigmas = sigmas.contiguous();
    rgbs = rgbs.contiguous();
    t_starts = t_starts.contiguous();
    t_ends = t_ends.contiguous();
    offsets = offsets.contiguous();
    counts = counts.contiguous();
    const int64_t n_rays = offsets.size(0);
    auto weights = torch::empty_like(sigmas);
    auto opacity = torch::empty({n_rays}, sigmas.options());
    auto depth = torch::empty({n_rays}, sigmas.options());
    auto color = torch::empty({n_rays, 3}, sigmas.options());
    check(a3d_composite_fwd_cuda(rm_dtype(dt), sigmas.data_ptr(), rgbs.data_ptr(), t_starts.data_ptr(),
                                 t_ends.data_ptr(), offsets.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), n_rays,
                                 weights.data_ptr(), opacity.data_ptr(), depth.data_ptr(), color.data_ptr(), stream()),
          "composite forward");
    return {weights, opacity, depth, color};
}

std::tuple<torch::Tensor, torch::Tensor> composite_bwd(torch::Tensor v_weights, torch::Tensor v_opacity,
                                                       torch::Tensor v_depth, torch::Tensor v_color,
                                                       torch::Tensor sigmas, torch::Tensor rgbs,
                                                       torch::Tensor t_starts, torch::Tensor t_ends,
                                                       torch::Tensor offsets, torch::Tensor counts) {
    const auto dt = sigmas.scalar_type();
    const c10::cuda::CUDAGuard guard(sigmas.device());
    v_weights = v_weights.to(dt).contiguous();
    v_opacity = v_opacity.to(dt).contiguous();
    v_depth = v_depth.to(dt).contiguous();
    v_color = v_color.to(dt).contiguous();
    sigmas = sigmas.contiguous();
    rgbs = rgbs.contiguous();
    t_starts = t_starts.contiguous();
    t_ends = t_ends.contiguous();
    offsets = offsets.contiguous();
    counts = counts.contiguous();
    auto v_sigmas = torch::empty_like(sigmas);
    auto v_rgbs = torch::empty_like(rgbs);
    check(a3d_composite_bwd_cuda(rm_dtype(dt), v_weights.data_ptr(), v_opacity.data_ptr(), v_depth.data_ptr(),
                                 v_color.data_ptr(), sigmas.data_ptr(), rgbs.data_ptr(), t_starts.data_ptr(),
                                 t_ends.data_ptr(), offsets.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
                                 offsets.size(0), v_sigmas.data_ptr(), v_rgbs.data_ptr(), stream()),
          "composite backward");
    return {v_sigmas, v_rgbs};
}

void composite_round(torch::Tensor sigmas, torch::Tensor rgbs, torch::Tensor t_starts, torch::Tensor t_ends,
                     torch::Tensor counts, torch::Tensor ray_ids, double threshold, torch::Tensor trans,
                     torch::Tensor depth, torch::Tensor color) {
    const auto dt = trans.scalar_type();
    TORCH_CHECK(trans.is_cuda() && trans.is_contiguous() && depth.is_contiguous() && color.is_contiguous() &&
                    depth.scalar_type() == dt && color.scalar_type() == dt,
                "raymarch_cuda: trans/depth/color must be contiguous CUDA tensors sharing a dtype (updated in place)");
    TORCH_CHECK(sigmas.dim() == 2 && sigmas.size(0) == ray_ids.size(0), "raymarch_cuda: sigmas must be [A, k]");
    const c10::cuda::CUDAGuard guard(trans.device());
    sigmas = sigmas.to(dt).contiguous();
    rgbs = rgbs.to(dt).contiguous();
    t_starts = t_starts.to(dt).contiguous();
    t_ends = t_ends.to(dt).contiguous();
    counts = counts.to(at::kLong).contiguous();
    ray_ids = ray_ids.to(at::kLong).contiguous();
    check(a3d_composite_round_cuda(rm_dtype(dt), sigmas.data_ptr(), rgbs.data_ptr(), t_starts.data_ptr(),
                                   t_ends.data_ptr(), counts.data_ptr<int64_t>(), ray_ids.data_ptr<int64_t>(),
                                   ray_ids.size(0), sigmas.size(1), threshold, trans.data_ptr(), depth.data_ptr(),
                                   color.data_ptr(), stream()),
          "composite_round");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "avatar3d occupancy grid, ray marching and volume compositing, CUDA build";
    m.def("grid_info", &grid_info, "grid geometry as computed by raymarch.h");
    m.def("occupied", &occupied, "occupancy and cell index of points");
    m.def("ray_aabb", &ray_aabb, "ray entry/exit of the marching box");
    m.def("march", &march, "packed ray marching through occupied cells (count, scan, fill)");
    m.def("march_round", &march_round, "inference round: up to n_steps samples per alive ray");
    m.def("composite_fwd", &composite_fwd, "packed volume compositing forward");
    m.def("composite_bwd", &composite_bwd, "packed volume compositing backward (closed form)");
    m.def("composite_round", &composite_round, "inference round of compositing, in place");
}
