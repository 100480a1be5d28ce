// composite / composite_packed: per-sample compositing math and the per-ray walks, shared by
// the CPU (at::parallel_for over rays) and CUDA (one thread per ray) kernels.
//
// A ray is a run of `count` consecutive samples starting at flat sample index `first`:
// dense [R, S] inputs give ray r the samples [r * S, r * S + S); packed inputs give it
// [offsets[r], offsets[r + 1]). Every per-sample buffer is contiguous; sigmas and the
// geometry buffers are in the accumulation dtype A, colours in their storage dtype T.
//
// Per interval j of a ray (activation act, density bias b, distance scale s, eps below):
//   sigma_j = act(raw_j + b)            (raw_j = -inf marks an empty sample: sigma_j = 0)
//   tau_j   = sigma_j * (delta_j * s)
//   alpha_j = 1 - exp(-tau_j)
//   T_0 = 1,  T_{j+1} = T_j * ((1 - alpha_j) + eps)
//   w_j = T_j * alpha_j,  rgb = sum w_j c_j,  depth = sum w_j t_j,  opacity = sum w_j
// eps is 0 ("nerf") or 1e-10 (EG3D's MipRayMarcher2, which adds it inside the product).
//
// Geometry (what delta_j, t_j, raw_j and c_j are):
//   kGeomDeltas     dense "nerf": delta_j = a[k], t_j = b[k] (b may be null), raw, c of sample k
//   kGeomIntervals  packed: delta_j = b[k] - a[k], t_j = (a[k] + b[k]) / 2 (a = t_starts, b = t_ends)
//   kGeomMidpoints  dense "eg3d": count samples -> count - 1 intervals between samples k, k + 1:
//                   raw_j = (raw_k + raw_{k+1}) / 2 (empty if either is -inf), c_j the mean colour,
//                   t_j = (a[k] + a[k+1]) / 2, delta_j = a[k+1] - a[k] (a = t)
//
// Backward without stored transmittance: with v_j = dL/dw_j = <g_rgb, c_j> + g_depth t_j +
// g_opacity (+ g_weights_j), the walk recomputes T_j in the forward order and takes the
// suffix sum S_j = sum_{i>j} w_i v_i as total - (running prefix), where the per-ray total
// sum_i w_i v_i comes from the saved forward outputs. Then
//   dL/dtau_j = T_j e_j v_j - (e_j / f_j) S_j,   e_j = exp(-tau_j), f_j = (1 - alpha_j) + eps
// with e_j / f_j = 1 exactly when eps = 0, so nothing is ever divided by T (or by 0).
//
// The walks take CHUNK intervals at a time: first their optics (density, alpha, ...), which
// are independent of each other, then the transmittance recurrence over them. CUDA runs
// CHUNK = 1 (one thread per ray, everything in registers); the CPU runs a larger CHUNK so
// the optics loop vectorises, with the polynomial exp / log1p below (std::exp does not).
#pragma once

#include <cstring>

#include "fastfields/common.h"

namespace fastfields {

// Codes: DensityActivation (kAct*) and Geometry (kGeom*) in enums.h.

// ---------------------------------------------------------------------------------------
// Ray layout.

template <typename T, typename A>
struct CompositeParams {
  // inputs
  const A* sigmas;          // [M] raw densities
  const T* rgbs;            // [M, C]
  const A* a;               // deltas / t_starts / t, by geometry (see the top of this file)
  const A* b;               // t (may be null) / t_ends / unused
  const int64_t* offsets;   // [R + 1] packed ray starts; null for dense
  int64_t R, S, C;          // S: samples per ray (dense only)
  int activation;           // DensityActivation (enums.h)
  A bias, scale, eps;
  A t_threshold;            // forward only: stop a ray once T < t_threshold (0: never)
  // forward outputs, [R, C] / [R] / [R] / weights (null when not wanted)
  A *rgb, *depth, *opacity, *weights;
  // backward: upstream gradients ([R, C], [R] or null, [R], weights-shaped or null) and the
  // per-ray total sum_j w_j v_j
  const A *grad_rgb, *grad_depth, *grad_opacity, *grad_weights, *total;
  // backward outputs, each null when not wanted: [M], [M, C], [M], [M]
  A* grad_sigmas;
  T* grad_rgbs;
  A *grad_a, *grad_b;
};

// First sample and sample count of ray r.
template <typename T, typename A>
FF_HD void composite_ray_range(const CompositeParams<T, A>& p, int64_t r, int64_t& first, int64_t& count) {
  if (p.offsets != nullptr) {
    first = p.offsets[r];
    count = p.offsets[r + 1] - first;
  } else {
    first = r * p.S;
    count = p.S;
  }
}

template <int GEOM>
FF_HD int64_t composite_intervals(int64_t count) {
  return GEOM == kGeomMidpoints ? (count > 0 ? count - 1 : 0) : count;
}

// Index of interval j's weight: its sample k for nerf / packed, r * (S - 1) + j for eg3d.
template <int GEOM, typename T, typename A>
FF_HD int64_t composite_weight_index(const CompositeParams<T, A>& p, int64_t r, int64_t k, int64_t j) {
  return GEOM == kGeomMidpoints ? r * (p.S - 1) + j : k;
}

// Depth t_j of the interval starting at sample k.
template <int GEOM, typename T, typename A>
FF_HD A composite_depth(const CompositeParams<T, A>& p, int64_t k) {
  if (GEOM == kGeomMidpoints) return (p.a[k] + p.a[k + 1]) * A(0.5);
  if (GEOM == kGeomIntervals) return (p.a[k] + p.b[k]) * A(0.5);
  return p.b != nullptr ? p.b[k] : A(0);
}

// Channel c of the colour of the interval starting at sample k.
template <int GEOM, typename T, typename A>
FF_HD A composite_colour(const CompositeParams<T, A>& p, int64_t k, int64_t c) {
  if (GEOM == kGeomMidpoints) {
    return (ff_load<A>(p.rgbs[k * p.C + c]) + ff_load<A>(p.rgbs[(k + 1) * p.C + c])) * A(0.5);
  }
  return ff_load<A>(p.rgbs[k * p.C + c]);
}

// ---------------------------------------------------------------------------------------
// Optics: everything computed per interval, independently of the others. On the CPU it
// runs as one `omp simd` loop over a chunk of intervals; two things make gcc vectorise it:
// every call in it must be inlined, even in a large unit where the inliner's growth limits
// would leave calls behind (FF_HD_INLINE), and comparisons must not count as trapping, or
// its selects are not if-converted (no-trapping-math, clang's default; nothing here relies
// on floating-point exceptions). Code in this region calls nothing defined outside it.

#if defined(__CUDACC__)
#define FF_HD_INLINE FF_HD
#elif defined(__GNUC__)
#define FF_HD_INLINE inline __attribute__((always_inline))
#else
#define FF_HD_INLINE inline
#endif

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// exp and log1p: CUDA's on the device; on the host, for float, polynomials that vectorise
// (std::exp does not): Cephes' expf (about 1 ulp), and log1p on [0, 1] only (all softplus
// needs) as z * q(z), q a degree-8 least-squares fit (1.2e-7 absolute error).

#ifndef __CUDA_ARCH__
FF_HD_INLINE float ff_bits_to_float(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

FF_HD_INLINE float ff_exp_host(float x) {
  // Clamp (NaN goes to the low end here and is put back at the end), then x = n ln2 + r.
  float xc = x > -105.0f ? x : -105.0f;
  xc = xc < 88.7228f ? xc : 88.7228f;
  // Truncation of a positive number is floor: shift by 256 (xc / ln2 >= -152).
  const int32_t n = static_cast<int32_t>(xc * 1.44269504088896341f + 256.5f) - 256;
  const float nf = static_cast<float>(n);
  float r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  // 2^n as two normal powers of two, so n down to -152 underflows gracefully.
  const int32_t n1 = n >> 1;
  const int32_t n2 = n - n1;
  y = y * ff_bits_to_float((n1 + 127) << 23) * ff_bits_to_float((n2 + 127) << 23);
  y = x > 88.7228f ? __builtin_inff() : y;
  return x != x ? x : y;
}

FF_HD_INLINE float ff_log1p_unit_host(float z) {
  float q = 0.005253457929939032f;
  q = q * z - 0.02958850748836994f;
  q = q * z + 0.07836166769266129f;
  q = q * z - 0.13674770295619965f;
  q = q * z + 0.19111430644989014f;
  q = q * z - 0.24844369292259216f;
  q = q * z + 0.33319270610809326f;
  q = q * z - 0.49999502301216125f;
  q = q * z + 1.0f;
  return z * q;
}
#endif

FF_HD_INLINE float ff_exp(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return ff_exp_host(x);
#endif
}

FF_HD_INLINE double ff_exp(double x) {
#ifdef __CUDA_ARCH__
  return exp(x);
#else
  return std::exp(x);
#endif
}

// log(1 + z) for z in [0, 1].
FF_HD_INLINE float ff_log1p_unit(float z) {
#ifdef __CUDA_ARCH__
  return log1pf(z);
#else
  return ff_log1p_unit_host(z);
#endif
}

FF_HD_INLINE double ff_log1p_unit(double z) {
#ifdef __CUDA_ARCH__
  return log1p(z);
#else
  return std::log1p(z);
#endif
}

// Only -inf lies below the lowest finite value.
FF_HD_INLINE bool ff_is_neg_inf(float x) { return x < -3.402823466e38f; }
FF_HD_INLINE bool ff_is_neg_inf(double x) { return x < -1.7976931348623157e308; }

// Density activations, as torch computes them (softplus: beta 1, threshold 20), and with
// GRAD their derivative in `grad` (sharing the exp). trunc_exp is torch-ngp's TruncExp: exp
// forward, exp(min(x, 15)) backward, so a saturated density cannot send an infinite
// gradient into the network.
template <int ACT, bool GRAD, typename A>
FF_HD_INLINE A composite_activate(A x, A& grad) {
  if (ACT == kActRelu) {
    if (GRAD) grad = x > A(0) ? A(1) : A(0);
    return x < A(0) ? A(0) : x;  // NaN stays NaN, as torch's relu
  }
  if (ACT == kActSoftplus) {
    // softplus(x) = max(x, 0) + log1p(exp(-|x|)): the log1p argument stays in [0, 1].
    const A z = ff_exp(x < A(0) ? x : -x);
    if (GRAD) grad = x > A(20) ? A(1) : (x < A(0) ? z : A(1)) / (A(1) + z);
    return x > A(20) ? x : (x < A(0) ? A(0) : x) + ff_log1p_unit(z);
  }
  if (ACT == kActExp || ACT == kActTruncExp) {
    const A z = ff_exp(x);
    if (GRAD) grad = ACT == kActExp ? z : ff_exp(x < A(15) ? x : A(15));
    return z;
  }
  if (GRAD) grad = A(1);
  return x;
}

// One interval's opacity: alpha = 1 - exp(-tau), the transmittance factor (1 - alpha) + eps,
// and decay = exp(-tau) = d alpha / d tau. tau = inf gives alpha = 1, factor = eps.
template <typename A>
struct AlphaStep {
  A alpha, factor, decay;
};

template <typename A>
FF_HD_INLINE AlphaStep<A> composite_alpha(A tau, A eps) {
  AlphaStep<A> s;
  s.decay = ff_exp(-tau);
  s.alpha = A(1) - s.decay;
  s.factor = (A(1) - s.alpha) + eps;
  return s;
}

// Raw density (with emptiness) and length of the interval starting at sample k.
template <int GEOM, typename T, typename A>
FF_HD_INLINE void composite_interval(const CompositeParams<T, A>& p, int64_t k, A& raw, bool& empty, A& delta) {
  if (GEOM == kGeomMidpoints) {
    const A r0 = p.sigmas[k], r1 = p.sigmas[k + 1];
    empty = ff_is_neg_inf(r0) || ff_is_neg_inf(r1);
    raw = (r0 + r1) * A(0.5);
    delta = p.a[k + 1] - p.a[k];
  } else {
    raw = p.sigmas[k];
    empty = ff_is_neg_inf(raw);
    delta = GEOM == kGeomIntervals ? p.b[k] - p.a[k] : p.a[k];
  }
}

// The optics of up to CHUNK consecutive intervals, and for the backward what its walk
// adds: the transmittance before and after each interval, the weight, dL/dw, the running
// sum of w dL/dw, and the gradients to the raw density and the interval length.
template <typename A, int CHUNK>
struct Optics {
  A alpha[CHUNK], factor[CHUNK];
  A decay[CHUNK], sigma[CHUNK], dsigma[CHUNK], length[CHUNK];
  A trans[CHUNK], next[CHUNK], weight[CHUNK], dl_dw[CHUNK], prefix[CHUNK];
  A g_raw[CHUNK], g_delta[CHUNK];
};

template <int GEOM, int ACT, bool GRAD, int CHUNK, typename T, typename A>
FF_HD_INLINE void composite_optics_loop(const CompositeParams<T, A>& p, int64_t k0, int len, Optics<A, CHUNK>& o) {
  // 16 lanes a step: two AVX2 vectors (four SSE2 ones) whose polynomial chains are
  // independent, so one's latency hides the other's (with one vector a step the loop waited
  // on its exp / log1p multiply-add chains). Per lane the arithmetic is unchanged.
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#pragma omp simd simdlen(16)
#endif
  for (int i = 0; i < len; ++i) {
    A raw, delta;
    bool empty;
    composite_interval<GEOM>(p, k0 + i, raw, empty, delta);
    const A x = raw + p.bias;
    A dsigma = A(0);
    const A activated = composite_activate<ACT, GRAD>(x, dsigma);
    const A sigma = empty ? A(0) : activated;
    const A length = delta * p.scale;
    const AlphaStep<A> s = composite_alpha(sigma * length, p.eps);
    o.alpha[i] = s.alpha;
    o.factor[i] = s.factor;
    if (GRAD) {
      o.decay[i] = s.decay;
      o.sigma[i] = sigma;
      o.length[i] = length;
      o.dsigma[i] = empty ? A(0) : dsigma;
    }
  }
}

#ifdef FF_X86_AVX2_DISPATCH
// The same loop compiled for AVX2 and FMA (8 floats a vector instead of SSE2's 4), picked at
// run time (common.h). Here, and only here, a * b + c is contracted to one fused multiply-add:
// the exp / log1p polynomials are chains of them, and fused they make the forward 23% and the
// backward 18% faster. Results differ from the SSE2 build's by rounding (tests check both).
template <int GEOM, int ACT, bool GRAD, int CHUNK, typename T, typename A>
__attribute__((target("avx2,fma"), optimize("fp-contract=fast"))) void composite_optics_avx2(
    const CompositeParams<T, A>& p, int64_t k0, int len, Optics<A, CHUNK>& o) {
  composite_optics_loop<GEOM, ACT, GRAD>(p, k0, len, o);
}
#endif

template <int GEOM, int ACT, bool GRAD, int CHUNK, typename T, typename A>
FF_HD void composite_optics_act(const CompositeParams<T, A>& p, int64_t k0, int len, Optics<A, CHUNK>& o) {
#ifdef FF_X86_AVX2_DISPATCH
  if (ff_cpu_has_avx2_fma()) {
    composite_optics_avx2<GEOM, ACT, GRAD>(p, k0, len, o);
    return;
  }
#endif
  composite_optics_loop<GEOM, ACT, GRAD>(p, k0, len, o);
}

template <int GEOM, bool GRAD, int CHUNK, typename T, typename A>
FF_HD void composite_optics(const CompositeParams<T, A>& p, int64_t k0, int len, Optics<A, CHUNK>& o) {
  switch (p.activation) {
    case kActRelu:
      composite_optics_act<GEOM, kActRelu, GRAD>(p, k0, len, o);
      break;
    case kActSoftplus:
      composite_optics_act<GEOM, kActSoftplus, GRAD>(p, k0, len, o);
      break;
    case kActExp:
      composite_optics_act<GEOM, kActExp, GRAD>(p, k0, len, o);
      break;
    case kActTruncExp:
      composite_optics_act<GEOM, kActTruncExp, GRAD>(p, k0, len, o);
      break;
    default:
      composite_optics_act<GEOM, kActNone, GRAD>(p, k0, len, o);
  }
}

// dL/dtau of one interval: T is the transmittance before it, v = dL/dw, suffix the sum of
// w_i v_i over the intervals after it.
template <typename A>
FF_HD_INLINE A composite_dtau(A T, A decay, A factor, A v, A suffix, A eps) {
  const A ratio = eps == A(0) ? A(1) : decay / factor;  // factor >= eps > 0 here
  return T * decay * v - ratio * suffix;
}

// dL/d(raw density) and dL/d(interval length) of a chunk's intervals, once its walk has
// filled in trans, next, weight, dl_dw and prefix; total is the ray's sum of w dL/dw.
template <int CHUNK, typename A>
FF_HD_INLINE void composite_interval_grads_loop(Optics<A, CHUNK>& o, int len, A total, A scale, A eps) {
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#pragma omp simd
#endif
  for (int i = 0; i < len; ++i) {
    // Once T is exactly 0 every later weight is 0: the suffix is 0, not rounding noise.
    const A suffix = o.next[i] > A(0) ? total - o.prefix[i] : A(0);
    const A dtau = composite_dtau(o.trans[i], o.decay[i], o.factor[i], o.dl_dw[i], suffix, eps);
    o.g_raw[i] = dtau * o.length[i] * o.dsigma[i];
    o.g_delta[i] = dtau * o.sigma[i] * scale;
  }
}

#ifdef FF_X86_AVX2_DISPATCH
template <int CHUNK, typename A>
__attribute__((target("avx2"))) void composite_interval_grads_avx2(Optics<A, CHUNK>& o, int len, A total, A scale,
                                                                    A eps) {
  composite_interval_grads_loop(o, len, total, scale, eps);
}
#endif

template <int CHUNK, typename A>
FF_HD void composite_interval_grads(Optics<A, CHUNK>& o, int len, A total, A scale, A eps) {
#ifdef FF_X86_AVX2_DISPATCH
  if (ff_cpu_has_avx2_fma()) {
    composite_interval_grads_avx2(o, len, total, scale, eps);
    return;
  }
#endif
  composite_interval_grads_loop(o, len, total, scale, eps);
}

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC pop_options
#endif

// ---------------------------------------------------------------------------------------
// The per-ray walks.

// Forward walk of ray r. CMAX > 0: C <= CMAX, channel sums kept in registers; CMAX == 0: any
// C, summed in place in the (accumulation dtype, thread-private) output row.
template <int GEOM, int CMAX, int CHUNK, typename T, typename A>
FF_HD void composite_forward_ray(const CompositeParams<T, A>& p, int64_t r) {
  int64_t first, count;
  composite_ray_range(p, r, first, count);
  const int64_t n = composite_intervals<GEOM>(count);
  const int64_t C = p.C;
  const int64_t slots = CMAX > 0 ? CMAX : C;  // a compile-time trip count when CMAX > 0
  A in_registers[CMAX > 0 ? CMAX : 1];
  A* acc = CMAX > 0 ? in_registers : p.rgb + r * C;
  for (int64_t c = 0; c < slots; ++c) acc[c] = A(0);
  A trans = A(1), depth = A(0), opacity = A(0);
  Optics<A, CHUNK> o;
  int64_t j = 0;  // intervals composited
  bool stopped = false;
  for (int64_t j0 = 0; j0 < n && !stopped; j0 += CHUNK) {
    const int len = static_cast<int>(n - j0 < CHUNK ? n - j0 : CHUNK);
    composite_optics<GEOM, false>(p, first + j0, len, o);
    for (int i = 0; i < len; ++i) {
      if (trans < p.t_threshold) {
        stopped = true;
        break;
      }
      const int64_t k = first + j;
      const A w = trans * o.alpha[i];
      for (int64_t c = 0; c < slots; ++c) {
        if (c < C) acc[c] += w * composite_colour<GEOM>(p, k, c);
      }
      depth += w * composite_depth<GEOM>(p, k);
      opacity += w;
      if (p.weights != nullptr) p.weights[composite_weight_index<GEOM>(p, r, k, j)] = w;
      trans *= o.factor[i];
      ++j;
    }
  }
  if (p.weights != nullptr) {
    for (; j < n; ++j) p.weights[composite_weight_index<GEOM>(p, r, first + j, j)] = A(0);
  }
  if (CMAX > 0) {
    for (int64_t c = 0; c < slots; ++c) {
      if (c < C) p.rgb[r * C + c] = acc[c];
    }
  }
  p.depth[r] = depth;
  p.opacity[r] = opacity;
}

// Backward walk of ray r (no early stop: t_threshold is for inference only). Per chunk: the
// optics, the transmittance and the running sum of w dL/dw in order, the per-interval
// gradients, then every wanted gradient of the chunk's samples, each written once.
// CMAX > 0: C <= CMAX, the colour gradient kept in registers and every channel loop of a
// compile-time trip count (as the forward); CMAX == 0: any C.
template <int GEOM, int CHUNK, int CMAX = 0, typename T, typename A>
FF_HD void composite_backward_ray(const CompositeParams<T, A>& p, int64_t r) {
  int64_t first, count;
  composite_ray_range(p, r, first, count);
  const int64_t n = composite_intervals<GEOM>(count);
  const int64_t C = p.C;
  const int64_t slots = CMAX > 0 ? CMAX : C;
  A in_registers[CMAX > 0 ? CMAX : 1];
  if (CMAX > 0) {
    for (int64_t c = 0; c < slots; ++c) in_registers[c] = c < C ? p.grad_rgb[r * C + c] : A(0);
  }
  const A* g_rgb = CMAX > 0 ? in_registers : p.grad_rgb + r * C;
  const A g_depth = p.grad_depth != nullptr ? p.grad_depth[r] : A(0);
  const A g_opacity = p.grad_opacity[r];
  const A total = p.total[r];
  A trans = A(1), prefix = A(0);
  // eg3d: sample k is shared by intervals k - 1 and k; the earlier share waits here.
  A carry_raw = A(0), carry_w = A(0), carry_t = A(0);
  Optics<A, CHUNK> o;
  for (int64_t j0 = 0; j0 < n; j0 += CHUNK) {
    const int len = static_cast<int>(n - j0 < CHUNK ? n - j0 : CHUNK);
    const int64_t k0 = first + j0;
    composite_optics<GEOM, true>(p, k0, len, o);
    for (int i = 0; i < len; ++i) {
      const int64_t k = k0 + i;
      A v = g_depth * composite_depth<GEOM>(p, k) + g_opacity;
      for (int64_t c = 0; c < slots; ++c) {
        if (c < C) v += g_rgb[c] * composite_colour<GEOM>(p, k, c);
      }
      if (p.grad_weights != nullptr) v += p.grad_weights[composite_weight_index<GEOM>(p, r, k, j0 + i)];
      const A w = trans * o.alpha[i];
      prefix += w * v;
      o.trans[i] = trans;
      o.weight[i] = w;
      o.dl_dw[i] = v;
      o.prefix[i] = prefix;
      trans *= o.factor[i];
      o.next[i] = trans;
    }
    composite_interval_grads(o, len, total, p.scale, p.eps);
    for (int i = 0; i < len; ++i) {
      const int64_t k = k0 + i;
      const A g_t = o.weight[i] * g_depth;
      A w_colour = o.weight[i];
      if (GEOM == kGeomMidpoints) {
        // Raw density, colour and t of sample k are averaged into intervals k - 1 and k.
        w_colour = carry_w + A(0.5) * o.weight[i];
        if (p.grad_sigmas != nullptr) p.grad_sigmas[k] = carry_raw + A(0.5) * o.g_raw[i];
        if (p.grad_a != nullptr) p.grad_a[k] = carry_t - o.g_delta[i] + A(0.5) * g_t;
        carry_raw = A(0.5) * o.g_raw[i];
        carry_w = A(0.5) * o.weight[i];
        carry_t = o.g_delta[i] + A(0.5) * g_t;
      } else {
        if (p.grad_sigmas != nullptr) p.grad_sigmas[k] = o.g_raw[i];
        if (GEOM == kGeomIntervals) {
          if (p.grad_a != nullptr) p.grad_a[k] = A(0.5) * g_t - o.g_delta[i];
          if (p.grad_b != nullptr) p.grad_b[k] = A(0.5) * g_t + o.g_delta[i];
        } else {
          if (p.grad_a != nullptr) p.grad_a[k] = o.g_delta[i];
          if (p.grad_b != nullptr) p.grad_b[k] = g_t;
        }
      }
      if (p.grad_rgbs != nullptr) {
        for (int64_t c = 0; c < slots; ++c) {
          if (c < C) p.grad_rgbs[k * C + c] = ff_store<T>(w_colour * g_rgb[c]);
        }
      }
    }
  }
  if (GEOM == kGeomMidpoints && count > 0) {
    const int64_t k = first + count - 1;
    if (p.grad_sigmas != nullptr) p.grad_sigmas[k] = carry_raw;
    if (p.grad_rgbs != nullptr) {
      for (int64_t c = 0; c < slots; ++c) {
        if (c < C) p.grad_rgbs[k * C + c] = ff_store<T>(carry_w * g_rgb[c]);
      }
    }
    if (p.grad_a != nullptr) p.grad_a[k] = carry_t;
  }
}

// The same arguments with untyped pointers, as the torch bindings fill them in and the raw
// CUDA launchers take them. `dtype` is the colours' storage DType; A is double for
// kFloat64 colours, float otherwise.
struct CompositeArgs {
  const void *sigmas, *rgbs, *a, *b;
  const int64_t* offsets;
  int64_t R, S, C;
  int geometry, dtype, activation;
  double bias, scale, eps, t_threshold;
  void *rgb, *depth, *opacity, *weights;
  const void *grad_rgb, *grad_depth, *grad_opacity, *grad_weights, *total;
  void *grad_sigmas, *grad_rgbs, *grad_a, *grad_b;
};

template <typename T, typename A>
CompositeParams<T, A> composite_params(const CompositeArgs& g) {
  CompositeParams<T, A> p;
  p.sigmas = static_cast<const A*>(g.sigmas);
  p.rgbs = static_cast<const T*>(g.rgbs);
  p.a = static_cast<const A*>(g.a);
  p.b = static_cast<const A*>(g.b);
  p.offsets = g.offsets;
  p.R = g.R;
  p.S = g.S;
  p.C = g.C;
  p.activation = g.activation;
  p.bias = static_cast<A>(g.bias);
  p.scale = static_cast<A>(g.scale);
  p.eps = static_cast<A>(g.eps);
  p.t_threshold = static_cast<A>(g.t_threshold);
  p.rgb = static_cast<A*>(g.rgb);
  p.depth = static_cast<A*>(g.depth);
  p.opacity = static_cast<A*>(g.opacity);
  p.weights = static_cast<A*>(g.weights);
  p.grad_rgb = static_cast<const A*>(g.grad_rgb);
  p.grad_depth = static_cast<const A*>(g.grad_depth);
  p.grad_opacity = static_cast<const A*>(g.grad_opacity);
  p.grad_weights = static_cast<const A*>(g.grad_weights);
  p.total = static_cast<const A*>(g.total);
  p.grad_sigmas = static_cast<A*>(g.grad_sigmas);
  p.grad_rgbs = static_cast<T*>(g.grad_rgbs);
  p.grad_a = static_cast<A*>(g.grad_a);
  p.grad_b = static_cast<A*>(g.grad_b);
  return p;
}

// CUDA launchers (csrc/cuda/composite.cu): one thread per ray on `stream` (a cudaStream_t).
void composite_forward_cuda(const CompositeArgs& args, void* stream);
void composite_backward_cuda(const CompositeArgs& args, void* stream);

}  // namespace fastfields
