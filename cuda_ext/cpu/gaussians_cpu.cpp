// CPU (C++/OpenMP) build of the Gaussian rasterizer: project, bin into 16x16 tiles, blend, and back.
//
// Why: the torch mirror evaluates every (pixel, Gaussian) pair of a tile as dense tensors and
// cannot stop a pixel early; here each tile's splats are gathered once into a contiguous buffer
// and each pixel walks its list front to back until the transmittance runs out. The math comes
// from cuda_ext/include/gaussians.h.
//
// Determinism: projection and SH are one Gaussian per iteration; blending is one tile per
// iteration; the backward writes each (tile, splat) instance's gradient into its own slot and
// sums the slots per Gaussian in instance order. No atomics: results do not depend on the
// thread count.
#include <torch/extension.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "gaussians.h"

namespace {

constexpr const char* kWho = "gaussians_cpu";

#define A3D_GS_DISPATCH(dtype_, ...)      \
    do {                                  \
        if ((dtype_) == torch::kDouble) { \
            using T = double;             \
            __VA_ARGS__;                  \
        } else {                          \
            using T = float;              \
            __VA_ARGS__;                  \
        }                                 \
    } while (0)

struct Inputs {
    torch::Tensor means, quats, scales, opacities, sh, dirs, view_rot;
};

Inputs check_inputs(torch::Tensor means, torch::Tensor quats, torch::Tensor scales, torch::Tensor opacities,
                    torch::Tensor sh, torch::Tensor dirs, torch::Tensor view_rot, int64_t sh_degree) {
    const auto dt = means.scalar_type();
    TORCH_CHECK(dt == torch::kFloat || dt == torch::kDouble, kWho, ": means must be float32 or float64");
    const int64_t n = means.size(0);
    TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, kWho, ": means must be [N, 3], got ", means.sizes());
    TORCH_CHECK(quats.dim() == 2 && quats.size(0) == n && quats.size(1) == 4, kWho, ": quats must be [N, 4]");
    TORCH_CHECK(scales.dim() == 2 && scales.size(0) == n && scales.size(1) == 3, kWho, ": scales must be [N, 3]");
    TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, kWho, ": opacities must be [N]");
    TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3, kWho, ": sh_degree must be 0..3, got ", sh_degree);
    TORCH_CHECK(sh.dim() == 3 && sh.size(0) == n && sh.size(2) == 3 && sh.size(1) >= (sh_degree + 1) * (sh_degree + 1),
                kWho, ": sh must be [N, K >= (sh_degree+1)^2, 3], got ", sh.sizes());
    TORCH_CHECK(dirs.dim() == 2 && dirs.size(0) == n && dirs.size(1) == 3, kWho, ": dirs must be [N, 3]");
    TORCH_CHECK(view_rot.dim() == 2 && view_rot.size(0) == 3 && view_rot.size(1) == 3, kWho,
                ": view_rot must be [3, 3]");
    for (const auto* t : {&quats, &scales, &opacities, &sh, &dirs, &view_rot})
        TORCH_CHECK(t->scalar_type() == dt && t->device().is_cpu(), kWho, ": all inputs must be CPU tensors of one dtype");
    TORCH_CHECK(means.device().is_cpu(), kWho, ": means must be on the CPU");
    return {means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.contiguous(),
            sh.contiguous(),    dirs.contiguous(),  view_rot.contiguous()};
}

A3dGsCamera make_camera(double fx, double fy, double cx, double cy, int64_t width, int64_t height, double near) {
    TORCH_CHECK(fx > 0 && fy > 0, kWho, ": focal lengths must be > 0");
    TORCH_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, kWho, ": image size must be 1..16384");
    TORCH_CHECK(near > 0, kWho, ": near must be > 0");
    return a3d_gs_camera(fx, fy, cx, cy, near, (int32_t)width, (int32_t)height);
}

