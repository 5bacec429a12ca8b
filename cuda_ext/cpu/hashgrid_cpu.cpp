// CPU (C++/OpenMP) build of the multi-resolution hash encoding.
//
// Why: training and tests run on CPU-only machines; the pure-torch mirror spends
// most of its time on integer tensors (corner ids, hashes, weights), which here
// stay in registers. The math comes from cuda_ext/include/hashgrid.h.
//
// Determinism: forward and input-gradient loops give each point to one thread;
// the table gradient gives each *level* to one thread (levels own disjoint row
// ranges), so there are no atomics and results do not depend on the thread count.
#include <torch/extension.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "hashgrid.h"

namespace {

template <typename T, typename TableT>
inline T load_as(const TableT* p) {
    return static_cast<T>(static_cast<float>(*p));
}
template <>
inline double load_as<double, double>(const double* p) {
    return *p;
}

// Level-outer loops: one level's table (<= 2^log2_table_size rows, a few MB) stays in
// cache while all points read it; point-outer order would touch every level per point.
template <typename T, typename TableT, int D>
void hashgrid_fwd_cpu(const T* x, const TableT* table, T* out, int64_t n, const A3dHashGridLayout& lay) {
    const int L = lay.n_levels, F = lay.n_features;
#pragma omp parallel
    for (int l = 0; l < L; ++l) {
        const uint32_t res = lay.resolution[l];
        const bool hashed = (lay.hashed_mask >> l) & 1u;
        const TableT* level_table = table + lay.offset[l] * F;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            uint32_t cell[D];
            T frac[D];
            a3d_locate<T, D>(x + i * D, res, cell, frac);
            T acc[A3D_MAX_FEATURES] = {};
            for (uint32_t c = 0; c < (1u << D); ++c) {
                const T w = a3d_corner_weight<T, D>(c, frac);
                const TableT* e = level_table + (int64_t)a3d_corner_row<D>(c, cell, res, lay.table_size, hashed) * F;
                for (int f = 0; f < F; ++f) acc[f] += w * load_as<T>(e + f);
            }
            T* o = out + (i * L + l) * F;  // [n_points, n_levels * n_features]
            for (int f = 0; f < F; ++f) o[f] = acc[f];
        }
    }
}

// v_table[row] += w * v_out, one level per thread (levels own disjoint rows).
template <typename T, int D>
void hashgrid_bwd_table_cpu(const T* v_out, const T* x, T* v_table, int64_t n, const A3dHashGridLayout& lay) {
    const int L = lay.n_levels, F = lay.n_features;
#pragma omp parallel for schedule(dynamic, 1)
    for (int l = 0; l < L; ++l) {
        const uint32_t res = lay.resolution[l];
        const bool hashed = (lay.hashed_mask >> l) & 1u;
        for (int64_t i = 0; i < n; ++i) {
            uint32_t cell[D];
            T frac[D];
            a3d_locate<T, D>(x + i * D, res, cell, frac);
            const T* g = v_out + (i * L + l) * F;
            for (uint32_t c = 0; c < (1u << D); ++c) {
                const T w = a3d_corner_weight<T, D>(c, frac);
                const int64_t row = lay.offset[l] + a3d_corner_row<D>(c, cell, res, lay.table_size, hashed);
                T* v = v_table + row * F;
                for (int f = 0; f < F; ++f) v[f] += w * g[f];
            }
        }
    }
}

