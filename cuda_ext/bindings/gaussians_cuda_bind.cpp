// torch binding of the CUDA Gaussian rasterizer launchers (cuda_ext/cuda/gaussians.cu).
//
// Why separate: needs a CUDA build of torch (current stream, device guard); the kernels are plain
// CUDA and compile-checked without torch. Same Python API as the CPU build (gaussians_cpu.cpp):
// fwd -> (color, alpha, depth, mean2d, conic, rgb, radii, tile_offsets, ids, t_final, n_contrib),
// bwd -> (v_means, v_quats, v_scales, v_opacities, v_sh, v_dirs, v_view_rot, v_mean2d).
// Between the passes torch does the exclusive scan, the stable key sort and the tile offsets;
// the instance count costs one device-to-host copy.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

#include "gaussians.cuh"

namespace {

constexpr const char* kWho = "gaussians_cuda";

void check(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, kWho, ": ", what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

A3dGsDtype gs_dtype(at::ScalarType t) {
    TORCH_CHECK(t == at::kFloat || t == at::kDouble, kWho, ": inputs must be float32 or float64");
    return t == at::kDouble ? A3D_GS_F64 : A3D_GS_F32;
}

std::vector<torch::Tensor> check_inputs(std::vector<torch::Tensor> ts, int64_t sh_degree) {
    // ts = means, quats, scales, opacities, sh, dirs, view_rot
    const auto dt = ts[0].scalar_type();
    const int64_t n = ts[0].size(0);
    TORCH_CHECK(ts[0].dim() == 2 && ts[0].size(1) == 3, kWho, ": means must be [N, 3]");
    TORCH_CHECK(ts[1].dim() == 2 && ts[1].size(0) == n && ts[1].size(1) == 4, kWho, ": quats must be [N, 4]");
    TORCH_CHECK(ts[2].dim() == 2 && ts[2].size(0) == n && ts[2].size(1) == 3, kWho, ": scales must be [N, 3]");
    TORCH_CHECK(ts[3].dim() == 1 && ts[3].size(0) == n, kWho, ": opacities must be [N]");
    TORCH_CHECK(sh_degree >= 0 && sh_degree <= 3, kWho, ": sh_degree must be 0..3");
    TORCH_CHECK(ts[4].dim() == 3 && ts[4].size(0) == n && ts[4].size(2) == 3 &&
                    ts[4].size(1) >= (sh_degree + 1) * (sh_degree + 1),
                kWho, ": sh must be [N, K >= (sh_degree+1)^2, 3]");
    TORCH_CHECK(ts[5].dim() == 2 && ts[5].size(0) == n && ts[5].size(1) == 3, kWho, ": dirs must be [N, 3]");
    TORCH_CHECK(ts[6].dim() == 2 && ts[6].size(0) == 3 && ts[6].size(1) == 3, kWho, ": view_rot must be [3, 3]");
    for (auto& t : ts) {
        TORCH_CHECK(t.is_cuda() && t.device() == ts[0].device() && t.scalar_type() == dt, kWho,
                    ": all inputs must be CUDA tensors of one dtype on one device");
        t = t.contiguous();
    }
    return ts;
}

A3dGsCamera make_camera(double fx, double fy, double cx, double cy, int64_t width, int64_t height, double near) {
    TORCH_CHECK(fx > 0 && fy > 0, kWho, ": focal lengths must be > 0");
    TORCH_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, kWho, ": image size must be 1..16384");
    TORCH_CHECK(near > 0, kWho, ": near must be > 0");
    return a3d_gs_camera(fx, fy, cx, cy, near, (int32_t)width, (int32_t)height);
}

}  // namespace

