// tensorf_vm_sample: torch-side argument checks and parameter set-up shared by the CPU and
// CUDA bindings. TORCH-SIDE ONLY (includes ATen): never include this from a .cu file.
#pragma once

#include <ATen/ATen.h>

#include "fastfields/tensorf_vm_sample.h"

namespace fastfields {
namespace vm_bind {

// Checks the arguments (naming the offending one; every tensor on `device_type`, on one
// device) and fills the sizes, strides, modes and options.
inline VmSampleParams make_params(at::TensorList planes, at::TensorList lines, const at::Tensor& xyz,
                                  at::IntArrayRef mat_mode, at::IntArrayRef vec_mode, int64_t reduce,
                                  bool align_corners, int64_t padding, at::DeviceType device_type) {
  TORCH_CHECK(planes.size() == 3, "tensorf_vm_sample: expected 3 planes, got ", planes.size());
  TORCH_CHECK(lines.size() == 3, "tensorf_vm_sample: expected 3 lines, got ", lines.size());
  for (int k = 0; k < 3; ++k) {
    check_device(planes[k], "planes", planes[0], "planes[0]", device_type, "tensorf_vm_sample");
    check_device(lines[k], "lines", planes[0], "planes[0]", device_type, "tensorf_vm_sample");
  }
  check_device(xyz, "xyz", planes[0], "planes[0]", device_type, "tensorf_vm_sample");
  TORCH_CHECK(xyz.dim() == 2 && xyz.size(1) == 3, "tensorf_vm_sample: xyz must be [N, 3], got ", xyz.sizes());
  TORCH_CHECK(at::isFloatingType(xyz.scalar_type()), "tensorf_vm_sample: xyz must be a floating-point tensor, got ",
              xyz.scalar_type());
  const auto dt = planes[0].scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "tensorf_vm_sample: planes must be float32/float64/float16/bfloat16, got ", dt);
  TORCH_CHECK(mat_mode.size() == 6, "tensorf_vm_sample: mat_mode must hold 6 entries (3 planes x (u, v)), got ",
              mat_mode.size());
  TORCH_CHECK(vec_mode.size() == 3, "tensorf_vm_sample: vec_mode must hold 3 entries, got ", vec_mode.size());
  for (auto a : mat_mode) {
    TORCH_CHECK(a >= 0 && a < 3, "tensorf_vm_sample: mat_mode entries must be 0, 1 or 2, got ", mat_mode);
  }
  for (auto a : vec_mode) {
    TORCH_CHECK(a >= 0 && a < 3, "tensorf_vm_sample: vec_mode entries must be 0, 1 or 2, got ", vec_mode);
  }
  TORCH_CHECK(reduce == kReduceConcat || reduce == kReduceSum, "tensorf_vm_sample: reduce must be 0 (concat) or 1 (sum), got ",
              reduce);
  TORCH_CHECK(padding == kPadZeros || padding == kPadBorder,
              "tensorf_vm_sample: padding must be 0 (zeros) or 1 (border), got ", padding);

  VmSampleParams p{};
  p.N = xyz.size(0);
  p.total_R = 0;
  for (int k = 0; k < 3; ++k) {
    const at::Tensor& plane = planes[k];
    const at::Tensor& line = lines[k];
    TORCH_CHECK(plane.dim() == 3 && plane.numel() > 0, "tensorf_vm_sample: planes[", k,
                "] must be a non-empty [R, H, W] tensor, got ", plane.sizes());
    TORCH_CHECK(line.dim() == 2 && line.size(0) == plane.size(0) && line.size(1) > 0, "tensorf_vm_sample: lines[", k,
                "] must be [R, L] with R = ", plane.size(0), " and L > 0, got ", line.sizes());
    TORCH_CHECK(plane.scalar_type() == dt && line.scalar_type() == dt, "tensorf_vm_sample: planes[", k, "] and lines[",
                k, "] must have the dtype of planes[0] (", dt, ")");
    p.R[k] = plane.size(0);
    p.H[k] = plane.size(1);
    p.W[k] = plane.size(2);
    p.L[k] = line.size(1);
    p.offset[k] = p.total_R;
    p.total_R += p.R[k];
    for (int i = 0; i < 3; ++i) p.plane_strides[k][i] = plane.stride(i);
    for (int i = 0; i < 2; ++i) p.line_strides[k][i] = line.stride(i);
    p.mat_mode[2 * k] = static_cast<int>(mat_mode[2 * k]);
    p.mat_mode[2 * k + 1] = static_cast<int>(mat_mode[2 * k + 1]);
    p.vec_mode[k] = static_cast<int>(vec_mode[k]);
  }
  p.xyz_strides[0] = xyz.stride(0);
  p.xyz_strides[1] = xyz.stride(1);
  p.reduce = static_cast<int>(reduce);
  p.padding = static_cast<int>(padding);
  p.align_corners = align_corners;
  return p;
}

}  // namespace vm_bind
}  // namespace fastfields
