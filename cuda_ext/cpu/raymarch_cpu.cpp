// CPU (C++/OpenMP) build of occupancy lookup, ray marching and volume compositing.
//
// Why: the torch mirror marches all rays in lock-step with one Python iteration per
// step (hundreds of small tensor ops); here each ray is one tight loop. The math comes
// from cuda_ext/include/raymarch.h.
//
// Determinism: every loop gives each ray (or point) to one thread and the packed layout
// is made in two passes (count, exclusive cumsum, fill), so the samples are identical
// to the mirror's and do not depend on the thread count. No atomics anywhere.
#include <torch/extension.h>

#include <tuple>
#include <vector>

#include "raymarch.h"
#include "raymarch_host.h"

namespace {

constexpr const char* kWho = "raymarch_cpu";

A3dOccGrid make_grid(const std::vector<double>& aabb, int64_t resolution, int64_t n_cascades) {
    return a3d_host::make_grid(aabb, resolution, n_cascades, kWho);
}

A3dMarchParams make_params(double near_plane, double cone_angle, double dt_min, double dt_max, int64_t max_samples) {
    return a3d_host::make_params(near_plane, cone_angle, dt_min, dt_max, max_samples, kWho);
}

void check_bits(const torch::Tensor& bits, const A3dOccGrid& g) {
    const int64_t cells = (int64_t)g.n_cascades * g.resolution * g.resolution * g.resolution;
    TORCH_CHECK(bits.device().is_cpu() && bits.scalar_type() == torch::kUInt8 && bits.dim() == 1 &&
                    bits.size(0) == (cells + 7) / 8,
                "raymarch_cpu: bitfield must be a CPU uint8 tensor of ", (cells + 7) / 8, " bytes");
}

void check_rays(const torch::Tensor& o, const torch::Tensor& d) {
    TORCH_CHECK(o.device().is_cpu() && d.device().is_cpu(), "raymarch_cpu: rays must be on the CPU");
    TORCH_CHECK(o.scalar_type() == torch::kFloat && d.scalar_type() == torch::kFloat,
                "raymarch_cpu: rays must be float32");
    TORCH_CHECK(o.dim() == 2 && o.size(1) == 3 && d.sizes() == o.sizes(),
                "raymarch_cpu: rays_o and rays_d must be [n_rays, 3], got ", o.sizes(), " and ", d.sizes());
}

void check_composite(const torch::Tensor& sigmas, const torch::Tensor& rgbs, const torch::Tensor& t_starts,
                     const torch::Tensor& t_ends, const torch::Tensor& offsets, const torch::Tensor& counts) {
    const auto dt = sigmas.scalar_type();
    TORCH_CHECK(dt == torch::kFloat || dt == torch::kDouble, "raymarch_cpu: sigmas must be float32 or float64");
    TORCH_CHECK(rgbs.scalar_type() == dt && t_starts.scalar_type() == dt && t_ends.scalar_type() == dt,
                "raymarch_cpu: sigmas, rgbs, t_starts, t_ends must share a dtype");
    const int64_t s = sigmas.size(0);
    TORCH_CHECK(sigmas.dim() == 1 && rgbs.dim() == 2 && rgbs.size(0) == s && rgbs.size(1) == 3 &&
                    t_starts.sizes() == sigmas.sizes() && t_ends.sizes() == sigmas.sizes(),
                "raymarch_cpu: need sigmas/t_starts/t_ends [n_samples], rgbs [n_samples, 3]");
    TORCH_CHECK(offsets.scalar_type() == torch::kLong && counts.scalar_type() == torch::kLong && offsets.dim() == 1 &&
                    counts.sizes() == offsets.sizes(),
                "raymarch_cpu: offsets and counts must be int64 [n_rays]");
}

// Ray ids index the state arrays: checked here, outside the parallel loops (no throwing inside OpenMP).
void check_ids(const torch::Tensor& ids, int64_t n_rays) {
    if (ids.numel() == 0) return;
    TORCH_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < n_rays,
                "raymarch_cpu: ray id out of range [0, ", n_rays, ")");
}

