// 3D Gaussian splatting: the arithmetic shared by every build (projection, SH colour, blending).
//
// Why one header: the CPU (C++/OpenMP) build and the CUDA build must produce the same images and
// gradients as the pure-torch mirror in avatar3d/gaussians/rasterize.py. Every formula lives here
// once, as inline functions compiled by g++ (A3D_HD = inline) and nvcc (__host__ __device__),
// templated on float / double (double for gradcheck).
//
// Conventions (mirrored by avatar3d/gaussians/rasterize.py):
//   * Inputs are in the camera frame (OpenCV: +x right, +y down, +z forward) except the
//     rotations: a Gaussian's covariance is V R(q) S^2 R(q)^T V^T, V = view rotation (row-major
//     3x3, canonical -> camera), q = (w, x, y, z) normalised here, S = diag(scale).
//   * Pinhole: mean2d = (fx x/z + cx, fy y/z + cy); pixel (i, j) has its centre at (i + .5, j + .5).
//     A Gaussian is culled when z <= near. EWA: cov2d = J Sigma J^T + 0.3 I with the Jacobian's
//     x/z, y/z clamped to the image plus a 15 % margin (far off-screen Gaussians stay bounded).
//   * conic = cov2d^-1 (a, b, c); radius = ceil(3 sqrt(lambda_max)); the Gaussian covers the
//     16x16 tiles [floor((m - r) / 16), floor((m + r) / 16)] (clamped to the image); none -> culled.
//   * alpha = min(0.99, opacity exp(-0.5 d^T conic d)), d = pixel centre - mean2d; a Gaussian
//     with alpha < 1/255 is skipped; front to back by depth z, a Gaussian that would take the
//     transmittance below 1e-4 is not blended and ends the pixel.
//     colour = sum alpha_i T_i rgb_i, depth = sum alpha_i T_i z_i, alpha = 1 - T_final
//     (no background, depth not divided by alpha).
//   * rgb = max(0, sum_k basis_k(dir) sh_k + 0.5), real SH up to degree 3 (16 coefficients).
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

#define A3D_GS_TILE 16
#define A3D_GS_MAX_SH 16
#define A3D_GS_DILATION 0.3
#define A3D_GS_SIGMAS 3.0
#define A3D_GS_ALPHA_MAX 0.99
#define A3D_GS_ALPHA_MIN (1.0 / 255.0)
#define A3D_GS_T_MIN 1e-4
#define A3D_GS_MARGIN 0.15
#define A3D_GS_N_GRAD 10  // per-splat gradient slots: mx, my, ca, cb, cc, opacity, r, g, b, z

// Pinhole camera and image; passed by value to CUDA kernels.
struct A3dGsCamera {
    double fx, fy, cx, cy, near;
    int32_t width, height, tiles_x, tiles_y;
};

A3D_HD A3dGsCamera a3d_gs_camera(double fx, double fy, double cx, double cy, double near, int32_t width,
                                 int32_t height) {
    A3dGsCamera c;
    c.fx = fx;
    c.fy = fy;
    c.cx = cx;
    c.cy = cy;
    c.near = near;
    c.width = width;
    c.height = height;
    c.tiles_x = (width + A3D_GS_TILE - 1) / A3D_GS_TILE;
    c.tiles_y = (height + A3D_GS_TILE - 1) / A3D_GS_TILE;
    return c;
}

// One projected Gaussian as the blending loop reads it (contiguous: CPU tile buffer, CUDA shared memory).
template <typename T>
struct A3dGsSplat {
    T mx, my;      // mean2d (pixels)
    T ca, cb, cc;  // conic
    T opacity;
    T rgb[3];
    T z;       // camera depth
    T p_skip;  // a3d_gs_skip_power(opacity): above this power the splat is certainly skipped
};

template <typename T>
A3D_HD T a3d_gs_min(T a, T b) { return b < a ? b : a; }
template <typename T>
A3D_HD T a3d_gs_max(T a, T b) { return b > a ? b : a; }

// ---------------------------------------------------------------- rotation and covariance

