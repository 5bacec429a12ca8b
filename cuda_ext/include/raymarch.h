// Occupancy-grid lookup, ray marching and volume compositing: the arithmetic shared by every build.
//
// Why one header: the CPU (C++/OpenMP) and CUDA builds must emit *the same samples* as
// the pure-torch mirror in avatar3d/nerf/raymarch.py for the same inputs (parity tests
// compare sample lists exactly). Marching therefore uses only +, -, *, /, min, max,
// floor and comparisons in float32, each rounded once (a3d_fadd & co. force
// round-to-nearest without FMA contraction under nvcc; g++ on x86-64 does not contract
// without -mfma). Compositing uses exp/expm1 and is compared within tolerances.
//
// Conventions (mirrored by avatar3d/nerf/occupancy.py and raymarch.py):
//   * aabb = cascade 0 box [lo, hi]; centre c = (lo + hi) * 0.5, half size h0 = (hi - lo) * 0.5.
//     Cascade m covers c +- h0 * 2^m (m < n_cascades); rays march inside the outermost box.
//   * A point x uses mip m = #{ j in [0, n_cascades - 2] : exists axis i with |x_i - c_i| >= h0_i * 2^j }.
//   * Its cell along axis i: floor((x_i - lo_m_i) / w_m_i) clamped to [0, R-1], where
//     lo_m = c - h_m, w_m = (h_m + h_m) / R, h_m = h0 * 2^m.
//   * Cell (m, i, j, k) has linear index m R^3 + (i R + j) R + k; bit (index & 7) of byte index >> 3.
//   * March step from t (ray o + t d): dt = clamp(t * cone, dt_min, dt_max), t_next = min(t + dt, far),
//     mid = (t + t_next) * 0.5, x = o + mid * d. Occupied: emit sample [t, t_next), t = t_next.
//     Empty: t = max(t_next, exit of x's cell along the ray) (empty-space skip). t_next <= t: stop.
//   * Compositing, per ray in sample order: a_k = sigma_k (t1_k - t0_k), T_k = exp(-sum_{j<k} a_j),
//     w_k = T_k * (-expm1(-a_k)); opacity = sum w, depth = sum w (t0 + t1) / 2, colour = sum w rgb.
#pragma once

#include <math.h>
#include <stdint.h>

#ifndef A3D_HD
#ifdef __CUDACC__
#define A3D_HD __host__ __device__ __forceinline__
#else
#define A3D_HD inline
#endif
#endif

#define A3D_MAX_CASCADES 8

