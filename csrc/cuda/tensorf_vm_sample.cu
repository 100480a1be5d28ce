// tensorf_vm_sample: CUDA kernels on raw pointers (no torch headers; builds with plain nvcc).
//
// LANES consecutive threads of a warp share a point and take its components r = lane,
// lane + LANES, ...: with channels-last planes the lanes read each bilinear corner as one
// coalesced run of components, the concat output row is written coalesced, and the "sum"
// reduction and the point gradient are finished with warp shuffles in registers. The
// per-element math is in fastfields/tensorf_vm_sample.h, shared with the CPU kernels.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastfields/tensorf_vm_sample.h"

namespace fastfields {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct VmInputs {
  const T* plane[3];
  const T* line[3];
};

// Accumulation buffers (null when not needed): plane k [H_k, W_k, R_k], line k [L_k, R_k].
template <typename A>
struct VmGrads {
  A* plane[3];
  A* line[3];
};

// Sum over the LANES threads of one point (all 32 threads of the warp must call this).
template <int LANES, typename A>
__device__ __forceinline__ A lanes_sum(A v) {
#pragma unroll
  for (int offset = LANES / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset, LANES);
  return v;
}

template <typename A, typename T>
__device__ __forceinline__ void load_corners(const T* __restrict__ plane, const PlaneTaps<A>& t, int64_t r,
                                             int64_t sR, A v[4]) {
#pragma unroll
  for (int c = 0; c < 4; ++c) v[c] = (t.mask & (1u << c)) ? ff_load<A>(plane[t.off[c] + r * sR]) : A(0);
}

template <typename A, typename T>
__device__ __forceinline__ void load_taps(const T* __restrict__ line, const LineTaps<A>& t, int64_t r, int64_t sR,
                                          A& a0, A& a1) {
  a0 = (t.mask & 1u) ? ff_load<A>(line[t.off[0] + r * sR]) : A(0);
  a1 = (t.mask & 2u) ? ff_load<A>(line[t.off[1] + r * sR]) : A(0);
}

template <typename T, typename A, int LANES>
__global__ void __launch_bounds__(kThreads)
    vm_fwd_kernel(const VmSampleParams p, const VmInputs<T> in, const A* __restrict__ xyz, T* __restrict__ out) {
  const int lane = threadIdx.x % LANES;
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / LANES;
  const bool active = n < p.N;
  A pt[3] = {A(0), A(0), A(0)};
  const bool ok = active && vm_load_point<A>(xyz, p, n, pt);
  A acc = A(0);
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    const int64_t R = p.R[k];
    T* __restrict__ row = out + n * p.total_R + p.offset[k];
    if (!ok) {
      if (active && p.reduce == kReduceConcat) {
        for (int64_t r = lane; r < R; r += LANES) row[r] = ff_store<T>(A(0));
      }
      continue;
    }
    const PlaneTaps<A> taps =
        vm_plane_taps<A>(vm_pick(pt, p.mat_mode[2 * k]), vm_pick(pt, p.mat_mode[2 * k + 1]), p, k);
    const LineTaps<A> line_taps = vm_line_taps<A>(vm_pick(pt, p.vec_mode[k]), p, k);
    const int64_t sR = p.plane_strides[k][0], line_sR = p.line_strides[k][0];
    for (int64_t r = lane; r < R; r += LANES) {
      A v[4], a0, a1;
      load_corners<A>(in.plane[k], taps, r, sR, v);
      load_taps<A>(in.line[k], line_taps, r, line_sR, a0, a1);
      const A product = vm_bilinear<A>(taps, v) * vm_linear<A>(line_taps, a0, a1);
      if (p.reduce == kReduceConcat) {
        row[r] = ff_store<T>(product);
      } else {
        acc += product;
      }
    }
  }
  if (p.reduce == kReduceSum) {
    acc = lanes_sum<LANES>(acc);
    if (active && lane == 0) out[n] = ff_store<T>(acc);
  }
}