// Row-major rotation of the normalised quaternion q = (w, x, y, z); q = 0 gives the identity.
template <typename T>
A3D_HD void a3d_gs_quat_to_rot(const T q[4], T R[9]) {
    const T n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
    const T inv = T(1) / sqrt(a3d_gs_max(n2, T(1e-24)));
    const T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
    R[0] = T(1) - T(2) * (y * y + z * z);
    R[1] = T(2) * (x * y - w * z);
    R[2] = T(2) * (x * z + w * y);
    R[3] = T(2) * (x * y + w * z);
    R[4] = T(1) - T(2) * (x * x + z * z);
    R[5] = T(2) * (y * z - w * x);
    R[6] = T(2) * (x * z - w * y);
    R[7] = T(2) * (y * z + w * x);
    R[8] = T(1) - T(2) * (x * x + y * y);
}

// d/dq of a3d_gs_quat_to_rot (through the normalisation) given v_R; writes v_q.
template <typename T>
A3D_HD void a3d_gs_quat_to_rot_bwd(const T q[4], const T v[9], T v_q[4]) {
    const T n2 = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
    const T inv = T(1) / sqrt(a3d_gs_max(n2, T(1e-24)));
    const T w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
    const T vw = T(2) * (-z * v[1] + y * v[2] + z * v[3] - x * v[5] - y * v[6] + x * v[7]);
    const T vx = T(2) * (y * v[1] + z * v[2] + y * v[3] - T(2) * x * v[4] - w * v[5] + z * v[6] + w * v[7] -
                         T(2) * x * v[8]);
    const T vy = T(2) * (-T(2) * y * v[0] + x * v[1] + w * v[2] + x * v[3] + z * v[5] - w * v[6] + z * v[7] -
                         T(2) * y * v[8]);
    const T vz = T(2) * (-T(2) * z * v[0] - w * v[1] + x * v[2] + w * v[3] - T(2) * z * v[4] + y * v[5] + x * v[6] +
                         y * v[7]);
    if (!(n2 > T(1e-24))) {  // clamped norm: q scales linearly
        v_q[0] = vw * inv;
        v_q[1] = vx * inv;
        v_q[2] = vy * inv;
        v_q[3] = vz * inv;
        return;
    }
    const T dot = w * vw + x * vx + y * vy + z * vz;
    v_q[0] = (vw - w * dot) * inv;
    v_q[1] = (vx - x * dot) * inv;
    v_q[2] = (vy - y * dot) * inv;
    v_q[3] = (vz - z * dot) * inv;
}

// M = V R(q) diag(s) (row-major); the camera-space covariance is M M^T.
template <typename T>
A3D_HD void a3d_gs_cov_factor(const T q[4], const T s[3], const T V[9], T R[9], T M[9]) {
    a3d_gs_quat_to_rot(q, R);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            M[3 * i + j] = (V[3 * i] * R[j] + V[3 * i + 1] * R[3 + j] + V[3 * i + 2] * R[6 + j]) * s[j];
}

// ---------------------------------------------------------------- projection

// The projection Jacobian's clamped x/z and y/z, and whether each passed unclamped.
template <typename T>
A3D_HD void a3d_gs_clamped_uv(const A3dGsCamera& cam, T x, T y, T z, T* u, T* v, bool* u_free, bool* v_free) {
    const T mx = T(A3D_GS_MARGIN) * T(cam.width), my = T(A3D_GS_MARGIN) * T(cam.height);
    const T lo_u = -(T(cam.cx) + mx) / T(cam.fx), hi_u = (T(cam.width) - T(cam.cx) + mx) / T(cam.fx);
    const T lo_v = -(T(cam.cy) + my) / T(cam.fy), hi_v = (T(cam.height) - T(cam.cy) + my) / T(cam.fy);
    const T u0 = x / z, v0 = y / z;
    *u_free = u0 >= lo_u && u0 <= hi_u;
    *v_free = v0 >= lo_v && v0 <= hi_v;
    *u = a3d_gs_min(a3d_gs_max(u0, lo_u), hi_u);
    *v = a3d_gs_min(a3d_gs_max(v0, lo_v), hi_v);
}