// Projection + SH colour per Gaussian; counts the tiles each one covers.
template <typename T>
void project_loop(const Inputs& in, int degree, const A3dGsCamera& cam, T* mean2d, T* conic, T* rgb, int32_t* radii,
                  int32_t* rects, int64_t* touched) {
    const int64_t n = in.means.size(0), k = in.sh.size(1);
    const T* m = in.means.data_ptr<T>();
    const T* q = in.quats.data_ptr<T>();
    const T* s = in.scales.data_ptr<T>();
    const T* sh = in.sh.data_ptr<T>();
    const T* d = in.dirs.data_ptr<T>();
    const T* V = in.view_rot.data_ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        T r;
        int32_t* rect = rects + 4 * i;
        const bool vis = a3d_gs_project_fwd(cam, m + 3 * i, q + 4 * i, s + 3 * i, V, mean2d + 2 * i, conic + 3 * i, &r,
                                            rect);
        radii[i] = vis ? (int32_t)a3d_gs_min(r, T(1 << 30)) : 0;
        touched[i] = vis ? (int64_t)(rect[2] - rect[0]) * (rect[3] - rect[1]) : 0;
        if (vis) {
            a3d_gs_sh_fwd(degree, d + 3 * i, sh + 3 * k * i, rgb + 3 * i);
        } else {  // culled: zeros, as the mirror
            mean2d[2 * i] = mean2d[2 * i + 1] = T(0);
            conic[3 * i] = conic[3 * i + 1] = conic[3 * i + 2] = T(0);
            rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = T(0);
        }
    }
}

// Tile lists: tile_offsets [n_tiles + 1], ids [n_instances] by tile, then depth, then Gaussian index.
template <typename T>
void bin_tiles(const A3dGsCamera& cam, int64_t n, const int32_t* rects, const int64_t* touched, const T* means,
               torch::Tensor& tile_offsets, torch::Tensor& ids) {
    const int64_t n_tiles = (int64_t)cam.tiles_x * cam.tiles_y;
    tile_offsets = torch::zeros({n_tiles + 1}, torch::kLong);
    int64_t* off = tile_offsets.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
        if (!touched[i]) continue;
        const int32_t* r = rects + 4 * i;
        for (int32_t ty = r[1]; ty < r[3]; ++ty)
            for (int32_t tx = r[0]; tx < r[2]; ++tx) ++off[(int64_t)ty * cam.tiles_x + tx + 1];
    }
    for (int64_t t = 0; t < n_tiles; ++t) off[t + 1] += off[t];
    ids = torch::empty({off[n_tiles]}, torch::kInt);
    int32_t* pid = ids.data_ptr<int32_t>();
    std::vector<int64_t> fill(off, off + n_tiles);
    for (int64_t i = 0; i < n; ++i) {  // ascending Gaussian index within each tile
        if (!touched[i]) continue;
        const int32_t* r = rects + 4 * i;
        for (int32_t ty = r[1]; ty < r[3]; ++ty)
            for (int32_t tx = r[0]; tx < r[2]; ++tx) pid[fill[(int64_t)ty * cam.tiles_x + tx]++] = (int32_t)i;
    }
#pragma omp parallel
    {
        std::vector<std::pair<T, int32_t>> keys;  // (depth, id): contiguous, ties broken by index
#pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < n_tiles; ++t) {
            keys.clear();
            for (int64_t j = off[t]; j < off[t + 1]; ++j) keys.emplace_back(means[3 * pid[j] + 2], pid[j]);
            std::sort(keys.begin(), keys.end());
            for (int64_t j = off[t]; j < off[t + 1]; ++j) pid[j] = keys[j - off[t]].second;
        }
    }
}

// One packed splat per Gaussian (one or two cache lines), so each tile gathers with one read per instance;
// reach[i] is the radius the reach square is derived from (clamped radii: unbounded).
template <typename T>
void pack_splats(int64_t n, const T* mean2d, const T* conic, const T* opac, const T* rgb, const T* means,
                 const int32_t* radii, std::vector<A3dGsSplat<T>>& splats, std::vector<T>& reach) {
    splats.resize(n);
    reach.resize(n);
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < n; ++g) {
        A3dGsSplat<T>& s = splats[g];
        s.mx = mean2d[2 * g], s.my = mean2d[2 * g + 1];
        s.ca = conic[3 * g], s.cb = conic[3 * g + 1], s.cc = conic[3 * g + 2];
        s.opacity = opac[g];
        s.p_skip = a3d_gs_skip_power(s.opacity);
        s.rgb[0] = rgb[3 * g], s.rgb[1] = rgb[3 * g + 1], s.rgb[2] = rgb[3 * g + 2];
        s.z = means[3 * g + 2];
        reach[g] = radii[g] >= (1 << 30) ? T(1e30) : T(radii[g]);
    }
}

