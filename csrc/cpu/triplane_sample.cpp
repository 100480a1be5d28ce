// triplane_sample: OpenMP CPU kernels, torch-facing checks, and op registration
// (namespace fastfields_cpu). The per-element math is shared with the CUDA kernels via
// fastfields/triplane_sample.h.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastfields/triplane_sample.h"

namespace fastfields {
namespace {

// ---------------------------------------------------------------------------------------
// Inner channel loops. CL = channels-last planes (stride_C == 1): contiguous, vectorisable.
// ---------------------------------------------------------------------------------------

template <bool CL>
inline int64_t chan(int64_t c, int64_t sC) {
  return CL ? c : c * sC;
}

// dst[c] = sum over in-bounds corners of w * plane[corner, c]
template <bool CL, typename T, typename A>
inline void sample_plane(A* __restrict__ dst, const T* __restrict__ base, const PlaneTaps<A>& t,
                         int64_t C, int64_t sC) {
  if (t.mask == 0xFu) {
    const T* __restrict__ p0 = base + t.off[0];
    const T* __restrict__ p1 = base + t.off[1];
    const T* __restrict__ p2 = base + t.off[2];
    const T* __restrict__ p3 = base + t.off[3];
    const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t o = chan<CL>(c, sC);
      dst[c] = w0 * ff_load<A>(p0[o]) + w1 * ff_load<A>(p1[o]) + w2 * ff_load<A>(p2[o]) +
               w3 * ff_load<A>(p3[o]);
    }
    return;
  }
  for (int64_t c = 0; c < C; ++c) dst[c] = A(0);
  for (int k = 0; k < 4; ++k) {
    if (!(t.mask & (1u << k))) continue;
    const T* __restrict__ q = base + t.off[k];
    const A w = t.w[k];
    for (int64_t c = 0; c < C; ++c) dst[c] += w * ff_load<A>(q[chan<CL>(c, sC)]);
  }
}

// dst[c] += sum over in-bounds corners of w * plane[corner, c]
template <bool CL, typename T, typename A>
inline void sample_plane_add(A* __restrict__ dst, const T* __restrict__ base,
                             const PlaneTaps<A>& t, int64_t C, int64_t sC) {
  if (t.mask == 0xFu) {
    const T* __restrict__ p0 = base + t.off[0];
    const T* __restrict__ p1 = base + t.off[1];
    const T* __restrict__ p2 = base + t.off[2];
    const T* __restrict__ p3 = base + t.off[3];
    const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t o = chan<CL>(c, sC);
      dst[c] += w0 * ff_load<A>(p0[o]) + w1 * ff_load<A>(p1[o]) + w2 * ff_load<A>(p2[o]) +
                w3 * ff_load<A>(p3[o]);
    }
    return;
  }
  for (int k = 0; k < 4; ++k) {
    if (!(t.mask & (1u << k))) continue;
    const T* __restrict__ q = base + t.off[k];
    const A w = t.w[k];
    for (int64_t c = 0; c < C; ++c) dst[c] += w * ff_load<A>(q[chan<CL>(c, sC)]);
  }
}

// sum_c g[c] * plane[corner, c], with 8 partial sums so the loop vectorises without
// -ffast-math.
template <bool CL, typename T, typename A>
inline A dot_channels(const A* __restrict__ g, const T* __restrict__ q, int64_t C, int64_t sC) {
  constexpr int L = 8;
  A part[L];
  for (int j = 0; j < L; ++j) part[j] = A(0);
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    for (int j = 0; j < L; ++j) part[j] += g[c + j] * ff_load<A>(q[chan<CL>(c + j, sC)]);
  }
  A s = A(0);
  for (; c < C; ++c) s += g[c] * ff_load<A>(q[chan<CL>(c, sC)]);
  for (int j = 0; j < L; ++j) s += part[j];
  return s;
}

template <typename T, typename A>
inline void store_row(T* __restrict__ out, const A* __restrict__ src, int64_t n, A scale) {
  for (int64_t c = 0; c < n; ++c) out[c] = ff_store<T>(src[c] * scale);
}

// ---------------------------------------------------------------------------------------
// Per-point taps with software prefetch. Points are processed in order; the taps of point
// i + kLookahead are computed (and their plane rows prefetched) while point i is processed,
// so the random plane reads of several points are in flight at once.
// ---------------------------------------------------------------------------------------

constexpr int kLookahead = 4;

template <typename A>
struct PointTaps {
  PlaneTaps<A> t[3];
  int64_t b, n;
  bool ok;
};

template <typename A>
inline void prepare_point(const TriplaneSampleParams& p, const A* xyz, int64_t idx, PointTaps<A>& q) {
  q.b = idx / p.N;
  q.n = idx - q.b * p.N;
  A pt[3];
  q.ok = triplane_load_point<A>(xyz, p, q.b, q.n, pt);
  if (!q.ok) return;
  for (int k = 0; k < 3; ++k) {
    q.t[k] = triplane_plane_taps<A>(pt[p.axes[2 * k]], pt[p.axes[2 * k + 1]], p);
  }
}

inline void prefetch_bytes(const void* ptr, int64_t bytes) {
  const char* c = static_cast<const char*>(ptr);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
  __builtin_prefetch(c + bytes - 1);
}

// Prefetch the plane data a point's taps will read (channels-last: one contiguous row of
// C values per corner; otherwise one element per channel of the x0 corners, which usually
// share a cache line with x1).
template <bool CL, typename T, typename A>
inline void prefetch_planes(const TriplaneSampleParams& p, const T* planes, const PointTaps<A>& q) {
  if (!q.ok) return;
  const T* base_b = planes + q.b * p.planes_strides[0];
  const int64_t sP = p.planes_strides[1], sC = p.planes_strides[2];
  for (int k = 0; k < 3; ++k) {
    const PlaneTaps<A>& t = q.t[k];
    const T* base = base_b + k * sP;
    for (int c = 0; c < 4; ++c) {
      if (!(t.mask & (1u << c))) continue;
      if (CL) {
        prefetch_bytes(base + t.off[c], p.C * int64_t(sizeof(T)));
      } else if (!(c & 1) || !(t.mask & (1u << (c - 1)))) {
        for (int64_t ch = 0; ch < p.C; ++ch) __builtin_prefetch(base + t.off[c] + ch * sC);
      }
    }
  }
}

// Prefetch (for writing) the rows of the channels-last gradient buffer a point updates.
template <typename A>
inline void prefetch_grad_rows(const TriplaneSampleParams& p, const A* gp, const PointTaps<A>& q) {
  if (!q.ok || gp == nullptr) return;
  const int64_t C = p.C, H = p.H, W = p.W;
  for (int k = 0; k < 3; ++k) {
    const PlaneTaps<A>& t = q.t[k];
    const A* plane_buf = gp + (q.b * 3 + k) * H * W * C;
    for (int c = 0; c < 4; c += 2) {  // (y, x0) and (y, x1) rows are adjacent
      const unsigned m = (t.mask >> c) & 3u;
      if (!m) continue;
      const int64_t y = t.y0 + triplane_corner_dy(c);
      const int64_t x = (m & 1u) ? t.x0 : t.x0 + 1;
      const int64_t cnt = (m == 3u) ? 2 * C : C;
      prefetch_bytes(plane_buf + (y * W + x) * C, cnt * int64_t(sizeof(A)));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <bool CL, typename T, typename A>
void fwd_points(const TriplaneSampleParams& p, const T* planes, const A* xyz, T* out,
                int64_t begin, int64_t end) {
  const int64_t C = p.C;
  const int64_t OC = triplane_out_channels(p);
  const int64_t sB = p.planes_strides[0], sP = p.planes_strides[1], sC = p.planes_strides[2];
  std::vector<A> buf(static_cast<size_t>(3 * C) + 1);
  A* f = buf.data();
  PointTaps<A> ring[kLookahead];
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) {
    prepare_point<A>(p, xyz, i, ring[(i - begin) % kLookahead]);
    prefetch_planes<CL>(p, planes, ring[(i - begin) % kLookahead]);
  }
  for (int64_t idx = begin; idx < end; ++idx) {
    PointTaps<A>& slot = ring[(idx - begin) % kLookahead];
    const PointTaps<A> q = slot;
    if (idx + kLookahead < end) {
      prepare_point<A>(p, xyz, idx + kLookahead, slot);
      prefetch_planes<CL>(p, planes, slot);
    }
    T* __restrict__ o = out + idx * OC;
    if (!q.ok) {
      for (int64_t c = 0; c < OC; ++c) o[c] = ff_store<T>(A(0));
      continue;
    }
    const T* base_b = planes + q.b * sB;
    switch (p.reduce) {
      case kReduceSum:
      case kReduceMean: {
        sample_plane<CL>(f, base_b, q.t[0], C, sC);
        sample_plane_add<CL>(f, base_b + sP, q.t[1], C, sC);
        sample_plane_add<CL>(f, base_b + 2 * sP, q.t[2], C, sC);
        store_row<T, A>(o, f, C, p.reduce == kReduceMean ? A(1.0 / 3.0) : A(1));
        break;
      }
      case kReduceProd: {
        for (int k = 0; k < 3; ++k) sample_plane<CL>(f + k * C, base_b + k * sP, q.t[k], C, sC);
        const A* __restrict__ f0 = f;
        const A* __restrict__ f1 = f + C;
        const A* __restrict__ f2 = f + 2 * C;
        for (int64_t c = 0; c < C; ++c) o[c] = ff_store<T>(f0[c] * f1[c] * f2[c]);
        break;
      }
      default: {  // none / concat: [3, C] row, plane-major
        for (int k = 0; k < 3; ++k) sample_plane<CL>(f + k * C, base_b + k * sP, q.t[k], C, sC);
        store_row<T, A>(o, f, 3 * C, A(1));
        break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// Processes points [begin, end). gp (may be null) is a zeroed channels-last accumulation
// buffer [B, 3, H, W, C] owned by the calling thread; gxyz (may be null) is [B, N, 3].
template <bool CL, typename T, typename A>
void bwd_points(const TriplaneSampleParams& p, const T* grad_out, const T* planes, const A* xyz,
                A* gp, A* gxyz, int64_t begin, int64_t end) {
  const int64_t C = p.C, H = p.H, W = p.W;
  const int64_t sB = p.planes_strides[0], sP = p.planes_strides[1], sC = p.planes_strides[2];
  const int64_t gB = p.grad_out_strides[0], gN = p.grad_out_strides[1];
  const int64_t gP = p.grad_out_strides[2], gC = p.grad_out_strides[3];
  const bool reduced = !(p.reduce == kReduceNone || p.reduce == kReduceConcat);
  const bool need_plane_values = gxyz != nullptr || p.reduce == kReduceProd;
  std::vector<A> buf(static_cast<size_t>(6 * C) + 1);
  A* g = buf.data();      // [3, C] gradient reaching each plane's features
  A* f = g + 3 * C;       // [3, C] features (prod only)
  PointTaps<A> ring[kLookahead];
  auto prepare = [&](int64_t i, PointTaps<A>& q) {
    prepare_point<A>(p, xyz, i, q);
    if (need_plane_values) prefetch_planes<CL>(p, planes, q);
    prefetch_grad_rows<A>(p, gp, q);
  };
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) {
    prepare(i, ring[(i - begin) % kLookahead]);
  }
  for (int64_t idx = begin; idx < end; ++idx) {
    PointTaps<A>& slot = ring[(idx - begin) % kLookahead];
    const PointTaps<A> q = slot;
    if (idx + kLookahead < end) prepare(idx + kLookahead, slot);
    const int64_t b = q.b, n = q.n;
    if (!q.ok) {
      if (gxyz) gxyz[idx * 3] = gxyz[idx * 3 + 1] = gxyz[idx * 3 + 2] = A(0);
      continue;
    }
    const T* base_b = planes + b * sB;
    // Upstream gradient per plane.
    const T* go = grad_out + b * gB + n * gN;
    if (!reduced) {
      for (int k = 0; k < 3; ++k) {
        const T* gk = go + k * gP;
        A* __restrict__ dk = g + k * C;
        if (gC == 1) {
          for (int64_t c = 0; c < C; ++c) dk[c] = ff_load<A>(gk[c]);
        } else {
          for (int64_t c = 0; c < C; ++c) dk[c] = ff_load<A>(gk[c * gC]);
        }
      }
    } else {
      A* __restrict__ g0 = g;
      const A scale = p.reduce == kReduceMean ? A(1.0 / 3.0) : A(1);
      for (int64_t c = 0; c < C; ++c) g0[c] = ff_load<A>(go[c * gC]) * scale;
      if (p.reduce == kReduceProd) {
        for (int k = 0; k < 3; ++k) sample_plane<CL>(f + k * C, base_b + k * sP, q.t[k], C, sC);
        A* __restrict__ g1 = g + C;
        A* __restrict__ g2 = g + 2 * C;
        const A* __restrict__ f0 = f;
        const A* __restrict__ f1 = f + C;
        const A* __restrict__ f2 = f + 2 * C;
        for (int64_t c = 0; c < C; ++c) {
          const A gc = g0[c];
          g1[c] = gc * (f0[c] * f2[c]);
          g2[c] = gc * (f0[c] * f1[c]);
          g0[c] = gc * (f1[c] * f2[c]);
        }
      } else {
        std::memcpy(g + C, g0, sizeof(A) * C);
        std::memcpy(g + 2 * C, g0, sizeof(A) * C);
      }
    }
    A dxyz[3] = {A(0), A(0), A(0)};
    for (int k = 0; k < 3; ++k) {
      const PlaneTaps<A>& t = q.t[k];
      if (t.mask == 0u) continue;
      const A* __restrict__ gk = g + k * C;
      if (gp) {
        A* plane_buf = gp + (b * 3 + k) * H * W * C;
        for (int c4 = 0; c4 < 4; ++c4) {
          if (!(t.mask & (1u << c4))) continue;
          A* __restrict__ dst =
              plane_buf + ((t.y0 + triplane_corner_dy(c4)) * W + (t.x0 + triplane_corner_dx(c4))) * C;
          const A w = t.w[c4];
          for (int64_t c = 0; c < C; ++c) dst[c] += w * gk[c];
        }
      }
      if (gxyz) {
        const T* base = base_b + k * sP;
        A du = A(0), dv = A(0);
        for (int c4 = 0; c4 < 4; ++c4) {
          if (!(t.mask & (1u << c4))) continue;
          const A s = dot_channels<CL>(gk, base + t.off[c4], C, sC);
          du += t.dwu[c4] * s;
          dv += t.dwv[c4] * s;
        }
        dxyz[p.axes[2 * k]] += du;
        dxyz[p.axes[2 * k + 1]] += dv;
      }
    }
    if (gxyz) {
      gxyz[idx * 3] = dxyz[0];
      gxyz[idx * 3 + 1] = dxyz[1];
      gxyz[idx * 3 + 2] = dxyz[2];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Torch-facing checks and dispatch
// ---------------------------------------------------------------------------------------

constexpr int64_t kPointGrain = 256;

int64_t parse_reduce(int64_t reduce) {
  TORCH_CHECK(reduce >= 0 && reduce <= 4,
              "triplane_sample: reduce must be 0 (none), 1 (sum), 2 (mean), 3 (prod) or 4 (concat), got ",
              reduce);
  return reduce;
}

TriplaneSampleParams make_params(const at::Tensor& planes, const at::Tensor& xyz, at::IntArrayRef axes,
                                 int64_t reduce, bool align_corners, int64_t padding) {
  TORCH_CHECK(planes.dim() == 5, "triplane_sample: planes must be [B, 3, C, H, W], got ", planes.dim(),
              " dims");
  TORCH_CHECK(planes.size(1) == 3, "triplane_sample: planes must hold 3 planes (dim 1), got ",
              planes.size(1));
  TORCH_CHECK(planes.size(3) > 0 && planes.size(4) > 0,
              "triplane_sample: planes must have H > 0 and W > 0, got ", planes.sizes());
  TORCH_CHECK(xyz.dim() == 3, "triplane_sample: xyz must be [B, N, 3], got ", xyz.dim(), " dims");
  TORCH_CHECK(xyz.size(2) == 3, "triplane_sample: xyz's last dim must be 3, got ", xyz.size(2));
  TORCH_CHECK(xyz.size(0) == planes.size(0), "triplane_sample: xyz batch (", xyz.size(0),
              ") must match planes batch (", planes.size(0), ")");
  const auto pt = planes.scalar_type();
  TORCH_CHECK(pt == at::kFloat || pt == at::kDouble || pt == at::kHalf || pt == at::kBFloat16,
              "triplane_sample: planes must be float32/float64/float16/bfloat16, got ", pt);
  TORCH_CHECK(at::isFloatingType(xyz.scalar_type()),
              "triplane_sample: xyz must be a floating-point tensor, got ", xyz.scalar_type());
  TORCH_CHECK(axes.size() == 6, "triplane_sample: axes must hold 6 entries (3 planes x (u, v)), got ",
              axes.size());
  for (auto a : axes) {
    TORCH_CHECK(a >= 0 && a < 3, "triplane_sample: axes entries must be 0, 1 or 2, got ", axes);
  }
  TORCH_CHECK(padding == 0 || padding == 1,
              "triplane_sample: padding must be 0 (zeros) or 1 (border), got ", padding);
  parse_reduce(reduce);

  TriplaneSampleParams p{};
  p.B = planes.size(0);
  p.N = xyz.size(1);
  p.C = planes.size(2);
  p.H = planes.size(3);
  p.W = planes.size(4);
  for (int i = 0; i < 5; ++i) p.planes_strides[i] = planes.stride(i);
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz.stride(i);
  for (int i = 0; i < 4; ++i) p.grad_out_strides[i] = 0;
  for (int i = 0; i < 6; ++i) p.axes[i] = static_cast<int>(axes[i]);
  p.reduce = static_cast<int>(reduce);
  p.padding = static_cast<int>(padding);
  p.align_corners = align_corners;
  return p;
}

std::vector<int64_t> out_shape(const TriplaneSampleParams& p) {
  if (p.reduce == kReduceNone) return {p.B, p.N, 3, p.C};
  if (p.reduce == kReduceConcat) return {p.B, p.N, 3 * p.C};
  return {p.B, p.N, p.C};
}

at::ScalarType acc_dtype(at::ScalarType planes_dtype) {
  return planes_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor triplane_sample_fwd_cpu(const at::Tensor& planes, const at::Tensor& xyz, at::IntArrayRef axes,
                                   int64_t reduce, bool align_corners, int64_t padding) {
  TORCH_CHECK(planes.device().is_cpu(), "triplane_sample (cpu): planes must be a CPU tensor, got ",
              planes.device());
  TORCH_CHECK(xyz.device().is_cpu(), "triplane_sample (cpu): xyz must be a CPU tensor, got ", xyz.device());
  TriplaneSampleParams p = make_params(planes, xyz, axes, reduce, align_corners, padding);
  // Coordinates in the accumulation dtype (a no-op for the usual fp32 xyz); strides honoured.
  const at::Tensor xyz_a = xyz.to(acc_dtype(planes.scalar_type()));
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz_a.stride(i);
  at::Tensor out = at::empty(out_shape(p), planes.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t total = p.B * p.N;
  if (total == 0 || out.numel() == 0) return out;
  const bool cl = p.planes_strides[2] == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_fwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* pl = planes.const_data_ptr<scalar_t>();
    const A* xp = xyz_a.const_data_ptr<A>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, total, kPointGrain, [&](int64_t begin, int64_t end) {
      if (cl) {
        fwd_points<true, scalar_t, A>(p, pl, xp, op, begin, end);
      } else {
        fwd_points<false, scalar_t, A>(p, pl, xp, op, begin, end);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& planes,
                                                           const at::Tensor& xyz, at::IntArrayRef axes,
                                                           int64_t reduce, bool align_corners, int64_t padding,
                                                           bool need_planes, bool need_xyz) {
  TORCH_CHECK(planes.device().is_cpu(), "triplane_sample (cpu): planes must be a CPU tensor, got ",
              planes.device());
  TORCH_CHECK(xyz.device().is_cpu(), "triplane_sample (cpu): xyz must be a CPU tensor, got ", xyz.device());
  TORCH_CHECK(grad_out.device().is_cpu(), "triplane_sample (cpu): grad_out must be a CPU tensor, got ",
              grad_out.device());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()),
              "triplane_sample: grad_out must be a floating-point tensor, got ", grad_out.scalar_type());
  TriplaneSampleParams p = make_params(planes, xyz, axes, reduce, align_corners, padding);
  const auto expected = out_shape(p);
  TORCH_CHECK(grad_out.sizes().equals(expected), "triplane_sample: grad_out must have shape ",
              at::IntArrayRef(expected), ", got ", grad_out.sizes());

  const at::ScalarType adt = acc_dtype(planes.scalar_type());
  const at::Tensor xyz_a = xyz.to(adt);
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz_a.stride(i);
  const at::Tensor go = grad_out.to(planes.scalar_type());
  if (p.reduce == kReduceNone) {
    for (int i = 0; i < 4; ++i) p.grad_out_strides[i] = go.stride(i);
  } else if (p.reduce == kReduceConcat) {  // [B, N, 3C] viewed as [B, N, 3, C]
    p.grad_out_strides[0] = go.stride(0);
    p.grad_out_strides[1] = go.stride(1);
    p.grad_out_strides[2] = p.C * go.stride(2);
    p.grad_out_strides[3] = go.stride(2);
  } else {
    p.grad_out_strides[0] = go.stride(0);
    p.grad_out_strides[1] = go.stride(1);
    p.grad_out_strides[2] = 0;
    p.grad_out_strides[3] = go.stride(2);
  }

  const int64_t B = p.B, C = p.C, H = p.H, W = p.W;
  // grad_planes: channels-last [B, 3, H, W, C] storage, returned as a [B, 3, C, H, W] view.
  at::Tensor gp_cl;
  if (need_planes) gp_cl = at::empty({B, 3, H, W, C}, planes.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gxyz_a;
  if (need_xyz) gxyz_a = at::empty({B, p.N, 3}, xyz_a.options().memory_format(at::MemoryFormat::Contiguous));

  const int64_t total = B * p.N;
  const bool cl = p.planes_strides[2] == 1;

  if (total == 0 || C == 0 || (!need_planes && !need_xyz)) {
    if (need_planes) gp_cl.zero_();
    if (need_xyz) gxyz_a.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_bwd_cpu", [&] {
      using A = acc_t<scalar_t>;
      const scalar_t* pl = planes.const_data_ptr<scalar_t>();
      const scalar_t* gop = go.const_data_ptr<scalar_t>();
      const A* xp = xyz_a.const_data_ptr<A>();
      A* gx = need_xyz ? gxyz_a.mutable_data_ptr<A>() : nullptr;
      auto run = [&](A* gpbuf, int64_t begin, int64_t end) {
        if (cl) {
          bwd_points<true, scalar_t, A>(p, gop, pl, xp, gpbuf, gx, begin, end);
        } else {
          bwd_points<false, scalar_t, A>(p, gop, pl, xp, gpbuf, gx, begin, end);
        }
      };
      if (!need_planes) {
        at::parallel_for(0, total, kPointGrain, [&](int64_t begin, int64_t end) { run(nullptr, begin, end); });
        return;
      }
      // Per-thread channels-last accumulation buffers ("slots"), each owned by one thread for
      // a contiguous range of points, summed at the end: no atomics. Use fewer slots when the
      // buffers would cost more than the work they parallelise, or take too much memory.
      const int64_t elems = B * 3 * H * W * C;
      const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
      const int64_t work = total * 12 * C;  // accumulations into grad_planes
      int64_t slots = std::min<int64_t>(threads, std::max<int64_t>(1, work / std::max<int64_t>(1, 2 * elems)));
      constexpr int64_t kMaxExtraBytes = int64_t(1) << 30;
      const int64_t max_extra = kMaxExtraBytes / std::max<int64_t>(1, elems * int64_t(sizeof(A)));
      slots = std::max<int64_t>(1, std::min<int64_t>(slots, max_extra + 1));
      slots = std::min<int64_t>(slots, total);

      constexpr bool same = std::is_same<scalar_t, A>::value;
      // Slot 0 accumulates straight into the result when no dtype conversion is needed.
      const int64_t n_extra = same ? slots - 1 : slots;
      at::Tensor extra;
      if (n_extra > 0) extra = at::empty({n_extra, elems}, planes.options().dtype(adt));
      A* extra_p = n_extra > 0 ? extra.mutable_data_ptr<A>() : nullptr;
      A* out0 = nullptr;
      if constexpr (same) out0 = reinterpret_cast<A*>(gp_cl.mutable_data_ptr<scalar_t>());
      auto slot_buf = [&](int64_t s) -> A* {
        if (same) return s == 0 ? out0 : extra_p + (s - 1) * elems;
        return extra_p + s * elems;
      };
      at::parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) {
          A* buf = slot_buf(s);
          std::memset(buf, 0, sizeof(A) * static_cast<size_t>(elems));
          const int64_t begin = total * s / slots;
          const int64_t end = total * (s + 1) / slots;
          run(buf, begin, end);
        }
      });
      if (same && slots == 1) return;
      scalar_t* dst = gp_cl.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, elems, 4096, [&](int64_t begin, int64_t end) {
        if (same) {
          A* d = reinterpret_cast<A*>(dst);
          for (int64_t s = 1; s < slots; ++s) {
            const A* __restrict__ src = slot_buf(s);
            A* __restrict__ dd = d;
            for (int64_t i = begin; i < end; ++i) dd[i] += src[i];
          }
        } else {
          const A* __restrict__ s0p = slot_buf(0);
          scalar_t* __restrict__ dd = dst;
          if (slots == 1) {
            for (int64_t i = begin; i < end; ++i) dd[i] = ff_store<scalar_t>(s0p[i]);
          } else {
            // Sum in chunks through a small stack buffer to keep the loops vectorisable.
            constexpr int64_t kChunk = 1024;
            A tmp[kChunk];
            for (int64_t i0 = begin; i0 < end; i0 += kChunk) {
              const int64_t m = std::min<int64_t>(kChunk, end - i0);
              for (int64_t i = 0; i < m; ++i) tmp[i] = s0p[i0 + i];
              for (int64_t s = 1; s < slots; ++s) {
                const A* __restrict__ src = slot_buf(s) + i0;
                for (int64_t i = 0; i < m; ++i) tmp[i] += src[i];
              }
              for (int64_t i = 0; i < m; ++i) dd[i0 + i] = ff_store<scalar_t>(tmp[i]);
            }
          }
        }
      });
    });
  }

  at::Tensor grad_planes = need_planes ? gp_cl.permute({0, 1, 4, 2, 3}) : at::empty({0}, planes.options());
  at::Tensor grad_xyz = need_xyz ? gxyz_a.to(xyz.scalar_type()) : at::empty({0}, xyz.options());
  return std::make_tuple(grad_planes, grad_xyz);
}

}  // namespace
}  // namespace fastfields

TORCH_LIBRARY_FRAGMENT(fastfields_cpu, m) {
  m.def(
      "triplane_sample_fwd(Tensor planes, Tensor xyz, int[] axes, int reduce, bool align_corners, int padding) "
      "-> Tensor");
  m.def(
      "triplane_sample_bwd(Tensor grad_out, Tensor planes, Tensor xyz, int[] axes, int reduce, bool align_corners, "
      "int padding, bool need_planes, bool need_xyz) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastfields_cpu, CPU, m) {
  m.impl("triplane_sample_fwd", TORCH_FN(fastfields::triplane_sample_fwd_cpu));
  m.impl("triplane_sample_bwd", TORCH_FN(fastfields::triplane_sample_bwd_cpu));
}
