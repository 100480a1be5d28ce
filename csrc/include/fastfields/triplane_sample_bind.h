// triplane_sample: torch-side argument checks and parameter set-up shared by the CPU and
// CUDA bindings. TORCH-SIDE ONLY (includes ATen): never include this from a .cu file.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "fastfields/triplane_sample.h"

namespace fastfields {
namespace triplane_bind {

// Checks the arguments (naming the offending one) and fills sizes, planes strides, axes,
// reduce, padding and align_corners. xyz / grad_out strides are set by the callers once the
// tensors have been converted to the dtypes the kernels read.
inline TriplaneSampleParams make_params(const at::Tensor& planes, const at::Tensor& xyz,
                                        at::IntArrayRef axes, int64_t reduce, bool align_corners,
                                        int64_t padding) {
  TORCH_CHECK(planes.defined(), "triplane_sample: planes is undefined");
  TORCH_CHECK(xyz.defined(), "triplane_sample: xyz is undefined");
  TORCH_CHECK(planes.dim() == 5, "triplane_sample: planes must be [B, 3, C, H, W], got ", planes.dim(),
              " dims (shape ", planes.sizes(), ")");
  TORCH_CHECK(planes.size(1) == 3, "triplane_sample: planes must hold 3 planes in dim 1, got ",
              planes.size(1), " (shape ", planes.sizes(), ")");
  TORCH_CHECK(planes.size(3) > 0 && planes.size(4) > 0,
              "triplane_sample: planes must have H > 0 and W > 0, got shape ", planes.sizes());
  TORCH_CHECK(xyz.dim() == 3, "triplane_sample: xyz must be [B, N, 3], got ", xyz.dim(), " dims (shape ",
              xyz.sizes(), ")");
  TORCH_CHECK(xyz.size(2) == 3, "triplane_sample: xyz's last dim must be 3, got ", xyz.size(2));
  TORCH_CHECK(xyz.size(0) == planes.size(0), "triplane_sample: xyz batch size (", xyz.size(0),
              ") must match planes batch size (", planes.size(0), ")");
  const auto pt = planes.scalar_type();
  TORCH_CHECK(pt == at::kFloat || pt == at::kDouble || pt == at::kHalf || pt == at::kBFloat16,
              "triplane_sample: planes must be float32, float64, float16 or bfloat16, got ", pt);
  TORCH_CHECK(at::isFloatingType(xyz.scalar_type()),
              "triplane_sample: xyz must be a floating-point tensor, got ", xyz.scalar_type());
  TORCH_CHECK(xyz.device() == planes.device(), "triplane_sample: xyz (", xyz.device(),
              ") must be on the same device as planes (", planes.device(), ")");
  TORCH_CHECK(axes.size() == 6, "triplane_sample: axes must hold 6 entries (3 planes x (u, v)), got ",
              axes.size());
  for (auto a : axes) {
    TORCH_CHECK(a >= 0 && a < 3, "triplane_sample: axes entries must be 0, 1 or 2, got ", axes);
  }
  TORCH_CHECK(reduce >= 0 && reduce <= 4,
              "triplane_sample: reduce must be 0 (concat), 1 (sum), 2 (mean), 3 (prod) or 4 (none), got ",
              reduce);
  TORCH_CHECK(padding == 0 || padding == 1, "triplane_sample: padding must be 0 (zeros) or 1 (border), got ",
              padding);

  TriplaneSampleParams p{};
  p.B = planes.size(0);
  p.N = xyz.size(1);
  p.C = planes.size(2);
  p.H = planes.size(3);
  p.W = planes.size(4);
  for (int i = 0; i < 5; ++i) p.planes_strides[i] = planes.stride(i);
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz.stride(i);
  for (int i = 0; i < 4; ++i) p.grad_out_strides[i] = 0;
  for (int i = 0; i < 6; ++i) p.axes[i] = static_cast<int>(axes[i]);
  p.reduce = static_cast<int>(reduce);
  p.padding = static_cast<int>(padding);
  p.align_corners = align_corners;
  return p;
}

inline std::vector<int64_t> out_shape(const TriplaneSampleParams& p) {
  if (p.reduce == kReduceNone) return {p.B, p.N, 3, p.C};
  if (p.reduce == kReduceConcat) return {p.B, p.N, 3 * p.C};
  return {p.B, p.N, p.C};
}

// xyz in the accumulation dtype (no copy for the usual float32 xyz); records its strides.
inline at::Tensor prepare_xyz(const at::Tensor& xyz, at::ScalarType planes_dtype, TriplaneSampleParams& p) {
  at::Tensor x = xyz.to(acc_dtype(planes_dtype));
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = x.stride(i);
  return x;
}

// grad_out checked against the forward output's shape, converted to the planes' dtype (no
// copy when it already is), and its strides recorded as a [B, N, 3, C] view.
inline at::Tensor prepare_grad_out(const at::Tensor& grad_out, const at::Tensor& planes, TriplaneSampleParams& p) {
  TORCH_CHECK(grad_out.defined(), "triplane_sample: grad_out is undefined");
  TORCH_CHECK(grad_out.device() == planes.device(), "triplane_sample: grad_out (", grad_out.device(),
              ") must be on the same device as planes (", planes.device(), ")");
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()),
              "triplane_sample: grad_out must be a floating-point tensor, got ", grad_out.scalar_type());
  const auto expected = out_shape(p);
  TORCH_CHECK(grad_out.sizes().equals(expected), "triplane_sample: grad_out must have shape ",
              at::IntArrayRef(expected), ", got ", grad_out.sizes());
  at::Tensor g = grad_out.to(planes.scalar_type());
  if (p.reduce == kReduceNone) {
    for (int i = 0; i < 4; ++i) p.grad_out_strides[i] = g.stride(i);
  } else if (p.reduce == kReduceConcat) {  // [B, N, 3C] viewed as [B, N, 3, C]
    p.grad_out_strides[0] = g.stride(0);
    p.grad_out_strides[1] = g.stride(1);
    p.grad_out_strides[2] = p.C * g.stride(2);
    p.grad_out_strides[3] = g.stride(2);
  } else {
    p.grad_out_strides[0] = g.stride(0);
    p.grad_out_strides[1] = g.stride(1);
    p.grad_out_strides[2] = 0;
    p.grad_out_strides[3] = g.stride(2);
  }
  return g;
}

}  // namespace triplane_bind
}  // namespace fastfields
