// triplane_sample CUDA launchers: raw pointers + a stream, no torch types. Included by the
// kernels (triplane_sample.cu, nvcc) and by the torch bindings (triplane_sample.cpp, g++).
#pragma once

#include <cuda_runtime_api.h>

#include "fastfields/triplane_sample.h"

namespace fastfields {

// Forward. planes: storage dtype `dtype`, strides in p.planes_strides. xyz: accumulation
// dtype (float32, or float64 when dtype is kFloat64), strides in p.xyz_strides. out:
// contiguous [B, N, triplane_out_channels(p)] in `dtype`. Launches nothing when
// B * N * C == 0. Returns the launch error (cudaSuccess when fine).
extern "C++" cudaError_t launch_triplane_sample_fwd(const TriplaneSampleParams& p, DType dtype,
                                                    const void* planes, const void* xyz, void* out,
                                                    cudaStream_t stream);

// Backward. grad_out: `dtype`, viewed as [B, N, 3, C] through p.grad_out_strides (plane
// stride 0 for sum/mean/prod). grad_planes_acc (nullable): ZEROED contiguous channels-last
// [B, 3, H, W, C] buffer in the accumulation dtype, accumulated with atomics.
// grad_xyz_acc (nullable): ZEROED contiguous [B, N, 3] in the accumulation dtype.
extern "C++" cudaError_t launch_triplane_sample_bwd(const TriplaneSampleParams& p, DType dtype,
                                                    const void* grad_out, const void* planes,
                                                    const void* xyz, void* grad_planes_acc,
                                                    void* grad_xyz_acc, cudaStream_t stream);

}  // namespace fastfields
