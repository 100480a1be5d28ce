// triplane_sample: OpenMP CPU kernels, torch-facing checks, and op registration
// (namespace fastfields_cpu). The per-element math is shared with the CUDA kernels via
// fastfields/triplane_sample.h.
//
// Forward: one pass per point (parallel over points) computing the three planes' taps and
// writing the reduced channel row; the inner channel loops are contiguous (vectorised) for
// channels-last planes (stride_C == 1) and strided otherwise.
// Backward: grad_xyz is written per point (one owner thread); grad_planes is accumulated
// without atomics into per-thread channels-last [B, 3, H, W, C] buffers (fewer when the
// planes are large relative to the work) that are summed in parallel at the end, and is
// returned as a channels-last-strided [B, 3, C, H, W] tensor.
// Large problems with incoherent points are processed in a spatial (Morton) order so the
// plane reads and gradient writes stay in cache (fastfields/cpu_gather.h).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastfields/cpu_gather.h"
#include "fastfields/triplane_sample.h"
#include "fastfields/triplane_sample_bind.h"
#include "fastfields/schemas.h"

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

// Backward of one plane's tap for one point, fused over the four corners so every plane
// value is read once:
//   gbuf[corner, c] += w[corner] * g[c]                    (when gbuf != nullptr)
//   du += sum_c g[c] * sum_corner dwu[corner] * plane[corner, c]   (when want_xyz)
//   dv += sum_c g[c] * sum_corner dwv[corner] * plane[corner, c]
// gbuf points at the plane's channels-last [H, W, C] accumulation buffer.
template <bool CL, typename T, typename A>
inline void plane_backward(const A* __restrict__ g, const T* __restrict__ base, const PlaneTaps<A>& t,
                           A* __restrict__ gbuf, int64_t W, int64_t C, int64_t sC, bool want_xyz,
                           A& du, A& dv) {
  if (t.mask == 0xFu) {
    const T* __restrict__ p0 = base + t.off[0];
    const T* __restrict__ p1 = base + t.off[1];
    const T* __restrict__ p2 = base + t.off[2];
    const T* __restrict__ p3 = base + t.off[3];
    if constexpr (CL && std::is_same<T, A>::value) {
      // One pass over the channels, eight at a time: each gradient row updated and each plane
      // row read once, and the per-corner sums s[q] = sum_c g[c] * plane[corner q, c], whose
      // dwu / dwv-weighted sums are du and dv (4 vector FMAs a step, not 10 for forming
      // sum_q dwu[q] * plane[q, c] per channel).
      using V = FFVec<A, 8>;
      typename V::type s0{}, s1{}, s2{}, s3{};
      A* __restrict__ d0 = gbuf ? gbuf + (t.y0 * W + t.x0) * C : nullptr;
      A* __restrict__ d2 = gbuf ? d0 + W * C : nullptr;
      const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) {
        const typename V::type gc = V::load(g + c);
        if (gbuf) {
          V::store(d0 + c, V::load(d0 + c) + w0 * gc);
          V::store(d0 + C + c, V::load(d0 + C + c) + w1 * gc);
          V::store(d2 + c, V::load(d2 + c) + w2 * gc);
          V::store(d2 + C + c, V::load(d2 + C + c) + w3 * gc);
        }
        if (want_xyz) {
          s0 += gc * V::load(p0 + c);
          s1 += gc * V::load(p1 + c);
          s2 += gc * V::load(p2 + c);
          s3 += gc * V::load(p3 + c);
        }
      }
      auto sum = [](const typename V::type& v) {
        return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
      };
      A a0 = sum(s0), a1 = sum(s1), a2 = sum(s2), a3 = sum(s3);
      for (; c < C; ++c) {  // the last C % 8 channels
        const A gc = g[c];
        if (gbuf) {
          d0[c] += w0 * gc;
          d0[C + c] += w1 * gc;
          d2[c] += w2 * gc;
          d2[C + c] += w3 * gc;
        }
        if (want_xyz) {
          a0 += gc * p0[c];
          a1 += gc * p1[c];
          a2 += gc * p2[c];
          a3 += gc * p3[c];
        }
      }
      if (want_xyz) {
        du += t.dwu[0] * a0 + t.dwu[1] * a1 + t.dwu[2] * a2 + t.dwu[3] * a3;
        dv += t.dwv[0] * a0 + t.dwv[1] * a1 + t.dwv[2] * a2 + t.dwv[3] * a3;
      }
      return;
    }
    if (gbuf) {
      A* __restrict__ d0 = gbuf + (t.y0 * W + t.x0) * C;
      A* __restrict__ d1 = d0 + C;
      A* __restrict__ d2 = d0 + W * C;
      A* __restrict__ d3 = d2 + C;
      const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
      for (int64_t c = 0; c < C; ++c) {
        const A gc = g[c];
        d0[c] += w0 * gc;
        d1[c] += w1 * gc;
        d2[c] += w2 * gc;
        d3[c] += w3 * gc;
      }
    }
    if (want_xyz) {
      const A u0 = t.dwu[0], u1 = t.dwu[1], u2 = t.dwu[2], u3 = t.dwu[3];
      const A v0 = t.dwv[0], v1 = t.dwv[1], v2 = t.dwv[2], v3 = t.dwv[3];
      constexpr int L = 8;  // partial sums: vectorisable without -ffast-math
      A su[L], sv[L];
      for (int j = 0; j < L; ++j) su[j] = sv[j] = A(0);
      int64_t c = 0;
      for (; c + L <= C; c += L) {
        for (int j = 0; j < L; ++j) {
          const int64_t o = chan<CL>(c + j, sC);
          const A a0 = ff_load<A>(p0[o]), a1 = ff_load<A>(p1[o]);
          const A a2 = ff_load<A>(p2[o]), a3 = ff_load<A>(p3[o]);
          const A gc = g[c + j];
          su[j] += gc * (u0 * a0 + u1 * a1 + u2 * a2 + u3 * a3);
          sv[j] += gc * (v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3);
        }
      }
      A tu = A(0), tv = A(0);
      for (; c < C; ++c) {
        const int64_t o = chan<CL>(c, sC);
        const A a0 = ff_load<A>(p0[o]), a1 = ff_load<A>(p1[o]);
        const A a2 = ff_load<A>(p2[o]), a3 = ff_load<A>(p3[o]);
        const A gc = g[c];
        tu += gc * (u0 * a0 + u1 * a1 + u2 * a2 + u3 * a3);
        tv += gc * (v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3);
      }
      for (int j = 0; j < L; ++j) {
        tu += su[j];
        tv += sv[j];
      }
      du += tu;
      dv += tv;
    }
    return;
  }
  for (int q = 0; q < 4; ++q) {
    if (!(t.mask & (1u << q))) continue;
    if (gbuf) {
      A* __restrict__ dst =
          gbuf + ((t.y0 + triplane_corner_dy(q)) * W + (t.x0 + triplane_corner_dx(q))) * C;
      const A w = t.w[q];
      for (int64_t c = 0; c < C; ++c) dst[c] += w * g[c];
    }
    if (want_xyz) {
      const A s = dot_channels<CL>(g, base + t.off[q], C, sC);
      du += t.dwu[q] * s;
      dv += t.dwv[q] * s;
    }
  }
}

template <typename T, typename A>
inline void store_row(T* __restrict__ out, const A* __restrict__ src, int64_t n, A scale) {
  for (int64_t c = 0; c < n; ++c) out[c] = ff_store<T>(src[c] * scale);
}

// ---------------------------------------------------------------------------------------
// Per-point taps, computed kLookahead points ahead of their use so that the point's
// scattered output / grad_out rows can be prefetched (see triplane_points below).
// ---------------------------------------------------------------------------------------

constexpr int kLookahead = 8;
constexpr int kRing = 16;  // power of two, > kLookahead

template <typename A>
struct PointTaps {
  PlaneTaps<A> t[3];
  int64_t b, n;
  bool ok;
};

template <typename A>
inline void prepare_point(const TriplaneSampleParams& p, const PointStream<A>& s, int64_t i, PointTaps<A>& q) {
  A pt[3];
  q.ok = s.load(i, q.b, q.n, pt);
  if (!q.ok) return;
  for (int k = 0; k < 3; ++k) {
    triplane_plane_taps_into<A>(q.t[k], pt[p.axes[2 * k]], pt[p.axes[2 * k + 1]], p);
  }
}

// The points as the kernels walk them (fastfields/cpu_gather.h): the planes are one grid per
// batch, spatially ordered when they are large.
template <typename T, typename A>
PointStream<A> triplane_points(const TriplaneSampleParams& p, const A* xyz) {
  const PointSet<A> pts{xyz, p.B, p.N, p.xyz_strides[0], p.xyz_strides[1], p.xyz_strides[2]};
  return PointStream<A>(pts, 3 * p.H * p.W * p.C * int64_t(sizeof(T)), std::max(p.H, p.W), 2);
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <bool CL, typename T, typename A>
void fwd_points(const TriplaneSampleParams& p, const T* planes, const PointStream<A>& pts, T* out, int64_t begin,
                int64_t end) {
  const int64_t C = p.C;
  const int64_t OC = triplane_out_channels(p);
  const int64_t sB = p.planes_strides[0], sP = p.planes_strides[1], sC = p.planes_strides[2];
  std::vector<A> buf(static_cast<size_t>(3 * C) + 1);
  A* f = buf.data();
  // Points are prepared (taps computed, output row prefetched for writing) kLookahead
  // points ahead: in spatial order the output rows are scattered.
  PointTaps<A> ring[kRing];
  auto prepare = [&](int64_t i) {
    PointTaps<A>& q = ring[i & (kRing - 1)];
    prepare_point<A>(p, pts, i, q);
    const int64_t idx = q.b * p.N + q.n;
    prefetch_bytes<1>(out + idx * OC, OC * int64_t(sizeof(T)));
  };
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) prepare(i);
  for (int64_t i = begin; i < end; ++i) {
    if (i + kLookahead < end) prepare(i + kLookahead);
    const PointTaps<A>& q = ring[i & (kRing - 1)];
    const int64_t idx = q.b * p.N + q.n;
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

// Processes stream positions [begin, end) (pts says which point each is). gp (may be null)
// is a zeroed channels-last accumulation buffer [B, 3, H, W, C] owned by the calling thread; gxyz
// (may be null) is [B, N, 3].
template <bool CL, typename T, typename A>
void bwd_points(const TriplaneSampleParams& p, const T* grad_out, const T* planes, const PointStream<A>& pts, A* gp,
                A* gxyz, int64_t begin, int64_t end) {
  const int64_t C = p.C, H = p.H, W = p.W;
  const int64_t sB = p.planes_strides[0], sP = p.planes_strides[1], sC = p.planes_strides[2];
  const int64_t gB = p.grad_out_strides[0], gN = p.grad_out_strides[1];
  const int64_t gP = p.grad_out_strides[2], gC = p.grad_out_strides[3];
  const bool reduced = !(p.reduce == kReduceNone || p.reduce == kReduceConcat);
  std::vector<A> buf(static_cast<size_t>(6 * C) + 1);
  A* g = buf.data();      // [3, C] gradient reaching each plane's features
  A* f = g + 3 * C;       // [3, C] features (prod only)
  // Points are prepared (taps computed, grad_out / grad_xyz rows prefetched) kLookahead
  // points ahead: in spatial order those rows are scattered.
  PointTaps<A> ring[kRing];
  auto prepare = [&](int64_t i) {
    PointTaps<A>& q = ring[i & (kRing - 1)];
    prepare_point<A>(p, pts, i, q);
    const int64_t idx = q.b * p.N + q.n;
    if (q.ok && gC == 1) {
      const T* go = grad_out + q.b * gB + q.n * gN;
      for (int k = 0; k < (reduced ? 1 : 3); ++k) prefetch_bytes<0>(go + k * gP, C * int64_t(sizeof(T)));
    }
    if (gxyz) __builtin_prefetch(gxyz + 3 * idx, 1);
  };
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) prepare(i);
  for (int64_t i = begin; i < end; ++i) {
    if (i + kLookahead < end) prepare(i + kLookahead);
    const PointTaps<A>& q = ring[i & (kRing - 1)];
    const int64_t idx = q.b * p.N + q.n;
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
      A du = A(0), dv = A(0);
      plane_backward<CL>(gk, base_b + k * sP, t, gp ? gp + (b * 3 + k) * H * W * C : nullptr, W, C, sC,
                         gxyz != nullptr, du, dv);
      if (gxyz) {
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

using namespace triplane_bind;

at::Tensor triplane_sample_fwd_cpu(const at::Tensor& planes, const at::Tensor& xyz, at::IntArrayRef axes,
                                   int64_t reduce, bool align_corners, int64_t padding) {
  check_device(planes, "planes", planes, "planes", at::kCPU, "triplane_sample");
  check_device(xyz, "xyz", planes, "planes", at::kCPU, "triplane_sample");
  TriplaneSampleParams p = make_params(planes, xyz, axes, reduce, align_corners, padding);
  // Coordinates in the accumulation dtype (a no-op for the usual fp32 xyz); strides honoured.
  const at::Tensor xyz_a = prepare_xyz(xyz, planes.scalar_type(), p);
  at::Tensor out = at::empty(out_shape(p), planes.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t total = p.B * p.N;
  if (total == 0 || out.numel() == 0) return out;
  advise_hugepages(out.data_ptr(), out.nbytes());
  const bool cl = p.planes_strides[2] == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_fwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* pl = planes.data_ptr<scalar_t>();
    const A* xp = xyz_a.data_ptr<A>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const PointStream<A> pts = triplane_points<scalar_t, A>(p, xp);
    at::parallel_for(0, total, kPointGrain, [&](int64_t begin, int64_t end) {
      if (cl) {
        ff_with_avx2([&] { fwd_points<true, scalar_t, A>(p, pl, pts, op, begin, end); });
      } else {
        ff_with_avx2([&] { fwd_points<false, scalar_t, A>(p, pl, pts, op, begin, end); });
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> triplane_sample_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& planes,
                                                           const at::Tensor& xyz, at::IntArrayRef axes,
                                                           int64_t reduce, bool align_corners, int64_t padding,
                                                           bool need_planes, bool need_xyz) {
  check_device(planes, "planes", planes, "planes", at::kCPU, "triplane_sample");
  check_device(xyz, "xyz", planes, "planes", at::kCPU, "triplane_sample");
  check_device(grad_out, "grad_out", planes, "planes", at::kCPU, "triplane_sample");
  TriplaneSampleParams p = make_params(planes, xyz, axes, reduce, align_corners, padding);
  const at::ScalarType adt = acc_dtype(planes.scalar_type());
  const at::Tensor xyz_a = prepare_xyz(xyz, planes.scalar_type(), p);
  const at::Tensor go = prepare_grad_out(grad_out, planes, p);

  const int64_t B = p.B, C = p.C, H = p.H, W = p.W;
  // grad_planes: channels-last [B, 3, H, W, C] storage, returned as a [B, 3, C, H, W] view.
  at::Tensor gp_cl;
  if (need_planes) gp_cl = at::empty({B, 3, H, W, C}, planes.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gxyz_a;
  if (need_xyz) gxyz_a = at::empty({B, p.N, 3}, xyz_a.options().memory_format(at::MemoryFormat::Contiguous));
  if (need_planes) advise_hugepages(gp_cl.data_ptr(), gp_cl.nbytes());
  if (need_xyz) advise_hugepages(gxyz_a.data_ptr(), gxyz_a.nbytes());

  const int64_t total = B * p.N;
  const bool cl = p.planes_strides[2] == 1;

  if (total == 0 || C == 0 || (!need_planes && !need_xyz)) {
    if (need_planes) gp_cl.zero_();
    if (need_xyz) gxyz_a.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "triplane_sample_bwd_cpu", [&] {
      using A = acc_t<scalar_t>;
      const scalar_t* pl = planes.data_ptr<scalar_t>();
      const scalar_t* gop = go.data_ptr<scalar_t>();
      const A* xp = xyz_a.data_ptr<A>();
      A* gx = need_xyz ? gxyz_a.data_ptr<A>() : nullptr;
      const PointStream<A> pts = triplane_points<scalar_t, A>(p, xp);
      auto run = [&](A* gpbuf, int64_t begin, int64_t end) {
        if (cl) {
          ff_with_avx2([&] { bwd_points<true, scalar_t, A>(p, gop, pl, pts, gpbuf, gx, begin, end); });
        } else {
          ff_with_avx2([&] { bwd_points<false, scalar_t, A>(p, gop, pl, pts, gpbuf, gx, begin, end); });
        }
      };
      if (!need_planes) {
        at::parallel_for(0, total, kPointGrain, [&](int64_t begin, int64_t end) { run(nullptr, begin, end); });
        return;
      }
      // Per-thread channels-last buffers summed at the end (fastfields/cpu_gather.h).
      const int64_t work = total * 12 * C;  // accumulations into grad_planes
      accumulate_in_slots<scalar_t, A>(gp_cl.data_ptr<scalar_t>(), B * 3 * H * W * C, total, work, planes.options(),
                                       true, run);
    });
  }

  at::Tensor grad_planes = need_planes ? gp_cl.permute({0, 1, 4, 2, 3}) : at::empty({0}, planes.options());
  at::Tensor grad_xyz = need_xyz ? gxyz_a.to(xyz.scalar_type()) : at::empty({0}, xyz.options());
  return std::make_tuple(grad_planes, grad_xyz);
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cpu, CPU, triplane_sample, fastfields::triplane_sample_fwd_cpu, fastfields::triplane_sample_bwd_cpu)