// ---- float32 arithmetic rounded once per operation (no FMA contraction) ----
A3D_HD float a3d_fadd(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
A3D_HD float a3d_fsub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
A3D_HD float a3d_fmul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
A3D_HD float a3d_fdiv(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}
A3D_HD float a3d_fmin(float a, float b) { return b < a ? b : a; }
A3D_HD float a3d_fmax(float a, float b) { return b > a ? b : a; }

// Everything a kernel needs to know about the occupancy grid; passed by value to CUDA kernels.
struct A3dOccGrid {
    int32_t resolution;                       // R cells per axis, every cascade
    int32_t n_cascades;                       // 1..A3D_MAX_CASCADES
    float center[3];
    float half0[3];                           // half size of cascade 0
    float outer_lo[3], outer_hi[3];           // marching box (outermost cascade)
    float mip_lo[A3D_MAX_CASCADES][3];        // lower corner of cascade m
    float mip_cell[A3D_MAX_CASCADES][3];      // cell width of cascade m
};

// Fills `g` from the cascade-0 box; returns false when the arguments are out of range.
A3D_HD bool a3d_make_occ_grid(A3dOccGrid* g, const float aabb[6], int resolution, int n_cascades) {
    if (resolution < 1 || resolution > 1024 || n_cascades < 1 || n_cascades > A3D_MAX_CASCADES) return false;
    g->resolution = resolution;
    g->n_cascades = n_cascades;
    const float r = (float)resolution;
    for (int i = 0; i < 3; ++i) {
        if (!(aabb[3 + i] > aabb[i])) return false;
        g->center[i] = a3d_fmul(a3d_fadd(aabb[i], aabb[3 + i]), 0.5f);
        g->half0[i] = a3d_fmul(a3d_fsub(aabb[3 + i], aabb[i]), 0.5f);
        float h = g->half0[i];
        for (int m = 0; m < n_cascades; ++m) {
            g->mip_lo[m][i] = a3d_fsub(g->center[i], h);
            g->mip_cell[m][i] = a3d_fdiv(a3d_fadd(h, h), r);
            if (m == n_cascades - 1) {
                g->outer_lo[i] = g->mip_lo[m][i];
                g->outer_hi[i] = a3d_fadd(g->center[i], h);
            }
            h = a3d_fmul(h, 2.0f);
        }
    }
    return true;
}

// Cascade of a point: the finest one that contains it (points outside all cascades get the last).
A3D_HD int a3d_grid_mip(const A3dOccGrid& g, const float x[3]) {
    float ax[3];
    for (int i = 0; i < 3; ++i) ax[i] = fabsf(a3d_fsub(x[i], g.center[i]));
    int mip = 0;
    float scale = 1.0f;
    for (int j = 0; j + 1 < g.n_cascades; ++j) {
        bool outside = false;
        for (int i = 0; i < 3; ++i) outside |= ax[i] >= a3d_fmul(g.half0[i], scale);
        mip += outside ? 1 : 0;
        scale = a3d_fmul(scale, 2.0f);
    }
    return mip;
}

// Cell of x in cascade `mip` (clamped onto the grid); returns its linear index.
A3D_HD int64_t a3d_grid_cell(const A3dOccGrid& g, const float x[3], int mip, int32_t cell[3]) {
    const int R = g.resolution;
    for (int i = 0; i < 3; ++i) {
        float c = floorf(a3d_fdiv(a3d_fsub(x[i], g.mip_lo[mip][i]), g.mip_cell[mip][i]));
        if (!(c >= 0.0f)) c = 0.0f;  // below the grid or NaN -> 0
        if (c > (float)(R - 1)) c = (float)(R - 1);
        cell[i] = (int32_t)c;
    }
    return (int64_t)mip * R * R * R + ((int64_t)cell[0] * R + cell[1]) * R + cell[2];
}

A3D_HD bool a3d_bit(const uint8_t* bits, int64_t index) { return (bits[index >> 3] >> (index & 7)) & 1u; }

// Occupancy of a point (cascade, cell, bit).
A3D_HD bool a3d_occupied(const A3dOccGrid& g, const uint8_t* bits, const float x[3]) {
    int32_t cell[3];
    const int mip = a3d_grid_mip(g, x);
    return a3d_bit(bits, a3d_grid_cell(g, x, mip, cell));
}

// Slab test against [lo, hi]; near clipped to near_plane. Misses (and non-finite rays) give false.
A3D_HD bool a3d_ray_aabb(const float o[3], const float d[3], const float lo[3], const float hi[3], float near_plane,
                         float* t_near, float* t_far) {
    float tmin = -INFINITY, tmax = INFINITY;
    for (int i = 0; i < 3; ++i) {
        if (!isfinite(o[i]) || !isfinite(d[i])) return false;
        if (d[i] == 0.0f) {
            if (o[i] < lo[i] || o[i] > hi[i]) return false;
            continue;
        }
        const float t1 = a3d_fdiv(a3d_fsub(lo[i], o[i]), d[i]);
        const float t2 = a3d_fdiv(a3d_fsub(hi[i], o[i]), d[i]);
        tmin = a3d_fmax(tmin, a3d_fmin(t1, t2));
        tmax = a3d_fmin(tmax, a3d_fmax(t1, t2));
    }
    tmin = a3d_fmax(tmin, near_plane);
    *t_near = tmin;
    *t_far = tmax;
    return tmax > tmin;
}

struct A3dMarchParams {
    float near_plane;
    float cone_angle;  // dt grows as t * cone_angle (0: constant dt_min)
    float dt_min;
    float dt_max;
    int32_t max_samples;  // per ray
};

enum A3dStep : int32_t { A3D_STEP_SKIP = 0, A3D_STEP_EMIT = 1, A3D_STEP_STOP = 2 };

// One march step from *t. EMIT: the sample is [*t0, *t1) and *t advanced to *t1.
// SKIP: *t jumped over empty space. STOP: no progress possible (*t set to far).
A3D_HD int a3d_march_step(const A3dOccGrid& g, const uint8_t* bits, const float o[3], const float d[3], float far,
                          const A3dMarchParams& p, float* t, float* t0, float* t1) {
    const float ts = *t;
    const float dt = a3d_fmin(a3d_fmax(a3d_fmul(ts, p.cone_angle), p.dt_min), p.dt_max);
    const float tn = a3d_fmin(a3d_fadd(ts, dt), far);
    if (!(tn > ts)) {
        *t = far;
        return A3D_STEP_STOP;
    }
    const float mid = a3d_fmul(a3d_fadd(ts, tn), 0.5f);
    float x[3];
    for (int i = 0; i < 3; ++i) x[i] = a3d_fadd(o[i], a3d_fmul(mid, d[i]));
    int32_t cell[3];
    const int mip = a3d_grid_mip(g, x);
    if (a3d_bit(bits, a3d_grid_cell(g, x, mip, cell))) {
        *t0 = ts;
        *t1 = tn;
        *t = tn;
        return A3D_STEP_EMIT;
    }
    float t_exit = INFINITY;
    for (int i = 0; i < 3; ++i) {
        if (d[i] == 0.0f) continue;
        const float side = d[i] > 0.0f ? 1.0f : 0.0f;
        const float bound = a3d_fadd(g.mip_lo[mip][i], a3d_fmul(a3d_fadd((float)cell[i], side), g.mip_cell[mip][i]));
        t_exit = a3d_fmin(t_exit, a3d_fdiv(a3d_fsub(bound, o[i]), d[i]));
    }
    *t = a3d_fmax(tn, t_exit);
    return A3D_STEP_SKIP;
}

// Marches one ray from its box entry; writes up to max_samples samples when t0/t1 are given. Returns the count.
A3D_HD int32_t a3d_march_ray(const A3dOccGrid& g, const uint8_t* bits, const float o[3], const float d[3],
                             const A3dMarchParams& p, float* t0_out, float* t1_out) {
    float t, far;
    if (!a3d_ray_aabb(o, d, g.outer_lo, g.outer_hi, p.near_plane, &t, &far)) return 0;
    int32_t n = 0;
    while (t < far && n < p.max_samples) {
        float t0, t1;
        if (a3d_march_step(g, bits, o, d, far, p, &t, &t0, &t1) == A3D_STEP_EMIT) {
            if (t0_out) {
                t0_out[n] = t0;
                t1_out[n] = t1;
            }
            ++n;
        }
    }
    return n;
}

// Inference round: continues a ray from *t, emitting at most n_steps samples (and at most
// max_samples - *n_done in total). Samples go to t0_out/t1_out[0..count). Returns count.
A3D_HD int32_t a3d_march_ray_round(const A3dOccGrid& g, const uint8_t* bits, const float o[3], const float d[3],
                                   float far, const A3dMarchParams& p, int32_t n_steps, float* t, int32_t* n_done,
                                   float* t0_out, float* t1_out) {
    int32_t n = 0;
    while (*t < far && n < n_steps && *n_done < p.max_samples) {
        float t0, t1;
        if (a3d_march_step(g, bits, o, d, far, p, t, &t0, &t1) == A3D_STEP_EMIT) {
            t0_out[n] = t0;
            t1_out[n] = t1;
            ++n;
            ++*n_done;
        }
    }
    return n;
}

// ---- compositing (T = float or double) ----
template <typename T>
A3D_HD T a3d_exp(T x) { return exp(x); }
template <>
A3D_HD float a3d_exp<float>(float x) { return expf(x); }
template <typename T>
A3D_HD T a3d_expm1(T x) { return expm1(x); }
template <>
A3D_HD float a3d_expm1<float>(float x) { return expm1f(x); }

// Forward over one ray's samples [0, n): weights (optional), opacity, depth, colour.
template <typename T>
A3D_HD void a3d_composite_ray_fwd(const T* sigmas, const T* rgbs, const T* t0, const T* t1, int64_t n, T* weights,
                                  T* opacity, T* depth, T* color) {
    T acc = (T)0, op = (T)0, dep = (T)0, c0 = (T)0, c1 = (T)0, c2 = (T)0;
    for (int64_t k = 0; k < n; ++k) {
        const T a = sigmas[k] * (t1[k] - t0[k]);
        const T w = a3d_exp<T>(-acc) * -a3d_expm1<T>(-a);
        if (weights) weights[k] = w;
        op += w;
        dep += w * ((t0[k] + t1[k]) * (T)0.5);
        c0 += w * rgbs[3 * k];
        c1 += w * rgbs[3 * k + 1];
        c2 += w * rgbs[3 * k + 2];
        acc += a;
    }
    *opacity = op;
    *depth = dep;
    color[0] = c0;
    color[1] = c1;
    color[2] = c2;
}

// Closed-form backward over one ray. With g_k = v_w_k + v_opacity + v_depth * mid_k + <v_color, rgb_k>
// (the loss is sum_k w_k g_k): dL/da_k = g_k T_{k+1} - sum_{j>k} g_j w_j, v_sigma_k = dL/da_k * delta_k,
// v_rgb_k = w_k v_color. v_weights may be null (zero).
template <typename T>
A3D_HD void a3d_composite_ray_bwd(const T* v_weights, T v_opacity, T v_depth, const T v_color[3], const T* sigmas,
                                  const T* rgbs, const T* t0, const T* t1, int64_t n, T* v_sigmas, T* v_rgbs) {
    T acc = (T)0, total = (T)0;
    for (int64_t k = 0; k < n; ++k) {
        const T a = sigmas[k] * (t1[k] - t0[k]);
        const T w = a3d_exp<T>(-acc) * -a3d_expm1<T>(-a);
        const T g = (v_weights ? v_weights[k] : (T)0) + v_opacity + v_depth * ((t0[k] + t1[k]) * (T)0.5) +
                    v_color[0] * rgbs[3 * k] + v_color[1] * rgbs[3 * k + 1] + v_color[2] * rgbs[3 * k + 2];
        total += g * w;
        acc += a;
    }
    T prefix = (T)0;
    acc = (T)0;
    for (int64_t k = 0; k < n; ++k) {
        const T delta = t1[k] - t0[k];
        const T a = sigmas[k] * delta;
        const T w = a3d_exp<T>(-acc) * -a3d_expm1<T>(-a);
        const T g = (v_weights ? v_weights[k] : (T)0) + v_opacity + v_depth * ((t0[k] + t1[k]) * (T)0.5) +
                    v_color[0] * rgbs[3 * k] + v_color[1] * rgbs[3 * k + 1] + v_color[2] * rgbs[3 * k + 2];
        acc += a;
        prefix += g * w;
        v_sigmas[k] = (g * a3d_exp<T>(-acc) - (total - prefix)) * delta;
        v_rgbs[3 * k] = w * v_color[0];
        v_rgbs[3 * k + 1] = w * v_color[1];
        v_rgbs[3 * k + 2] = w * v_color[2];
    }
}

// Inference round for one ray: composites samples [0, n) onto the running state
// (transmittance *trans, depth, colour), skipping every sample once *trans < threshold.
template <typename T>
A3D_HD void a3d_composite_ray_round(const T* sigmas, const T* rgbs, const T* t0, const T* t1, int64_t n,
                                    T threshold, T* trans, T* depth, T* color) {
    // T_k = trans_in * exp(-sum_{j<k} a_j), as the mirror computes it (not a running product).
    const T t_in = *trans;
    T acc = (T)0, tr = t_in;
    for (int64_t k = 0; k < n && tr >= threshold; ++k) {
        const T a = sigmas[k] * (t1[k] - t0[k]);
        const T w = tr * -a3d_expm1<T>(-a);
        *depth += w * ((t0[k] + t1[k]) * (T)0.5);
        color[0] += w * rgbs[3 * k];
        color[1] += w * rgbs[3 * k + 1];
        color[2] += w * rgbs[3 * k + 2];
        acc += a;
        tr = t_in * a3d_exp<T>(-acc);
    }
    *trans = tr;
}
