// voxel_sample: torch-facing checks and op registration of the CUDA kernels (namespace
// fastfields_cuda). The kernels themselves are in voxel_sample.cu, on raw pointers.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <tuple>

#include "fastfields/voxel_sample.h"
#include "fastfields/voxel_sample_bind.h"
#include "fastfields/schemas.h"

namespace fastfields {

// The raw-pointer launchers of voxel_sample.cu (see there for the buffer contracts).
cudaError_t launch_voxel_sample_fwd(const VoxelSampleParams& p, DType dtype, const void* volume,
                                    const void* xyz, void* out, cudaStream_t stream);
cudaError_t launch_voxel_sample_bwd(const VoxelSampleParams& p, DType dtype, const void* grad_out,
                                    const void* volume, const void* xyz, void* grad_volume, void* grad_xyz,
                                    cudaStream_t stream);

namespace {

void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "voxel_sample (cuda): kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor voxel_sample_fwd_cuda_op(const at::Tensor& volume, const at::Tensor& xyz, bool align_corners,
                                    int64_t padding) {
  VoxelSampleParams p = voxel_bind::make_params(volume, xyz, align_corners, padding, at::kCUDA);
  const DType code = dtype_code(volume.scalar_type(), "voxel_sample", "volume");
  const c10::cuda::CUDAGuard guard(volume.device());
  // Coordinates in the accumulation dtype (a no-op for the usual fp32 xyz); strides honoured.
  const at::Tensor xyz_a = xyz.to(acc_dtype(volume.scalar_type()));
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz_a.stride(i);
  at::Tensor out = at::empty({p.B, p.N, p.C}, volume.options().memory_format(at::MemoryFormat::Contiguous));
  check_launch(launch_voxel_sample_fwd(p, code, volume.const_data_ptr(), xyz_a.const_data_ptr(),
                                     out.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> voxel_sample_bwd_cuda_op(const at::Tensor& grad_out, const at::Tensor& volume,
                                                            const at::Tensor& xyz, bool align_corners,
                                                            int64_t padding, bool need_volume, bool need_xyz) {
  VoxelSampleParams p = voxel_bind::make_params(volume, xyz, align_corners, padding, at::kCUDA);
  check_device(grad_out, "grad_out", volume, "volume", at::kCUDA, "voxel_sample");
  TORCH_CHECK(grad_out.sizes().equals({p.B, p.N, p.C}), "voxel_sample: grad_out must have shape [", p.B, ", ", p.N,
              ", ", p.C, "], got ", grad_out.sizes());
  const DType code = dtype_code(volume.scalar_type(), "voxel_sample", "volume");
  const c10::cuda::CUDAGuard guard(volume.device());
  const at::ScalarType adt = acc_dtype(volume.scalar_type());
  const at::Tensor xyz_a = xyz.to(adt);
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz_a.stride(i);
  const at::Tensor go = grad_out.to(volume.scalar_type());
  for (int i = 0; i < 3; ++i) p.grad_out_strides[i] = go.stride(i);

  // The scatter target: a zeroed channels-last [B, D, H, W, C] buffer in the accumulation
  // dtype. grad_xyz is written in full by the kernel.
  at::Tensor gv_acc;
  if (need_volume) gv_acc = at::zeros({p.B, p.D, p.H, p.W, p.C}, volume.options().dtype(adt));
  at::Tensor gxyz_acc;
  if (need_xyz) gxyz_acc = at::empty({p.B, p.N, 3}, xyz_a.options());
  check_launch(launch_voxel_sample_bwd(p, code, go.const_data_ptr(), volume.const_data_ptr(), xyz_a.const_data_ptr(),
                                     need_volume ? gv_acc.mutable_data_ptr() : nullptr,
                                     need_xyz ? gxyz_acc.mutable_data_ptr() : nullptr,
                                     c10::cuda::getCurrentCUDAStream().stream()));

  at::Tensor grad_volume = need_volume ? gv_acc.to(volume.scalar_type()).permute({0, 4, 1, 2, 3})
                                       : at::empty({0}, volume.options());
  at::Tensor grad_xyz = need_xyz ? gxyz_acc.to(xyz.scalar_type()) : at::empty({0}, xyz.options());
  return std::make_tuple(grad_volume, grad_xyz);
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cuda, CUDA, voxel_sample, fastfields::voxel_sample_fwd_cuda_op, fastfields::voxel_sample_bwd_cuda_op)
