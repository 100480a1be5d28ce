// triplane_sample: torch bindings of the CUDA kernels (namespace fastfields_cuda): argument
// checks, device guard, current stream, dtype dispatch to the raw-pointer launchers of
// triplane_sample.cu.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <tuple>

#include "fastfields/triplane_sample.h"
#include "fastfields/triplane_sample_bind.h"
#include "triplane_sample.cuh"
#include "fastfields/schemas.h"

namespace fastfields {
namespace {

using namespace triplane_bind;

at::Tensor triplane_sample_fwd_cuda(const at::Tensor& planes, const at::Tensor& xyz, at::IntArrayRef axes,
                                    int64_t reduce, bool align_corners, int64_t padding) {
  check_device(planes, "planes", planes, "planes", at::kCUDA, "triplane_sample");
  check_device(xyz, "xyz", planes, "planes", at::kCUDA, "triplane_sample");
  TriplaneSampleParams p = make_params(planes, xyz, axes, reduce, align_corners, padding);
  const c10::cuda::CUDAGuard guard(planes.device());
  const at::Tensor xyz_a = prepare_xyz(xyz, planes.scalar_type(), p);
  at::Tensor out = at::empty(out_shape(p), planes.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const cudaError_t err =
      launch_triplane_sample_fwd(p, dtype_code(planes.scalar_type(), "triplane_sample", "planes"), planes.data_ptr(), xyz_a.data_ptr(),
                                 out.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "triplane_sample_fwd: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& planes,
                                                            const at::Tensor& xyz, at::IntArrayRef axes,
                                                            int64_t reduce, bool align_corners, int64_t padding,
                                                            bool need_planes, bool need_xyz) {
  check_device(planes, "planes", planes, "planes", at::kCUDA, "triplane_sample");
  check_device(xyz, "xyz", planes, "planes", at::kCUDA, "triplane_sample");
  check_device(grad_out, "grad_out", planes, "planes", at::kCUDA, "triplane_sample");
  TriplaneSampleParams p = make_params(planes, xyz, axes, reduce, align_corners, padding);
  const c10::cuda::CUDAGuard guard(planes.device());
  const at::ScalarType adt = acc_dtype(planes.scalar_type());
  const at::Tensor xyz_a = prepare_xyz(xyz, planes.scalar_type(), p);
  const at::Tensor go = prepare_grad_out(grad_out, planes, p);

  // Accumulators (zeroed): channels-last [B, 3, H, W, C] and [B, N, 3], float32 (float64
  // for float64 planes).
  at::Tensor gp_acc, gx_acc;
  if (need_planes) gp_acc = at::zeros({p.B, 3, p.H, p.W, p.C}, planes.options().dtype(adt));
  if (need_xyz) gx_acc = at::zeros({p.B, p.N, 3}, xyz_a.options().dtype(adt));

  if (p.B * p.N * p.C > 0 && (need_planes || need_xyz)) {
    const cudaError_t err = launch_triplane_sample_bwd(
        p, dtype_code(planes.scalar_type(), "triplane_sample", "planes"), go.data_ptr(), planes.data_ptr(), xyz_a.data_ptr(),
        need_planes ? gp_acc.data_ptr() : nullptr, need_xyz ? gx_acc.data_ptr() : nullptr,
        c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "triplane_sample_bwd: CUDA kernel launch failed: ", cudaGetErrorString(err));
  }

  // grad_planes is returned channels-last-strided: [B, 3, C, H, W] view of [B, 3, H, W, C].
  at::Tensor grad_planes =
      need_planes ? gp_acc.to(planes.scalar_type()).permute({0, 1, 4, 2, 3}) : at::empty({0}, planes.options());
  at::Tensor grad_xyz = need_xyz ? gx_acc.to(xyz.scalar_type()) : at::empty({0}, xyz.options());
  return std::make_tuple(grad_planes, grad_xyz);
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cuda, CUDA, triplane_sample, fastfields::triplane_sample_fwd_cuda, fastfields::triplane_sample_bwd_cuda)
