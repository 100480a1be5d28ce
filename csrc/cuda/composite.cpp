// composite / composite_packed: torch bindings of the CUDA kernels (namespace fastfields_cuda):
// argument checks (fastfields/composite_bind.h), device guard, current stream, and the
// raw-pointer launchers of composite.cu.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "fastfields/composite.h"
#include "fastfields/composite_bind.h"
#include "fastfields/schemas.h"

namespace fastfields {
namespace {

using namespace composite_bind;

Outputs composite_fwd_cuda(const at::Tensor& sigmas, const at::Tensor& rgbs, const c10::optional<at::Tensor>& a,
                           const c10::optional<at::Tensor>& b, const c10::optional<at::Tensor>& offsets,
                           int64_t geometry, int64_t activation, double bias, double scale, double eps,
                           double t_threshold, bool return_weights) {
  TORCH_CHECK(rgbs.is_cuda(), "composite (cuda): rgbs must be a CUDA tensor, got ", rgbs.device());
  const c10::cuda::CUDAGuard guard(rgbs.device());
  const Inputs in = prepare(sigmas, rgbs, a, b, offsets, geometry, rgbs.device());
  CompositeArgs g = make_args(in, geometry, activation, bias, scale, eps);
  Outputs out = forward_outputs(in, geometry, return_weights, t_threshold, g);
  composite_forward_cuda(g, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

Outputs composite_bwd_cuda(const at::Tensor& grad_rgb, const c10::optional<at::Tensor>& grad_depth,
                           const at::Tensor& grad_opacity, const c10::optional<at::Tensor>& grad_weights,
                           const at::Tensor& total, const at::Tensor& sigmas, const at::Tensor& rgbs,
                           const c10::optional<at::Tensor>& a, const c10::optional<at::Tensor>& b,
                           const c10::optional<at::Tensor>& offsets, int64_t geometry, int64_t activation,
                           double bias, double scale, double eps, bool need_sigmas, bool need_rgbs, bool need_a,
                           bool need_b) {
  TORCH_CHECK(rgbs.is_cuda(), "composite (cuda): rgbs must be a CUDA tensor, got ", rgbs.device());
  const c10::cuda::CUDAGuard guard(rgbs.device());
  const Inputs in = prepare(sigmas, rgbs, a, b, offsets, geometry, rgbs.device());
  CompositeArgs g = make_args(in, geometry, activation, bias, scale, eps);
  std::vector<at::Tensor> keep;
  Outputs grads = backward_buffers(in, grad_rgb, grad_depth, grad_opacity, grad_weights, total, need_sigmas, need_rgbs,
                                   need_a, need_b, keep, g);
  composite_backward_cuda(g, c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cuda, CUDA, composite, fastfields::composite_fwd_cuda, fastfields::composite_bwd_cuda)