// v_x[i] = sum_l sum_corners (d w / d x) * <v_out[i, l], table[row]>, zero where x was clamped.
// Levels in order with a barrier between them: the per-point sum order is fixed (deterministic).
template <typename T, typename TableT, int D>
void hashgrid_bwd_input_cpu(const T* v_out, const T* x, const TableT* table, T* v_x, int64_t n,
                            const A3dHashGridLayout& lay) {
    const int L = lay.n_levels, F = lay.n_features;
#pragma omp parallel
    for (int l = 0; l < L; ++l) {
        const uint32_t res = lay.resolution[l];
        const bool hashed = (lay.hashed_mask >> l) & 1u;
        const TableT* level_table = table + lay.offset[l] * F;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            uint32_t cell[D];
            T frac[D];
            const uint32_t inside = a3d_locate<T, D>(x + i * D, res, cell, frac);
            const T* g = v_out + (i * L + l) * F;
            T acc[D] = {};
            for (uint32_t c = 0; c < (1u << D); ++c) {
                const TableT* e = level_table + (int64_t)a3d_corner_row<D>(c, cell, res, lay.table_size, hashed) * F;
                T dot = (T)0;
                for (int f = 0; f < F; ++f) dot += g[f] * load_as<T>(e + f);
                T dw[D];
                a3d_corner_weight_grad<T, D>(c, frac, res, dw);
                for (int d = 0; d < D; ++d) acc[d] += dw[d] * dot;
            }
            for (int d = 0; d < D; ++d)
                if ((inside >> d) & 1u) v_x[i * D + d] += acc[d];  // v_x starts at zero
        }
    }
}

A3dHashGridLayout make_layout(int64_t n_dims, int64_t n_levels, int64_t n_features, int64_t log2_table_size,
                              double base_resolution, double per_level_scale) {
    A3dHashGridLayout lay;
    TORCH_CHECK(a3d_make_layout(&lay, (int)n_dims, (int)n_levels, (int)n_features, (int)log2_table_size,
                                base_resolution, per_level_scale),
                "hashgrid: unsupported layout (n_dims in {2,3}, n_levels 1..", A3D_MAX_LEVELS, ", n_features 1..",
                A3D_MAX_FEATURES, ", log2_table_size 1..30)");
    return lay;
}

A3dHashGridLayout checked_layout(const torch::Tensor& x, const torch::Tensor& table, int64_t n_levels,
                                 int64_t log2_table_size, double base_resolution, double per_level_scale) {
    TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), "hashgrid_cpu: tensors must be on the CPU");
    TORCH_CHECK(x.dim() == 2, "hashgrid_cpu: x must be [n_points, n_dims], got ", x.sizes());
    TORCH_CHECK(table.dim() == 2, "hashgrid_cpu: table must be [n_rows, n_features], got ", table.sizes());
    const auto xt = x.scalar_type(), tt = table.scalar_type();
    TORCH_CHECK((xt == torch::kFloat && (tt == torch::kFloat || tt == torch::kHalf)) ||
                    (xt == torch::kDouble && tt == torch::kDouble),
                "hashgrid_cpu: dtypes (x, table) must be (float32, float32|float16) or (float64, float64), got (",
                xt, ", ", tt, ")");
    A3dHashGridLayout lay =
        make_layout(x.size(1), n_levels, table.size(1), log2_table_size, base_resolution, per_level_scale);
    TORCH_CHECK(table.size(0) == lay.offset[lay.n_levels], "hashgrid_cpu: table has ", table.size(0),
                " rows but the layout needs ", lay.offset[lay.n_levels]);
    return lay;
}

#define A3D_DISPATCH_DIMS(D_, ...)                         \
    do {                                                   \
        if ((D_) == 2) {                                   \
            constexpr int kD = 2;                          \
            __VA_ARGS__;                                   \
        } else {                                           \
            constexpr int kD = 3;                          \
            __VA_ARGS__;                                   \
        }                                                  \
    } while (0)

// Runs the statement with T (x, accumulation) and TableT bound to a supported dtype pair.
#define A3D_DISPATCH_TYPES(x_, table_, ...)                \
    do {                                                   \
        if ((x_).scalar_type() == torch::kDouble) {        \
            using T = double;                              \
            using TableT = double;                         \
            __VA_ARGS__;                                   \
        } else if ((table_).scalar_type() == torch::kHalf) { \
            using T = float;                               \
            using TableT = at::Half;                       \
            __VA_ARGS__;                                   \
        } else {                                           \
            using T = float;                               \
            using TableT = float;                          \
            __VA_ARGS__;                                   \
        }                                                  \
    } while (0)

}  // namespace

