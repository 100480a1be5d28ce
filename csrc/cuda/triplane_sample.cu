// triplane_sample CUDA kernels. Raw pointers only; the torch-facing checks and the op
// registration live in triplane_sample.cpp. The per-element math is the same code the CPU
// kernels run (fastfields/triplane_sample.h).
//
// One thread per (point, channel), channel fastest: with channels-last planes a warp reads
// contiguous channel runs of each corner (coalesced), and the output rows are written
// contiguously. grad_planes is accumulated with atomicAdd into a channels-last float
// (double for double planes) buffer; grad_xyz is reduced over the channels of a point with
// a segmented warp shuffle and then added with one atomic per warp segment.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "fastfields/common.h"
#include "fastfields/triplane_sample.h"
#include "triplane_sample.cuh"

namespace fastfields {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ void ff_atomic_add(float* addr, float v) { atomicAdd(addr, v); }

__device__ __forceinline__ void ff_atomic_add(double* addr, double v) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 600
  atomicAdd(addr, v);
#else
  unsigned long long* a = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *a, assumed;
  do {
    assumed = old;
    old = atomicCAS(a, assumed, __double_as_longlong(v + __longlong_as_double(assumed)));
  } while (assumed != old);
#endif
}

// v[i] for a runtime i in [0, 3) without a local-memory array.
template <typename A>
__device__ __forceinline__ A pick3(A v0, A v1, A v2, int i) {
  return i == 0 ? v0 : (i == 1 ? v1 : v2);
}

// Taps of plane k for point (x, y, z).
template <typename A>
__device__ __forceinline__ PlaneTaps<A> plane_taps_k(const TriplaneSampleParams& p, int k, A x, A y, A z) {
  return triplane_plane_taps<A>(pick3(x, y, z, p.axes[2 * k]), pick3(x, y, z, p.axes[2 * k + 1]), p);
}

// Bilinear value of one plane at channel c (pk already offset to the plane and channel).
template <typename T, typename A>
__device__ __forceinline__ A sample_channel(const T* __restrict__ pk, const PlaneTaps<A>& t) {
  A v = A(0);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if (t.mask & (1u << q)) v += t.w[q] * ff_load<A>(pk[t.off[q]]);
  }
  return v;
}

template <typename I, typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    triplane_fwd_kernel(const TriplaneSampleParams p, const T* __restrict__ planes,
                        const A* __restrict__ xyz, T* __restrict__ out, I total) {
  const I C = static_cast<I>(p.C);
  const I N = static_cast<I>(p.N);
  const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I t = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x);
       t < total; t += stride) {
    const I pt = t / C;
    const I c = t - pt * C;
    const I b = pt / N;
    const I n = pt - b * N;
    A xyzv[3];
    A f[3] = {A(0), A(0), A(0)};
    if (triplane_load_point<A>(xyz, p, b, n, xyzv)) {
      const T* base = planes + static_cast<int64_t>(b) * p.planes_strides[0] +
                      static_cast<int64_t>(c) * p.planes_strides[2];
#pragma unroll
      for (int k = 0; k < 3; ++k) {
        const PlaneTaps<A> taps = plane_taps_k<A>(p, k, xyzv[0], xyzv[1], xyzv[2]);
        f[k] = sample_channel<T, A>(base + k * p.planes_strides[1], taps);
      }
    }
    if (p.reduce == kReduceNone || p.reduce == kReduceConcat) {
      T* o = out + static_cast<int64_t>(pt) * (3 * p.C) + c;
      o[0] = ff_store<T>(f[0]);
      o[p.C] = ff_store<T>(f[1]);
      o[2 * p.C] = ff_store<T>(f[2]);
    } else {
      out[static_cast<int64_t>(pt) * p.C + c] = ff_store<T>(triplane_reduce3<A>(p.reduce, f[0], f[1], f[2]));
    }
  }
}