std::vector<torch::Tensor> gaussians_fwd(torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                         torch::Tensor opacities, torch::Tensor sh, torch::Tensor dirs,
                                         torch::Tensor view_rot, double fx, double fy, double cx, double cy,
                                         int64_t width, int64_t height, double near, int64_t sh_degree) {
    auto in = check_inputs({means, quats, scales, opacities, sh, dirs, view_rot}, sh_degree);
    const c10::cuda::CUDAGuard guard(in[0].device());
    const A3dGsCamera cam = make_camera(fx, fy, cx, cy, width, height, near);
    const A3dGsDtype dt = gs_dtype(in[0].scalar_type());
    const int64_t n = in[0].size(0), n_tiles = (int64_t)cam.tiles_x * cam.tiles_y;
    const auto opt = in[0].options();
    auto mean2d = torch::zeros({n, 2}, opt), conic = torch::zeros({n, 3}, opt), rgb = torch::zeros({n, 3}, opt);
    auto radii = torch::zeros({n}, opt.dtype(at::kInt)), rects = torch::zeros({n, 4}, opt.dtype(at::kInt));
    auto touched = torch::zeros({n}, opt.dtype(at::kLong));
    check(a3d_gs_project_cuda(dt, in[0].data_ptr(), in[1].data_ptr(), in[2].data_ptr(), in[4].data_ptr(),
                              in[4].size(1), in[5].data_ptr(), in[6].data_ptr(), n, cam, (int32_t)sh_degree,
                              mean2d.data_ptr(), conic.data_ptr(), rgb.data_ptr(), radii.data_ptr<int32_t>(),
                              rects.data_ptr<int32_t>(), touched.data_ptr<int64_t>(), stream()),
          "project");
    auto offsets = touched.cumsum(0) - touched;
    const int64_t n_inst = n ? touched.sum().item<int64_t>() : 0;
    auto keys = torch::empty({n_inst}, opt.dtype(at::kLong));
    auto ids = torch::empty({n_inst}, opt.dtype(at::kInt));
    check(a3d_gs_fill_keys_cuda(dt, in[0].data_ptr(), rects.data_ptr<int32_t>(), offsets.data_ptr<int64_t>(),
                                touched.data_ptr<int64_t>(), n, cam, keys.data_ptr<int64_t>(),
                                ids.data_ptr<int32_t>(), stream()),
          "fill_keys");
    auto sorted = torch::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    ids = ids.index_select(0, std::get<1>(sorted)).contiguous();
    auto tile_of = torch::bitwise_right_shift(std::get<0>(sorted), 32);
    auto tile_offsets = torch::searchsorted(tile_of, torch::arange(n_tiles + 1, opt.dtype(at::kLong))).contiguous();
    auto color = torch::zeros({height, width, 3}, opt), alpha = torch::zeros({height, width}, opt);
    auto depth = torch::zeros({height, width}, opt), t_final = torch::ones({height, width}, opt);
    auto n_contrib = torch::zeros({height, width}, opt.dtype(at::kInt));
    check(a3d_gs_blend_fwd_cuda(dt, cam, tile_offsets.data_ptr<int64_t>(), ids.data_ptr<int32_t>(), mean2d.data_ptr(),
                                conic.data_ptr(), in[3].data_ptr(), rgb.data_ptr(), in[0].data_ptr(),
                                color.data_ptr(), alpha.data_ptr(), depth.data_ptr(), t_final.data_ptr(),
                                n_contrib.data_ptr<int32_t>(), stream()),
          "blend_fwd");
    return {color, alpha, depth, mean2d, conic, rgb, radii, tile_offsets, ids, t_final, n_contrib};
}

