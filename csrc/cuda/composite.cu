// composite / composite_packed: CUDA kernels, one thread per ray, on raw pointers. The per-ray
// walks (fastfields/composite.h) are the ones the CPU kernels run, with CHUNK = 1: every
// value of a sample lives in registers; channel sums too for C <= 32.

#include <cuda_runtime.h>

#include "fastfields/composite.h"

namespace fastfields {
namespace {

constexpr int kThreads = 128;

template <int GEOM, int CMAX, typename T, typename A>
__global__ void __launch_bounds__(kThreads) composite_forward_kernel(const CompositeParams<T, A> p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < p.R) composite_forward_ray<GEOM, CMAX, 1>(p, r);
}

template <int GEOM, typename T, typename A>
__global__ void __launch_bounds__(kThreads) composite_backward_kernel(const CompositeParams<T, A> p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < p.R) composite_backward_ray<GEOM, 1>(p, r);
}

unsigned blocks(int64_t R) { return static_cast<unsigned>((R + kThreads - 1) / kThreads); }

template <typename T, typename A, int GEOM>
void launch(const CompositeArgs& g, bool backward, cudaStream_t stream) {
  const CompositeParams<T, A> p = composite_params<T, A>(g);
  if (p.R == 0) return;
  if (backward) {
    composite_backward_kernel<GEOM><<<blocks(p.R), kThreads, 0, stream>>>(p);
  } else if (p.C <= 4) {
    composite_forward_kernel<GEOM, 4><<<blocks(p.R), kThreads, 0, stream>>>(p);
  } else if (p.C <= 32) {
    composite_forward_kernel<GEOM, 32><<<blocks(p.R), kThreads, 0, stream>>>(p);
  } else {
    composite_forward_kernel<GEOM, 0><<<blocks(p.R), kThreads, 0, stream>>>(p);
  }
}

template <typename T, typename A>
void launch_geometry(const CompositeArgs& g, bool backward, cudaStream_t stream) {
  if (g.geometry == kGeomDeltas) {
    launch<T, A, kGeomDeltas>(g, backward, stream);
  } else if (g.geometry == kGeomIntervals) {
    launch<T, A, kGeomIntervals>(g, backward, stream);
  } else {
    launch<T, A, kGeomMidpoints>(g, backward, stream);
  }
}

void launch_dtype(const CompositeArgs& g, bool backward, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (g.dtype) {
    case kFloat64:
      launch_geometry<double, double>(g, backward, s);
      break;
    case kFloat16:
      launch_geometry<__half, float>(g, backward, s);
      break;
    case kBFloat16:
      launch_geometry<__nv_bfloat16, float>(g, backward, s);
      break;
    default:
      launch_geometry<float, float>(g, backward, s);
  }
}

}  // namespace

void composite_forward_cuda(const CompositeArgs& args, void* stream) { launch_dtype(args, false, stream); }

void composite_backward_cuda(const CompositeArgs& args, void* stream) { launch_dtype(args, true, stream); }

}  // namespace fastfields