template <typename T, typename A, int LANES>
__global__ void __launch_bounds__(kThreads)
    vm_bwd_kernel(const VmSampleParams p, const VmInputs<T> in, const A* __restrict__ xyz,
                  const T* __restrict__ grad_out, int64_t g_sN, int64_t g_sR, const VmGrads<A> grads,
                  A* __restrict__ grad_xyz) {
  const int lane = threadIdx.x % LANES;
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / LANES;
  const bool active = n < p.N;
  A pt[3] = {A(0), A(0), A(0)};
  const bool ok = active && vm_load_point<A>(xyz, p, n, pt);
  const A g_sum = (ok && p.reduce == kReduceSum) ? ff_load<A>(grad_out[n * g_sN]) : A(0);
  A dxyz[3] = {A(0), A(0), A(0)};
#pragma unroll
  for (int k = 0; k < 3; ++k) {
    if (!ok) continue;
    const int64_t R = p.R[k];
    const PlaneTaps<A> taps =
        vm_plane_taps<A>(vm_pick(pt, p.mat_mode[2 * k]), vm_pick(pt, p.mat_mode[2 * k + 1]), p, k);
    const LineTaps<A> line_taps = vm_line_taps<A>(vm_pick(pt, p.vec_mode[k]), p, k);
    const int64_t sR = p.plane_strides[k][0], line_sR = p.line_strides[k][0];
    A* __restrict__ plane_grad = grads.plane[k];
    A* __restrict__ line_grad = grads.line[k];
    const bool need_plane_values = line_grad != nullptr || grad_xyz != nullptr;
    A du = A(0), dv = A(0), dw = A(0);
    for (int64_t r = lane; r < R; r += LANES) {
      const A g = p.reduce == kReduceSum ? g_sum : ff_load<A>(grad_out[n * g_sN + (p.offset[k] + r) * g_sR]);
      A a0, a1;
      load_taps<A>(in.line[k], line_taps, r, line_sR, a0, a1);
      const A g_plane = g * vm_linear<A>(line_taps, a0, a1);  // d loss / d plane value
      if (plane_grad != nullptr) {
        // Neighbouring points share corners, hence atomics (coalesced across the lanes).
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          if (!(taps.mask & (1u << c))) continue;
          const int64_t texel = (taps.y0 + triplane_corner_dy(c)) * p.W[k] + taps.x0 + triplane_corner_dx(c);
          atomicAdd(plane_grad + texel * R + r, taps.w[c] * g_plane);
        }
      }
      if (!need_plane_values) continue;
      A v[4];
      load_corners<A>(in.plane[k], taps, r, sR, v);
      const A g_line = g * vm_bilinear<A>(taps, v);  // d loss / d line value
      if (line_grad != nullptr) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (line_taps.mask & (1u << j)) atomicAdd(line_grad + (line_taps.l0 + j) * R + r, line_taps.w[j] * g_line);
        }
      }
      if (grad_xyz != nullptr) {
        du += g_plane * vm_bilinear_du<A>(taps, v);
        dv += g_plane * vm_bilinear_dv<A>(taps, v);
        dw += g_line * vm_linear_dw<A>(line_taps, a0, a1);
      }
    }
    vm_add_to_axis(dxyz, p.mat_mode[2 * k], du);
    vm_add_to_axis(dxyz, p.mat_mode[2 * k + 1], dv);
    vm_add_to_axis(dxyz, p.vec_mode[k], dw);
  }
  if (grad_xyz != nullptr) {  // uniform over the grid: every thread of the warp gets here
#pragma unroll
    for (int d = 0; d < 3; ++d) {
      const A total = lanes_sum<LANES>(dxyz[d]);
      if (active && lane == 0) grad_xyz[n * 3 + d] = total;
    }
  }
}

// LANES: the power of two in 8..32 that pads the components of the three pairs the least
// (the largest on ties), so few lanes idle: 16 for R_k = 48, 32 for R_k = 64. Eight float
// lanes still read a whole 32-byte sector of a channels-last corner.
int lanes_for(const VmSampleParams& p) {
  int best = 8;
  int64_t best_padded = -1;
  for (int lanes = 8; lanes <= 32; lanes *= 2) {
    int64_t padded = 0;
    for (int k = 0; k < 3; ++k) padded += (p.R[k] + lanes - 1) / lanes * lanes;
    if (best_padded < 0 || padded <= best_padded) {
      best = lanes;
      best_padded = padded;
    }
  }
  return best;
}

unsigned blocks_for(const VmSampleParams& p, int lanes) {
  return static_cast<unsigned>((p.N * lanes + kThreads - 1) / kThreads);
}

template <typename T>
cudaError_t launch_fwd(const VmSampleParams& p, const void* const planes[3], const void* const lines[3],
                       const void* xyz, void* out, cudaStream_t stream) {
  using A = acc_t<T>;
  VmInputs<T> in;
  for (int k = 0; k < 3; ++k) {
    in.plane[k] = static_cast<const T*>(planes[k]);
    in.line[k] = static_cast<const T*>(lines[k]);
  }
  const A* x = static_cast<const A*>(xyz);
  T* o = static_cast<T*>(out);
  const int lanes = lanes_for(p);
  const unsigned blocks = blocks_for(p, lanes);
  switch (lanes) {
    case 8:
      vm_fwd_kernel<T, A, 8><<<blocks, kThreads, 0, stream>>>(p, in, x, o);
      break;
    case 16:
      vm_fwd_kernel<T, A, 16><<<blocks, kThreads, 0, stream>>>(p, in, x, o);
      break;
    default:
      vm_fwd_kernel<T, A, 32><<<blocks, kThreads, 0, stream>>>(p, in, x, o);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const VmSampleParams& p, const void* const planes[3], const void* const lines[3],
                       const void* xyz, const void* grad_out, int64_t g_sN, int64_t g_sR,
                       void* const grad_planes[3], void* const grad_lines[3], void* grad_xyz, cudaStream_t stream) {
  using A = acc_t<T>;
  VmInputs<T> in;
  VmGrads<A> grads;
  for (int k = 0; k < 3; ++k) {
    in.plane[k] = static_cast<const T*>(planes[k]);
    in.line[k] = static_cast<const T*>(lines[k]);
    grads.plane[k] = static_cast<A*>(grad_planes[k]);
    grads.line[k] = static_cast<A*>(grad_lines[k]);
  }
  const A* x = static_cast<const A*>(xyz);
  const T* g = static_cast<const T*>(grad_out);
  A* gx = static_cast<A*>(grad_xyz);
  const int lanes = lanes_for(p);
  const unsigned blocks = blocks_for(p, lanes);
  switch (lanes) {
    case 8:
      vm_bwd_kernel<T, A, 8><<<blocks, kThreads, 0, stream>>>(p, in, x, g, g_sN, g_sR, grads, gx);
      break;
    case 16:
      vm_bwd_kernel<T, A, 16><<<blocks, kThreads, 0, stream>>>(p, in, x, g, g_sN, g_sR, grads, gx);
      break;
    default:
      vm_bwd_kernel<T, A, 32><<<blocks, kThreads, 0, stream>>>(p, in, x, g, g_sN, g_sR, grads, gx);
  }
  return cudaGetLastError();
}

}  // namespace

// Launchers on raw pointers. planes / lines / grad_out are in the storage dtype `dtype`
// (DType); xyz and every gradient buffer are in its accumulation dtype (double for float64,
// float otherwise). Gradient buffers are zeroed by the caller; null ones are not computed.
cudaError_t tensorf_vm_sample_fwd_launch(const VmSampleParams& p, const void* const planes[3],
                                         const void* const lines[3], const void* xyz, void* out, int dtype,
                                         cudaStream_t stream) {
  if (p.N == 0) return cudaSuccess;
  switch (dtype) {
    case kFloat64:
      return launch_fwd<double>(p, planes, lines, xyz, out, stream);
    case kFloat16:
      return launch_fwd<__half>(p, planes, lines, xyz, out, stream);
    case kBFloat16:
      return launch_fwd<__nv_bfloat16>(p, planes, lines, xyz, out, stream);
    default:
      return launch_fwd<float>(p, planes, lines, xyz, out, stream);
  }
}

cudaError_t tensorf_vm_sample_bwd_launch(const VmSampleParams& p, const void* const planes[3],
                                         const void* const lines[3], const void* xyz, const void* grad_out,
                                         int64_t g_sN, int64_t g_sR, void* const grad_planes[3],
                                         void* const grad_lines[3], void* grad_xyz, int dtype, cudaStream_t stream) {
  if (p.N == 0) return cudaSuccess;
  switch (dtype) {
    case kFloat64:
      return launch_bwd<double>(p, planes, lines, xyz, grad_out, g_sN, g_sR, grad_planes, grad_lines, grad_xyz,
                                stream);
    case kFloat16:
      return launch_bwd<__half>(p, planes, lines, xyz, grad_out, g_sN, g_sR, grad_planes, grad_lines, grad_xyz,
                                stream);
    case kBFloat16:
      return launch_bwd<__nv_bfloat16>(p, planes, lines, xyz, grad_out, g_sN, g_sR, grad_planes, grad_lines,
                                       grad_xyz, stream);
    default:
      return launch_bwd<float>(p, planes, lines, xyz, grad_out, g_sN, g_sR, grad_planes, grad_lines, grad_xyz,
                               stream);
  }
}

}  // namespace fastfields