std::vector<torch::Tensor> gaussians_bwd(torch::Tensor v_color, torch::Tensor v_alpha, torch::Tensor v_depth,
                                         torch::Tensor means, torch::Tensor quats, torch::Tensor scales,
                                         torch::Tensor opacities, torch::Tensor sh, torch::Tensor dirs,
                                         torch::Tensor view_rot, torch::Tensor mean2d, torch::Tensor conic,
                                         torch::Tensor rgb, torch::Tensor radii, torch::Tensor tile_offsets,
                                         torch::Tensor ids, torch::Tensor t_final, torch::Tensor n_contrib, double fx,
                                         double fy, double cx, double cy, int64_t width, int64_t height, double near,
                                         int64_t sh_degree) {
    auto in = check_inputs({means, quats, scales, opacities, sh, dirs, view_rot}, sh_degree);
    const c10::cuda::CUDAGuard guard(in[0].device());
    const A3dGsCamera cam = make_camera(fx, fy, cx, cy, width, height, near);
    const A3dGsDtype dt = gs_dtype(in[0].scalar_type());
    const int64_t n = in[0].size(0), k = in[4].size(1);
    const auto opt = in[0].options();
    TORCH_CHECK(v_color.sizes() == at::IntArrayRef({height, width, 3}) &&
                    v_alpha.sizes() == at::IntArrayRef({height, width}) && v_depth.sizes() == v_alpha.sizes(),
                kWho, ": upstream gradients must be [H, W, 3], [H, W], [H, W]");
    TORCH_CHECK(tile_offsets.scalar_type() == at::kLong && ids.scalar_type() == at::kInt &&
                    radii.scalar_type() == at::kInt && n_contrib.scalar_type() == at::kInt &&
                    tile_offsets.size(0) == (int64_t)cam.tiles_x * cam.tiles_y + 1,
                kWho, ": saved tile lists do not match the camera");
    v_color = v_color.to(opt).contiguous(), v_alpha = v_alpha.to(opt).contiguous();
    v_depth = v_depth.to(opt).contiguous();
    mean2d = mean2d.contiguous(), conic = conic.contiguous(), rgb = rgb.contiguous(), radii = radii.contiguous();
    tile_offsets = tile_offsets.contiguous(), ids = ids.contiguous();
    t_final = t_final.contiguous(), n_contrib = n_contrib.contiguous();
    auto grads = torch::zeros({n, A3D_GS_N_GRAD}, opt);
    check(a3d_gs_blend_bwd_cuda(dt, cam, tile_offsets.data_ptr<int64_t>(), ids.data_ptr<int32_t>(), mean2d.data_ptr(),
                                conic.data_ptr(), in[3].data_ptr(), rgb.data_ptr(), in[0].data_ptr(),
                                v_color.data_ptr(), v_alpha.data_ptr(), v_depth.data_ptr(), t_final.data_ptr(),
                                n_contrib.data_ptr<int32_t>(), grads.data_ptr(), stream()),
          "blend_bwd");
    auto v_means = torch::zeros({n, 3}, opt), v_quats = torch::zeros({n, 4}, opt), v_scales = torch::zeros({n, 3}, opt);
    auto v_opac = torch::zeros({n}, opt), v_sh = torch::zeros({n, k, 3}, opt), v_dirs = torch::zeros({n, 3}, opt);
    auto v_view = torch::zeros({n, 9}, opt), v_mean2d = torch::zeros({n, 2}, opt);
    check(a3d_gs_project_bwd_cuda(dt, in[0].data_ptr(), in[1].data_ptr(), in[2].data_ptr(), in[4].data_ptr(), k,
                                  in[5].data_ptr(), in[6].data_ptr(), conic.data_ptr(), radii.data_ptr<int32_t>(),
                                  grads.data_ptr(), n, cam, (int32_t)sh_degree, v_means.data_ptr(),
                                  v_quats.data_ptr(), v_scales.data_ptr(), v_opac.data_ptr(), v_sh.data_ptr(),
                                  v_dirs.data_ptr(), v_view.data_ptr(), v_mean2d.data_ptr(), stream()),
          "project_bwd");
    return {v_means, v_quats, v_scales, v_opac, v_sh, v_dirs, v_view.sum(0).view({3, 3}), v_mean2d};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "avatar3d 3D Gaussian rasterizer, CUDA build";
    m.def("fwd", &gaussians_fwd, "project, bin into tiles, blend front to back");
    m.def("bwd", &gaussians_bwd, "gradients to means, quats, scales, opacities, SH, dirs, view rotation, mean2d");
}
