// voxel_sample: torch-side argument checks and parameter set-up shared by the CPU and CUDA
// bindings. TORCH-SIDE ONLY (includes ATen): never include this from a .cu file.
#pragma once

#include <ATen/ATen.h>

#include "fastfields/voxel_sample.h"

namespace fastfields {
namespace voxel_bind {

// Checks the arguments (naming the offending one; every tensor on `device_type`, on one
// device) and fills sizes, volume strides, padding and align_corners. xyz / grad_out
// strides are set by the callers once the tensors have the dtypes the kernels read.
inline VoxelSampleParams make_params(const at::Tensor& volume, const at::Tensor& xyz, bool align_corners,
                                     int64_t padding, at::DeviceType device_type) {
  check_device(volume, "volume", volume, "volume", device_type, "voxel_sample");
  check_device(xyz, "xyz", volume, "volume", device_type, "voxel_sample");
  TORCH_CHECK(volume.dim() == 5, "voxel_sample: volume must be [B, C, D, H, W], got ", volume.dim(), " dims");
  TORCH_CHECK(volume.size(1) > 0 && volume.size(2) > 0 && volume.size(3) > 0 && volume.size(4) > 0,
              "voxel_sample: volume must have C, D, H and W > 0, got ", volume.sizes());
  TORCH_CHECK(xyz.dim() == 3, "voxel_sample: xyz must be [B, N, 3], got ", xyz.dim(), " dims");
  TORCH_CHECK(xyz.size(2) == 3, "voxel_sample: xyz's last dim must be 3, got ", xyz.size(2));
  TORCH_CHECK(xyz.size(0) == volume.size(0), "voxel_sample: xyz batch (", xyz.size(0),
              ") must match volume batch (", volume.size(0), ")");
  const auto vt = volume.scalar_type();
  TORCH_CHECK(vt == at::kFloat || vt == at::kDouble || vt == at::kHalf || vt == at::kBFloat16,
              "voxel_sample: volume must be float32/float64/float16/bfloat16, got ", vt);
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


}  // namespace voxel_bind
}  // namespace fastfields