#define A3D_DISPATCH_FLOAT(dtype_, ...)        \
    do {                                       \
        if ((dtype_) == torch::kDouble) {      \
            using T = double;                  \
            __VA_ARGS__;                       \
        } else {                               \
            using T = float;                   \
            __VA_ARGS__;                       \
        }                                      \
    } while (0)

// One ray per iteration; dynamic schedule because sample counts vary a lot between rays.
template <typename T>
void composite_fwd_loop(const T* s, const T* c, const T* t0, const T* t1, const int64_t* po, const int64_t* pc,
                        int64_t n_rays, T* w, T* op, T* dp, T* cl) {
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < n_rays; ++r) {
        const int64_t k = po[r];
        a3d_composite_ray_fwd<T>(s + k, c + 3 * k, t0 + k, t1 + k, pc[r], w + k, op + r, dp + r, cl + 3 * r);
    }
}

template <typename T>
void composite_bwd_loop(const T* vw, const T* vo, const T* vd, const T* vc, const T* s, const T* c, const T* t0,
                        const T* t1, const int64_t* po, const int64_t* pc, int64_t n_rays, T* gs, T* gc) {
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < n_rays; ++r) {
        const int64_t k = po[r];
        a3d_composite_ray_bwd<T>(vw + k, vo[r], vd[r], vc + 3 * r, s + k, c + 3 * k, t0 + k, t1 + k, pc[r], gs + k,
                                 gc + 3 * k);
    }
}

// Alive rays are distinct (a compacted id list), so the in-place state updates never collide.
template <typename T>
void composite_round_loop(const T* s, const T* c, const T* t0, const T* t1, const int64_t* pc, const int64_t* ids,
                          int64_t n, int64_t k, T threshold, T* tr, T* dp, T* cl) {
#pragma omp parallel for schedule(static)
    for (int64_t a = 0; a < n; ++a) {
        const int64_t r = ids[a];
        const int64_t m = pc[a] < k ? pc[a] : k;
        a3d_composite_ray_round<T>(s + a * k, c + 3 * a * k, t0 + a * k, t1 + a * k, m, threshold, tr + r, dp + r,
                                   cl + 3 * r);
    }
}

}  // namespace

// (centre, half0, outer_lo, outer_hi, mip_lo [C*3], mip_cell [C*3]) as computed by the header.
std::vector<std::vector<double>> grid_info(std::vector<double> aabb, int64_t resolution, int64_t n_cascades) {
    return a3d_host::grid_info(make_grid(aabb, resolution, n_cascades));
}

// (occupied bool [N], cell index int64 [N]) for float32 points [N, 3].
std::tuple<torch::Tensor, torch::Tensor> occupied(torch::Tensor points, torch::Tensor bits, std::vector<double> aabb,
                                                  int64_t resolution, int64_t n_cascades) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    check_bits(bits, g);
    TORCH_CHECK(points.device().is_cpu() && points.scalar_type() == torch::kFloat && points.dim() == 2 &&
                    points.size(1) == 3,
                "raymarch_cpu: points must be CPU float32 [n, 3]");
    points = points.contiguous();
    bits = bits.contiguous();
    const int64_t n = points.size(0);
    auto occ = torch::empty({n}, points.options().dtype(torch::kBool));
    auto idx = torch::empty({n}, points.options().dtype(torch::kLong));
    const float* x = points.data_ptr<float>();
    const uint8_t* b = bits.data_ptr<uint8_t>();
    bool* po = occ.data_ptr<bool>();
    int64_t* pi = idx.data_ptr<int64_t>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        int32_t cell[3];
        const int mip = a3d_grid_mip(g, x + 3 * i);
        pi[i] = a3d_grid_cell(g, x + 3 * i, mip, cell);
        po[i] = a3d_bit(b, pi[i]);
    }
    return {occ, idx};
}