template <typename T>
void gather_tile(const int32_t* ids, int64_t begin, int64_t end, const std::vector<A3dGsSplat<T>>& splats,
                 const std::vector<T>& reach, std::vector<A3dGsSplat<T>>& buf, std::vector<T>& rad) {
    buf.resize(end - begin);
    rad.resize(end - begin);
    for (int64_t j = begin; j < end; ++j) {
        buf[j - begin] = splats[ids[j]];
        rad[j - begin] = reach[ids[j]];
    }
}

constexpr int32_t kSub = 4;                       // pixels per side of a sub-block
constexpr int32_t kSubs = A3D_GS_TILE / kSub;      // sub-blocks per tile side
constexpr int32_t kBlocks = kSubs * kSubs;

// Per 4x4 sub-block of the tile at pixel (x0, y0): the indices into buf of the splats that can reach
// alpha >= 1/255 inside it (a3d_gs_splat_reach), in list order. Pixels then walk only their
// block's list: the same splats blend in the same order, the others would have been skipped.
template <typename T>
void block_lists(const std::vector<A3dGsSplat<T>>& buf, const std::vector<T>& radius, int32_t x0, int32_t y0,
                 std::vector<int32_t>* lists) {
    for (int32_t b = 0; b < kBlocks; ++b) lists[b].clear();
    const int32_t n = (int32_t)buf.size();
    for (int32_t j = 0; j < n; ++j) {
        T hx;
        if (!a3d_gs_splat_reach(buf[j].opacity, radius[j], &hx)) continue;
        const T hy = hx;
        // pixel columns/rows whose centre (i + 0.5) lies in the square, as sub-block ranges of this tile
        const T c0 = ceil(buf[j].mx - hx - T(0.5)) - T(x0), c1 = floor(buf[j].mx + hx - T(0.5)) - T(x0);
        const T r0 = ceil(buf[j].my - hy - T(0.5)) - T(y0), r1 = floor(buf[j].my + hy - T(0.5)) - T(y0);
        if (c1 < T(0) || r1 < T(0) || c0 > T(A3D_GS_TILE - 1) || r0 > T(A3D_GS_TILE - 1)) continue;
        const int32_t bx0 = c0 <= T(0) ? 0 : (int32_t)c0 / kSub, by0 = r0 <= T(0) ? 0 : (int32_t)r0 / kSub;
        const int32_t bx1 = c1 >= T(A3D_GS_TILE - 1) ? kSubs - 1 : (int32_t)c1 / kSub;
        const int32_t by1 = r1 >= T(A3D_GS_TILE - 1) ? kSubs - 1 : (int32_t)r1 / kSub;
        for (int32_t by = by0; by <= by1; ++by) {
            for (int32_t bx = bx0; bx <= bx1; ++bx) {
                lists[by * kSubs + bx].push_back(j);
            }
        }
    }
}

template <typename T>
void blend_fwd_loop(const A3dGsCamera& cam, int64_t n, const int64_t* off, const int32_t* ids, const T* mean2d, const T* conic,
                    const T* opac, const T* rgb, const T* means, const int32_t* radii, T* color, T* alpha, T* depth, T* t_final,
                    int32_t* n_contrib) {
    std::vector<A3dGsSplat<T>> splats;
    std::vector<T> reach;
    pack_splats(n, mean2d, conic, opac, rgb, means, radii, splats, reach);
    const int64_t n_tiles = (int64_t)cam.tiles_x * cam.tiles_y;
#pragma omp parallel
    {
        std::vector<A3dGsSplat<T>> buf;
        std::vector<T> rad;
        std::vector<int32_t> lists[kBlocks];
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tiles; ++t) {
            gather_tile(ids, off[t], off[t + 1], splats, reach, buf, rad);
            const int32_t x0 = (int32_t)(t % cam.tiles_x) * A3D_GS_TILE, y0 = (int32_t)(t / cam.tiles_x) * A3D_GS_TILE;
            block_lists(buf, rad, x0, y0, lists);
            for (int32_t b = 0; b < kBlocks; ++b) {
                const std::vector<int32_t>& list = lists[b];
                const int32_t bx0 = x0 + (b % kSubs) * kSub, by0 = y0 + (b / kSubs) * kSub;
                for (int32_t y = by0; y < std::min(cam.height, by0 + kSub); ++y)
                    for (int32_t x = bx0; x < std::min(cam.width, bx0 + kSub); ++x) {
                        const T px = T(x) + T(0.5), py = T(y) + T(0.5);
                        T trans = T(1), c[3] = {T(0), T(0), T(0)}, dep = T(0);
                        int32_t last = 0;
                        for (const int32_t j : list) {
                            const int step = a3d_gs_blend_fwd(buf[j], px, py, &trans, c, &dep);
                            if (step == 2) break;
                            if (step == 1) last = j + 1;
                        }
                        const int64_t p = (int64_t)y * cam.width + x;
                        color[3 * p] = c[0], color[3 * p + 1] = c[1], color[3 * p + 2] = c[2];
                        alpha[p] = T(1) - trans;
                        depth[p] = dep;
                        t_final[p] = trans;
                        n_contrib[p] = last;
                    }
            }
        }
    }
}