// 2D covariance (a, b, c) = J M M^T J^T + dilation I.
template <typename T>
A3D_HD void a3d_gs_cov2d(const A3dGsCamera& cam, T z, T u, T v, const T M[9], T cov[3]) {
    const T j00 = T(cam.fx) / z, j02 = -T(cam.fx) * u / z, j11 = T(cam.fy) / z, j12 = -T(cam.fy) * v / z;
    T a0[3], a1[3];  // rows of J M
    for (int k = 0; k < 3; ++k) {
        a0[k] = j00 * M[k] + j02 * M[6 + k];
        a1[k] = j11 * M[3 + k] + j12 * M[6 + k];
    }
    cov[0] = a0[0] * a0[0] + a0[1] * a0[1] + a0[2] * a0[2] + T(A3D_GS_DILATION);
    cov[1] = a0[0] * a1[0] + a0[1] * a1[1] + a0[2] * a1[2];
    cov[2] = a1[0] * a1[0] + a1[1] * a1[1] + a1[2] * a1[2] + T(A3D_GS_DILATION);
}

// Projects one Gaussian; false when culled (behind the near plane, singular, or on no tile).
// rect = (x0, y0, x1, y1) tiles, half-open.
template <typename T>
A3D_HD bool a3d_gs_project_fwd(const A3dGsCamera& cam, const T mean[3], const T q[4], const T s[3], const T V[9],
                               T mean2d[2], T conic[3], T* radius, int32_t rect[4]) {
    const T x = mean[0], y = mean[1], z = mean[2];
    *radius = T(0);
    rect[0] = rect[1] = rect[2] = rect[3] = 0;
    if (!(z > T(cam.near))) return false;
    T R[9], M[9], cov[3], u, v;
    bool uf, vf;
    a3d_gs_cov_factor(q, s, V, R, M);
    a3d_gs_clamped_uv(cam, x, y, z, &u, &v, &uf, &vf);
    a3d_gs_cov2d(cam, z, u, v, M, cov);
    const T det = cov[0] * cov[2] - cov[1] * cov[1];
    if (!(det > T(0))) return false;
    conic[0] = cov[2] / det;
    conic[1] = -cov[1] / det;
    conic[2] = cov[0] / det;
    mean2d[0] = T(cam.fx) * x / z + T(cam.cx);
    mean2d[1] = T(cam.fy) * y / z + T(cam.cy);
    const T mid = T(0.5) * (cov[0] + cov[2]);
    const T lam = mid + sqrt(a3d_gs_max(T(0.1), mid * mid - det));
    const T r = ceil(T(A3D_GS_SIGMAS) * sqrt(lam));
    const T tile = T(A3D_GS_TILE);
    const T x0 = a3d_gs_min(a3d_gs_max(floor((mean2d[0] - r) / tile), T(0)), T(cam.tiles_x));
    const T x1 = a3d_gs_min(a3d_gs_max(floor((mean2d[0] + r) / tile) + T(1), T(0)), T(cam.tiles_x));
    const T y0 = a3d_gs_min(a3d_gs_max(floor((mean2d[1] - r) / tile), T(0)), T(cam.tiles_y));
    const T y1 = a3d_gs_min(a3d_gs_max(floor((mean2d[1] + r) / tile) + T(1), T(0)), T(cam.tiles_y));
    if (!(x1 > x0 && y1 > y0)) return false;  // also false for NaN
    rect[0] = (int32_t)x0;
    rect[1] = (int32_t)y0;
    rect[2] = (int32_t)x1;
    rect[3] = (int32_t)y1;
    *radius = r;
    return true;
}