// Packed samples: (ray_indices [S], t_starts [S], t_ends [S], offsets [R], counts [R]).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> march(
    torch::Tensor rays_o, torch::Tensor rays_d, torch::Tensor bits, std::vector<double> aabb, int64_t resolution,
    int64_t n_cascades, double near_plane, double cone_angle, double dt_min, double dt_max, int64_t max_samples) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    const A3dMarchParams p = make_params(near_plane, cone_angle, dt_min, dt_max, max_samples);
    check_bits(bits, g);
    check_rays(rays_o, rays_d);
    rays_o = rays_o.contiguous();
    rays_d = rays_d.contiguous();
    bits = bits.contiguous();
    const int64_t n_rays = rays_o.size(0);
    const float* o = rays_o.data_ptr<float>();
    const float* d = rays_d.data_ptr<float>();
    const uint8_t* b = bits.data_ptr<uint8_t>();
    auto counts = torch::empty({n_rays}, rays_o.options().dtype(torch::kLong));
    int64_t* pc = counts.data_ptr<int64_t>();
    // Dynamic schedule: ray lengths (box chords, occupancy) vary a lot.
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < n_rays; ++r) pc[r] = a3d_march_ray(g, b, o + 3 * r, d + 3 * r, p, nullptr, nullptr);
    auto offsets = counts.cumsum(0) - counts;
    const int64_t total = n_rays ? offsets[n_rays - 1].item<int64_t>() + pc[n_rays - 1] : 0;
    auto t_starts = torch::empty({total}, rays_o.options());
    auto t_ends = torch::empty({total}, rays_o.options());
    auto ray_indices = torch::empty({total}, counts.options());
    const int64_t* po = offsets.data_ptr<int64_t>();
    float* p0 = t_starts.data_ptr<float>();
    float* p1 = t_ends.data_ptr<float>();
    int64_t* pr = ray_indices.data_ptr<int64_t>();
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t r = 0; r < n_rays; ++r) {
        if (pc[r] == 0) continue;
        a3d_march_ray(g, b, o + 3 * r, d + 3 * r, p, p0 + po[r], p1 + po[r]);
        for (int64_t k = 0; k < pc[r]; ++k) pr[po[r] + k] = r;
    }
    return {ray_indices, t_starts, t_ends, offsets, counts};
}

// (t_near [R], t_far [R], hit bool [R]) against the marching box.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> ray_aabb(torch::Tensor rays_o, torch::Tensor rays_d,
                                                                 std::vector<double> aabb, int64_t resolution,
                                                                 int64_t n_cascades, double near_plane) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    check_rays(rays_o, rays_d);
    rays_o = rays_o.contiguous();
    rays_d = rays_d.contiguous();
    const int64_t n = rays_o.size(0);
    auto t_near = torch::empty({n}, rays_o.options());
    auto t_far = torch::empty({n}, rays_o.options());
    auto hit = torch::empty({n}, rays_o.options().dtype(torch::kBool));
    const float* o = rays_o.data_ptr<float>();
    const float* d = rays_d.data_ptr<float>();
    float* pn = t_near.data_ptr<float>();
    float* pf = t_far.data_ptr<float>();
    bool* ph = hit.data_ptr<bool>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r)
        ph[r] = a3d_ray_aabb(o + 3 * r, d + 3 * r, g.outer_lo, g.outer_hi, (float)near_plane, pn + r, pf + r);
    return {t_near, t_far, hit};
}

