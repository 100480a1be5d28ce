// composite / composite_packed: CPU kernels (at::parallel_for over rays) and op registration
// (namespace fastfields_cpu). The per-ray walks are shared with the CUDA kernels via
// fastfields/composite.h; the torch-side checks via fastfields/composite_bind.h.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastfields/composite.h"
#include "fastfields/composite_bind.h"
#include "fastfields/schemas.h"

namespace fastfields {
namespace {

using namespace composite_bind;

// Intervals whose optics are computed together in one vectorised loop: 128 lets the loop's
// iterations overlap (forward 9% faster than with 32). A forward that may stop rays early
// (t_threshold > 0) takes 32, so a stopped ray computes at most 31 optics it never uses.
constexpr int kChunk = 128;
constexpr int kChunkEarlyStop = 32;

// Rays per parallel chunk: about 16K samples of work each.
int64_t ray_grain(const Inputs& in) {
  const int64_t per_ray = std::max<int64_t>(1, in.M / std::max<int64_t>(1, in.R));
  return std::max<int64_t>(1, (int64_t(1) << 14) / per_ray);
}

template <typename Fn>
void by_geometry(int64_t geometry, Fn&& fn) {
  if (geometry == kGeomDeltas) {
    fn(std::integral_constant<int, kGeomDeltas>());
  } else if (geometry == kGeomIntervals) {
    fn(std::integral_constant<int, kGeomIntervals>());
  } else {
    fn(std::integral_constant<int, kGeomMidpoints>());
  }
}

// Runs the forward (or backward) walk of every ray, dispatched on dtype and geometry.
void run_rays(const Inputs& in, const CompositeArgs& g, bool backward) {
  const int64_t grain = ray_grain(in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.rgbs.scalar_type(), "composite_cpu", [&] {
    using A = acc_t<scalar_t>;
    const CompositeParams<scalar_t, A> p = composite_params<scalar_t, A>(g);
    by_geometry(g.geometry, [&](auto geom) {
      constexpr int GEOM = decltype(geom)::value;
      // CMAX 4: colours of up to 4 channels in registers; 0: any C.
      auto forward = [&](auto chunk, int64_t r) {
        constexpr int CHUNK = decltype(chunk)::value;
        if (p.C <= 4) {
          composite_forward_ray<GEOM, 4, CHUNK>(p, r);
        } else {
          composite_forward_ray<GEOM, 0, CHUNK>(p, r);
        }
      };
      at::parallel_for(0, p.R, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          if (backward && p.C <= 4) {
            composite_backward_ray<GEOM, kChunk, 4>(p, r);
          } else if (backward) {
            composite_backward_ray<GEOM, kChunk, 0>(p, r);
          } else if (p.t_threshold > 0) {
            forward(std::integral_constant<int, kChunkEarlyStop>(), r);
          } else {
            forward(std::integral_constant<int, kChunk>(), r);
          }
        }
      });
    });
  });
}

Outputs composite_fwd_cpu(const at::Tensor& sigmas, const at::Tensor& rgbs, const c10::optional<at::Tensor>& a,
                          const c10::optional<at::Tensor>& b, const c10::optional<at::Tensor>& offsets,
                          int64_t geometry, int64_t activation, double bias, double scale, double eps,
                          double t_threshold, bool return_weights) {
  const Inputs in = prepare(sigmas, rgbs, a, b, offsets, geometry, at::Device(at::kCPU));
  CompositeArgs g = make_args(in, geometry, activation, bias, scale, eps);
  Outputs out = forward_outputs(in, geometry, return_weights, t_threshold, g);
  run_rays(in, g, false);
  return out;
}