// Backward of a3d_gs_project_fwd for a visible Gaussian: from v_mean2d, v_conic and v_z (depth)
// to v_mean (camera frame), v_q, v_s and v_V (this Gaussian's share of the view-rotation gradient).
template <typename T>
A3D_HD void a3d_gs_project_bwd(const A3dGsCamera& cam, const T mean[3], const T q[4], const T s[3], const T V[9],
                               const T conic[3], const T v_mean2d[2], const T v_conic[3], T v_z_in, T v_mean[3],
                               T v_q[4], T v_s[3], T v_V[9]) {
    const T x = mean[0], y = mean[1], z = mean[2];
    const T fx = T(cam.fx), fy = T(cam.fy);
    T R[9], M[9], u, v;
    bool uf, vf;
    a3d_gs_cov_factor(q, s, V, R, M);
    a3d_gs_clamped_uv(cam, x, y, z, &u, &v, &uf, &vf);
    // conic = cov^-1: v_cov = -Q G Q with G the symmetric gradient matrix of the conic.
    const T q00 = conic[0], q01 = conic[1], q11 = conic[2];
    const T g00 = v_conic[0], g01 = T(0.5) * v_conic[1], g11 = v_conic[2];
    const T t00 = q00 * g00 + q01 * g01, t01 = q00 * g01 + q01 * g11;  // Q G
    const T t10 = q01 * g00 + q11 * g01, t11 = q01 * g01 + q11 * g11;
    const T c00 = -(t00 * q00 + t01 * q01), c01 = -(t00 * q01 + t01 * q11), c11 = -(t10 * q01 + t11 * q11);
    // cov2d = J Sigma J^T, Sigma = M M^T.
    const T j00 = fx / z, j02 = -fx * u / z, j11 = fy / z, j12 = -fy * v / z;
    T a0[3], a1[3];  // rows of J M
    for (int k = 0; k < 3; ++k) {
        a0[k] = j00 * M[k] + j02 * M[6 + k];
        a1[k] = j11 * M[3 + k] + j12 * M[6 + k];
    }
    // v_(JM) = 2 C (JM) with C = [[c00, c01], [c01, c11]].
    T b0[3], b1[3];
    for (int k = 0; k < 3; ++k) {
        b0[k] = T(2) * (c00 * a0[k] + c01 * a1[k]);
        b1[k] = T(2) * (c01 * a0[k] + c11 * a1[k]);
    }
    // JM rows: a0 = j00 M0 + j02 M2, a1 = j11 M1 + j12 M2.
    T v_M[9];
    for (int k = 0; k < 3; ++k) {
        v_M[k] = j00 * b0[k];
        v_M[3 + k] = j11 * b1[k];
        v_M[6 + k] = j02 * b0[k] + j12 * b1[k];
    }
    T v_j00 = 0, v_j02 = 0, v_j11 = 0, v_j12 = 0;
    for (int k = 0; k < 3; ++k) {
        v_j00 += b0[k] * M[k];
        v_j02 += b0[k] * M[6 + k];
        v_j11 += b1[k] * M[3 + k];
        v_j12 += b1[k] * M[6 + k];
    }
    T v_x = 0, v_y = 0, v_zz = v_z_in;
    const T v_u = -fx / z * v_j02, v_v = -fy / z * v_j12;
    v_zz += -fx / (z * z) * v_j00 + fx * u / (z * z) * v_j02 - fy / (z * z) * v_j11 + fy * v / (z * z) * v_j12;
    if (uf) {
        v_x += v_u / z;
        v_zz -= x / (z * z) * v_u;
    }
    if (vf) {
        v_y += v_v / z;
        v_zz -= y / (z * z) * v_v;
    }
    v_x += fx / z * v_mean2d[0];
    v_y += fy / z * v_mean2d[1];
    v_zz -= fx * x / (z * z) * v_mean2d[0] + fy * y / (z * z) * v_mean2d[1];
    v_mean[0] = v_x;
    v_mean[1] = v_y;
    v_mean[2] = v_zz;
    // M = V P, P = R diag(s): v_V = v_M P^T, v_P = V^T v_M.
    T P[9];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P[3 * i + j] = R[3 * i + j] * s[j];
    for (int i = 0; i < 3; ++i)
        for (int k = 0; k < 3; ++k)
            v_V[3 * i + k] = v_M[3 * i] * P[3 * k] + v_M[3 * i + 1] * P[3 * k + 1] + v_M[3 * i + 2] * P[3 * k + 2];
    T v_R[9];
    for (int j = 0; j < 3; ++j) v_s[j] = 0;
    for (int k = 0; k < 3; ++k)
        for (int j = 0; j < 3; ++j) {
            const T v_p = V[k] * v_M[j] + V[3 + k] * v_M[3 + j] + V[6 + k] * v_M[6 + j];
            v_R[3 * k + j] = v_p * s[j];
            v_s[j] += v_p * R[3 * k + j];
        }
    a3d_gs_quat_to_rot_bwd(q, v_R, v_q);
}

