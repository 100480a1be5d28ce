// adaln_modulate: fused LayerNorm + adaLN modulation on the CPU (at::parallel_for over token
// rows, float accumulation), torch-facing checks, and op registration (namespace
// fastfields_cpu).
//
//   out = residual + gate * ((xhat * weight + bias) * (1 + scale) + shift),
//   xhat = (x - mean) * rstd over the last dim; x [B, L, D], shift/scale/gate [B, D].
//
// The per-sample factors are folded first (O(B * D)), so the row loop is one fused
// multiply-add per element: out = residual + xhat * alpha[b] + beta[b] with
// alpha = gate * weight * (1 + scale), beta = gate * (bias * (1 + scale) + shift).
// The backward returns dx and the per-sample sums P = sum_l dout * xhat and
// Q = sum_l dout, from which fastfields/ops/adaln_modulate.py forms every parameter
// gradient.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>

#include "fastfields/common.h"
#include "fastfields/schemas.h"

namespace fastfields {
namespace {

// 8 independent partial sums let these loops vectorise without -ffast-math.
constexpr int kLanes = 8;

// kLanes consecutive values of A as one vector (two SSE2 registers or one AVX2 register for float).
template <typename A>
using Lanes = FFVec<A, kLanes>;

template <typename T, typename A>
inline A row_sum(const T* __restrict__ x, int64_t D) {
  A part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) part[j] += ff_load<A>(x[d + j]);
  }
  A s = A(0);
  for (; d < D; ++d) s += ff_load<A>(x[d]);
  for (int j = 0; j < kLanes; ++j) s += part[j];
  return s;
}

template <typename T, typename A>
inline A row_squared_deviation(const T* __restrict__ x, A mean, int64_t D) {
  A part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const A c = ff_load<A>(x[d + j]) - mean;
      part[j] += c * c;
    }
  }
  A s = A(0);
  for (; d < D; ++d) {
    const A c = ff_load<A>(x[d]) - mean;
    s += c * c;
  }
  for (int j = 0; j < kLanes; ++j) s += part[j];
  return s;
}

// 1/std of a row. The squared deviations of float32 values beyond ~1e19 overflow (their sum is
// inf, so 1/std would be 0 and every output the bias): then the deviations are scaled by a power
// of two near their largest magnitude (exact), summed, and the scale applied to the root.
template <typename T, typename A>
inline A row_rstd(const T* __restrict__ x, A mean, int64_t D, A eps) {
  const A squares = row_squared_deviation<T, A>(x, mean, D);
  if (std::isfinite(squares) || !std::isfinite(mean)) return A(1) / std::sqrt(squares / A(D) + eps);
  A largest = A(0);
  for (int64_t d = 0; d < D; ++d) largest = std::max(largest, std::abs(ff_load<A>(x[d]) - mean));
  if (!std::isfinite(largest)) return A(1) / std::sqrt(squares / A(D) + eps);  // inf or NaN in x: as unscaled
  int exponent = 0;
  std::frexp(largest, &exponent);
  const A inv_p = std::ldexp(A(1), -exponent), p = std::ldexp(A(1), exponent);
  A scaled = A(0);
  for (int64_t d = 0; d < D; ++d) {
    const A c = (ff_load<A>(x[d]) - mean) * inv_p;
    scaled += c * c;
  }
  return A(1) / (p * std::sqrt(scaled / A(D) + eps * inv_p * inv_p));
}

