// torch binding of the CUDA hash-grid launchers (cuda_ext/cuda/hashgrid.cu).
//
// Why separate: this file needs a CUDA build of torch (ATen/cuda headers, libc10_cuda)
// for the current stream and device guard; the kernels themselves are plain CUDA and
// are compile-checked without torch. Same Python API as the CPU build: fwd, bwd, layout.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <tuple>
#include <vector>

#include "hashgrid.cuh"

namespace {

A3dDtype to_a3d(at::ScalarType t) {
    switch (t) {
        case at::kFloat: return A3D_F32;
        case at::kDouble: return A3D_F64;
        case at::kHalf: return A3D_F16;
        default: TORCH_CHECK(false, "hashgrid_cuda: unsupported dtype ", t);
    }
    return A3D_F32;
}

A3dHashGridLayout make_layout(int64_t n_dims, int64_t n_levels, int64_t n_features, int64_t log2_table_size,
                              double base_resolution, double per_level_scale) {
    A3dHashGridLayout lay;
    TORCH_CHECK(a3d_make_layout(&lay, (int)n_dims, (int)n_levels, (int)n_features, (int)log2_table_size,
                                base_resolution, per_level_scale),
                "hashgrid_cuda: unsupported layout (n_dims in {2,3}, n_levels 1..", A3D_MAX_LEVELS,
                ", n_features 1..", A3D_MAX_FEATURES, ", log2_table_size 1..30)");
    return lay;
}

A3dHashGridLayout checked_layout(const torch::Tensor& x, const torch::Tensor& table, int64_t n_levels,
                                 int64_t log2_table_size, double base_resolution, double per_level_scale) {
    TORCH_CHECK(x.is_cuda() && table.is_cuda() && x.device() == table.device(),
                "hashgrid_cuda: x and table must be on the same CUDA device");
    TORCH_CHECK(x.dim() == 2 && table.dim() == 2, "hashgrid_cuda: x must be [n, n_dims], table [n_rows, n_features]");
    const auto xt = x.scalar_type(), tt = table.scalar_type();
    TORCH_CHECK((xt == at::kFloat && (tt == at::kFloat || tt == at::kHalf)) || (xt == at::kDouble && tt == at::kDouble),
                "hashgrid_cuda: dtypes (x, table) must be (float32, float32|float16) or (float64, float64)");
    A3dHashGridLayout lay =
        make_layout(x.size(1), n_levels, table.size(1), log2_table_size, base_resolution, per_level_scale);
    TORCH_CHECK(table.size(0) == lay.offset[lay.n_levels], "hashgrid_cuda: table has ", table.size(0),
                " rows but the layout needs ", lay.offset[lay.n_levels]);
    return lay;
}

void check(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, "hashgrid_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

}  // namespace

torch::Tensor hashgrid_fwd(torch::Tensor x, torch::Tensor table, int64_t n_levels, int64_t log2_table_size,
                           double base_resolution, double per_level_scale) {
    const A3dHashGridLayout lay = checked_layout(x, table, n_levels, log2_table_size, base_resolution, per_level_scale);
    const c10::cuda::CUDAGuard guard(x.device());
    x = x.contiguous();
    table = table.contiguous();
    auto out = torch::empty({x.size(0), (int64_t)lay.n_levels * lay.n_features}, x.options());
    check(a3d_hashgrid_fwd_cuda(x.data_ptr(), to_a3d(x.scalar_type()), table.data_ptr(), to_a3d(table.scalar_type()),
                                out.data_ptr(), x.size(0), lay, c10::cuda::getCurrentCUDAStream()),
          "forward");
    return out;
}

std::tuple<torch::Tensor, torch::Tensor> hashgrid_bwd(torch::Tensor v_out, torch::Tensor x, torch::Tensor table,
                                                      int64_t n_levels, int64_t log2_table_size,
                                                      double base_resolution, double per_level_scale,
                                                      bool need_v_table, bool need_v_x) {
    const A3dHashGridLayout lay = checked_layout(x, table, n_levels, log2_table_size, base_resolution, per_level_scale);
    const c10::cuda::CUDAGuard guard(x.device());
    x = x.contiguous();
    table = table.contiguous();
    const int64_t n = x.size(0);
    TORCH_CHECK(v_out.dim() == 2 && v_out.size(0) == n && v_out.size(1) == (int64_t)lay.n_levels * lay.n_features,
                "hashgrid_cuda: v_out must be [n_points, n_levels * n_features]");
    v_out = v_out.to(x.scalar_type()).contiguous();
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    torch::Tensor v_table, v_x;
    if (need_v_table) {
        v_table = torch::zeros({table.size(0), table.size(1)}, x.options());  // fp32 accumulation for fp16 tables
        check(a3d_hashgrid_bwd_table_cuda(v_out.data_ptr(), x.data_ptr(), to_a3d(x.scalar_type()), v_table.data_ptr(),
                                          n, lay, stream),
              "backward (table)");
        if (v_table.scalar_type() != table.scalar_type()) v_table = v_table.to(table.scalar_type());
    }
    if (need_v_x) {
        v_x = torch::empty_like(x);
        check(a3d_hashgrid_bwd_input_cuda(v_out.data_ptr(), x.data_ptr(), to_a3d(x.scalar_type()), table.data_ptr(),
                                          to_a3d(table.scalar_type()), v_x.data_ptr(), n, lay, stream),
              "backward (input)");
    }
    return {v_table, v_x};
}

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
    m.doc() = "avatar3d multi-resolution hash encoding, CUDA build";
    m.def("fwd", &hashgrid_fwd, "hash-grid encoding forward");
    m.def("bwd", &hashgrid_bwd, "hash-grid encoding backward to the table and/or the inputs");
    m.def("layout", &hashgrid_layout, "per-level resolutions, row offsets and hashed-level mask");
}