Outputs composite_bwd_cpu(const at::Tensor& grad_rgb, const c10::optional<at::Tensor>& grad_depth,
                          const at::Tensor& grad_opacity, const c10::optional<at::Tensor>& grad_weights,
                          const at::Tensor& total, const at::Tensor& sigmas, const at::Tensor& rgbs,
                          const c10::optional<at::Tensor>& a, const c10::optional<at::Tensor>& b,
                          const c10::optional<at::Tensor>& offsets, int64_t geometry, int64_t activation, double bias,
                          double scale, double eps, bool need_sigmas, bool need_rgbs, bool need_a, bool need_b) {
  const Inputs in = prepare(sigmas, rgbs, a, b, offsets, geometry, at::Device(at::kCPU));
  CompositeArgs g = make_args(in, geometry, activation, bias, scale, eps);
  std::vector<at::Tensor> keep;
  Outputs grads = backward_buffers(in, grad_rgb, grad_depth, grad_opacity, grad_weights, total, need_sigmas, need_rgbs,
                                   need_a, need_b, keep, g);
  run_rays(in, g, true);
  return grads;
}

// The [n_rays + 1] offsets of the rays in packed samples (offsets[r] = the first i with
// ray_indices[i] >= r), and the first index that breaks the layout (not ascending, or outside
// [0, n_rays)), -1 if none. One parallel pass: sample i starts the rays after its
// predecessor's, up to its own; on a broken layout the offsets are not meaningful.
std::tuple<at::Tensor, int64_t> composite_offsets_cpu(const at::Tensor& ray_indices, int64_t n_rays) {
  TORCH_CHECK(ray_indices.device().is_cpu() && ray_indices.scalar_type() == at::kLong && ray_indices.dim() == 1,
              "composite_packed (cpu): ray_indices must be a CPU int64 tensor [M], got ", ray_indices.scalar_type(),
              " ", ray_indices.sizes(), " on ", ray_indices.device());
  TORCH_CHECK(n_rays >= 0, "composite_packed: n_rays must be >= 0, got ", n_rays);
  const at::Tensor indices = ray_indices.contiguous();
  const int64_t M = indices.numel();
  at::Tensor offsets = at::empty({n_rays + 1}, indices.options());
  const int64_t* x = indices.const_data_ptr<int64_t>();
  int64_t* out = offsets.mutable_data_ptr<int64_t>();
  std::atomic<int64_t> first_bad{M};
  // Most samples continue the ray of the sample before them, and a block of 16 that all do
  // writes no offset and cannot break the layout (the first sample of each run of equal
  // indices is always checked one by one: the block that holds it differs from its
  // predecessor). Testing whole blocks first made this pass ~3x faster than a step per sample,
  // about the time it takes to read the indices.
  constexpr int64_t kBlock = 16;
  at::parallel_for(0, M + 1, int64_t(1) << 14, [&](int64_t begin, int64_t end) {
    int64_t bad = M;
    const int64_t block_end = std::min(end, M);
    for (int64_t i = begin; i < end; ++i) {
      while (i > 0 && i + kBlock <= block_end) {
        const int64_t run = x[i - 1];
        int64_t differs = 0;
        for (int64_t j = 0; j < kBlock; ++j) differs |= x[i + j] ^ run;
        if (differs != 0) break;
        i += kBlock;
      }
      if (i >= end) break;
      const int64_t prev = i == 0 ? -1 : x[i - 1];
      const int64_t cur = i == M ? n_rays : x[i];
      if (i < M && (cur < prev || cur < 0 || cur >= n_rays)) {
        bad = std::min(bad, i);
        continue;
      }
      for (int64_t r = std::max<int64_t>(prev + 1, 0); r <= std::min(cur, n_rays); ++r) out[r] = i;
    }
    int64_t seen = first_bad.load();
    while (bad < seen && !first_bad.compare_exchange_weak(seen, bad)) {
    }
  });
  const int64_t bad = first_bad.load();
  return std::make_tuple(offsets, bad == M ? int64_t(-1) : bad);
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cpu, CPU, composite, fastfields::composite_fwd_cpu, fastfields::composite_bwd_cpu)

TORCH_LIBRARY_FRAGMENT(fastfields_cpu, m) { m.def(FF_SCHEMA_composite_offsets); }
TORCH_LIBRARY_IMPL(fastfields_cpu, CPU, m) {
  m.impl("composite_offsets", TORCH_FN(fastfields::composite_offsets_cpu));
}