// Per-instance gradients (slot j of ids), tile by tile, pixels back to front over their block's list.
template <typename T>
void blend_bwd_loop(const A3dGsCamera& cam, int64_t n, const int64_t* off, const int32_t* ids, const T* mean2d, const T* conic,
                    const T* opac, const T* rgb, const T* means, const int32_t* radii, const T* v_color, const T* v_alpha, const T* v_depth,
                    const T* t_final, const int32_t* n_contrib, T* slots) {
    std::vector<A3dGsSplat<T>> splats;
    std::vector<T> reach;
    pack_splats(n, mean2d, conic, opac, rgb, means, radii, splats, reach);
    const int64_t n_tiles = (int64_t)cam.tiles_x * cam.tiles_y;
#pragma omp parallel
    {
        std::vector<A3dGsSplat<T>> buf;
        std::vector<T> rad;
        std::vector<int32_t> lists[kBlocks];
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < n_tiles; ++t) {
            gather_tile(ids, off[t], off[t + 1], splats, reach, buf, rad);
            T* tile_slots = slots + A3D_GS_N_GRAD * off[t];
            const int32_t x0 = (int32_t)(t % cam.tiles_x) * A3D_GS_TILE, y0 = (int32_t)(t / cam.tiles_x) * A3D_GS_TILE;
            block_lists(buf, rad, x0, y0, lists);
            for (int32_t b = 0; b < kBlocks; ++b) {
                const std::vector<int32_t>& list = lists[b];
                const int32_t bx0 = x0 + (b % kSubs) * kSub, by0 = y0 + (b / kSubs) * kSub;
                for (int32_t y = by0; y < std::min(cam.height, by0 + kSub); ++y)
                    for (int32_t x = bx0; x < std::min(cam.width, bx0 + kSub); ++x) {
                        const int64_t p = (int64_t)y * cam.width + x;
                        const T px = T(x) + T(0.5), py = T(y) + T(0.5);
                        const T vc[3] = {v_color[3 * p], v_color[3 * p + 1], v_color[3 * p + 2]};
                        T trans = t_final[p], acc[3] = {T(0), T(0), T(0)}, acc_z = T(0);
                        const int32_t last = n_contrib[p];
                        for (auto it = list.rbegin(); it != list.rend(); ++it) {
                            if (*it >= last) continue;
                            a3d_gs_blend_bwd(buf[*it], px, py, vc, v_alpha[p], v_depth[p], t_final[p], &trans, acc,
                                             &acc_z, tile_slots + A3D_GS_N_GRAD * (*it));
                        }
                    }
            }
        }
    }
}

