// Multi-resolution hash encoding: the arithmetic shared by every build.
//
// Why one header: the CPU (C++/OpenMP) build and the CUDA build must produce the
// same numbers as the pure-torch mirror in avatar3d/nerf/encoding.py. Everything
// that decides *which* table row is read and *with what weight* lives here, as
// inline functions compiled by g++ (A3D_HD empty) and by nvcc (__host__ __device__).
//
// Conventions (mirrored exactly by hashgrid_encode_torch):
//   level l has R_l = floor(base * scale^l + 1e-6) cells per axis (scale^l by
//   repeated double multiplication), i.e. R_l + 1 grid vertices per axis;
//   a point x in [0,1]^D (clamped; NaN -> 0) sits at p = x * R_l, in cell
//   c = min(floor(p), R_l - 1) with fractional offset w = p - c in [0,1];
//   the level's rows are dense ((R_l+1)^D <= T: row = sum c_i (R_l+1)^i) or
//   hashed (row = xor_i (c_i * prime_i) mod T, T = 2^log2_table_size).
#pragma once

#include <stdint.h>
#include <math.h>

#ifdef __CUDACC__
#define A3D_HD __host__ __device__ __forceinline__
#else
#define A3D_HD inline
#endif

#define A3D_MAX_LEVELS 32
#define A3D_MAX_FEATURES 8
#define A3D_MAX_DIMS 3

// Everything a kernel needs to know about the table; passed by value to CUDA kernels.
struct A3dHashGridLayout {
    int32_t n_dims;
    int32_t n_levels;
    int32_t n_features;
    uint32_t table_size;                    // T = 2^log2_table_size rows per hashed level
    uint32_t hashed_mask;                   // bit l set: level l uses the spatial hash
    uint32_t resolution[A3D_MAX_LEVELS];    // R_l, cells per axis
    int64_t offset[A3D_MAX_LEVELS + 1];     // first table row of level l; offset[n_levels] = total rows
};

// Cells per axis at `level`: repeated multiplication so Python floats reproduce it bit for bit.
A3D_HD uint32_t a3d_level_resolution(double base, double per_level_scale, int level) {
    double s = base;
    for (int l = 0; l < level; ++l) s *= per_level_scale;
    double r = floor(s + 1e-6);
    return r < 1.0 ? 1u : (uint32_t)r;
}

// (R+1)^D vertices, saturated at table_size + 1 so it never overflows.
A3D_HD uint64_t a3d_level_vertices(uint32_t resolution, int n_dims, uint32_t table_size) {
    uint64_t n = 1;
    for (int i = 0; i < n_dims; ++i) {
        n *= (uint64_t)resolution + 1u;
        if (n > (uint64_t)table_size) return (uint64_t)table_size + 1u;
    }
    return n;
}

// Fills `layout`; returns false when the arguments are out of the supported range.
A3D_HD bool a3d_make_layout(A3dHashGridLayout* layout, int n_dims, int n_levels, int n_features,
                            int log2_table_size, double base, double per_level_scale) {
    if (n_dims < 2 || n_dims > A3D_MAX_DIMS || n_levels < 1 || n_levels > A3D_MAX_LEVELS ||
        n_features < 1 || n_features > A3D_MAX_FEATURES || log2_table_size < 1 || log2_table_size > 30)
        return false;
    layout->n_dims = n_dims;
    layout->n_levels = n_levels;
    layout->n_features = n_features;
    layout->table_size = 1u << log2_table_size;
    layout->hashed_mask = 0u;
    int64_t rows = 0;
    for (int l = 0; l < n_levels; ++l) {
        uint32_t r = a3d_level_resolution(base, per_level_scale, l);
        uint64_t v = a3d_level_vertices(r, n_dims, layout->table_size);
        layout->resolution[l] = r;
        layout->offset[l] = rows;
        if (v > (uint64_t)layout->table_size) {
            layout->hashed_mask |= (1u << l);
            rows += layout->table_size;
        } else {
            rows += (int64_t)v;
        }
    }
    layout->offset[n_levels] = rows;
    return true;
}

// Large odd primes for the spatial hash (dimension 0 uses 1 so neighbours along x stay coherent).
A3D_HD uint32_t a3d_hash_prime(int dim) {
    return dim == 0 ? 1u : (dim == 1 ? 2654435761u : 805459861u);
}

// Clamps x[0..D) into [0,1] (NaN -> 0), finds the cell and fractional offset.
// Returns a bit mask of the dimensions whose input was inside [0,1] (only they get gradients).
template <typename T, int D>
A3D_HD uint32_t a3d_locate(const T* x, uint32_t resolution, uint32_t cell[D], T frac[D]) {
    uint32_t inside = 0u;
    const T r = (T)resolution;
    for (int i = 0; i < D; ++i) {
        T xi = x[i];
        const bool in = xi >= (T)0 && xi <= (T)1;
        if (in) inside |= (1u << i);
        else xi = xi > (T)1 ? (T)1 : (T)0;  // NaN compares false -> 0
        const T p = xi * r;
        T c = floor(p);
        if (c > r - (T)1) c = r - (T)1;
        cell[i] = (uint32_t)c;
        frac[i] = p - c;
    }
    return inside;
}

// Trilinear (D=3) / bilinear (D=2) weight of `corner` (bit i: +1 along axis i).
template <typename T, int D>
A3D_HD T a3d_corner_weight(uint32_t corner, const T frac[D]) {
    T w = (T)1;
    for (int i = 0; i < D; ++i) w *= ((corner >> i) & 1u) ? frac[i] : (T)1 - frac[i];
    return w;
}

// d weight / d x_i for `corner` (chain rule through p = x * R included).
template <typename T, int D>
A3D_HD void a3d_corner_weight_grad(uint32_t corner, const T frac[D], uint32_t resolution, T dw[D]) {
    for (int i = 0; i < D; ++i) {
        T g = ((corner >> i) & 1u) ? (T)resolution : -(T)resolution;
        for (int j = 0; j < D; ++j) {
            if (j == i) continue;
            g *= ((corner >> j) & 1u) ? frac[j] : (T)1 - frac[j];
        }
        dw[i] = g;
    }
}

// Row of `corner` inside its level (add layout.offset[level] for the table row).
template <int D>
A3D_HD uint32_t a3d_corner_row(uint32_t corner, const uint32_t cell[D], uint32_t resolution,
                               uint32_t table_size, bool hashed) {
    uint32_t row = 0u;
    if (hashed) {
        for (int i = 0; i < D; ++i) row ^= (cell[i] + ((corner >> i) & 1u)) * a3d_hash_prime(i);
        return row & (table_size - 1u);
    }
    uint32_t stride = 1u;
    for (int i = 0; i < D; ++i) {
        row += (cell[i] + ((corner >> i) & 1u)) * stride;
        stride *= resolution + 1u;
    }
    return row;
}