// [n_points, n_levels * n_features] in x's dtype.
torch::Tensor hashgrid_fwd(torch::Tensor x, torch::Tensor table, int64_t n_levels, int64_t log2_table_size,
                           double base_resolution, double per_level_scale) {
    const A3dHashGridLayout lay = checked_layout(x, table, n_levels, log2_table_size, base_resolution, per_level_scale);
    x = x.contiguous();
    table = table.contiguous();
    const int64_t n = x.size(0);
    auto out = torch::empty({n, (int64_t)lay.n_levels * lay.n_features}, x.options());
    if (n == 0) return out;
    A3D_DISPATCH_TYPES(x, table,
                       A3D_DISPATCH_DIMS(lay.n_dims, hashgrid_fwd_cpu<T, TableT, kD>(
                                                         x.data_ptr<T>(), table.data_ptr<TableT>(),
                                                         out.data_ptr<T>(), n, lay)));
    return out;
}

// (v_table in table's dtype or None, v_x or None); accumulation in x's dtype.
std::tuple<torch::Tensor, torch::Tensor> hashgrid_bwd(torch::Tensor v_out, torch::Tensor x, torch::Tensor table,
                                                      int64_t n_levels, int64_t log2_table_size,
                                                      double base_resolution, double per_level_scale,
                                                      bool need_v_table, bool need_v_x) {
    const A3dHashGridLayout lay = checked_layout(x, table, n_levels, log2_table_size, base_resolution, per_level_scale);
    x = x.contiguous();
    table = table.contiguous();
    const int64_t n = x.size(0);
    TORCH_CHECK(v_out.dim() == 2 && v_out.size(0) == n && v_out.size(1) == (int64_t)lay.n_levels * lay.n_features,
                "hashgrid_cpu: v_out must be [n_points, n_levels * n_features], got ", v_out.sizes());
    v_out = v_out.to(x.scalar_type()).contiguous();
    torch::Tensor v_table, v_x;
    if (need_v_table) v_table = torch::zeros({table.size(0), table.size(1)}, x.options());
    if (need_v_x) v_x = torch::zeros_like(x);
    if (n > 0) {
        if (need_v_table)
            A3D_DISPATCH_TYPES(x, table,
                               A3D_DISPATCH_DIMS(lay.n_dims, hashgrid_bwd_table_cpu<T, kD>(
                                                                 v_out.data_ptr<T>(), x.data_ptr<T>(),
                                                                 v_table.data_ptr<T>(), n, lay)));
        if (need_v_x)
            A3D_DISPATCH_TYPES(x, table,
                               A3D_DISPATCH_DIMS(lay.n_dims, hashgrid_bwd_input_cpu<T, TableT, kD>(
                                                                 v_out.data_ptr<T>(), x.data_ptr<T>(),
                                                                 table.data_ptr<TableT>(), v_x.data_ptr<T>(), n,
                                                                 lay)));
    }
    if (need_v_table && v_table.scalar_type() != table.scalar_type()) v_table = v_table.to(table.scalar_type());
    return {v_table, v_x};
}

// (resolutions, offsets) from the shared header, so tests can check the Python mirror against it.
std::tuple<std::vector<int64_t>, std::vector<int64_t>, int64_t> hashgrid_layout(
    int64_t n_dims, int64_t n_levels, int64_t n_features, int64_t log2_table_size, double base_resolution,
    double per_level_scale) {
    const A3dHashGridLayout lay =
        make_layout(n_dims, n_levels, n_features, log2_table_size, base_resolution, per_level_scale);
    std::vector<int64_t> res(lay.resolution, lay.resolution + lay.n_levels);
    std::vector<int64_t> off(lay.offset, lay.offset + lay.n_levels + 1);
    return {res, off, (int64_t)lay.hashed_mask};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "avatar3d multi-resolution hash encoding, CPU build (C++/OpenMP)";
    m.def("fwd", &hashgrid_fwd, "hash-grid encoding forward");
    m.def("bwd", &hashgrid_bwd, "hash-grid encoding backward to the table and/or the inputs");
    m.def("layout", &hashgrid_layout, "per-level resolutions, row offsets and hashed-level mask");
}