// Inference round on the alive rays: (t_starts [A, k], t_ends [A, k], counts [A], t [A], n_done [A]).
// Entries past counts[a] are zero. t / n_done are returned updated (inputs untouched).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> march_round(
    torch::Tensor rays_o, torch::Tensor rays_d, torch::Tensor bits, std::vector<double> aabb, int64_t resolution,
    int64_t n_cascades, double near_plane, double cone_angle, double dt_min, double dt_max, int64_t max_samples,
    torch::Tensor ray_ids, torch::Tensor t, torch::Tensor far, torch::Tensor n_done, int64_t n_steps) {
    const A3dOccGrid g = make_grid(aabb, resolution, n_cascades);
    const A3dMarchParams p = make_params(near_plane, cone_angle, dt_min, dt_max, max_samples);
    check_bits(bits, g);
    check_rays(rays_o, rays_d);
    TORCH_CHECK(n_steps >= 1, "raymarch_cpu: n_steps must be >= 1");
    const int64_t n = ray_ids.size(0);
    TORCH_CHECK(ray_ids.scalar_type() == torch::kLong && t.scalar_type() == torch::kFloat &&
                    far.scalar_type() == torch::kFloat && n_done.scalar_type() == torch::kLong && t.size(0) == n &&
                    far.size(0) == n && n_done.size(0) == n,
                "raymarch_cpu: march_round needs ray_ids int64, t/far float32, n_done int64, all [n_alive]");
    rays_o = rays_o.contiguous();
    rays_d = rays_d.contiguous();
    bits = bits.contiguous();
    ray_ids = ray_ids.contiguous();
    far = far.contiguous();
    auto t_new = t.contiguous().clone();
    auto done_new = n_done.contiguous().clone();
    auto t_starts = torch::zeros({n, n_steps}, rays_o.options());
    auto t_ends = torch::zeros({n, n_steps}, rays_o.options());
    auto counts = torch::empty({n}, ray_ids.options());
    const float* o = rays_o.data_ptr<float>();
    const float* d = rays_d.data_ptr<float>();
    const uint8_t* b = bits.data_ptr<uint8_t>();
    const int64_t* ids = ray_ids.data_ptr<int64_t>();
    const float* pf = far.data_ptr<float>();
    float* pt = t_new.data_ptr<float>();
    int64_t* pd = done_new.data_ptr<int64_t>();
    float* p0 = t_starts.data_ptr<float>();
    float* p1 = t_ends.data_ptr<float>();
    int64_t* pc = counts.data_ptr<int64_t>();
    check_ids(ray_ids, rays_o.size(0));
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t a = 0; a < n; ++a) {
        const int64_t r = ids[a];
        int32_t done = (int32_t)pd[a];
        pc[a] = a3d_march_ray_round(g, b, o + 3 * r, d + 3 * r, pf[a], p, (int32_t)n_steps, pt + a, &done,
                                    p0 + a * n_steps, p1 + a * n_steps);
        pd[a] = done;
    }
    return {t_starts, t_ends, counts, t_new, done_new};
}

// (weights [S], opacity [R], depth [R], color [R, 3]).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> composite_fwd(
    torch::Tensor sigmas, torch::Tensor rgbs, torch::Tensor t_starts, torch::Tensor t_ends, torch::Tensor offsets,
    torch::Tensor counts) {
    check_composite(sigmas, rgbs, t_starts, t_ends, offsets, counts);
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
    const int64_t* po = offsets.data_ptr<int64_t>();
    const int64_t* pc = counts.data_ptr<int64_t>();
    A3D_DISPATCH_FLOAT(sigmas.scalar_type(),
                       composite_fwd_loop<T>(sigmas.data_ptr<T>(), rgbs.data_ptr<T>(), t_starts.data_ptr<T>(),
                                             t_ends.data_ptr<T>(), po, pc, n_rays, weights.data_ptr<T>(),
                                             opacity.data_ptr<T>(), depth.data_ptr<T>(), color.data_ptr<T>()));
    return {weights, opacity, depth, color};
}

// (v_sigmas [S], v_rgbs [S, 3]) from the upstream grads of (weights, opacity, depth, color).
std::tuple<torch::Tensor, torch::Tensor> composite_bwd(torch::Tensor v_weights, torch::Tensor v_opacity,
                                                       torch::Tensor v_depth, torch::Tensor v_color,
                                                       torch::Tensor sigmas, torch::Tensor rgbs,
                                                       torch::Tensor t_starts, torch::Tensor t_ends,
                                                       torch::Tensor offsets, torch::Tensor counts) {
    check_composite(sigmas, rgbs, t_starts, t_ends, offsets, counts);
    const int64_t n_rays = offsets.size(0);
    const auto opts = sigmas.options();
    TORCH_CHECK(v_weights.sizes() == sigmas.sizes() && v_opacity.size(0) == n_rays && v_depth.size(0) == n_rays &&
                    v_color.dim() == 2 && v_color.size(0) == n_rays && v_color.size(1) == 3,
                "raymarch_cpu: composite_bwd upstream grads have wrong shapes");
    v_weights = v_weights.to(opts.dtype()).contiguous();
    v_opacity = v_opacity.to(opts.dtype()).contiguous();
    v_depth = v_depth.to(opts.dtype()).contiguous();
    v_color = v_color.to(opts.dtype()).contiguous();
    sigmas = sigmas.contiguous();
    rgbs = rgbs.contiguous();
    t_starts = t_starts.contiguous();
    t_ends = t_ends.contiguous();
    offsets = offsets.contiguous();
    counts = counts.contiguous();
    auto v_sigmas = torch::empty_like(sigmas);
    auto v_rgbs = torch::empty_like(rgbs);
    const int64_t* po = offsets.data_ptr<int64_t>();
    const int64_t* pc = counts.data_ptr<int64_t>();
    A3D_DISPATCH_FLOAT(sigmas.scalar_type(),
                       composite_bwd_loop<T>(v_weights.data_ptr<T>(), v_opacity.data_ptr<T>(), v_depth.data_ptr<T>(),
                                             v_color.data_ptr<T>(), sigmas.data_ptr<T>(), rgbs.data_ptr<T>(),
                                             t_starts.data_ptr<T>(), t_ends.data_ptr<T>(), po, pc, n_rays,
                                             v_sigmas.data_ptr<T>(), v_rgbs.data_ptr<T>()));
    return {v_sigmas, v_rgbs};
}

