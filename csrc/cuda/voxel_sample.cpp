// voxel_sample: torch-facing checks and op registration of the CUDA kernels (namespace
// fastfields_cuda). The kernels themselves are in voxel_sample.cu, on raw pointers.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <tuple>

#include "fastfields/voxel_sample.h"

namespace fastfields {

// The raw-pointer launchers of voxel_sample.cu (see there for the buffer contracts).
cudaError_t launch_voxel_sample_fwd(const VoxelSampleParams& p, DType dtype, const void* volume,
                                    const void* xyz, void* out, cudaStream_t stream);
cudaError_t launch_voxel_sample_bwd(const VoxelSampleParams& p, DType dtype, const void* grad_out,
                                    const void* volume, const void* xyz, void* grad_volume, void* grad_xyz,
                                    cudaStream_t stream);

namespace {

DType dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kFloat32;
    case at::kDouble: return kFloat64;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, "voxel_sample: volume must be float32/float64/float16/bfloat16, got ", t);
  return kFloat32;  // unreachable
}

at::ScalarType acc_dtype(at::ScalarType volume_dtype) {
  return volume_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

VoxelSampleParams make_params(const at::Tensor& volume, const at::Tensor& xyz, bool align_corners,
                              int64_t padding) {
  TORCH_CHECK(volume.is_cuda(), "voxel_sample (cuda): volume must be a CUDA tensor, got ", volume.device());
  TORCH_CHECK(xyz.device() == volume.device(), "voxel_sample (cuda): xyz is on ", xyz.device(),
              " but volume is on ", volume.device());
  TORCH_CHECK(volume.dim() == 5, "voxel_sample: volume must be [B, C, D, H, W], got ", volume.dim(), " dims");
  TORCH_CHECK(volume.size(1) > 0 && volume.size(2) > 0 && volume.size(3) > 0 && volume.size(4) > 0,
              "voxel_sample: volume must have C, D, H and W > 0, got ", volume.sizes());
  TORCH_CHECK(xyz.dim() == 3, "voxel_sample: xyz must be [B, N, 3], got ", xyz.dim(), " dims");
  TORCH_CHECK(xyz.size(2) == 3, "voxel_sample: xyz's last dim must be 3, got ", xyz.size(2));
  TORCH_CHECK(xyz.size(0) == volume.size(0), "voxel_sample: xyz batch (", xyz.size(0),
              ") must match volume batch (", volume.size(0), ")");
  TORCH_CHECK(at::isFloatingType(xyz.scalar_type()), "voxel_sample: xyz must be a floating-point tensor, got ",
              xyz.scalar_type());
  TORCH_CHECK(padding == kPadZeros || padding == kPadBorder,
              "voxel_sample: padding must be 0 (zeros) or 1 (border), got ", padding);

  VoxelSampleParams p{};
  p.B = volume.size(0);
  p.N = xyz.size(1);
  p.C = volume.size(1);
  p.D = volume.size(2);
  p.H = volume.size(3);
  p.W = volume.size(4);
  for (int i = 0; i < 5; ++i) p.volume_strides[i] = volume.stride(i);
  p.padding = static_cast<int>(padding);
  p.align_corners = align_corners;
  return p;
}

void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "voxel_sample (cuda): kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor voxel_sample_fwd_cuda_op(const at::Tensor& volume, const at::Tensor& xyz, bool align_corners,
                                    int64_t padding) {
  VoxelSampleParams p = make_params(volume, xyz, align_corners, padding);
  const DType code = dtype_code(volume.scalar_type());
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
  VoxelSampleParams p = make_params(volume, xyz, align_corners, padding);
  TORCH_CHECK(grad_out.device() == volume.device(), "voxel_sample (cuda): grad_out is on ", grad_out.device(),
              " but volume is on ", volume.device());
  TORCH_CHECK(grad_out.sizes().equals({p.B, p.N, p.C}), "voxel_sample: grad_out must have shape [", p.B, ", ", p.N,
              ", ", p.C, "], got ", grad_out.sizes());
  const DType code = dtype_code(volume.scalar_type());
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

TORCH_LIBRARY_FRAGMENT(fastfields_cuda, m) {
  m.def("voxel_sample_fwd(Tensor volume, Tensor xyz, bool align_corners, int padding) -> Tensor");
  m.def(
      "voxel_sample_bwd(Tensor grad_out, Tensor volume, Tensor xyz, bool align_corners, int padding, "
      "bool need_volume, bool need_xyz) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastfields_cuda, CUDA, m) {
  m.impl("voxel_sample_fwd", TORCH_FN(fastfields::voxel_sample_fwd_cuda_op));
  m.impl("voxel_sample_bwd", TORCH_FN(fastfields::voxel_sample_bwd_cuda_op));
}
