// CUDA launchers of the multi-resolution hash encoding (plain CUDA, no torch headers).
//
// Why plain CUDA: these compile with nvcc alone (CI proves they build on a machine
// without a GPU or a CUDA torch); cuda_ext/bindings/hashgrid_cuda_bind.cpp wraps
// them for torch and passes torch's current stream.
//
// dtypes: x, out, v_out, v_x share `x_dtype` (F32 or F64); the table is F32, F16
// (fp16 storage, fp32 math) or F64 (with F64 x). Table gradients are accumulated
// in x's dtype (fp32 for an fp16 table) with atomics: not bit-deterministic.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "hashgrid.h"

enum A3dDtype : int32_t { A3D_F32 = 0, A3D_F64 = 1, A3D_F16 = 2 };

// out [n, n_levels * n_features] = encoding of x [n, n_dims].
cudaError_t a3d_hashgrid_fwd_cuda(const void* x, A3dDtype x_dtype, const void* table, A3dDtype table_dtype,
                                  void* out, int64_t n_points, const A3dHashGridLayout& layout,
                                  cudaStream_t stream);

// v_table [n_rows, n_features] (x's dtype, must be zeroed) += scatter of v_out.
cudaError_t a3d_hashgrid_bwd_table_cuda(const void* v_out, const void* x, A3dDtype x_dtype, void* v_table,
                                        int64_t n_points, const A3dHashGridLayout& layout, cudaStream_t stream);

// v_x [n, n_dims] = d(<v_out, out>)/dx; zero along clamped axes. One thread per point: deterministic.
cudaError_t a3d_hashgrid_bwd_input_cuda(const void* v_out, const void* x, A3dDtype x_dtype, const void* table,
                                        A3dDtype table_dtype, void* v_x, int64_t n_points,
                                        const A3dHashGridLayout& layout, cudaStream_t stream);