// Sums the instance slots per Gaussian in instance order (deterministic), then projection + SH backward.
template <typename T>
void reduce_and_project_bwd(const Inputs& in, int degree, const A3dGsCamera& cam, const torch::Tensor& slots,
                            const torch::Tensor& ids, const torch::Tensor& conic, const torch::Tensor& radii,
                            torch::Tensor& v_means, torch::Tensor& v_quats, torch::Tensor& v_scales,
                            torch::Tensor& v_opac, torch::Tensor& v_sh, torch::Tensor& v_dirs, torch::Tensor& v_view,
                            torch::Tensor& v_mean2d) {
    const int64_t n = in.means.size(0), k = in.sh.size(1), n_inst = ids.size(0);
    std::vector<T> per_g((size_t)n * A3D_GS_N_GRAD, T(0));
    const T* sl = slots.data_ptr<T>();
    const int32_t* pid = ids.data_ptr<int32_t>();
    for (int64_t j = 0; j < n_inst; ++j)
        for (int c = 0; c < A3D_GS_N_GRAD; ++c) per_g[(size_t)pid[j] * A3D_GS_N_GRAD + c] += sl[A3D_GS_N_GRAD * j + c];
    const T* m = in.means.data_ptr<T>();
    const T* q = in.quats.data_ptr<T>();
    const T* s = in.scales.data_ptr<T>();
    const T* shp = in.sh.data_ptr<T>();
    const T* d = in.dirs.data_ptr<T>();
    const T* V = in.view_rot.data_ptr<T>();
    const T* cn = conic.data_ptr<T>();
    const int32_t* rad = radii.data_ptr<int32_t>();
    T* gm = v_means.data_ptr<T>();
    T* gq = v_quats.data_ptr<T>();
    T* gs = v_scales.data_ptr<T>();
    T* go = v_opac.data_ptr<T>();
    T* gsh = v_sh.data_ptr<T>();
    T* gd = v_dirs.data_ptr<T>();
    T* gv = v_view.data_ptr<T>();
    T* gm2 = v_mean2d.data_ptr<T>();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        if (rad[i] <= 0) continue;
        const T* g = per_g.data() + (size_t)i * A3D_GS_N_GRAD;
        gm2[2 * i] = g[0], gm2[2 * i + 1] = g[1];
        go[i] = g[5];
        a3d_gs_project_bwd(cam, m + 3 * i, q + 4 * i, s + 3 * i, V, cn + 3 * i, g, g + 2, g[9], gm + 3 * i, gq + 4 * i,
                           gs + 3 * i, gv + 9 * i);
        a3d_gs_sh_bwd(degree, d + 3 * i, shp + 3 * k * i, g + 6, gsh + 3 * k * i, gd + 3 * i);
    }
}

}  // namespace

// (color [H, W, 3], alpha [H, W], depth [H, W], mean2d [N, 2], conic [N, 3], rgb [N, 3], radii int32 [N],
//  tile_offsets int64 [n_tiles + 1], ids int32 [n_instances], t_final [H, W], n_contrib int32 [H, W]).
std::vector<torch::Tensor> gaussians_fwd(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                         torch::Tensor opacities, torch::Tensor sh, torch::Tensor dirs,
                                         torch::Tensor view_rot, double fx, double fy, double cx, double cy,
                                         int64_t width, int64_t height, double near, int64_t sh_degree) {
    const Inputs in = check_inputs(means, quats, scales, opacities, sh, dirs, view_rot, sh_degree);
    const A3dGsCamera cam = make_camera(fx, fy, cx, cy, width, height, near);
    const int64_t n = in.means.size(0);
    const auto opt = in.means.options();
    auto mean2d = torch::zeros({n, 2}, opt), conic = torch::zeros({n, 3}, opt), rgb = torch::empty({n, 3}, opt);
    auto radii = torch::empty({n}, opt.dtype(torch::kInt));
    auto rects = torch::empty({n, 4}, opt.dtype(torch::kInt));
    auto touched = torch::empty({n}, opt.dtype(torch::kLong));
    auto color = torch::empty({height, width, 3}, opt), alpha = torch::empty({height, width}, opt);
    auto depth = torch::empty({height, width}, opt), t_final = torch::empty({height, width}, opt);
    auto n_contrib = torch::empty({height, width}, opt.dtype(torch::kInt));
    torch::Tensor tile_offsets, ids;
    A3D_GS_DISPATCH(in.means.scalar_type(), {
        project_loop<T>(in, (int)sh_degree, cam, mean2d.data_ptr<T>(), conic.data_ptr<T>(), rgb.data_ptr<T>(),
                        radii.data_ptr<int32_t>(), rects.data_ptr<int32_t>(), touched.data_ptr<int64_t>());
        bin_tiles<T>(cam, n, rects.data_ptr<int32_t>(), touched.data_ptr<int64_t>(), in.means.data_ptr<T>(),
                     tile_offsets, ids);
        blend_fwd_loop<T>(cam, n, tile_offsets.data_ptr<int64_t>(), ids.data_ptr<int32_t>(), mean2d.data_ptr<T>(),
                          conic.data_ptr<T>(), in.opacities.data_ptr<T>(), rgb.data_ptr<T>(), in.means.data_ptr<T>(),
                          radii.data_ptr<int32_t>(), color.data_ptr<T>(), alpha.data_ptr<T>(), depth.data_ptr<T>(), t_final.data_ptr<T>(),
                          n_contrib.data_ptr<int32_t>());
    });
    return {color, alpha, depth, mean2d, conic, rgb, radii, tile_offsets, ids, t_final, n_contrib};
}