template <typename T, typename A>
void fwd_rows(const T* x, const A* alpha, const A* beta, const T* residual, T* out, A* mean_out, A* rstd_out,
              int64_t L, int64_t D, A eps, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const T* __restrict__ xr = x + row * D;
    const A* __restrict__ al = alpha + (row / L) * D;
    const A* __restrict__ be = beta + (row / L) * D;
    T* __restrict__ o = out + row * D;
    const A mean = row_sum<T, A>(xr, D) / A(D);
    const A rstd = row_rstd<T, A>(xr, mean, D, eps);
    if (residual != nullptr) {
      const T* __restrict__ r = residual + row * D;
      for (int64_t d = 0; d < D; ++d) {
        o[d] = ff_store<T>(ff_load<A>(r[d]) + (ff_load<A>(xr[d]) - mean) * rstd * al[d] + be[d]);
      }
    } else {
      for (int64_t d = 0; d < D; ++d) o[d] = ff_store<T>((ff_load<A>(xr[d]) - mean) * rstd * al[d] + be[d]);
    }
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// The same rows without folding the modulation into alpha/beta: used when a shift, scale,
// gate, weight or bias is +-inf or NaN, where folding would make inf - inf = NaN out of what
// the reference computes as +-inf (e.g. gate * (xhat * (1 + scale) + shift) with an inf gate).
template <typename T, typename A>
void fwd_rows_unfolded(const T* x, const A* one_plus_scale, const A* shift, const A* weight, const A* bias,
                       const A* gate, const T* residual, T* out, A* mean_out, A* rstd_out, int64_t L, int64_t D,
                       A eps, int64_t begin, int64_t end) {
  for (int64_t row = begin; row < end; ++row) {
    const T* __restrict__ xr = x + row * D;
    const int64_t m = (row / L) * D;
    T* __restrict__ o = out + row * D;
    const A mean = row_sum<T, A>(xr, D) / A(D);
    const A rstd = row_rstd<T, A>(xr, mean, D, eps);
    for (int64_t d = 0; d < D; ++d) {
      A y = (ff_load<A>(xr[d]) - mean) * rstd;
      if (weight != nullptr) y = y * weight[d];
      if (bias != nullptr) y = y + bias[d];
      y = y * one_plus_scale[m + d] + shift[m + d];
      if (gate != nullptr) y = gate[m + d] * y;
      if (residual != nullptr) y = ff_load<A>(residual[row * D + d]) + y;
      o[d] = ff_store<T>(y);
    }
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// Rows [l_begin, l_end) of sample b. P and Q (this task's [D] partials) are accumulated into.
// Two passes per row, no scratch rows: the first reads x and grad_out once for P, Q and
// LayerNorm's two row means; the second recomputes xhat and dxhat from the (now cached) row
// and writes dx. Storing xhat and dxhat instead cost two more streams per element and two
// more passes, which made the backward ~2.7x the forward.
template <typename T, typename A>
FF_ALWAYS_INLINE void bwd_rows_impl(const T* grad_out, const T* x, const A* dxhat_dout, const A* mean, const A* rstd,
                                    T* grad_x, A* P, A* Q, int64_t L, int64_t D, int64_t b, int64_t l_begin,
                                    int64_t l_end) {
  const A* __restrict__ k = dxhat_dout + b * D;
  A* __restrict__ p = P;
  A* __restrict__ q = Q;
  for (int64_t l = l_begin; l < l_end; ++l) {
    const int64_t row = b * L + l;
    const A m = mean[row], r = rstd[row];
    const T* __restrict__ xr = x + row * D;
    const T* __restrict__ g = grad_out + row * D;
    // Per lane j, the sums over d = j (mod kLanes) of dxhat and of dxhat * xhat.
    A sum_dxhat[kLanes] = {}, sum_dxhat_xhat[kLanes] = {};
    int64_t d = 0;
    if constexpr (std::is_same<T, A>::value) {
      // The lanes as one vector value, which stays in registers; as arrays (the branch
      // below) gcc spilled them to the stack and permuted them every step, and the backward
      // took 3x the forward. Same lanes, same order: bitwise the same sums.
      using V = typename Lanes<A>::type;
      V lanes_dxhat = {}, lanes_dxhat_xhat = {};
      for (; d + kLanes <= D; d += kLanes) {
        const V gd = Lanes<A>::load(g + d);
        const V xd = (Lanes<A>::load(xr + d) - m) * r;
        const V dxh = gd * Lanes<A>::load(k + d);
        Lanes<A>::store(p + d, Lanes<A>::load(p + d) + gd * xd);
        Lanes<A>::store(q + d, Lanes<A>::load(q + d) + gd);
        lanes_dxhat += dxh;
        lanes_dxhat_xhat += dxh * xd;
      }
      Lanes<A>::store(sum_dxhat, lanes_dxhat);
      Lanes<A>::store(sum_dxhat_xhat, lanes_dxhat_xhat);
    } else {
      for (; d + kLanes <= D; d += kLanes) {
        for (int j = 0; j < kLanes; ++j) {
          const A gd = ff_load<A>(g[d + j]);
          const A xd = (ff_load<A>(xr[d + j]) - m) * r;
          const A dxh = gd * k[d + j];
          p[d + j] += gd * xd;
          q[d + j] += gd;
          sum_dxhat[j] += dxh;
          sum_dxhat_xhat[j] += dxh * xd;
        }
      }
    }
    A s1 = A(0), s2 = A(0);
    for (; d < D; ++d) {
      const A gd = ff_load<A>(g[d]);
      const A xd = (ff_load<A>(xr[d]) - m) * r;
      const A dxh = gd * k[d];
      p[d] += gd * xd;
      q[d] += gd;
      s1 += dxh;
      s2 += dxh * xd;
    }
    for (int j = 0; j < kLanes; ++j) {
      s1 += sum_dxhat[j];
      s2 += sum_dxhat_xhat[j];
    }
    // LayerNorm's backward: project out the mean and the xhat direction.
    const A mean_dxhat = s1 / A(D);
    const A mean_dxhat_xhat = s2 / A(D);
    T* __restrict__ gx = grad_x + row * D;
    for (int64_t e = 0; e < D; ++e) {
      const A xd = (ff_load<A>(xr[e]) - m) * r;
      gx[e] = ff_store<T>((ff_load<A>(g[e]) * k[e] - mean_dxhat - xd * mean_dxhat_xhat) * r);
    }
  }
}

// The backward is compute-bound (about 15 flops and 7 L1 accesses per element against the
// forward's 5): with SSE2 it took 3x the forward, which runs at memory bandwidth.
#ifdef FF_X86_AVX2_DISPATCH
template <typename T, typename A>
__attribute__((target("avx2"))) void bwd_rows_avx2(const T* grad_out, const T* x, const A* dxhat_dout, const A* mean,
                                                   const A* rstd, T* grad_x, A* P, A* Q, int64_t L, int64_t D,
                                                   int64_t b, int64_t l_begin, int64_t l_end) {
  bwd_rows_impl<T, A>(grad_out, x, dxhat_dout, mean, rstd, grad_x, P, Q, L, D, b, l_begin, l_end);
}
#endif

template <typename T, typename A>
void bwd_rows(const T* grad_out, const T* x, const A* dxhat_dout, const A* mean, const A* rstd, T* grad_x, A* P,
              A* Q, int64_t L, int64_t D, int64_t b, int64_t l_begin, int64_t l_end) {
#ifdef FF_X86_AVX2_DISPATCH
  if (ff_cpu_has_avx2_fma()) {
    bwd_rows_avx2<T, A>(grad_out, x, dxhat_dout, mean, rstd, grad_x, P, Q, L, D, b, l_begin, l_end);
    return;
  }
#endif
  bwd_rows_impl<T, A>(grad_out, x, dxhat_dout, mean, rstd, grad_x, P, Q, L, D, b, l_begin, l_end);
}

void check_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), "adaln_modulate (cpu): ", name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 3, "adaln_modulate: ", name, " must be [B, L, D], got ", x.sizes());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
              "adaln_modulate: ", name, " must be float32/float64/float16/bfloat16, got ", t);
}

// A [B, D] or [D] parameter in the accumulation dtype, checked against x's shape.
at::Tensor param(const at::Tensor& t, const at::Tensor& x, bool per_sample, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "adaln_modulate (cpu): ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "adaln_modulate: ", name, " must be floating point, got ",
              t.scalar_type());
  if (per_sample) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == x.size(0) && t.size(1) == x.size(2), "adaln_modulate: ", name,
                " must be [B, D] = [", x.size(0), ", ", x.size(2), "], got ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == x.size(2), "adaln_modulate: ", name, " must be [D] = [", x.size(2),
                "], got ", t.sizes());
  }
  return t.to(acc_dtype(x.scalar_type()));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& shift, const at::Tensor& scale, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gate,
    const std::optional<at::Tensor>& residual_in, double eps) {
  check_x(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  TORCH_CHECK(D > 0, "adaln_modulate: x must have D >= 1, got ", x.sizes());
  const at::Tensor one_plus_scale = (param(scale, x, true, "scale") + 1).contiguous();
  const at::Tensor shift_a = param(shift, x, true, "shift").contiguous();
  const at::Tensor weight_a = weight.has_value() ? param(*weight, x, false, "weight").contiguous() : at::Tensor();
  const at::Tensor bias_a = bias.has_value() ? param(*bias, x, false, "bias").contiguous() : at::Tensor();
  const at::Tensor gate_a = gate.has_value() ? param(*gate, x, true, "gate").contiguous() : at::Tensor();
  at::Tensor alpha = one_plus_scale;
  at::Tensor beta = shift_a;
  if (weight_a.defined()) alpha = alpha * weight_a;
  if (bias_a.defined()) beta = beta + one_plus_scale * bias_a;
  if (gate_a.defined()) {
    alpha = alpha * gate_a;
    beta = beta * gate_a;
  }
  alpha = alpha.contiguous();
  beta = beta.contiguous();
  // O(B * D): finite folded factors mean every modulation input was finite.
  const bool folded = at::isfinite(alpha).all().item<bool>() && at::isfinite(beta).all().item<bool>();
  at::Tensor residual;
  if (residual_in.has_value()) {
    TORCH_CHECK(residual_in->sizes() == x.sizes() && residual_in->scalar_type() == x.scalar_type(),
                "adaln_modulate: residual must match x in shape and dtype, got ", residual_in->sizes(), " ",
                residual_in->scalar_type());
    TORCH_CHECK(residual_in->device().is_cpu(), "adaln_modulate (cpu): residual must be a CPU tensor");
    residual = residual_in->contiguous();
  }

  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({B, L}, x.options().dtype(acc_dtype(x.scalar_type())));
  at::Tensor rstd = at::empty({B, L}, x.options().dtype(acc_dtype(x.scalar_type())));
  const int64_t rows = B * L;
  if (rows == 0) return std::make_tuple(out, mean, rstd);
  const int64_t grain = std::max<int64_t>(1, 16384 / D);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaln_modulate_fwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
    const A* al = alpha.const_data_ptr<A>();
    const A* be = beta.const_data_ptr<A>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    A* mp = mean.mutable_data_ptr<A>();
    A* sp = rstd.mutable_data_ptr<A>();
    if (folded) {
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        fwd_rows<scalar_t, A>(xp, al, be, rp, op, mp, sp, L, D, static_cast<A>(eps), begin, end);
      });
    } else {
      const A* ops = one_plus_scale.const_data_ptr<A>();
      const A* sh = shift_a.const_data_ptr<A>();
      const A* w = weight_a.defined() ? weight_a.const_data_ptr<A>() : nullptr;
      const A* bi = bias_a.defined() ? bias_a.const_data_ptr<A>() : nullptr;
      const A* g = gate_a.defined() ? gate_a.const_data_ptr<A>() : nullptr;
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        fwd_rows_unfolded<scalar_t, A>(xp, ops, sh, w, bi, g, rp, op, mp, sp, L, D, static_cast<A>(eps), begin, end);
      });
    }
  });
  return std::make_tuple(out, mean, rstd);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaln_modulate_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& scale,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& gate, const at::Tensor& mean_in,
    const at::Tensor& rstd_in) {
  check_x(x_in, "x");
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  TORCH_CHECK(grad_out_in.sizes() == x.sizes(), "adaln_modulate: grad_out must have shape ", x.sizes(), ", got ",
              grad_out_in.sizes());
  TORCH_CHECK(grad_out_in.device().is_cpu(), "adaln_modulate (cpu): grad_out must be a CPU tensor");
  const at::ScalarType adt = acc_dtype(x.scalar_type());
  TORCH_CHECK(mean_in.numel() == B * L && rstd_in.numel() == B * L,
              "adaln_modulate: mean and rstd must hold B * L = ", B * L, " values");
  const at::Tensor grad_out = grad_out_in.to(x.scalar_type()).contiguous();
  const at::Tensor mean = mean_in.to(adt).contiguous();
  const at::Tensor rstd = rstd_in.to(adt).contiguous();
  at::Tensor dxhat_dout = param(scale, x, true, "scale") + 1;
  if (weight.has_value()) dxhat_dout = dxhat_dout * param(*weight, x, false, "weight");
  if (gate.has_value()) dxhat_dout = dxhat_dout * param(*gate, x, true, "gate");
  dxhat_dout = dxhat_dout.contiguous();

  at::Tensor grad_x = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (B * L == 0) {
    return std::make_tuple(grad_x, at::zeros({B, D}, x.options().dtype(adt)), at::zeros({B, D}, x.options().dtype(adt)));
  }
  // Tasks are (sample, chunk of rows) pairs, each with its own [D] partial sums: no atomics.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t n_chunks = std::min<int64_t>(L, std::max<int64_t>(1, (4 * threads + B - 1) / B));
  at::Tensor partial_p = at::zeros({B, n_chunks, D}, x.options().dtype(adt));
  at::Tensor partial_q = at::zeros({B, n_chunks, D}, x.options().dtype(adt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "adaln_modulate_bwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gop = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const A* kp = dxhat_dout.const_data_ptr<A>();
    const A* mp = mean.const_data_ptr<A>();
    const A* sp = rstd.const_data_ptr<A>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    A* pp = partial_p.mutable_data_ptr<A>();
    A* qp = partial_q.mutable_data_ptr<A>();
    at::parallel_for(0, B * n_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / n_chunks, chunk = task % n_chunks;
        bwd_rows<scalar_t, A>(gop, xp, kp, mp, sp, gxp, pp + task * D, qp + task * D, L, D, b,
                              L * chunk / n_chunks, L * (chunk + 1) / n_chunks);
      }
    });
  });
  return std::make_tuple(grad_x, partial_p.sum(1), partial_q.sum(1));
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cpu, CPU, adaln_modulate, fastfields::adaln_modulate_fwd_cpu, fastfields::adaln_modulate_bwd_cpu)
