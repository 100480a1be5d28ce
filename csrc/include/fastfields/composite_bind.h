// composite / composite_packed: torch-side checks and argument set-up shared by the CPU and
// CUDA bindings. TORCH-SIDE ONLY (includes ATen): never include this from a .cu file.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "fastfields/composite.h"

namespace fastfields {
namespace composite_bind {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline void check_device(const char* name, const at::Tensor& t, const at::Device& device) {
  TORCH_CHECK(t.device() == device, "composite: ", name, " must be on ", device, ", got ", t.device());
}

// The inputs as the kernels read them: contiguous; sigmas and geometry in the accumulation
// dtype. Dense: sigmas [R, S], rgbs [R, S, C]; packed: sigmas [M], rgbs [M, C], offsets [R + 1].
struct Inputs {
  at::Tensor sigmas, rgbs, a, b, offsets;
  int64_t R, S, C, M;
};

inline Inputs prepare(const at::Tensor& sigmas, const at::Tensor& rgbs, const c10::optional<at::Tensor>& a,
                      const c10::optional<at::Tensor>& b, const c10::optional<at::Tensor>& offsets,
                      int64_t geometry, const at::Device& device) {
  TORCH_CHECK(geometry >= kGeomDeltas && geometry <= kGeomMidpoints, "composite: unknown geometry ", geometry);
  TORCH_CHECK(a.has_value(), "composite: the sample geometry (deltas, t or t_starts) is required");
  check_device("rgbs", rgbs, device);
  check_device("sigmas", sigmas, device);
  Inputs in;
  if (geometry == kGeomIntervals) {
    TORCH_CHECK(offsets.has_value() && b.has_value(), "composite_packed: offsets and t_ends are required");
    TORCH_CHECK(sigmas.dim() == 1 && rgbs.dim() == 2 && rgbs.size(0) == sigmas.size(0),
                "composite_packed: expected sigmas [M] and rgbs [M, C], got ", sigmas.sizes(), " and ", rgbs.sizes());
    TORCH_CHECK(offsets->dim() == 1 && offsets->size(0) >= 1 && offsets->scalar_type() == at::kLong,
                "composite_packed: offsets must be int64 [n_rays + 1], got ", offsets->scalar_type(), " ",
                offsets->sizes());
    check_device("offsets", *offsets, device);
    in.M = sigmas.size(0);
    in.R = offsets->size(0) - 1;
    in.S = 0;
    in.offsets = offsets->contiguous();
  } else {
    TORCH_CHECK(sigmas.dim() == 2 && rgbs.dim() == 3 && rgbs.size(0) == sigmas.size(0) && rgbs.size(1) == sigmas.size(1),
                "composite: expected sigmas [R, S] and rgbs [R, S, C], got ", sigmas.sizes(), " and ", rgbs.sizes());
    in.R = sigmas.size(0);
    in.S = sigmas.size(1);
    in.M = in.R * in.S;
  }
  in.C = rgbs.size(-1);
  const at::ScalarType adt = acc_dtype(rgbs.scalar_type());
  in.sigmas = sigmas.to(adt).contiguous();
  in.rgbs = rgbs.contiguous();
  for (const at::Tensor* t : {&*a, b.has_value() ? &*b : nullptr}) {
    if (t == nullptr) continue;
    check_device("the sample geometry", *t, device);
    TORCH_CHECK(t->sizes().equals(sigmas.sizes()), "composite: the sample geometry must have the shape of sigmas ",
                sigmas.sizes(), ", got ", t->sizes());
  }
  in.a = a->to(adt).contiguous();
  if (b.has_value()) in.b = b->to(adt).contiguous();
  return in;
}

inline CompositeArgs make_args(const Inputs& in, int64_t geometry, int64_t activation, double bias, double scale,
                               double eps) {
  TORCH_CHECK(activation >= kActNone && activation <= kActTruncExp, "composite: unknown activation ", activation);
  CompositeArgs g{};
  g.sigmas = in.sigmas.const_data_ptr();
  g.rgbs = in.rgbs.const_data_ptr();
  g.a = in.a.const_data_ptr();
  g.b = in.b.defined() ? in.b.const_data_ptr() : nullptr;
  g.offsets = in.offsets.defined() ? in.offsets.const_data_ptr<int64_t>() : nullptr;
  g.R = in.R;
  g.S = in.S;
  g.C = in.C;
  g.geometry = static_cast<int>(geometry);
  g.dtype = dtype_code(in.rgbs.scalar_type(), "composite", "rgbs");
  g.activation = static_cast<int>(activation);
  g.bias = bias;
  g.scale = scale;
  g.eps = eps;
  return g;
}

// rgb [R, C], depth [R], opacity [R] and weights ([R, S], eg3d [R, S - 1], packed [M]; empty
// when not wanted), in the accumulation dtype, wired into g.
inline Outputs forward_outputs(const Inputs& in, int64_t geometry, bool return_weights, double t_threshold,
                               CompositeArgs& g) {
  const auto opts = in.sigmas.options();
  at::Tensor rgb = at::empty({in.R, in.C}, opts);
  at::Tensor depth = at::empty({in.R}, opts);
  at::Tensor opacity = at::empty({in.R}, opts);
  at::Tensor weights;
  if (!return_weights) {
    weights = at::empty({0}, opts);
  } else if (geometry == kGeomIntervals) {
    weights = at::empty({in.M}, opts);
  } else {
    weights = at::empty({in.R, geometry == kGeomMidpoints ? std::max<int64_t>(in.S - 1, 0) : in.S}, opts);
  }
  g.t_threshold = t_threshold;
  g.rgb = rgb.mutable_data_ptr();
  g.depth = depth.mutable_data_ptr();
  g.opacity = opacity.mutable_data_ptr();
  g.weights = return_weights ? weights.mutable_data_ptr() : nullptr;
  return std::make_tuple(rgb, depth, opacity, weights);
}

// The backward's per-ray inputs (converted to the accumulation dtype; kept alive by `keep`)
// and its outputs (empty when not wanted), wired into g. Returns (grad sigmas, grad rgbs,
// grad a, grad b).
inline Outputs backward_buffers(const Inputs& in, const at::Tensor& grad_rgb, const c10::optional<at::Tensor>& grad_depth,
                                const at::Tensor& grad_opacity, const c10::optional<at::Tensor>& grad_weights,
                                const at::Tensor& total, bool need_sigmas, bool need_rgbs, bool need_a, bool need_b,
                                std::vector<at::Tensor>& keep, CompositeArgs& g) {
  const auto opts = in.sigmas.options();
  const at::Device device = in.rgbs.device();
  const auto per_ray = [&](const at::Tensor& t, std::vector<int64_t> shape, const char* name) {
    check_device(name, t, device);
    TORCH_CHECK(t.sizes().equals(shape), "composite: ", name, " must have shape ", at::IntArrayRef(shape), ", got ",
                t.sizes());
    keep.push_back(t.to(opts.dtype()).contiguous());
    return keep.back().const_data_ptr();
  };
  g.grad_rgb = per_ray(grad_rgb, {in.R, in.C}, "grad_rgb");
  g.grad_opacity = per_ray(grad_opacity, {in.R}, "grad_opacity");
  g.total = per_ray(total, {in.R}, "total");
  g.grad_depth = grad_depth.has_value() ? per_ray(*grad_depth, {in.R}, "grad_depth") : nullptr;
  if (grad_weights.has_value()) {
    const int64_t n = grad_weights->numel();
    const int64_t expected = in.offsets.defined() ? in.M : in.R * std::max<int64_t>(in.S - (g.geometry == kGeomMidpoints), 0);
    TORCH_CHECK(n == expected, "composite: grad_weights must have ", expected, " elements, got ", n);
    g.grad_weights = per_ray(*grad_weights, grad_weights->sizes().vec(), "grad_weights");
  }
  TORCH_CHECK(!need_b || in.b.defined(), "composite: a gradient to t was asked for without t");
  const at::Tensor empty = at::empty({0}, opts);
  at::Tensor gs = need_sigmas ? at::empty_like(in.sigmas) : empty;
  at::Tensor gr = need_rgbs ? at::empty_like(in.rgbs) : at::empty({0}, in.rgbs.options());
  at::Tensor ga = need_a ? at::empty_like(in.a) : empty;
  at::Tensor gb = need_b ? at::empty_like(in.b) : empty;
  g.grad_sigmas = need_sigmas ? gs.mutable_data_ptr() : nullptr;
  g.grad_rgbs = need_rgbs ? gr.mutable_data_ptr() : nullptr;
  g.grad_a = need_a ? ga.mutable_data_ptr() : nullptr;
  g.grad_b = need_b ? gb.mutable_data_ptr() : nullptr;
  return std::make_tuple(gs, gr, ga, gb);
}

}  // namespace composite_bind
}  // namespace fastfields
