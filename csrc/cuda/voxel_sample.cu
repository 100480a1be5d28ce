// voxel_sample: CUDA kernels on raw pointers plus a stream (no torch headers, so plain nvcc
// compiles this file); the checks and bindings live in voxel_sample.cpp. The per-element
// math (taps, weights, derivatives) is shared with the CPU kernels via
// fastfields/voxel_sample.h.
//
// A group of TPP consecutive lanes (a power of two <= 32, about C) owns one point: every
// lane computes the point's taps, then the group walks the channels, lane l taking
// channels l, l + TPP, ... With a channels-last volume each corner is one coalesced read
// of the group, and the gradient scatter one coalesced run of atomics into the float32
// (float64) channels-last buffer [B, D, H, W, C]. The gradient to xyz is reduced over the
// group with warp shuffles, so it needs no atomics.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "fastfields/voxel_sample.h"

namespace fastfields {
namespace {

constexpr int kThreads = 256;
// The gather is latency-bound: cap the forward at 64 registers (4 blocks per SM; no spills
// for float/half storage). The backward keeps its registers (capping them spills).
constexpr int kForwardMinBlocks = 4;

template <typename T, typename A, int TPP>
__global__ void __launch_bounds__(kThreads, kForwardMinBlocks)
    voxel_fwd_kernel(const VoxelSampleParams p, const T* __restrict__ volume, const A* __restrict__ xyz,
                     T* __restrict__ out) {
  const int64_t idx = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / TPP;
  const int lane = static_cast<int>(threadIdx.x % TPP);
  if (idx >= p.B * p.N) return;
  const int64_t b = idx / p.N;
  const int64_t n = idx - b * p.N;
  T* o = out + idx * p.C;
  A pt[3];
  if (!voxel_load_point<A>(xyz, p, b, n, pt)) {
    for (int64_t c = lane; c < p.C; c += TPP) o[c] = ff_store<T>(A(0));
    return;
  }
  const VoxelTaps<A> t = voxel_taps<A>(pt[0], pt[1], pt[2], p);
  const T* base = volume + b * p.volume_strides[0];
  const int64_t sC = p.volume_strides[1];
  for (int64_t c = lane; c < p.C; c += TPP) {
    A v = A(0);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (t.mask & (1u << k)) v += t.w[k] * ff_load<A>(base[t.off[k] + c * sC]);
    }
    o[c] = ff_store<T>(v);
  }
}

// grad_volume (channels-last, zeroed) and grad_xyz ([B, N, 3], every entry written) may be
// null when not needed.
template <typename T, typename A, int TPP>
__global__ void __launch_bounds__(kThreads)
    voxel_bwd_kernel(const VoxelSampleParams p, const T* __restrict__ grad_out, const T* __restrict__ volume,
                     const A* __restrict__ xyz, A* __restrict__ grad_volume, A* __restrict__ grad_xyz) {
  const int64_t idx = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / TPP;
  const int lane = static_cast<int>(threadIdx.x % TPP);
  // No early return: every lane of the warp must reach the shuffles below.
  const bool active = idx < p.B * p.N;
  A gx = A(0), gy = A(0), gz = A(0);
  A pt[3];
  if (active) {
    const int64_t b = idx / p.N;
    const int64_t n = idx - b * p.N;
    if (voxel_load_point<A>(xyz, p, b, n, pt)) {
      const VoxelTaps<A> t = voxel_taps<A>(pt[0], pt[1], pt[2], p);
      const T* go = grad_out + b * p.grad_out_strides[0] + n * p.grad_out_strides[1];
      const T* base = volume + b * p.volume_strides[0];
      A* grad_base = grad_volume ? grad_volume + b * p.D * p.H * p.W * p.C : nullptr;
      const int64_t sC = p.volume_strides[1];
      for (int64_t c = lane; c < p.C; c += TPP) {
        const A g = ff_load<A>(go[c * p.grad_out_strides[2]]);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          if (!(t.mask & (1u << k))) continue;
          if (grad_base) atomicAdd(grad_base + voxel_corner_cell(t, k, p) * p.C + c, t.w[k] * g);
          if (grad_xyz) {
            const A s = g * ff_load<A>(base[t.off[k] + c * sC]);
            gx += t.dwx[k] * s;
            gy += t.dwy[k] * s;
            gz += t.dwz[k] * s;
          }
        }
      }
    }
  }
  if (grad_xyz == nullptr) return;  // uniform over the grid
#pragma unroll
  for (int offset = TPP / 2; offset > 0; offset >>= 1) {
    gx += __shfl_xor_sync(0xffffffffu, gx, offset, TPP);
    gy += __shfl_xor_sync(0xffffffffu, gy, offset, TPP);
    gz += __shfl_xor_sync(0xffffffffu, gz, offset, TPP);
  }
  if (active && lane == 0) {
    A* q = grad_xyz + idx * 3;
    q[0] = gx;
    q[1] = gy;
    q[2] = gz;
  }
}

// Lanes per point: enough to cover C channels in one pass, at most a warp.
int threads_per_point(int64_t C) {
  int tpp = 1;
  while (tpp < 32 && tpp < C) tpp *= 2;
  return tpp;
}