// total_padded: total rounded up to a multiple of 32 so that every warp runs the loop the
// same number of times (the grad_xyz shuffles need whole warps).
template <typename I, typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    triplane_bwd_kernel(const TriplaneSampleParams p, const T* __restrict__ grad_out,
                        const T* __restrict__ planes, const A* __restrict__ xyz, A* __restrict__ gp,
                        A* __restrict__ gxyz, I total, I total_padded) {
  const I C = static_cast<I>(p.C);
  const I N = static_cast<I>(p.N);
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const bool reduced = !(p.reduce == kReduceNone || p.reduce == kReduceConcat);
  const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I t = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + static_cast<I>(threadIdx.x);
       t < total_padded; t += stride) {
    const bool active = t < total;
    const I pt = active ? t / C : I(-1);
    A d0 = A(0), d1 = A(0), d2 = A(0);  // d loss / d (x, y, z) of this lane's channel
    if (active) {
      const I c = t - pt * C;
      const I b = pt / N;
      const I n = pt - b * N;
      A xyzv[3];
      if (triplane_load_point<A>(xyz, p, b, n, xyzv)) {
        const A x = xyzv[0], y = xyzv[1], z = xyzv[2];
        const T* base = planes + static_cast<int64_t>(b) * p.planes_strides[0] +
                        static_cast<int64_t>(c) * p.planes_strides[2];
        const T* go = grad_out + static_cast<int64_t>(b) * p.grad_out_strides[0] +
                      static_cast<int64_t>(n) * p.grad_out_strides[1] +
                      static_cast<int64_t>(c) * p.grad_out_strides[3];
        // Upstream gradient of the reduced output (sum/mean/prod) and, for prod, the three
        // features (recomputed; the taps are recomputed below rather than kept in registers).
        A g = A(0), f0 = A(0), f1 = A(0), f2 = A(0);
        if (reduced) {
          g = ff_load<A>(go[0]);
          if (p.reduce == kReduceProd) {
            f0 = sample_channel<T, A>(base, plane_taps_k<A>(p, 0, x, y, z));
            f1 = sample_channel<T, A>(base + p.planes_strides[1], plane_taps_k<A>(p, 1, x, y, z));
            f2 = sample_channel<T, A>(base + 2 * p.planes_strides[1], plane_taps_k<A>(p, 2, x, y, z));
          }
        }
#pragma unroll
        for (int k = 0; k < 3; ++k) {
          const A gk = reduced ? triplane_reduce3_grad<A>(p.reduce, k, g, f0, f1, f2)
                               : ff_load<A>(go[k * p.grad_out_strides[2]]);
          const PlaneTaps<A> tk = plane_taps_k<A>(p, k, x, y, z);
          if (gp != nullptr) {
            A* buf = gp + ((static_cast<int64_t>(b) * 3 + k) * p.H * p.W) * p.C + c;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              if (tk.mask & (1u << q)) {
                const int64_t yy = tk.y0 + triplane_corner_dy(q);
                const int64_t xx = tk.x0 + triplane_corner_dx(q);
                ff_atomic_add(buf + (yy * p.W + xx) * p.C, tk.w[q] * gk);
              }
            }
          }
          if (gxyz != nullptr) {
            const T* pk = base + k * p.planes_strides[1];
            A du = A(0), dv = A(0);
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              if (tk.mask & (1u << q)) {
                const A a = ff_load<A>(pk[tk.off[q]]);
                du += tk.dwu[q] * a;
                dv += tk.dwv[q] * a;
              }
            }
            du *= gk;
            dv *= gk;
            const int au = p.axes[2 * k], av = p.axes[2 * k + 1];
            d0 += (au == 0 ? du : A(0)) + (av == 0 ? dv : A(0));
            d1 += (au == 1 ? du : A(0)) + (av == 1 ? dv : A(0));
            d2 += (au == 2 ? du : A(0)) + (av == 2 ? dv : A(0));
          }
        }
      }
    }
    if (gxyz != nullptr) {
      // Segmented reduction over the lanes holding the same point (contiguous runs, since
      // the channel index is fastest); the first lane of each run adds the sum.
      const long long key = static_cast<long long>(pt);
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const long long other = __shfl_down_sync(kFullMask, key, off);
        const A o0 = __shfl_down_sync(kFullMask, d0, off);
        const A o1 = __shfl_down_sync(kFullMask, d1, off);
        const A o2 = __shfl_down_sync(kFullMask, d2, off);
        if (lane + off < 32 && other == key) {
          d0 += o0;
          d1 += o1;
          d2 += o2;
        }
      }
      const long long prev = __shfl_up_sync(kFullMask, key, 1);
      if (key >= 0 && (lane == 0 || prev != key)) {
        A* g = gxyz + static_cast<int64_t>(pt) * 3;
        if (d0 != A(0)) ff_atomic_add(g, d0);
        if (d1 != A(0)) ff_atomic_add(g + 1, d1);
        if (d2 != A(0)) ff_atomic_add(g + 2, d2);
      }
    }
  }
}

