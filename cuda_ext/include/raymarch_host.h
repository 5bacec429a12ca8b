// Host-side setup shared by the CPU build (cpu/raymarch_cpu.cpp) and the CUDA binding
// (bindings/raymarch_cuda_bind.cpp): grid and march-parameter construction with their
// argument checks, and the grid summary both expose as `grid_info`. Needs torch (for
// TORCH_CHECK); never included by nvcc-compiled kernels.
#pragma once

#include <torch/extension.h>

#include <vector>

#include "raymarch.h"

namespace a3d_host {

// `who` prefixes error messages ("raymarch_cpu" / "raymarch_cuda").
inline A3dOccGrid make_grid(const std::vector<double>& aabb, int64_t resolution, int64_t n_cascades,
                            const char* who) {
    TORCH_CHECK(aabb.size() == 6, who, ": aabb must be 6 numbers (lo xyz, hi xyz), got ", aabb.size());
    float box[6];
    for (int i = 0; i < 6; ++i) box[i] = (float)aabb[i];
    A3dOccGrid g;
    TORCH_CHECK(a3d_make_occ_grid(&g, box, (int)resolution, (int)n_cascades), who,
                ": bad grid (resolution 1..1024, n_cascades 1..", A3D_MAX_CASCADES, ", lo < hi)");
    return g;
}

inline A3dMarchParams make_params(double near_plane, double cone_angle, double dt_min, double dt_max,
                                  int64_t max_samples, const char* who) {
    TORCH_CHECK(dt_min > 0 && dt_max >= dt_min && cone_angle >= 0 && max_samples >= 0, who,
                ": need 0 < dt_min <= dt_max, cone_angle >= 0, max_samples >= 0");
    return {(float)near_plane, (float)cone_angle, (float)dt_min, (float)dt_max, (int32_t)max_samples};
}

// (centre, half0, outer_lo, outer_hi, mip_lo [C*3], mip_cell [C*3]) as computed by raymarch.h.
inline std::vector<std::vector<double>> grid_info(const A3dOccGrid& g) {
    std::vector<std::vector<double>> out(6);
    for (int i = 0; i < 3; ++i) {
        out[0].push_back(g.center[i]);
        out[1].push_back(g.half0[i]);
        out[2].push_back(g.outer_lo[i]);
        out[3].push_back(g.outer_hi[i]);
    }
    for (int m = 0; m < g.n_cascades; ++m)
        for (int i = 0; i < 3; ++i) {
            out[4].push_back(g.mip_lo[m][i]);
            out[5].push_back(g.mip_cell[m][i]);
        }
    return out;
}

}  // namespace a3d_host