int64_t blocks_for(int64_t points, int tpp) { return (points * tpp + kThreads - 1) / kThreads; }

template <typename T>
cudaError_t launch_fwd(const VoxelSampleParams& p, const void* volume, const void* xyz, void* out,
                       cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t total = p.B * p.N;
  if (total == 0) return cudaSuccess;
  const int tpp = threads_per_point(p.C);
  const dim3 grid(static_cast<unsigned>(blocks_for(total, tpp)));
  const T* v = static_cast<const T*>(volume);
  const A* x = static_cast<const A*>(xyz);
  T* o = static_cast<T*>(out);
  switch (tpp) {
    case 1: voxel_fwd_kernel<T, A, 1><<<grid, kThreads, 0, stream>>>(p, v, x, o); break;
    case 2: voxel_fwd_kernel<T, A, 2><<<grid, kThreads, 0, stream>>>(p, v, x, o); break;
    case 4: voxel_fwd_kernel<T, A, 4><<<grid, kThreads, 0, stream>>>(p, v, x, o); break;
    case 8: voxel_fwd_kernel<T, A, 8><<<grid, kThreads, 0, stream>>>(p, v, x, o); break;
    case 16: voxel_fwd_kernel<T, A, 16><<<grid, kThreads, 0, stream>>>(p, v, x, o); break;
    default: voxel_fwd_kernel<T, A, 32><<<grid, kThreads, 0, stream>>>(p, v, x, o); break;
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const VoxelSampleParams& p, const void* grad_out, const void* volume, const void* xyz,
                       void* grad_volume, void* grad_xyz, cudaStream_t stream) {
  using A = acc_t<T>;
  const int64_t total = p.B * p.N;
  if (total == 0 || (grad_volume == nullptr && grad_xyz == nullptr)) return cudaSuccess;
  const int tpp = threads_per_point(p.C);
  const dim3 grid(static_cast<unsigned>(blocks_for(total, tpp)));
  const T* g = static_cast<const T*>(grad_out);
  const T* v = static_cast<const T*>(volume);
  const A* x = static_cast<const A*>(xyz);
  A* gv = static_cast<A*>(grad_volume);
  A* gx = static_cast<A*>(grad_xyz);
  switch (tpp) {
    case 1: voxel_bwd_kernel<T, A, 1><<<grid, kThreads, 0, stream>>>(p, g, v, x, gv, gx); break;
    case 2: voxel_bwd_kernel<T, A, 2><<<grid, kThreads, 0, stream>>>(p, g, v, x, gv, gx); break;
    case 4: voxel_bwd_kernel<T, A, 4><<<grid, kThreads, 0, stream>>>(p, g, v, x, gv, gx); break;
    case 8: voxel_bwd_kernel<T, A, 8><<<grid, kThreads, 0, stream>>>(p, g, v, x, gv, gx); break;
    case 16: voxel_bwd_kernel<T, A, 16><<<grid, kThreads, 0, stream>>>(p, g, v, x, gv, gx); break;
    default: voxel_bwd_kernel<T, A, 32><<<grid, kThreads, 0, stream>>>(p, g, v, x, gv, gx); break;
  }
  return cudaGetLastError();
}

}  // namespace

// Launchers called by csrc/cuda/voxel_sample.cpp. `dtype` is the storage type of volume,
// grad_out and out; xyz, grad_volume and grad_xyz are in its accumulation type (float32, or
// float64 for kFloat64). out: contiguous [B, N, C]. grad_volume (nullable): ZEROED
// contiguous channels-last [B, D, H, W, C], accumulated with atomics. grad_xyz (nullable):
// contiguous [B, N, 3], every entry written. Returns the launch error (cudaSuccess when fine).
cudaError_t launch_voxel_sample_fwd(const VoxelSampleParams& p, DType dtype, const void* volume,
                                    const void* xyz, void* out, cudaStream_t stream) {
  switch (dtype) {
    case kFloat32: return launch_fwd<float>(p, volume, xyz, out, stream);
    case kFloat64: return launch_fwd<double>(p, volume, xyz, out, stream);
    case kFloat16: return launch_fwd<__half>(p, volume, xyz, out, stream);
    case kBFloat16: return launch_fwd<__nv_bfloat16>(p, volume, xyz, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_voxel_sample_bwd(const VoxelSampleParams& p, DType dtype, const void* grad_out,
                                    const void* volume, const void* xyz, void* grad_volume, void* grad_xyz,
                                    cudaStream_t stream) {
  switch (dtype) {
    case kFloat32: return launch_bwd<float>(p, grad_out, volume, xyz, grad_volume, grad_xyz, stream);
    case kFloat64: return launch_bwd<double>(p, grad_out, volume, xyz, grad_volume, grad_xyz, stream);
    case kFloat16: return launch_bwd<__half>(p, grad_out, volume, xyz, grad_volume, grad_xyz, stream);
    case kBFloat16: return launch_bwd<__nv_bfloat16>(p, grad_out, volume, xyz, grad_volume, grad_xyz, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace fastfields