// ---------------------------------------------------------------- spherical harmonics

#define A3D_SH_C0 0.28209479177387814
#define A3D_SH_C1 0.4886025119029199

// Real SH basis values b[0 .. (degree+1)^2) at the direction (x, y, z) (unit length expected).
template <typename T>
A3D_HD void a3d_gs_sh_basis(int degree, T x, T y, T z, T b[A3D_GS_MAX_SH]) {
    b[0] = T(A3D_SH_C0);
    if (degree < 1) return;
    b[1] = -T(A3D_SH_C1) * y;
    b[2] = T(A3D_SH_C1) * z;
    b[3] = -T(A3D_SH_C1) * x;
    if (degree < 2) return;
    const T xx = x * x, yy = y * y, zz = z * z;
    b[4] = T(1.0925484305920792) * x * y;
    b[5] = T(-1.0925484305920792) * y * z;
    b[6] = T(0.31539156525252005) * (T(2) * zz - xx - yy);
    b[7] = T(-1.0925484305920792) * x * z;
    b[8] = T(0.5462742152960396) * (xx - yy);
    if (degree < 3) return;
    b[9] = T(-0.5900435899266435) * y * (T(3) * xx - yy);
    b[10] = T(2.890611442640554) * x * y * z;
    b[11] = T(-0.4570457994644658) * y * (T(4) * zz - xx - yy);
    b[12] = T(0.3731763325901154) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
    b[13] = T(-0.4570457994644658) * x * (T(4) * zz - xx - yy);
    b[14] = T(1.445305721320277) * z * (xx - yy);
    b[15] = T(-0.5900435899266435) * x * (xx - T(3) * yy);
}

// d b_k / d(x, y, z) for k < (degree+1)^2, as three arrays.
template <typename T>
A3D_HD void a3d_gs_sh_basis_grad(int degree, T x, T y, T z, T dx[A3D_GS_MAX_SH], T dy[A3D_GS_MAX_SH],
                                 T dz[A3D_GS_MAX_SH]) {
    for (int k = 0; k < A3D_GS_MAX_SH; ++k) dx[k] = dy[k] = dz[k] = T(0);
    if (degree < 1) return;
    dy[1] = -T(A3D_SH_C1);
    dz[2] = T(A3D_SH_C1);
    dx[3] = -T(A3D_SH_C1);
    if (degree < 2) return;
    const T xx = x * x, yy = y * y, zz = z * z;
    const T c4 = T(1.0925484305920792), c6 = T(0.31539156525252005), c8 = T(0.5462742152960396);
    dx[4] = c4 * y, dy[4] = c4 * x;
    dy[5] = -c4 * z, dz[5] = -c4 * y;
    dx[6] = -T(2) * c6 * x, dy[6] = -T(2) * c6 * y, dz[6] = T(4) * c6 * z;
    dx[7] = -c4 * z, dz[7] = -c4 * x;
    dx[8] = T(2) * c8 * x, dy[8] = -T(2) * c8 * y;
    if (degree < 3) return;
    const T c9 = T(-0.5900435899266435), c10 = T(2.890611442640554), c11 = T(-0.4570457994644658);
    const T c12 = T(0.3731763325901154), c14 = T(1.445305721320277);
    dx[9] = c9 * T(6) * x * y, dy[9] = c9 * (T(3) * xx - T(3) * yy);
    dx[10] = c10 * y * z, dy[10] = c10 * x * z, dz[10] = c10 * x * y;
    dx[11] = c11 * -T(2) * x * y, dy[11] = c11 * (T(4) * zz - xx - T(3) * yy), dz[11] = c11 * T(8) * y * z;
    dx[12] = c12 * -T(6) * x * z, dy[12] = c12 * -T(6) * y * z, dz[12] = c12 * (T(6) * zz - T(3) * xx - T(3) * yy);
    dx[13] = c11 * (T(4) * zz - T(3) * xx - yy), dy[13] = c11 * -T(2) * x * y, dz[13] = c11 * T(8) * x * z;
    dx[14] = c14 * T(2) * x * z, dy[14] = c14 * -T(2) * y * z, dz[14] = c14 * (xx - yy);
    dx[15] = c9 * (T(3) * xx - T(3) * yy), dy[15] = c9 * -T(6) * x * y;
}

// rgb = max(0, sum_k b_k coeffs[k] + 0.5); coeffs is [K, 3] row-major, the first (degree+1)^2 rows used.
template <typename T>
A3D_HD void a3d_gs_sh_fwd(int degree, const T dir[3], const T* coeffs, T rgb[3]) {
    T b[A3D_GS_MAX_SH];
    a3d_gs_sh_basis(degree, dir[0], dir[1], dir[2], b);
    const int n = (degree + 1) * (degree + 1);
    for (int ch = 0; ch < 3; ++ch) {
        T acc = T(0);
        for (int k = 0; k < n; ++k) acc += b[k] * coeffs[3 * k + ch];
        acc += T(0.5);
        rgb[ch] = acc < T(0) ? T(0) : acc;
    }
}

// Gradients of a3d_gs_sh_fwd: v_coeffs [K, 3] (first (degree+1)^2 rows written) and v_dir.
template <typename T>
A3D_HD void a3d_gs_sh_bwd(int degree, const T dir[3], const T* coeffs, const T v_rgb[3], T* v_coeffs, T v_dir[3]) {
    T b[A3D_GS_MAX_SH], dx[A3D_GS_MAX_SH], dy[A3D_GS_MAX_SH], dz[A3D_GS_MAX_SH];
    a3d_gs_sh_basis(degree, dir[0], dir[1], dir[2], b);
    a3d_gs_sh_basis_grad(degree, dir[0], dir[1], dir[2], dx, dy, dz);
    const int n = (degree + 1) * (degree + 1);
    T g[3];
    for (int ch = 0; ch < 3; ++ch) {
        T acc = T(0);
        for (int k = 0; k < n; ++k) acc += b[k] * coeffs[3 * k + ch];
        g[ch] = acc + T(0.5) < T(0) ? T(0) : v_rgb[ch];  // clamped channel: no gradient
    }
    v_dir[0] = v_dir[1] = v_dir[2] = T(0);
    for (int k = 0; k < n; ++k) {
        const T proj = g[0] * coeffs[3 * k] + g[1] * coeffs[3 * k + 1] + g[2] * coeffs[3 * k + 2];
        for (int ch = 0; ch < 3; ++ch) v_coeffs[3 * k + ch] = b[k] * g[ch];
        v_dir[0] += dx[k] * proj;
        v_dir[1] += dy[k] * proj;
        v_dir[2] += dz[k] * proj;
    }
}

// ---------------------------------------------------------------- per-pixel blending

// A power p = d^T conic d above which opacity exp(-p/2) < 1/255 for certain (margin 0.1 % + 1e-3 over
// 2 ln(255 opacity), floored at 1e-3 for faint splats), so a3d_gs_alpha can skip exp: same decisions.
template <typename T>
A3D_HD T a3d_gs_skip_power(T opacity) {
    const T level = T(255) * opacity;
    const T p = level > T(1) ? T(2) * log(level) : T(0);
    return p * T(1.001) + T(1e-3);
}

// alpha of splat s at pixel centre (px, py) before the 1/255 test; *gauss = exp(-0.5 d^T conic d).
template <typename T>
A3D_HD T a3d_gs_alpha(const A3dGsSplat<T>& s, T px, T py, T* gauss, T* dx, T* dy) {
    *dx = px - s.mx;
    *dy = py - s.my;
    const T power = s.ca * *dx * *dx + T(2) * s.cb * *dx * *dy + s.cc * *dy * *dy;
    if (power > s.p_skip) {  // alpha < 1/255 for certain: skipped either way
        *gauss = T(0);
        return T(0);
    }
    *gauss = exp(T(-0.5) * power);
    return a3d_gs_min(T(A3D_GS_ALPHA_MAX), s.opacity * *gauss);
}