// (v_means [N, 3], v_quats [N, 4], v_scales [N, 3], v_opacities [N], v_sh [N, K, 3], v_dirs [N, 3],
//  v_view_rot [3, 3], v_mean2d [N, 2]).
std::vector<torch::Tensor> gaussians_bwd(torch::Tensor v_color, torch::Tensor v_alpha, torch::Tensor v_depth,
                                         torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                         torch::Tensor opacities, torch::Tensor sh, torch::Tensor dirs,
                                         torch::Tensor view_rot, torch::Tensor mean2d, torch::Tensor conic,
                                         torch::Tensor rgb, torch::Tensor radii, torch::Tensor tile_offsets,
                                         torch::Tensor ids, torch::Tensor t_final, torch::Tensor n_contrib, double fx,
                                         double fy, double cx, double cy, int64_t width, int64_t height, double near,
                                         int64_t sh_degree) {
    const Inputs in = check_inputs(means, quats, scales, opacities, sh, dirs, view_rot, sh_degree);
    const A3dGsCamera cam = make_camera(fx, fy, cx, cy, width, height, near);
    const int64_t n = in.means.size(0), k = in.sh.size(1), n_inst = ids.size(0);
    const auto opt = in.means.options();
    TORCH_CHECK(v_color.sizes() == torch::IntArrayRef({height, width, 3}) &&
                    v_alpha.sizes() == torch::IntArrayRef({height, width}) && v_depth.sizes() == v_alpha.sizes(),
                kWho, ": upstream gradients must be [H, W, 3], [H, W], [H, W]");
    TORCH_CHECK(tile_offsets.scalar_type() == torch::kLong && ids.scalar_type() == torch::kInt &&
                    radii.scalar_type() == torch::kInt && n_contrib.scalar_type() == torch::kInt &&
                    tile_offsets.size(0) == (int64_t)cam.tiles_x * cam.tiles_y + 1,
                kWho, ": saved tile lists do not match the camera");
    v_color = v_color.to(opt).contiguous();
    v_alpha = v_alpha.to(opt).contiguous();
    v_depth = v_depth.to(opt).contiguous();
    mean2d = mean2d.contiguous(), conic = conic.contiguous(), rgb = rgb.contiguous(), radii = radii.contiguous();
    tile_offsets = tile_offsets.contiguous(), ids = ids.contiguous();
    t_final = t_final.contiguous(), n_contrib = n_contrib.contiguous();
    auto slots = torch::zeros({n_inst, A3D_GS_N_GRAD}, opt);
    auto v_means = torch::zeros({n, 3}, opt), v_quats = torch::zeros({n, 4}, opt), v_scales = torch::zeros({n, 3}, opt);
    auto v_opac = torch::zeros({n}, opt), v_sh = torch::zeros({n, k, 3}, opt), v_dirs = torch::zeros({n, 3}, opt);
    auto v_view = torch::zeros({n, 9}, opt), v_mean2d = torch::zeros({n, 2}, opt);
    A3D_GS_DISPATCH(in.means.scalar_type(), {
        blend_bwd_loop<T>(cam, n, tile_offsets.data_ptr<int64_t>(), ids.data_ptr<int32_t>(), mean2d.data_ptr<T>(),
                          conic.data_ptr<T>(), in.opacities.data_ptr<T>(), rgb.data_ptr<T>(), in.means.data_ptr<T>(),
                          radii.data_ptr<int32_t>(), v_color.data_ptr<T>(), v_alpha.data_ptr<T>(), v_depth.data_ptr<T>(), t_final.data_ptr<T>(),
                          n_contrib.data_ptr<int32_t>(), slots.data_ptr<T>());
        reduce_and_project_bwd<T>(in, (int)sh_degree, cam, slots, ids, conic, radii, v_means, v_quats, v_scales,
                                  v_opac, v_sh, v_dirs, v_view, v_mean2d);
    });
    return {v_means, v_quats, v_scales, v_opac, v_sh, v_dirs, v_view.sum(0).view({3, 3}), v_mean2d};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "avatar3d 3D Gaussian rasterizer, CPU build (C++/OpenMP)";
    m.def("fwd", &gaussians_fwd, "project, bin into tiles, blend front to back");
    m.def("bwd", &gaussians_bwd, "gradients to means, quats, scales, opacities, SH, dirs, view rotation, mean2d");
}
