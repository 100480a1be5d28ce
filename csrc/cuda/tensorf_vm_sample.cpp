// tensorf_vm_sample: torch-facing checks and op registration of the CUDA kernels
// (namespace fastfields_cuda). The kernels live in tensorf_vm_sample.cu, on raw pointers.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "fastfields/tensorf_vm_sample.h"

namespace fastfields {

cudaError_t tensorf_vm_sample_fwd_launch(const VmSampleParams& p, const void* const planes[3],
                                         const void* const lines[3], const void* xyz, void* out, int dtype,
                                         cudaStream_t stream);
cudaError_t tensorf_vm_sample_bwd_launch(const VmSampleParams& p, const void* const planes[3],
                                         const void* const lines[3], const void* xyz, const void* grad_out,
                                         int64_t g_sN, int64_t g_sR, void* const grad_planes[3],
                                         void* const grad_lines[3], void* grad_xyz, int dtype, cudaStream_t stream);

namespace {

int dtype_code(at::ScalarType t) {
  if (t == at::kDouble) return kFloat64;
  if (t == at::kHalf) return kFloat16;
  if (t == at::kBFloat16) return kBFloat16;
  return kFloat32;  // make_params admits only these four
}

at::ScalarType acc_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(const at::Tensor& t, const at::Tensor& first, const char* name) {
  TORCH_CHECK(t.device().is_cuda(), "tensorf_vm_sample (cuda): ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == first.device(), "tensorf_vm_sample (cuda): ", name, " is on ", t.device(),
              " but planes[0] is on ", first.device());
}

VmSampleParams make_params(at::TensorList planes, at::TensorList lines, const at::Tensor& xyz,
                           at::IntArrayRef mat_mode, at::IntArrayRef vec_mode, int64_t reduce, bool align_corners,
                           int64_t padding) {
  TORCH_CHECK(planes.size() == 3 && lines.size() == 3, "tensorf_vm_sample: expected 3 planes and 3 lines, got ",
              planes.size(), " and ", lines.size());
  TORCH_CHECK(xyz.dim() == 2 && xyz.size(1) == 3, "tensorf_vm_sample: xyz must be [N, 3], got ", xyz.sizes());
  TORCH_CHECK(at::isFloatingType(xyz.scalar_type()), "tensorf_vm_sample: xyz must be a floating-point tensor, got ",
              xyz.scalar_type());
  TORCH_CHECK(mat_mode.size() == 6 && vec_mode.size() == 3,
              "tensorf_vm_sample: mat_mode must hold 6 entries and vec_mode 3, got ", mat_mode, " and ", vec_mode);
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
  const at::ScalarType dt = planes[0].scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "tensorf_vm_sample: planes must be float32/float64/float16/bfloat16, got ", dt);
  check_cuda(xyz, planes[0], "xyz");

  VmSampleParams p{};
  p.N = xyz.size(0);
  for (int k = 0; k < 3; ++k) {
    const at::Tensor& plane = planes[k];
    const at::Tensor& line = lines[k];
    check_cuda(plane, planes[0], "planes");
    check_cuda(line, planes[0], "lines");
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
  p.reduce = static_cast<int>(reduce);
  p.padding = static_cast<int>(padding);
  p.align_corners = align_corners;
  return p;
}

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
  VmSampleParams p = make_params(planes, lines, xyz, mat_mode, vec_mode, reduce, align_corners, padding);
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
                                              dtype_code(dt), c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

std::vector<at::Tensor> tensorf_vm_sample_bwd_cuda(const at::Tensor& grad_out, at::TensorList planes,
                                                   at::TensorList lines, const at::Tensor& xyz,
                                                   at::IntArrayRef mat_mode, at::IntArrayRef vec_mode,
                                                   int64_t reduce, bool align_corners, int64_t padding,
                                                   bool need_planes, bool need_lines, bool need_xyz) {
  VmSampleParams p = make_params(planes, lines, xyz, mat_mode, vec_mode, reduce, align_corners, padding);
  check_cuda(grad_out, planes[0], "grad_out");
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
                                              need_xyz ? xyz_acc.mutable_data_ptr() : nullptr, dtype_code(dt),
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

TORCH_LIBRARY_FRAGMENT(fastfields_cuda, m) {
  m.def(
      "tensorf_vm_sample_fwd(Tensor[] planes, Tensor[] lines, Tensor xyz, int[] mat_mode, int[] vec_mode, int reduce, "
      "bool align_corners, int padding) -> Tensor");
  m.def(
      "tensorf_vm_sample_bwd(Tensor grad_out, Tensor[] planes, Tensor[] lines, Tensor xyz, int[] mat_mode, "
      "int[] vec_mode, int reduce, bool align_corners, int padding, bool need_planes, bool need_lines, "
      "bool need_xyz) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(fastfields_cuda, CUDA, m) {
  m.impl("tensorf_vm_sample_fwd", TORCH_FN(fastfields::tensorf_vm_sample_fwd_cuda));
  m.impl("tensorf_vm_sample_bwd", TORCH_FN(fastfields::tensorf_vm_sample_bwd_cuda));
}
