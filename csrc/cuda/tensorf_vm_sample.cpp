// tensorf_vm_sample: torch-facing checks and op registration of the CUDA kernels
// (namespace fastfields_cuda). The kernels live in tensorf_vm_sample.cu, on raw pointers.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "fastfields/tensorf_vm_sample.h"
#include "fastfields/tensorf_vm_sample_bind.h"
#include "fastfields/schemas.h"

namespace fastfields {

cudaError_t tensorf_vm_sample_fwd_launch(const VmSampleParams& p, const void* const planes[3],
                                         const void* const lines[3], const void* xyz, void* out, int dtype,
                                         cudaStream_t stream);
cudaError_t tensorf_vm_sample_bwd_launch(const VmSampleParams& p, const void* const planes[3],
                                         const void* const lines[3], const void* xyz, const void* grad_out,
                                         int64_t g_sN, int64_t g_sR, void* const grad_planes[3],
                                         void* const grad_lines[3], void* grad_xyz, int dtype, cudaStream_t stream);

namespace {

// xyz in the accumulation dtype (strides honoured, recorded in p).
at::Tensor accumulation_xyz(VmSampleParams& p, const at::Tensor& xyz, at::ScalarType dt) {
  at::Tensor xyz_a = xyz.to(acc_dtype(dt));
  p.xyz_strides[0] = xyz_a.stride(0);
  p.xyz_strides[1] = xyz_a.stride(1);
  return xyz_a;
}

at::Tensor tensorf_vm_sample_fwd_cuda(at::TensorList planes, at::TensorList lines, const at::Tensor& xyz,
                                      at::IntArrayRef mat_mode, at::IntArrayRef vec_mode, int64_t reduce,
                                      bool align_corners, int64_t padding) {
  VmSampleParams p = vm_bind::make_params(planes, lines, xyz, mat_mode, vec_mode, reduce, align_corners, padding, at::kCUDA);
  const c10::cuda::CUDAGuard guard(planes[0].device());
  const at::ScalarType dt = planes[0].scalar_type();
  const at::Tensor xyz_a = accumulation_xyz(p, xyz, dt);
  at::Tensor out = p.reduce == kReduceSum ? at::empty({p.N}, planes[0].options())
                                      : at::empty({p.N, p.total_R}, planes[0].options());
  const void* plane_ptrs[3];
  const void* line_ptrs[3];
  for (int k = 0; k < 3; ++k) {
    plane_ptrs[k] = planes[k].const_data_ptr();
    line_ptrs[k] = lines[k].const_data_ptr();
  }
  C10_CUDA_CHECK(tensorf_vm_sample_fwd_launch(p, plane_ptrs, line_ptrs, xyz_a.const_data_ptr(), out.mutable_data_ptr(),
                                              dtype_code(dt, "tensorf_vm_sample", "planes"), c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

std::vector<at::Tensor> tensorf_vm_sample_bwd_cuda(const at::Tensor& grad_out, at::TensorList planes,
                                                   at::TensorList lines, const at::Tensor& xyz,
                                                   at::IntArrayRef mat_mode, at::IntArrayRef vec_mode,
                                                   int64_t reduce, bool align_corners, int64_t padding,
                                                   bool need_planes, bool need_lines, bool need_xyz) {
  VmSampleParams p = vm_bind::make_params(planes, lines, xyz, mat_mode, vec_mode, reduce, align_corners, padding, at::kCUDA);
  check_device(grad_out, "grad_out", planes[0], "planes[0]", at::kCUDA, "tensorf_vm_sample");
  const std::vector<int64_t> expected =
      p.reduce == kReduceSum ? std::vector<int64_t>{p.N} : std::vector<int64_t>{p.N, p.total_R};
  TORCH_CHECK(grad_out.sizes().equals(expected), "tensorf_vm_sample: grad_out must have shape ",
              at::IntArrayRef(expected), ", got ", grad_out.sizes());
  const c10::cuda::CUDAGuard guard(planes[0].device());
  const at::ScalarType dt = planes[0].scalar_type();
  const at::Tensor xyz_a = accumulation_xyz(p, xyz, dt);
  const at::Tensor go = grad_out.to(dt);
  const int64_t g_sN = go.stride(0), g_sR = p.reduce == kReduceSum ? 0 : go.stride(1);
  const auto acc_options = xyz_a.options();

  // Channels-last accumulation buffers: each corner / tap update is a run of components.
  at::Tensor plane_acc[3], line_acc[3];
  const void* plane_ptrs[3];
  const void* line_ptrs[3];
  void* plane_grad_ptrs[3];
  void* line_grad_ptrs[3];
  for (int k = 0; k < 3; ++k) {
    plane_ptrs[k] = planes[k].const_data_ptr();
    line_ptrs[k] = lines[k].const_data_ptr();
    if (need_planes) plane_acc[k] = at::zeros({p.H[k], p.W[k], p.R[k]}, acc_options);
    if (need_lines) line_acc[k] = at::zeros({p.L[k], p.R[k]}, acc_options);
    plane_grad_ptrs[k] = need_planes ? plane_acc[k].mutable_data_ptr() : nullptr;
    line_grad_ptrs[k] = need_lines ? line_acc[k].mutable_data_ptr() : nullptr;
  }
  at::Tensor xyz_acc = need_xyz ? at::empty({p.N, 3}, acc_options) : at::Tensor();
  C10_CUDA_CHECK(tensorf_vm_sample_bwd_launch(p, plane_ptrs, line_ptrs, xyz_a.const_data_ptr(), go.const_data_ptr(),
                                              g_sN, g_sR, plane_grad_ptrs, line_grad_ptrs,
                                              need_xyz ? xyz_acc.mutable_data_ptr() : nullptr, dtype_code(dt, "tensorf_vm_sample", "planes"),
                                              c10::cuda::getCurrentCUDAStream().stream()));

  std::vector<at::Tensor> grads(7);
  for (int k = 0; k < 3; ++k) {
    grads[k] = need_planes ? plane_acc[k].to(dt).permute({2, 0, 1}) : at::empty({0}, planes[k].options());
    grads[3 + k] = need_lines ? line_acc[k].to(dt).t() : at::empty({0}, lines[k].options());
  }
  grads[6] = need_xyz ? xyz_acc.to(xyz.scalar_type()) : at::empty({0}, xyz.options());
  return grads;
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cuda, CUDA, tensorf_vm_sample, fastfields::tensorf_vm_sample_fwd_cuda, fastfields::tensorf_vm_sample_bwd_cuda)