// Inference round: composites [A, k] samples onto trans/depth/color [R(, 3)] at ray_ids, in place.
void composite_round(torch::Tensor sigmas, torch::Tensor rgbs, torch::Tensor t_starts, torch::Tensor t_ends,
                     torch::Tensor counts, torch::Tensor ray_ids, double threshold, torch::Tensor trans,
                     torch::Tensor depth, torch::Tensor color) {
    const int64_t n = ray_ids.size(0);
    const auto dt = trans.scalar_type();
    TORCH_CHECK(dt == torch::kFloat || dt == torch::kDouble, "raymarch_cpu: state must be float32 or float64");
    TORCH_CHECK(trans.is_contiguous() && depth.is_contiguous() && color.is_contiguous() &&
                    depth.scalar_type() == dt && color.scalar_type() == dt,
                "raymarch_cpu: trans/depth/color must be contiguous and share a dtype (updated in place)");
    TORCH_CHECK(sigmas.dim() == 2 && sigmas.size(0) == n && rgbs.dim() == 3 && rgbs.size(2) == 3 &&
                    t_starts.sizes() == sigmas.sizes() && t_ends.sizes() == sigmas.sizes() &&
                    rgbs.size(1) == sigmas.size(1) && counts.size(0) == n,
                "raymarch_cpu: composite_round needs sigmas/t_starts/t_ends [A, k], rgbs [A, k, 3], counts [A]");
    const int64_t k = sigmas.size(1);
    sigmas = sigmas.to(dt).contiguous();
    rgbs = rgbs.to(dt).contiguous();
    t_starts = t_starts.to(dt).contiguous();
    t_ends = t_ends.to(dt).contiguous();
    counts = counts.to(torch::kLong).contiguous();
    ray_ids = ray_ids.to(torch::kLong).contiguous();
    check_ids(ray_ids, trans.size(0));
    TORCH_CHECK(depth.size(0) == trans.size(0) && color.size(0) == trans.size(0), "raymarch_cpu: state sizes differ");
    const int64_t* pc = counts.data_ptr<int64_t>();
    const int64_t* ids = ray_ids.data_ptr<int64_t>();
    A3D_DISPATCH_FLOAT(dt, composite_round_loop<T>(sigmas.data_ptr<T>(), rgbs.data_ptr<T>(), t_starts.data_ptr<T>(),
                                                   t_ends.data_ptr<T>(), pc, ids, n, k, (T)threshold,
                                                   trans.data_ptr<T>(), depth.data_ptr<T>(), color.data_ptr<T>()));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "avatar3d occupancy grid, ray marching and volume compositing, CPU build (C++/OpenMP)";
    m.def("grid_info", &grid_info, "grid geometry as computed by raymarch.h");
    m.def("occupied", &occupied, "occupancy and cell index of points");
    m.def("ray_aabb", &ray_aabb, "ray entry/exit of the marching box");
    m.def("march", &march, "packed ray marching through occupied cells (count, scan, fill)");
    m.def("march_round", &march_round, "inference round: up to n_steps samples per alive ray");
    m.def("composite_fwd", &composite_fwd, "packed volume compositing forward");
    m.def("composite_bwd", &composite_bwd, "packed volume compositing backward (closed form)");
    m.def("composite_round", &composite_round, "inference round of compositing, in place");
}