// Half-size (pixels) of a square around mean2d outside which a splat is certain to have alpha < 1/255:
// opacity exp(-p/2) >= 1/255 needs p <= P = 2 ln(255 opacity), and p >= |d|^2 / lambda_max, so
// |d| <= sqrt(P lambda_max) <= sqrt(P) radius / 3 (radius = ceil(3 sqrt(lambda_max)) from the
// covariance itself; no inverse of an ill-conditioned conic involved). Widened by 0.1 % + 1e-3 px:
// a filter that changes no result. False: the splat can never reach 1/255.
template <typename T>
A3D_HD bool a3d_gs_splat_reach(T opacity, T radius, T* half) {
    const T level = T(255) * opacity;
    if (!(level > T(1))) return false;
    *half = sqrt(T(2) * log(level)) * radius / T(A3D_GS_SIGMAS) * T(1.001) + T(1e-3);
    return true;
}

// Front-to-back step: 0 skipped (alpha < 1/255), 1 blended, 2 stop (would take T below 1e-4; not blended).
template <typename T>
A3D_HD int a3d_gs_blend_fwd(const A3dGsSplat<T>& s, T px, T py, T* trans, T color[3], T* depth) {
    T g, dx, dy;
    const T alpha = a3d_gs_alpha(s, px, py, &g, &dx, &dy);
    if (alpha < T(A3D_GS_ALPHA_MIN)) return 0;
    const T next = *trans * (T(1) - alpha);
    if (next < T(A3D_GS_T_MIN)) return 2;
    const T w = alpha * *trans;
    color[0] += w * s.rgb[0];
    color[1] += w * s.rgb[1];
    color[2] += w * s.rgb[2];
    *depth += w * s.z;
    *trans = next;
    return 1;
}

// Back-to-front step over a pixel's blended splats (call in reverse order, starting with
// *trans = final T and acc = 0). Adds this pixel's gradient to grad[A3D_GS_N_GRAD]
// (mx, my, ca, cb, cc, opacity, r, g, b, z); returns false for a skipped splat (no change).
template <typename T>
A3D_HD bool a3d_gs_blend_bwd(const A3dGsSplat<T>& s, T px, T py, const T v_color[3], T v_alpha_px, T v_depth,
                             T t_final, T* trans, T acc_rgb[3], T* acc_z, T grad[A3D_GS_N_GRAD]) {
    T g, dx, dy;
    const T alpha = a3d_gs_alpha(s, px, py, &g, &dx, &dy);
    if (alpha < T(A3D_GS_ALPHA_MIN)) return false;
    const T one_minus = T(1) - alpha;
    const T t_i = *trans / one_minus;  // transmittance in front of this splat
    const T w = alpha * t_i;
    grad[6] += w * v_color[0];
    grad[7] += w * v_color[1];
    grad[8] += w * v_color[2];
    grad[9] += w * v_depth;
    const T v_alpha = t_i * ((s.rgb[0] - acc_rgb[0]) * v_color[0] + (s.rgb[1] - acc_rgb[1]) * v_color[1] +
                             (s.rgb[2] - acc_rgb[2]) * v_color[2] + (s.z - *acc_z) * v_depth) +
                      v_alpha_px * t_final / one_minus;
    for (int ch = 0; ch < 3; ++ch) acc_rgb[ch] = alpha * s.rgb[ch] + one_minus * acc_rgb[ch];
    *acc_z = alpha * s.z + one_minus * *acc_z;
    *trans = t_i;
    if (s.opacity * g <= T(A3D_GS_ALPHA_MAX)) {  // unclamped: alpha = opacity * g
        grad[5] += g * v_alpha;
        const T v_power = T(-0.5) * g * s.opacity * v_alpha;
        grad[2] += dx * dx * v_power;
        grad[3] += T(2) * dx * dy * v_power;
        grad[4] += dy * dy * v_power;
        grad[0] -= T(2) * (s.ca * dx + s.cb * dy) * v_power;
        grad[1] -= T(2) * (s.cb * dx + s.cc * dy) * v_power;
    }
    return true;
}
