// triplane_sample: torch bindings of the CUDA kernels (namespace fastfields_cuda): argument
// checks, device guard, current stream, dtype dispatch to the raw-pointer launchers of
// triplane_sample.cu.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "fastfields/triplane_sample.h"
#include "fastfields/triplane_sample_bind.h"
#include "triplane_sample.cuh"

namespace fastfields {
namespace {

using namespace triplane_bind;

DType dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return kFloat32;
    case at::kDouble:
      return kFloat64;
    case at::kHalf:
      return kFloat16;
    case at::kBFloat16:
      return kBFloat16;
    default:
      break;
  }
  TORCH_CHECK(false, "triplane_sample: planes must be float32, float64, float16 or bfloat16, got ", t);
  return kFloat32;  // unreachable
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "triplane_sample (cuda): ", name, " must be a CUDA tensor, got ", t.device());
}

at::Tensor triplane_sample_fwd_cuda(const at::Tensor& planes, const at::Tensor& xyz, at::IntArrayRef axes,
                                    int64_t reduce, bool align_corners, int64_t padding) {
  check_cuda(planes, "planes");
  check_cuda(xyz, "xyz");
  TriplaneSampleParams p = make_params(planes, xyz, axes, reduce, align_corners, padding);
  const c10::cuda::CUDAGuard guard(planes.device());
  const at::Tensor xyz_a = prepare_xyz(xyz, planes.scalar_type(), p);
  at::Tensor out = at::empty(out_shape(p), planes.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const cudaError_t err =
      launch_triplane_sample_fwd(p, dtype_code(planes.scalar_type()), planes.data_ptr(), xyz_a.data_ptr(),
                                 out.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "triplane_sample_fwd: CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& planes,
                                                            const at::Tensor& xyz, at::IntArrayRef axes,
                                                            int64_t reduce, bool align_corners, int64_t padding,
                                                            bool need_planes, bool need_xyz) {
  check_cuda(planes, "planes");
  check_cuda(xyz, "xyz");
  check_cuda(grad_out, "grad_out");
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
        p, dtype_code(planes.scalar_type()), go.data_ptr(), planes.data_ptr(), xyz_a.data_ptr(),
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

TORCH_LIBRARY_FRAGMENT(fastfields_cuda, m) {
  m.def(
      "triplane_sample_fwd(Tensor planes, Tensor xyz, int[] axes, int reduce, bool align_corners, int padding) "
      "-> Tensor");
  m.def(
      "triplane_sample_bwd(Tensor grad_out, Tensor planes, Tensor xyz, int[] axes, int reduce, bool align_corners, "
      "int padding, bool need_planes, bool need_xyz) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastfields_cuda, CUDA, m) {
  m.impl("triplane_sample_fwd", TORCH_FN(fastfields::triplane_sample_fwd_cuda));
  m.impl("triplane_sample_bwd", TORCH_FN(fastfields::triplane_sample_bwd_cuda));
}