int64_t grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = int64_t(1) << 20;  // grid-stride loops beyond this
  return blocks < 1 ? 1 : (blocks > cap ? cap : blocks);
}

// 32-bit index math when the whole grid-stride range (plus one stride) fits.
bool fits_int32(int64_t work) {
  return work + grid_for(work) * kThreads < (int64_t(1) << 31) - 1;
}

template <typename T, typename A>
cudaError_t fwd_impl(const TriplaneSampleParams& p, const void* planes, const void* xyz, void* out,
                     cudaStream_t stream) {
  const int64_t total = p.B * p.N * p.C;
  if (total == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(grid_for(total)));
  const T* pl = static_cast<const T*>(planes);
  const A* xp = static_cast<const A*>(xyz);
  T* op = static_cast<T*>(out);
  if (fits_int32(total)) {
    triplane_fwd_kernel<int32_t, T, A><<<grid, kThreads, 0, stream>>>(p, pl, xp, op, static_cast<int32_t>(total));
  } else {
    triplane_fwd_kernel<int64_t, T, A><<<grid, kThreads, 0, stream>>>(p, pl, xp, op, total);
  }
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t bwd_impl(const TriplaneSampleParams& p, const void* grad_out, const void* planes, const void* xyz,
                     void* gp, void* gxyz, cudaStream_t stream) {
  const int64_t total = p.B * p.N * p.C;
  if (total == 0 || (gp == nullptr && gxyz == nullptr)) return cudaSuccess;
  const int64_t padded = (total + 31) / 32 * 32;
  const dim3 grid(static_cast<unsigned>(grid_for(padded)));
  const T* go = static_cast<const T*>(grad_out);
  const T* pl = static_cast<const T*>(planes);
  const A* xp = static_cast<const A*>(xyz);
  A* gpp = static_cast<A*>(gp);
  A* gxp = static_cast<A*>(gxyz);
  if (fits_int32(padded)) {
    triplane_bwd_kernel<int32_t, T, A><<<grid, kThreads, 0, stream>>>(
        p, go, pl, xp, gpp, gxp, static_cast<int32_t>(total), static_cast<int32_t>(padded));
  } else {
    triplane_bwd_kernel<int64_t, T, A><<<grid, kThreads, 0, stream>>>(p, go, pl, xp, gpp, gxp, total, padded);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_triplane_sample_fwd(const TriplaneSampleParams& p, DType dtype, const void* planes,
                                       const void* xyz, void* out, cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      return fwd_impl<float, float>(p, planes, xyz, out, stream);
    case kFloat64:
      return fwd_impl<double, double>(p, planes, xyz, out, stream);
    case kFloat16:
      return fwd_impl<__half, float>(p, planes, xyz, out, stream);
    case kBFloat16:
      return fwd_impl<__nv_bfloat16, float>(p, planes, xyz, out, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_triplane_sample_bwd(const TriplaneSampleParams& p, DType dtype, const void* grad_out,
                                       const void* planes, const void* xyz, void* grad_planes_acc,
                                       void* grad_xyz_acc, cudaStream_t stream) {
  switch (dtype) {
    case kFloat32:
      return bwd_impl<float, float>(p, grad_out, planes, xyz, grad_planes_acc, grad_xyz_acc, stream);
    case kFloat64:
      return bwd_impl<double, double>(p, grad_out, planes, xyz, grad_planes_acc, grad_xyz_acc, stream);
    case kFloat16:
      return bwd_impl<__half, float>(p, grad_out, planes, xyz, grad_planes_acc, grad_xyz_acc, stream);
    case kBFloat16:
      return bwd_impl<__nv_bfloat16, float>(p, grad_out, planes, xyz, grad_planes_acc, grad_xyz_acc, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastfields
