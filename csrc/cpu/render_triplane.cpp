// render_triplane: the fused triplane rendering pass on the CPU (triplane lookup -> decoder
// MLP -> density / colour activations -> compositing), and op registration (namespace
// fastfields_cpu). Semantics: fastfields/reference/render_triplane.py (render_pass_reference).
//
// Work is split into groups of rays, handed out dynamically to one worker per thread. A
// group is processed a chunk of samples at a time (at most kRows samples: one segment of up
// to `seg` samples of each of its P rays): the chunk's triplane features are gathered into a
// worker-private buffer [rows, F], the MLP runs over it as register-blocked GEMMs
// (AVX2 + FMA where the CPU has them), and each ray then composites its segment in order,
// carrying only its transmittance and sums to the next chunk. Memory is O(threads x kRows x
// F), never O(rays x samples x F).
//
// Samples that are empty (outside the box with mask_outside) get no MLP row: an empty
// sample has zero weight in every interval it touches and zero gradient, so its decoder
// output is never needed. In eg3d mode the S samples bound S - 1 intervals; a ray longer
// than one chunk is cut into segments that overlap by one sample, so every interval has
// both ends in one chunk (the shared sample is decoded twice: 1 row in kRows).
//
// Backward (flash-attention style): the same walk recomputes the chunk's MLP keeping its
// activations, composites backwards without stored transmittance (suffix sums as
// total - prefix, fastfields/composite.h), back-propagates through the colour activation and
// the MLP, accumulates the decoder gradients in worker-private buffers, and scatters the
// feature gradients through the same bilinear taps into a worker-private channels-last copy
// of grad_planes; the private buffers are summed at the end.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <tuple>
#include <vector>

#include "fastfields/common.h"  // FF_X86_AVX2_DISPATCH, ff_cpu_has_avx2_fma
#ifdef FF_X86_AVX2_DISPATCH
#include <immintrin.h>
#endif

#include "fastfields/composite.h"
#include "fastfields/triplane_sample.h"
#include "fastfields/schemas.h"

namespace fastfields {
namespace {

// Option codes (Reduce, HiddenActivation, ColorActivation, RenderMode, ...): fastfields/enums.h.

// EG3D / OpenLRM's clamped sigmoid: sigmoid(x) * (1 + 2 * kClamp) - kClamp.
constexpr float kClamp = 0.001f;
// MLP rows per chunk: the chunk's features ([kRows, F], 120 KiB at F = 240) and activations
// stay in L2 while the weights stream from L1. 128 rather than 64: the weight-gradient GEMMs
// sum over the rows, and longer sums amortise their accumulator loads (backward 15% faster).
constexpr int64_t kRows = 128;
// Samples of a ray a chunk takes at a time when rays may stop early (t_threshold > 0).
constexpr int64_t kStopSegment = 32;
// Worker-private grad_planes copies: fewer workers (threads) when they would exceed this.
constexpr int64_t kGradBufferBudget = int64_t(1) << 30;

inline int64_t pad8(int64_t n) { return (n + 7) / 8 * 8; }

// ---------------------------------------------------------------------------------------
// GEMM: C[i, j] = init + sum_k A(i, k) B[k, j] for i < M, j < N, with A(i, k) = A[i sai + k sak]
// (so both X W^T and the transposed dZ^T X of the weight gradients are one kernel), B
// row-major with N a multiple of 8 (callers pad), init = C (accumulate), bias[j] or 0.

struct Gemm {
  const float* A;
  int64_t sai, sak;
  const float* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
  int64_t M, N, K;
  const float* bias;
  bool accumulate;
};

inline void gemm_portable(const Gemm& g) {
  for (int64_t i = 0; i < g.M; ++i) {
    float* __restrict__ c = g.C + i * g.ldc;
    if (!g.accumulate) {
      for (int64_t j = 0; j < g.N; ++j) c[j] = g.bias != nullptr ? g.bias[j] : 0.0f;
    }
    for (int64_t k = 0; k < g.K; ++k) {
      const float a = g.A[i * g.sai + k * g.sak];
      const float* __restrict__ b = g.B + k * g.ldb;
      for (int64_t j = 0; j < g.N; ++j) c[j] += a * b[j];
    }
  }
}

#ifdef FF_X86_AVX2_DISPATCH
// One MR x (8 NV) block of C in MR * NV ymm accumulators (6 x 2: 12 of the 16 registers).
template <int MR, int NV>
__attribute__((target("avx2,fma"), always_inline)) inline void gemm_block_avx2(const Gemm& g, int64_t i0,
                                                                                 int64_t j0) {
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (g.accumulate) {
        acc[r][v] = _mm256_loadu_ps(g.C + (i0 + r) * g.ldc + j0 + 8 * v);
      } else if (g.bias != nullptr) {
        acc[r][v] = _mm256_loadu_ps(g.bias + j0 + 8 * v);
      } else {
        acc[r][v] = _mm256_setzero_ps();
      }
    }
  }
  const float* a = g.A + i0 * g.sai;
  const float* b = g.B + j0;
  const int64_t sai = g.sai, sak = g.sak, ldb = g.ldb;
  for (int64_t k = 0; k < g.K; ++k) {
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + k * ldb + 8 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * sai + k * sak);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(g.C + (i0 + r) * g.ldc + j0 + 8 * v, acc[r][v]);
  }
}

template <int NV>
__attribute__((target("avx2,fma"))) void gemm_columns_avx2(const Gemm& g, int64_t j0) {
  constexpr int MR = 6;
  int64_t i0 = 0;
  for (; i0 + MR <= g.M; i0 += MR) gemm_block_avx2<MR, NV>(g, i0, j0);
  switch (g.M - i0) {
    case 5:
      gemm_block_avx2<5, NV>(g, i0, j0);
      break;
    case 4:
      gemm_block_avx2<4, NV>(g, i0, j0);
      break;
    case 3:
      gemm_block_avx2<3, NV>(g, i0, j0);
      break;
    case 2:
      gemm_block_avx2<2, NV>(g, i0, j0);
      break;
    case 1:
      gemm_block_avx2<1, NV>(g, i0, j0);
      break;
    default:
      break;
  }
}

// Column blocks outside, row blocks inside: the K x 16 slice of B stays in L1 while the
// rows of A stream past it.
__attribute__((target("avx2,fma"))) void gemm_avx2(const Gemm& g) {
  int64_t j0 = 0;
  for (; j0 + 16 <= g.N; j0 += 16) gemm_columns_avx2<2>(g, j0);
  if (j0 < g.N) gemm_columns_avx2<1>(g, j0);
}
#endif

inline void gemm(const Gemm& g) {
  if (g.M <= 0 || g.N <= 0) return;
#ifdef FF_X86_AVX2_DISPATCH
  if (ff_cpu_has_avx2_fma()) {
    gemm_avx2(g);
    return;
  }
#endif
  gemm_portable(g);
}

// ---------------------------------------------------------------------------------------
// Element-wise activations over whole rows (vectorisable: see composite.h for why the
// options below are needed for gcc to if-convert the selects).

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

inline void hidden_forward(const float* __restrict__ z, float* __restrict__ h, int64_t n, int act) {
  float unused = 0.0f;
  if (act == kHidRelu) {
    for (int64_t i = 0; i < n; ++i) h[i] = z[i] < 0.0f ? 0.0f : z[i];  // NaN stays NaN, as torch's relu
  } else if (act == kHidSilu) {
    for (int64_t i = 0; i < n; ++i) h[i] = z[i] / (1.0f + ff_exp(-z[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) h[i] = composite_activate<kActSoftplus, false>(z[i], unused);
  }
}

// g <- g * act'(z), in place.
inline void hidden_backward(const float* __restrict__ z, float* __restrict__ g, int64_t n, int act) {
  if (act == kHidRelu) {
    for (int64_t i = 0; i < n; ++i) g[i] = z[i] > 0.0f ? g[i] : 0.0f;
  } else if (act == kHidSilu) {
    for (int64_t i = 0; i < n; ++i) {
      const float s = 1.0f / (1.0f + ff_exp(-z[i]));
      g[i] *= s * (1.0f + z[i] * (1.0f - s));
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      float d = 0.0f;
      composite_activate<kActSoftplus, true>(z[i], d);
      g[i] *= d;
    }
  }
}

inline float color_forward(float x, int act) {
  if (act == kColNone) return x;
  const float s = 1.0f / (1.0f + ff_exp(-x));
  return act == kColSigmoid ? s : s * (1.0f + 2.0f * kClamp) - kClamp;
}

inline float color_grad(float x, int act) {
  if (act == kColNone) return 1.0f;
  const float s = 1.0f / (1.0f + ff_exp(-x));
  const float d = s * (1.0f - s);
  return act == kColSigmoid ? d : d * (1.0f + 2.0f * kClamp);
}

// Density activation (composite.h codes) with its derivative.
inline float density_forward(float x, int act, float& grad) {
  switch (act) {
    case kActRelu:
      return composite_activate<kActRelu, true>(x, grad);
    case kActSoftplus:
      return composite_activate<kActSoftplus, true>(x, grad);
    case kActExp:
      return composite_activate<kActExp, true>(x, grad);
    case kActTruncExp:
      return composite_activate<kActTruncExp, true>(x, grad);
    default:
      return composite_activate<kActNone, true>(x, grad);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// ---------------------------------------------------------------------------------------
// The problem, the decoder packed for the GEMMs, and the chunk layout.

struct Problem {
  int64_t B, R, S, H, W, C, F, Hd, L, O;  // O decoder outputs: raw density + O - 1 colours
  int64_t Fp, Hp, Op;                     // F, Hd, O padded to multiples of 8
  int axes[6];
  int reduce, padding, activation, color_act, mode, density_act;
  bool align_corners, mask_outside;
  float scale, bias, distance_scale, eps, t_threshold;
  const float *rays_o, *rays_d, *t, *deltas;
  // Forward operands, W^T zero-padded: first [F, Hp], hidden [L, Hd, Hp], last [Hd, Op];
  // biases [Hp], [L, Hp], [Op].
  const float *first_wt, *first_b, *hidden_wt, *hidden_b, *last_wt, *last_b;
  // Backward operands, W zero-padded: first [Hd, Fp], hidden [L, Hd, Hp], last [O, Hp].
  const float *first_w, *hidden_w, *last_w;
  // Chunks: P rays a group, segments of at most `seg` samples (see the top of this file).
  int64_t P, seg, groups;

  int64_t rays() const { return B * R; }
  int64_t intervals() const { return mode == kModeEg3d ? S - 1 : S; }
  int64_t plane_elems() const { return 3 * H * W * C; }
};

// Groups and segments: short rays go P to a chunk whole; a long ray is cut into segments of
// nearly equal length (eg3d: sharing their boundary sample). With early termination
// (t_threshold > 0) rays go kStopSegment samples at a time, so a chunk stops decoding the
// samples of rays that have stopped.
void plan_chunks(Problem& p) {
  const int64_t share = p.mode == kModeEg3d ? 1 : 0;
  const int64_t target = p.t_threshold > 0.0f ? kStopSegment : kRows;
  if (p.S <= target) {
    p.seg = std::max<int64_t>(1, p.S);
  } else {
    const int64_t n = p.S - share;  // samples each segment adds
    const int64_t per = target - share;
    const int64_t segments = (n + per - 1) / per;
    p.seg = (n + segments - 1) / segments + share;
  }
  p.P = std::max<int64_t>(1, kRows / p.seg);
  p.groups = (p.rays() + p.P - 1) / p.P;
}

// The sample range [s0, s1) of a group's segment starting at s0.
inline int64_t segment_end(const Problem& p, int64_t s0) { return std::min(p.S, s0 + p.seg); }
inline int64_t next_segment(const Problem& p, int64_t s1) { return p.mode == kModeEg3d ? s1 - 1 : s1; }

// Worker-private buffers of one chunk.
struct Workspace {
  std::vector<float> x, dx;           // [kRows, Fp] features / their gradient
  std::vector<float> z, h;            // [L + 1, kRows, Hp] pre- / post-activation of the hidden layers
  std::vector<float> out, col, dout;  // [kRows, Op] decoder output, activated colours, d out
  std::vector<float> dh;              // [2, kRows, Hp]
  std::vector<float> coord;           // [kRows, 3] scaled sample positions
  std::vector<int64_t> row_ray;       // [kRows] flat ray index of each row
  std::vector<int> row_of;            // [P, seg] row of each sample, -1: empty (no row)
  std::vector<float> zeros;           // [Op] the colour of an empty sample

  Workspace(const Problem& p, bool backward)
      : x(kRows * p.Fp, 0.0f),
        z((p.L + 1) * kRows * p.Hp),
        h((p.L + 1) * kRows * p.Hp),
        out(kRows * p.Op),
        col(kRows * p.Op, 0.0f),
        coord(kRows * 3),
        row_ray(kRows),
        row_of(p.P * p.seg),
        zeros(p.Op, 0.0f) {
    if (backward) {
      dx.resize(kRows * p.Fp);
      dout.resize(kRows * p.Op);
      dh.resize(2 * kRows * p.Hp);
    }
  }
  float* Z(const Problem& p, int64_t l) { return z.data() + l * kRows * p.Hp; }
  float* Hl(const Problem& p, int64_t l) { return h.data() + l * kRows * p.Hp; }
};

// ---------------------------------------------------------------------------------------
// Samples -> rows, and the triplane lookup.

// Rows for the samples [s0, s1) of the group's rays that are still walking (active[p]).
// Returns the row count.
int64_t assign_rows(const Problem& p, Workspace& ws, int64_t ray0, int64_t nrays, int64_t s0, int64_t s1,
                    const std::vector<char>& active) {
  int64_t n = 0;
  for (int64_t q = 0; q < nrays; ++q) {
    int* row_of = ws.row_of.data() + q * p.seg;
    const int64_t ray = ray0 + q;
    if (!active[q]) {
      std::fill(row_of, row_of + (s1 - s0), -1);
      continue;
    }
    const float* o = p.rays_o + ray * 3;
    const float* d = p.rays_d + ray * 3;
    const float* t = p.t + ray * p.S;
    for (int64_t s = s0; s < s1; ++s) {
      // As the reference: point = o + t d, then scaled.
      float c[3];
      bool outside = false;
      for (int i = 0; i < 3; ++i) {
        c[i] = (o[i] + t[s] * d[i]) * p.scale;
        outside = outside || std::fabs(c[i]) > 1.0f;
      }
      if (p.mask_outside && outside) {
        row_of[s - s0] = -1;
        continue;
      }
      row_of[s - s0] = static_cast<int>(n);
      ws.row_ray[n] = ray;
      std::memcpy(ws.coord.data() + n * 3, c, sizeof(c));
      ++n;
    }
  }
  return n;
}

// The bilinear taps of a row's three planes; false when its position is not finite (the
// row then reads zeros and gets no gradient).
inline bool row_taps(const Problem& p, const float* c, PlaneTaps<float> taps[3]) {
  if (!(ff_isfinite(c[0]) && ff_isfinite(c[1]) && ff_isfinite(c[2]))) return false;
  for (int k = 0; k < 3; ++k) {
    bilinear_taps_into<float>(taps[k], c[p.axes[2 * k]], c[p.axes[2 * k + 1]], p.H, p.W, p.W * p.C, p.C,
                              p.align_corners, p.padding);
  }
  return true;
}

// dst[c] (+)= sum over the in-bounds corners of w * plane[corner, c].
template <typename T>
FF_HD_INLINE void tap_plane(float* __restrict__ dst, const T* __restrict__ plane, const PlaneTaps<float>& t, int64_t C,
                      bool accumulate) {
  if (!accumulate) std::fill(dst, dst + C, 0.0f);
  if (t.mask == 0xFu) {
    const T* __restrict__ p0 = plane + t.off[0];
    const T* __restrict__ p1 = plane + t.off[1];
    const T* __restrict__ p2 = plane + t.off[2];
    const T* __restrict__ p3 = plane + t.off[3];
    const float w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
    for (int64_t c = 0; c < C; ++c) {
      dst[c] += w0 * ff_load<float>(p0[c]) + w1 * ff_load<float>(p1[c]) + w2 * ff_load<float>(p2[c]) +
                w3 * ff_load<float>(p3[c]);
    }
    return;
  }
  for (int k = 0; k < 4; ++k) {
    if (!(t.mask & (1u << k))) continue;
    const T* __restrict__ src = plane + t.off[k];
    const float w = t.w[k];
    for (int64_t c = 0; c < C; ++c) dst[c] += w * ff_load<float>(src[c]);
  }
}

// The features of rows [0, n) into ws.x ([n, Fp]; the padding columns stay 0).
template <typename T>
FF_HD_INLINE void gather_features_impl(const Problem& p, const T* planes, Workspace& ws, int64_t n) {
  const int64_t C = p.C, plane = p.H * p.W * C;
  for (int64_t row = 0; row < n; ++row) {
    float* x = ws.x.data() + row * p.Fp;
    PlaneTaps<float> taps[3];
    if (!row_taps(p, ws.coord.data() + row * 3, taps)) {
      std::fill(x, x + p.F, 0.0f);
      continue;
    }
    const T* base = planes + (ws.row_ray[row] / p.R) * 3 * plane;
    if (p.reduce == kReduceConcat) {
      for (int k = 0; k < 3; ++k) tap_plane(x + k * C, base + k * plane, taps[k], C, false);
    } else {
      for (int k = 0; k < 3; ++k) tap_plane(x, base + k * plane, taps[k], C, k > 0);
      if (p.reduce == kReduceMean) {
        for (int64_t c = 0; c < C; ++c) x[c] /= 3.0f;
      }
    }
  }
}

// grad_planes[corners] += w * g for the rows [0, n), g = ws.dx.
FF_HD_INLINE void scatter_features_impl(const Problem& p, Workspace& ws, int64_t n, float* grad_planes) {
  const int64_t C = p.C, plane = p.H * p.W * C;
  const float share = p.reduce == kReduceMean ? 1.0f / 3.0f : 1.0f;
  for (int64_t row = 0; row < n; ++row) {
    PlaneTaps<float> taps[3];
    if (!row_taps(p, ws.coord.data() + row * 3, taps)) continue;
    float* base = grad_planes + (ws.row_ray[row] / p.R) * 3 * plane;
    const float* g = ws.dx.data() + row * p.Fp;
    for (int k = 0; k < 3; ++k) {
      const float* __restrict__ gk = p.reduce == kReduceConcat ? g + k * C : g;
      for (int corner = 0; corner < 4; ++corner) {
        if (!(taps[k].mask & (1u << corner))) continue;
        float* __restrict__ dst = base + k * plane + taps[k].off[corner];
        const float w = taps[k].w[corner] * share;
        for (int64_t c = 0; c < C; ++c) dst[c] += w * gk[c];
      }
    }
  }
}

// The channel loops above compiled for AVX2 too (8 floats a vector instead of SSE2's 4),
// picked at run time like the GEMM.
#ifdef FF_X86_AVX2_DISPATCH
template <typename T>
__attribute__((target("avx2,fma"))) void gather_features_avx2(const Problem& p, const T* planes, Workspace& ws,
                                                              int64_t n) {
  gather_features_impl(p, planes, ws, n);
}

__attribute__((target("avx2,fma"))) void scatter_features_avx2(const Problem& p, Workspace& ws, int64_t n,
                                                               float* grad_planes) {
  scatter_features_impl(p, ws, n, grad_planes);
}
#endif

template <typename T>
void gather_features(const Problem& p, const T* planes, Workspace& ws, int64_t n) {
#ifdef FF_X86_AVX2_DISPATCH
  if (ff_cpu_has_avx2_fma()) {
    gather_features_avx2(p, planes, ws, n);
    return;
  }
#endif
  gather_features_impl(p, planes, ws, n);
}

void scatter_features(const Problem& p, Workspace& ws, int64_t n, float* grad_planes) {
#ifdef FF_X86_AVX2_DISPATCH
  if (ff_cpu_has_avx2_fma()) {
    scatter_features_avx2(p, ws, n, grad_planes);
    return;
  }
#endif
  scatter_features_impl(p, ws, n, grad_planes);
}

// ---------------------------------------------------------------------------------------
// The decoder over a chunk's rows.

void mlp_forward(const Problem& p, Workspace& ws, int64_t n) {
  const int64_t Hp = p.Hp;
  for (int64_t l = 0; l <= p.L; ++l) {
    Gemm g{};
    g.A = l == 0 ? ws.x.data() : ws.Hl(p, l - 1);
    g.sai = l == 0 ? p.Fp : Hp;
    g.sak = 1;
    g.B = l == 0 ? p.first_wt : p.hidden_wt + (l - 1) * p.Hd * Hp;
    g.ldb = Hp;
    g.C = ws.Z(p, l);
    g.ldc = Hp;
    g.M = n;
    g.N = Hp;
    g.K = l == 0 ? p.F : p.Hd;
    g.bias = l == 0 ? p.first_b : p.hidden_b + (l - 1) * Hp;
    g.accumulate = false;
    gemm(g);
    hidden_forward(ws.Z(p, l), ws.Hl(p, l), n * Hp, p.activation);
  }
  Gemm g{};
  g.A = ws.Hl(p, p.L);
  g.sai = Hp;
  g.sak = 1;
  g.B = p.last_wt;
  g.ldb = p.Op;
  g.C = ws.out.data();
  g.ldc = p.Op;
  g.M = n;
  g.N = p.Op;
  g.K = p.Hd;
  g.bias = p.last_b;
  g.accumulate = false;
  gemm(g);
  for (int64_t row = 0; row < n; ++row) {
    const float* o = ws.out.data() + row * p.Op;
    float* c = ws.col.data() + row * p.Op;
    for (int64_t j = 1; j < p.O; ++j) c[j - 1] = color_forward(o[j], p.color_act);
  }
}

// Worker-private decoder gradients, padded like the backward operands.
struct DecoderGrads {
  std::vector<float> first_w, first_b, hidden_w, hidden_b, last_w, last_b;
  explicit DecoderGrads(const Problem& p)
      : first_w(p.Hd * p.Fp, 0.0f),
        first_b(p.Hd, 0.0f),
        hidden_w(p.L * p.Hd * p.Hp, 0.0f),
        hidden_b(p.L * p.Hd, 0.0f),
        last_w(p.O * p.Hp, 0.0f),
        last_b(p.O, 0.0f) {}
};

// Column sums of rows [0, n) of m [n, ld] (the first `cols` columns) into acc.
inline void add_column_sums(const float* m, int64_t n, int64_t ld, int64_t cols, float* acc) {
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t j = 0; j < cols; ++j) acc[j] += m[row * ld + j];
  }
}

// From ws.dout ([n, Op]: d raw, d colours before the colour activation) back to ws.dx,
// accumulating the decoder gradients.
void mlp_backward(const Problem& p, Workspace& ws, int64_t n, DecoderGrads& grads) {
  const int64_t Hp = p.Hp;
  add_column_sums(ws.dout.data(), n, p.Op, p.O, grads.last_b.data());
  // d last_w [O, Hp] += dout^T H_L;  dH = dout last_w.
  Gemm g{};
  g.A = ws.dout.data();
  g.sai = 1;
  g.sak = p.Op;
  g.B = ws.Hl(p, p.L);
  g.ldb = Hp;
  g.C = grads.last_w.data();
  g.ldc = Hp;
  g.M = p.O;
  g.N = Hp;
  g.K = n;
  g.accumulate = true;
  gemm(g);
  float* dh = ws.dh.data();
  g = Gemm{};
  g.A = ws.dout.data();
  g.sai = p.Op;
  g.sak = 1;
  g.B = p.last_w;
  g.ldb = Hp;
  g.C = dh;
  g.ldc = Hp;
  g.M = n;
  g.N = Hp;
  g.K = p.O;
  gemm(g);
  for (int64_t l = p.L; l >= 0; --l) {
    hidden_backward(ws.Z(p, l), dh, n * Hp, p.activation);  // dh is now dZ_l
    const bool first = l == 0;
    add_column_sums(dh, n, Hp, p.Hd, first ? grads.first_b.data() : grads.hidden_b.data() + (l - 1) * p.Hd);
    // dW_l += dZ_l^T (layer input);  d(layer input) = dZ_l W_l.
    g = Gemm{};
    g.A = dh;
    g.sai = 1;
    g.sak = Hp;
    g.B = first ? ws.x.data() : ws.Hl(p, l - 1);
    g.ldb = first ? p.Fp : Hp;
    g.C = first ? grads.first_w.data() : grads.hidden_w.data() + (l - 1) * p.Hd * Hp;
    g.ldc = g.ldb;
    g.M = p.Hd;
    g.N = g.ldb;
    g.K = n;
    g.accumulate = true;
    gemm(g);
    float* next = first ? ws.dx.data() : (dh == ws.dh.data() ? ws.dh.data() + kRows * Hp : ws.dh.data());
    g = Gemm{};
    g.A = dh;
    g.sai = Hp;
    g.sak = 1;
    g.B = first ? p.first_w : p.hidden_w + (l - 1) * p.Hd * Hp;
    g.ldb = first ? p.Fp : Hp;
    g.C = next;
    g.ldc = g.ldb;
    g.M = n;
    g.N = g.ldb;
    g.K = p.Hd;
    gemm(g);
    dh = next;
  }
}

// ---------------------------------------------------------------------------------------
// Compositing a segment of one ray.

// Interval j of a segment: the optics of the sample (nerf) or the two samples (eg3d) it
// spans. row0 / row1: the rows of its samples (-1: empty; row1 unused in nerf mode).
struct Interval {
  int row0, row1;
  int64_t j;  // interval index along the ray
  bool empty;
  float raw, delta, depth;
};

// Calls fn(interval) for the intervals of ray `ray` whose samples lie in [s0, s1), in order;
// fn returns false to stop the walk.
template <typename Fn>
inline void walk_segment(const Problem& p, const Workspace& ws, const int* row_of, int64_t ray, int64_t s0,
                         int64_t s1, Fn&& fn) {
  const float* t = p.t + ray * p.S;
  const float neg_inf = -__builtin_inff();
  for (int64_t s = s0; s < s1; ++s) {
    Interval iv;
    const int row = row_of[s - s0];
    const float raw = row >= 0 ? ws.out[row * p.Op] : neg_inf;
    if (p.mode == kModeNerf) {
      iv.row0 = row;
      iv.row1 = -1;
      iv.j = s;
      iv.empty = ff_is_neg_inf(raw);
      iv.raw = raw;
      iv.delta = p.deltas[ray * p.S + s];
      iv.depth = t[s];
    } else {
      if (s == s0) continue;
      const int prev = row_of[s - 1 - s0];
      const float raw0 = prev >= 0 ? ws.out[prev * p.Op] : neg_inf;
      iv.row0 = prev;
      iv.row1 = row;
      iv.j = s - 1;
      iv.empty = ff_is_neg_inf(raw0) || ff_is_neg_inf(raw);
      iv.raw = iv.empty ? 0.0f : (raw0 + raw) / 2.0f;
      iv.delta = t[s] - t[s - 1];
      iv.depth = (t[s - 1] + t[s]) / 2.0f;
    }
    if (!fn(iv)) return;
  }
}

// The colour of an interval into c[0, O - 1).
inline void interval_colour(const Problem& p, const Workspace& ws, const Interval& iv, float* c) {
  const int64_t K = p.O - 1;
  const float* c0 = iv.row0 >= 0 ? ws.col.data() + iv.row0 * p.Op : ws.zeros.data();
  if (p.mode == kModeNerf) {
    std::memcpy(c, c0, K * sizeof(float));
    return;
  }
  const float* c1 = iv.row1 >= 0 ? ws.col.data() + iv.row1 * p.Op : ws.zeros.data();
  for (int64_t k = 0; k < K; ++k) c[k] = (c0[k] + c1[k]) / 2.0f;
}

struct Optic {
  float alpha, factor, decay, length, dsigma;
};

inline Optic interval_optic(const Problem& p, const Interval& iv) {
  float dsigma = 0.0f;
  const float activated = density_forward(iv.raw + p.bias, p.density_act, dsigma);
  const float sigma = iv.empty ? 0.0f : activated;
  Optic o;
  o.length = iv.delta * p.distance_scale;
  const AlphaStep<float> a = composite_alpha(sigma * o.length, p.eps);
  o.alpha = a.alpha;
  o.factor = a.factor;
  o.decay = a.decay;
  o.dsigma = iv.empty ? 0.0f : dsigma;
  return o;
}

// Per-ray state carried from chunk to chunk.
struct RayState {
  float trans, depth, opacity, prefix;
};

// ---------------------------------------------------------------------------------------
// Forward and backward over all groups.

struct ForwardOut {
  float *rgb, *depth, *opacity, *weights;  // weights null when not wanted (else zero-filled)
};

template <typename T>
void forward_group(const Problem& p, const T* planes, Workspace& ws, int64_t group, const ForwardOut& out) {
  const int64_t ray0 = group * p.P;
  const int64_t nrays = std::min(p.P, p.rays() - ray0);
  const int64_t K = p.O - 1;
  const int64_t width = p.intervals();
  std::vector<RayState> state(nrays, RayState{1.0f, 0.0f, 0.0f, 0.0f});
  std::vector<char> active(nrays, 1);
  std::vector<float> colour(K);
  for (int64_t q = 0; q < nrays; ++q) std::fill(out.rgb + (ray0 + q) * K, out.rgb + (ray0 + q + 1) * K, 0.0f);
  for (int64_t s0 = 0;;) {
    const int64_t s1 = segment_end(p, s0);
    const int64_t n = assign_rows(p, ws, ray0, nrays, s0, s1, active);
    if (n > 0) {
      gather_features(p, planes, ws, n);
      mlp_forward(p, ws, n);
    }
    bool any_active = false;
    for (int64_t q = 0; q < nrays; ++q) {
      if (!active[q]) continue;
      const int64_t ray = ray0 + q;
      RayState& st = state[q];
      float* rgb = out.rgb + ray * K;
      walk_segment(p, ws, ws.row_of.data() + q * p.seg, ray, s0, s1, [&](const Interval& iv) {
        if (st.trans < p.t_threshold) {
          active[q] = 0;
          return false;
        }
        const Optic o = interval_optic(p, iv);
        const float w = st.trans * o.alpha;
        interval_colour(p, ws, iv, colour.data());
        for (int64_t k = 0; k < K; ++k) rgb[k] += w * colour[k];
        st.depth += w * iv.depth;
        st.opacity += w;
        if (out.weights != nullptr) out.weights[ray * width + iv.j] = w;
        st.trans *= o.factor;
        return true;
      });
      if (active[q] && st.trans < p.t_threshold) active[q] = 0;  // the next interval would stop it
      any_active = any_active || active[q];
    }
    if (s1 >= p.S || !any_active) break;
    s0 = next_segment(p, s1);
  }
  for (int64_t q = 0; q < nrays; ++q) {
    out.depth[ray0 + q] = state[q].depth;
    out.opacity[ray0 + q] = state[q].opacity;
  }
}

struct BackwardIn {
  const float *grad_rgb, *grad_depth, *grad_opacity, *total;
};

template <typename T>
void backward_group(const Problem& p, const T* planes, Workspace& ws, int64_t group, const BackwardIn& in,
                    DecoderGrads& grads, float* grad_planes) {
  const int64_t ray0 = group * p.P;
  const int64_t nrays = std::min(p.P, p.rays() - ray0);
  const int64_t K = p.O - 1;
  std::vector<RayState> state(nrays, RayState{1.0f, 0.0f, 0.0f, 0.0f});
  const std::vector<char> active(nrays, 1);
  std::vector<float> colour(K);
  for (int64_t s0 = 0;;) {
    const int64_t s1 = segment_end(p, s0);
    const int64_t n = assign_rows(p, ws, ray0, nrays, s0, s1, active);
    // A segment without rows has only empty intervals: zero weights, T and the prefix unchanged.
    if (n > 0) {
      gather_features(p, planes, ws, n);
      mlp_forward(p, ws, n);
      std::fill(ws.dout.begin(), ws.dout.begin() + n * p.Op, 0.0f);
      for (int64_t q = 0; q < nrays; ++q) {
        const int64_t ray = ray0 + q;
        RayState& st = state[q];
        const float* g_rgb = in.grad_rgb + ray * K;
        const float g_depth = in.grad_depth[ray], g_opacity = in.grad_opacity[ray], total = in.total[ray];
        walk_segment(p, ws, ws.row_of.data() + q * p.seg, ray, s0, s1, [&](const Interval& iv) {
          const Optic o = interval_optic(p, iv);
          interval_colour(p, ws, iv, colour.data());
          float v = g_depth * iv.depth + g_opacity;
          for (int64_t k = 0; k < K; ++k) v += g_rgb[k] * colour[k];
          const float w = st.trans * o.alpha;
          st.prefix += w * v;
          const float next = st.trans * o.factor;
          // Once T is exactly 0 every later weight is 0: the suffix is 0, not rounding noise.
          const float suffix = next > 0.0f ? total - st.prefix : 0.0f;
          const float dtau = composite_dtau(st.trans, o.decay, o.factor, v, suffix, p.eps);
          st.trans = next;
          // eg3d: the interval's raw density and colour are the means of its two samples'.
          const float share = p.mode == kModeEg3d ? 0.5f : 1.0f;
          const float g_raw = dtau * o.length * o.dsigma * share;
          const float g_col = w * share;
          for (int row : {iv.row0, iv.row1}) {
            if (row < 0) continue;
            float* d = ws.dout.data() + row * p.Op;
            d[0] += g_raw;
            for (int64_t k = 0; k < K; ++k) d[1 + k] += g_col * g_rgb[k];
          }
          return true;
        });
      }
      for (int64_t row = 0; row < n; ++row) {
        const float* o = ws.out.data() + row * p.Op;
        float* d = ws.dout.data() + row * p.Op;
        for (int64_t j = 1; j < p.O; ++j) d[j] *= color_grad(o[j], p.color_act);
      }
      mlp_backward(p, ws, n, grads);
      scatter_features(p, ws, n, grad_planes);
    }
    if (s1 >= p.S) break;
    s0 = next_segment(p, s1);
  }
}

// ---------------------------------------------------------------------------------------
// Torch-facing set-up.

using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Bwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor as_f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// Keeps the packed tensors alive while Problem points into them.
struct Packed {
  at::Tensor rays_o, rays_d, t, deltas, first_wt, first_b, hidden_wt, hidden_b, last_wt, last_b, first_w,
      hidden_w, last_w;
};

void check_tensor(const char* name, const at::Tensor& x, int64_t dim) {
  TORCH_CHECK(x.defined(), "render_triplane (cpu): ", name, " is undefined");
  TORCH_CHECK(x.device().is_cpu(), "render_triplane (cpu): ", name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == dim, "render_triplane (cpu): ", name, " must have ", dim, " dims, got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "render_triplane (cpu): ", name,
              " must be a floating-point tensor, got ", x.scalar_type());
}

// A weight's transpose (forward) or itself (backward) as a zero-padded [rows, cols_p] matrix.
at::Tensor padded(const at::Tensor& w, int64_t cols_p) {
  at::Tensor out = at::zeros({w.size(0), cols_p}, w.options().dtype(at::kFloat));
  out.narrow(1, 0, w.size(1)).copy_(w);
  return out;
}

Problem make_problem(const at::Tensor& planes, const at::Tensor& rays_o, const at::Tensor& rays_d,
                     const at::Tensor& t, const c10::optional<at::Tensor>& deltas, const at::Tensor& first_w,
                     const at::Tensor& first_b, const at::Tensor& hidden_w, const at::Tensor& hidden_b,
                     const at::Tensor& last_w, const at::Tensor& last_b, at::IntArrayRef axes, int64_t reduce,
                     bool align_corners, int64_t padding, double scale, int64_t activation, int64_t color_act,
                     int64_t mode, int64_t density_activation, double density_bias, double distance_scale,
                     bool mask_outside, double t_threshold, Packed& keep) {
  check_tensor("planes", planes, 5);
  check_tensor("rays_o", rays_o, 3);
  check_tensor("rays_d", rays_d, 3);
  check_tensor("t", t, 3);
  check_tensor("first_w", first_w, 2);
  check_tensor("first_b", first_b, 1);
  check_tensor("hidden_w", hidden_w, 3);
  check_tensor("hidden_b", hidden_b, 2);
  check_tensor("last_w", last_w, 2);
  check_tensor("last_b", last_b, 1);
  const auto pt = planes.scalar_type();
  TORCH_CHECK(pt == at::kFloat || pt == at::kDouble || pt == at::kHalf || pt == at::kBFloat16,
              "render_triplane (cpu): planes must be float32, float64, float16 or bfloat16, got ", pt);
  TORCH_CHECK(planes.size(1) == 3 && planes.size(2) > 0 && planes.size(3) > 0 && planes.size(4) > 0,
              "render_triplane (cpu): planes must be channels-last [B, 3, H, W, C] with H, W, C > 0, got shape ",
              planes.sizes());
  Problem p{};
  p.B = planes.size(0);
  p.H = planes.size(2);
  p.W = planes.size(3);
  p.C = planes.size(4);
  p.R = rays_o.size(1);
  p.S = t.size(2);
  TORCH_CHECK(rays_o.size(0) == p.B && rays_o.size(2) == 3 && rays_d.sizes().equals(rays_o.sizes()),
              "render_triplane (cpu): rays_o and rays_d must be [B, R, 3] with B = ", p.B, ", got ", rays_o.sizes(),
              " and ", rays_d.sizes());
  TORCH_CHECK(t.size(0) == p.B && t.size(1) == p.R, "render_triplane (cpu): t must be [B, R, S] = [", p.B, ", ", p.R,
              ", S], got ", t.sizes());
  TORCH_CHECK(mode == kModeNerf || mode == kModeEg3d, "render_triplane (cpu): mode must be 0 (nerf) or 1 (eg3d), got ",
              mode);
  TORCH_CHECK(p.S >= (mode == kModeEg3d ? 2 : 1) || p.rays() == 0, "render_triplane (cpu): t needs at least ",
              mode == kModeEg3d ? 2 : 1, " samples per ray in this mode, got ", p.S);
  if (mode == kModeNerf) {
    TORCH_CHECK(deltas.has_value() && deltas->defined(), "render_triplane (cpu): mode nerf needs deltas [B, R, S]");
    check_tensor("deltas", *deltas, 3);
    TORCH_CHECK(deltas->sizes().equals(t.sizes()), "render_triplane (cpu): deltas must have the shape of t ",
                t.sizes(), ", got ", deltas->sizes());
  }
  TORCH_CHECK(axes.size() == 6, "render_triplane (cpu): axes must hold 6 entries (3 planes x (u, v)), got ",
              axes.size());
  for (size_t i = 0; i < 6; ++i) {
    TORCH_CHECK(axes[i] >= 0 && axes[i] < 3, "render_triplane (cpu): axes entries must be 0, 1 or 2, got ", axes);
    p.axes[i] = static_cast<int>(axes[i]);
  }
  TORCH_CHECK(reduce >= kReduceConcat && reduce <= kReduceMean,
              "render_triplane (cpu): reduce must be 0 (concat), 1 (sum) or 2 (mean), got ", reduce);
  TORCH_CHECK(padding == kPadZeros || padding == kPadBorder,
              "render_triplane (cpu): padding must be 0 (zeros) or 1 (border), got ", padding);
  TORCH_CHECK(activation >= kHidRelu && activation <= kHidSoftplus,
              "render_triplane (cpu): activation must be 0 (relu), 1 (silu) or 2 (softplus), got ", activation);
  TORCH_CHECK(color_act >= kColSigmoidClamped && color_act <= kColNone,
              "render_triplane (cpu): color_act must be 0 (sigmoid_clamped), 1 (sigmoid) or 2 (none), got ", color_act);
  TORCH_CHECK(density_activation >= kActNone && density_activation <= kActTruncExp,
              "render_triplane (cpu): density_activation must be in [0, 4] (composite.h codes), got ",
              density_activation);

  p.reduce = static_cast<int>(reduce);
  p.padding = static_cast<int>(padding);
  p.activation = static_cast<int>(activation);
  p.color_act = static_cast<int>(color_act);
  p.mode = static_cast<int>(mode);
  p.density_act = static_cast<int>(density_activation);
  p.align_corners = align_corners;
  p.mask_outside = mask_outside;
  p.scale = static_cast<float>(scale);
  p.bias = static_cast<float>(density_bias);
  p.distance_scale = static_cast<float>(distance_scale);
  p.eps = mode == kModeEg3d ? 1e-10f : 0.0f;  // EG3D's MipRayMarcher2 (composite.h)
  p.t_threshold = static_cast<float>(t_threshold);

  p.F = reduce == kReduceConcat ? 3 * p.C : p.C;
  p.Hd = first_w.size(0);
  p.L = hidden_w.size(0);
  p.O = last_w.size(0);
  TORCH_CHECK(first_w.size(1) == p.F, "render_triplane (cpu): first_w must be [hidden, F] with F = ", p.F,
              " (C = ", p.C, ", reduce ", reduce, "), got ", first_w.sizes());
  TORCH_CHECK(p.Hd > 0 && first_b.size(0) == p.Hd, "render_triplane (cpu): first_b must be [", p.Hd, "], got ",
              first_b.sizes());
  TORCH_CHECK(hidden_w.size(1) == p.Hd && hidden_w.size(2) == p.Hd && hidden_b.size(0) == p.L &&
                  hidden_b.size(1) == p.Hd,
              "render_triplane (cpu): hidden_w / hidden_b must be [L, ", p.Hd, ", ", p.Hd, "] / [L, ", p.Hd,
              "], got ", hidden_w.sizes(), " / ", hidden_b.sizes());
  TORCH_CHECK(p.O >= 2 && last_w.size(1) == p.Hd && last_b.size(0) == p.O,
              "render_triplane (cpu): last_w / last_b must be [O, ", p.Hd, "] / [O] with O >= 2, got ",
              last_w.sizes(), " / ", last_b.sizes());
  p.Fp = pad8(p.F);
  p.Hp = pad8(p.Hd);
  p.Op = pad8(p.O);

  keep.rays_o = as_f32(rays_o);
  keep.rays_d = as_f32(rays_d);
  keep.t = as_f32(t);
  p.rays_o = keep.rays_o.const_data_ptr<float>();
  p.rays_d = keep.rays_d.const_data_ptr<float>();
  p.t = keep.t.const_data_ptr<float>();
  if (mode == kModeNerf) {
    keep.deltas = as_f32(*deltas);
    p.deltas = keep.deltas.const_data_ptr<float>();
  }
  const int64_t L = p.L, Hd = p.Hd, Hp = p.Hp;
  keep.first_wt = padded(first_w.t(), Hp);
  keep.first_b = padded(first_b.view({1, Hd}), Hp);
  keep.last_wt = padded(last_w.t(), p.Op);
  keep.last_b = padded(last_b.view({1, p.O}), p.Op);
  keep.first_w = padded(first_w, p.Fp);
  keep.last_w = padded(last_w, Hp);
  keep.hidden_wt = at::zeros({L, Hd, Hp}, first_w.options().dtype(at::kFloat));
  keep.hidden_w = at::zeros({L, Hd, Hp}, first_w.options().dtype(at::kFloat));
  keep.hidden_b = at::zeros({L, Hp}, first_w.options().dtype(at::kFloat));
  if (L > 0) {
    keep.hidden_wt.narrow(2, 0, Hd).copy_(hidden_w.transpose(1, 2));
    keep.hidden_w.narrow(2, 0, Hd).copy_(hidden_w);
    keep.hidden_b.narrow(1, 0, Hd).copy_(hidden_b);
  }
  p.first_wt = keep.first_wt.const_data_ptr<float>();
  p.first_b = keep.first_b.const_data_ptr<float>();
  p.hidden_wt = keep.hidden_wt.const_data_ptr<float>();
  p.hidden_b = keep.hidden_b.const_data_ptr<float>();
  p.last_wt = keep.last_wt.const_data_ptr<float>();
  p.last_b = keep.last_b.const_data_ptr<float>();
  p.first_w = keep.first_w.const_data_ptr<float>();
  p.hidden_w = keep.hidden_w.const_data_ptr<float>();
  p.last_w = keep.last_w.const_data_ptr<float>();
  if (p.rays() > 0) plan_chunks(p);
  return p;
}

// One worker per thread (at most one per group), each pulling groups off a shared counter
// so rays that miss the box (cheap) and rays that hit it (expensive) balance out.
template <typename Fn>
void for_each_worker(int64_t workers, Fn&& fn) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; ++w) fn(w, next);
  });
}

Fwd render_triplane_fwd_cpu(const at::Tensor& planes, const at::Tensor& rays_o, const at::Tensor& rays_d,
                            const at::Tensor& t, const c10::optional<at::Tensor>& deltas, const at::Tensor& first_w,
                            const at::Tensor& first_b, const at::Tensor& hidden_w, const at::Tensor& hidden_b,
                            const at::Tensor& last_w, const at::Tensor& last_b, at::IntArrayRef axes, int64_t reduce,
                            bool align_corners, int64_t padding, double scale, int64_t activation, int64_t color_act,
                            int64_t mode, int64_t density_activation, double density_bias, double distance_scale,
                            bool mask_outside, double t_threshold, bool return_weights) {
  Packed keep;
  Problem p = make_problem(planes, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b,
                           axes, reduce, align_corners, padding, scale, activation, color_act, mode,
                           density_activation, density_bias, distance_scale, mask_outside, t_threshold, keep);
  const auto opts = planes.options().dtype(at::kFloat);
  at::Tensor rgb = at::zeros({p.B, p.R, p.O - 1}, opts);
  at::Tensor depth = at::zeros({p.B, p.R}, opts);
  at::Tensor opacity = at::zeros({p.B, p.R}, opts);
  at::Tensor weights = return_weights ? at::zeros({p.B, p.R, std::max<int64_t>(p.intervals(), 0)}, opts)
                                      : at::empty({0}, opts);
  if (p.rays() == 0) return std::make_tuple(rgb, depth, opacity, weights);
  const at::Tensor planes_c = planes.contiguous();
  ForwardOut out{rgb.mutable_data_ptr<float>(), depth.mutable_data_ptr<float>(), opacity.mutable_data_ptr<float>(),
                 return_weights ? weights.mutable_data_ptr<float>() : nullptr};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), p.groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes_c.scalar_type(), "render_triplane_fwd_cpu", [&] {
    const scalar_t* data = planes_c.const_data_ptr<scalar_t>();
    for_each_worker(workers, [&](int64_t, std::atomic<int64_t>& next) {
      Workspace ws(p, false);
      for (int64_t g = next++; g < p.groups; g = next++) forward_group(p, data, ws, g, out);
    });
  });
  return std::make_tuple(rgb, depth, opacity, weights);
}

Bwd render_triplane_bwd_cpu(const at::Tensor& grad_rgb, const at::Tensor& grad_depth, const at::Tensor& grad_opacity,
                            const at::Tensor& total, const at::Tensor& planes, const at::Tensor& rays_o,
                            const at::Tensor& rays_d, const at::Tensor& t, const c10::optional<at::Tensor>& deltas,
                            const at::Tensor& first_w, const at::Tensor& first_b, const at::Tensor& hidden_w,
                            const at::Tensor& hidden_b, const at::Tensor& last_w, const at::Tensor& last_b,
                            at::IntArrayRef axes, int64_t reduce, bool align_corners, int64_t padding, double scale,
                            int64_t activation, int64_t color_act, int64_t mode, int64_t density_activation,
                            double density_bias, double distance_scale, bool mask_outside, double t_threshold,
                            bool return_weights) {
  TORCH_CHECK(t_threshold == 0.0 && !return_weights,
              "render_triplane (cpu): the backward takes t_threshold = 0 and return_weights = False");
  Packed keep;
  Problem p = make_problem(planes, rays_o, rays_d, t, deltas, first_w, first_b, hidden_w, hidden_b, last_w, last_b,
                           axes, reduce, align_corners, padding, scale, activation, color_act, mode,
                           density_activation, density_bias, distance_scale, mask_outside, 0.0, keep);
  const std::vector<int64_t> ray_shape{p.B, p.R};
  TORCH_CHECK(grad_rgb.sizes().equals({p.B, p.R, p.O - 1}), "render_triplane (cpu): grad_rgb must be [", p.B, ", ",
              p.R, ", ", p.O - 1, "], got ", grad_rgb.sizes());
  for (const auto& named : {std::make_pair("grad_depth", &grad_depth), std::make_pair("grad_opacity", &grad_opacity),
                            std::make_pair("total", &total)}) {
    TORCH_CHECK(named.second->sizes().equals(ray_shape), "render_triplane (cpu): ", named.first, " must be [", p.B,
                ", ", p.R, "], got ", named.second->sizes());
  }
  const auto opts = planes.options().dtype(at::kFloat);
  at::Tensor g_planes = at::zeros({p.B, 3, p.H, p.W, p.C}, opts);
  const int64_t Hd = p.Hd, Hp = p.Hp;
  if (p.rays() == 0) {
    return std::make_tuple(g_planes, at::zeros_like(first_w, opts), at::zeros_like(first_b, opts),
                           at::zeros_like(hidden_w, opts), at::zeros_like(hidden_b, opts),
                           at::zeros_like(last_w, opts), at::zeros_like(last_b, opts));
  }
  const at::Tensor g_rgb = as_f32(grad_rgb), g_depth = as_f32(grad_depth), g_opacity = as_f32(grad_opacity),
                   g_total = as_f32(total);
  const BackwardIn in{g_rgb.const_data_ptr<float>(), g_depth.const_data_ptr<float>(),
                      g_opacity.const_data_ptr<float>(), g_total.const_data_ptr<float>()};
  const at::Tensor planes_c = planes.contiguous();
  // Worker 0 accumulates into g_planes itself, every other worker into a private copy.
  const int64_t plane_elems = p.B * p.plane_elems();
  const int64_t affordable = 1 + kGradBufferBudget / std::max<int64_t>(1, plane_elems * int64_t(sizeof(float)));
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>({at::get_num_threads(), p.groups, affordable}));
  std::vector<std::vector<float>> plane_grads(workers);
  std::vector<DecoderGrads> decoder_grads(workers, DecoderGrads(p));
  float* g_planes_data = g_planes.mutable_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes_c.scalar_type(), "render_triplane_bwd_cpu", [&] {
    const scalar_t* data = planes_c.const_data_ptr<scalar_t>();
    for_each_worker(workers, [&](int64_t w, std::atomic<int64_t>& next) {
      int64_t g = next++;
      if (g >= p.groups) return;
      Workspace ws(p, true);
      float* sink = g_planes_data;
      if (w > 0) {
        plane_grads[w].assign(plane_elems, 0.0f);  // allocated and zeroed by its own thread
        sink = plane_grads[w].data();
      }
      for (; g < p.groups; g = next++) backward_group(p, data, ws, g, in, decoder_grads[w], sink);
    });
  });
  if (workers > 1) {
    at::parallel_for(0, plane_elems, int64_t(1) << 15, [&](int64_t begin, int64_t end) {
      for (int64_t w = 1; w < workers; ++w) {
        if (plane_grads[w].empty()) continue;
        const float* __restrict__ src = plane_grads[w].data();
        for (int64_t i = begin; i < end; ++i) g_planes_data[i] += src[i];
      }
    });
  }
  DecoderGrads& sum = decoder_grads[0];
  for (int64_t w = 1; w < workers; ++w) {
    const DecoderGrads& d = decoder_grads[w];
    for (auto pair : {std::make_pair(&sum.first_w, &d.first_w), std::make_pair(&sum.first_b, &d.first_b),
                      std::make_pair(&sum.hidden_w, &d.hidden_w), std::make_pair(&sum.hidden_b, &d.hidden_b),
                      std::make_pair(&sum.last_w, &d.last_w), std::make_pair(&sum.last_b, &d.last_b)}) {
      for (size_t i = 0; i < pair.first->size(); ++i) (*pair.first)[i] += (*pair.second)[i];
    }
  }
  // The padded accumulators, cut back to the parameters' shapes.
  auto unpad = [&](std::vector<float>& v, at::IntArrayRef padded_shape, int64_t dim, int64_t size) {
    return at::from_blob(v.data(), padded_shape, opts).narrow(dim, 0, size).clone();
  };
  return std::make_tuple(g_planes, unpad(sum.first_w, {Hd, p.Fp}, 1, p.F), unpad(sum.first_b, {Hd}, 0, Hd),
                         unpad(sum.hidden_w, {p.L, Hd, Hp}, 2, Hd), unpad(sum.hidden_b, {p.L, Hd}, 1, Hd),
                         unpad(sum.last_w, {p.O, Hp}, 1, Hd), unpad(sum.last_b, {p.O}, 0, p.O));
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cpu, CPU, render_triplane, fastfields::render_triplane_fwd_cpu, fastfields::render_triplane_bwd_cpu)
