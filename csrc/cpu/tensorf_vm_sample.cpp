// tensorf_vm_sample: OpenMP CPU kernels, torch-facing checks, and op registration
// (namespace fastfields_cpu). The per-element math is shared with the CUDA kernels via
// fastfields/tensorf_vm_sample.h.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "fastfields/cpu_gather.h"
#include "fastfields/tensorf_vm_sample.h"
#include "fastfields/tensorf_vm_sample_bind.h"
#include "fastfields/schemas.h"

namespace fastfields {
namespace {

// ---------------------------------------------------------------------------------------
// Component rows. A plane is read at component stride sR (1 for channels-last planes, the
// vectorisable case, selected by CL); lines are always the kernels' own channels-last
// [L, R] copies in the accumulation dtype, so a line tap is one contiguous row.
// ---------------------------------------------------------------------------------------

template <bool CL>
inline int64_t comp(int64_t r, int64_t sR) {
  return CL ? r : r * sR;
}

// f[r] = plane value of component r.
template <bool CL, typename T, typename A>
inline void plane_row(A* __restrict__ f, const T* __restrict__ plane, const PlaneTaps<A>& t, int64_t R,
                      int64_t sR) {
  if (t.mask == 0xFu) {
    const T* __restrict__ p0 = plane + t.off[0];
    const T* __restrict__ p1 = plane + t.off[1];
    const T* __restrict__ p2 = plane + t.off[2];
    const T* __restrict__ p3 = plane + t.off[3];
    const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
    for (int64_t r = 0; r < R; ++r) {
      const int64_t o = comp<CL>(r, sR);
      f[r] = w0 * ff_load<A>(p0[o]) + w1 * ff_load<A>(p1[o]) + w2 * ff_load<A>(p2[o]) + w3 * ff_load<A>(p3[o]);
    }
    return;
  }
  for (int64_t r = 0; r < R; ++r) f[r] = A(0);
  for (int c = 0; c < 4; ++c) {
    if (!(t.mask & (1u << c))) continue;
    const T* __restrict__ q = plane + t.off[c];
    const A w = t.w[c];
    for (int64_t r = 0; r < R; ++r) f[r] += w * ff_load<A>(q[comp<CL>(r, sR)]);
  }
}

// l[r] = line value of component r.
template <typename A>
inline void line_row(A* __restrict__ l, const A* __restrict__ line, const LineTaps<A>& t, int64_t R) {
  const A* __restrict__ q0 = line + t.off[0];
  const A* __restrict__ q1 = line + t.off[1];
  const A w0 = t.w[0], w1 = t.w[1];
  switch (t.mask) {
    case 3u:
      for (int64_t r = 0; r < R; ++r) l[r] = w0 * q0[r] + w1 * q1[r];
      break;
    case 1u:
      for (int64_t r = 0; r < R; ++r) l[r] = w0 * q0[r];
      break;
    case 2u:
      for (int64_t r = 0; r < R; ++r) l[r] = w1 * q1[r];
      break;
    default:
      for (int64_t r = 0; r < R; ++r) l[r] = A(0);
  }
}

// prod[r] = plane value * line value of component r; one fused pass when every tap is inside.
template <bool CL, typename T, typename A>
inline void product_row(A* __restrict__ prod, A* __restrict__ scratch, const T* __restrict__ plane,
                        const PlaneTaps<A>& t, int64_t sR, const A* __restrict__ line, const LineTaps<A>& lt,
                        int64_t R) {
  if (t.mask == 0xFu && lt.mask == 3u) {
    const T* __restrict__ p0 = plane + t.off[0];
    const T* __restrict__ p1 = plane + t.off[1];
    const T* __restrict__ p2 = plane + t.off[2];
    const T* __restrict__ p3 = plane + t.off[3];
    const A* __restrict__ q0 = line + lt.off[0];
    const A* __restrict__ q1 = line + lt.off[1];
    const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
    const A lw0 = lt.w[0], lw1 = lt.w[1];
    for (int64_t r = 0; r < R; ++r) {
      const int64_t o = comp<CL>(r, sR);
      const A f = w0 * ff_load<A>(p0[o]) + w1 * ff_load<A>(p1[o]) + w2 * ff_load<A>(p2[o]) + w3 * ff_load<A>(p3[o]);
      prod[r] = f * (lw0 * q0[r] + lw1 * q1[r]);
    }
    return;
  }
  plane_row<CL>(prod, plane, t, R, sR);
  line_row<A>(scratch, line, lt, R);
  for (int64_t r = 0; r < R; ++r) prod[r] *= scratch[r];
}

// sum_r a[r] * b[r], with 8 partial sums so the loop vectorises without -ffast-math.
template <typename A, typename B>
inline A dot(const A* __restrict__ a, const B* __restrict__ b, int64_t R, int64_t sB) {
  constexpr int kLanes = 8;
  A part[kLanes];
  for (int j = 0; j < kLanes; ++j) part[j] = A(0);
  int64_t r = 0;
  if (sB == 1) {
    for (; r + kLanes <= R; r += kLanes) {
      for (int j = 0; j < kLanes; ++j) part[j] += a[r + j] * ff_load<A>(b[r + j]);
    }
  }
  A s = A(0);
  for (; r < R; ++r) s += a[r] * ff_load<A>(b[r * sB]);
  for (int j = 0; j < kLanes; ++j) s += part[j];
  return s;
}

template <typename A>
inline A sum_row(const A* __restrict__ a, int64_t R) {
  constexpr int kLanes = 8;
  A part[kLanes];
  for (int j = 0; j < kLanes; ++j) part[j] = A(0);
  int64_t r = 0;
  for (; r + kLanes <= R; r += kLanes) {
    for (int j = 0; j < kLanes; ++j) part[j] += a[r + j];
  }
  A s = A(0);
  for (; r < R; ++r) s += a[r];
  for (int j = 0; j < kLanes; ++j) s += part[j];
  return s;
}

// ---------------------------------------------------------------------------------------
// Per-point taps with software prefetch: the taps of point i + kLookahead are computed (and
// their plane rows prefetched) while point i is processed, so the random plane reads of
// several points are in flight at once.
// ---------------------------------------------------------------------------------------

constexpr int kLookahead = 4;
constexpr int kRing = 8;  // power of two > kLookahead: entries are read in place, not copied

template <typename A>
struct PointTaps {
  PlaneTaps<A> plane[3];
  LineTaps<A> line[3];
  int64_t n;  // the point's index (its output row)
  bool ok;
};

template <typename A>
inline void prepare_point(const VmSampleParams& p, const PointStream<A>& s, int64_t i, PointTaps<A>& q) {
  A pt[3];
  int64_t b;  // always 0: one point set
  q.ok = s.load(i, b, q.n, pt);
  if (!q.ok) return;
  for (int k = 0; k < 3; ++k) {
    vm_plane_taps_into<A>(q.plane[k], vm_pick(pt, p.mat_mode[2 * k]), vm_pick(pt, p.mat_mode[2 * k + 1]), p, k);
    vm_line_taps_into<A>(q.line[k], vm_pick(pt, p.vec_mode[k]), p, k);
  }
}

// The points as the kernels walk them (fastfields/cpu_gather.h): spatially ordered when the
// planes they read are large.
template <typename T, typename A>
PointStream<A> vm_points(const VmSampleParams& p, const A* xyz) {
  int64_t bytes = 0, side = 0;
  for (int k = 0; k < 3; ++k) {
    bytes += p.R[k] * p.H[k] * p.W[k] * int64_t(sizeof(T));
    side = std::max({side, p.H[k], p.W[k], p.L[k]});
  }
  return PointStream<A>(PointSet<A>{xyz, 1, p.N, 0, p.xyz_strides[0], p.xyz_strides[1]}, bytes, side, 2);
}

// Channels-last: one contiguous run of R values per corner, and the x0 / x1 corners of a row
// are adjacent. Otherwise one element per component of the x0 corners (x1 usually shares
// their cache line).
template <typename T, typename A>
inline void prefetch_planes(const VmSampleParams& p, const T* const planes[3], const PointTaps<A>& q) {
  if (!q.ok) return;
  for (int k = 0; k < 3; ++k) {
    const PlaneTaps<A>& t = q.plane[k];
    const int64_t R = p.R[k], sR = p.plane_strides[k][0];
    for (int c = 0; c < 4; ++c) {
      if (!(t.mask & (1u << c)) || ((c & 1) && (t.mask & (1u << (c - 1))))) continue;
      const T* base = planes[k] + t.off[c];
      if (sR == 1) {
        const bool pair = !(c & 1) && (t.mask & (1u << (c + 1)));
        prefetch_bytes(base, (pair ? R + p.plane_strides[k][2] : R) * int64_t(sizeof(T)));
      } else {
        for (int64_t r = 0; r < R; ++r) __builtin_prefetch(base + r * sR);
      }
    }
  }
}

// Where one thread accumulates plane and line gradients: zeroed channels-last buffers
// plane k [H_k, W_k, R_k] and line k [L_k, R_k] (null when not needed).
template <typename A>
struct GradBuffers {
  A* plane[3];
  A* line[3];
};

// Prefetch, for writing, the gradient rows a point's plane corners update (the x0 and x1
// corners of a row are adjacent).
template <typename A>
inline void prefetch_grad_rows(const VmSampleParams& p, const GradBuffers<A>& gb, const PointTaps<A>& q) {
  if (!q.ok) return;
  for (int k = 0; k < 3; ++k) {
    if (gb.plane[k] == nullptr) continue;
    const PlaneTaps<A>& t = q.plane[k];
    for (int c = 0; c < 4; c += 2) {
      const unsigned row = (t.mask >> c) & 3u;
      if (!row) continue;
      const int64_t x = (row & 1u) ? t.x0 : t.x0 + 1;
      const A* dst = gb.plane[k] + ((t.y0 + triplane_corner_dy(c)) * p.W[k] + x) * p.R[k];
      prefetch_bytes<1>(dst, (row == 3u ? 2 : 1) * p.R[k] * int64_t(sizeof(A)));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

template <typename T, typename A>
void fwd_points(const VmSampleParams& p, const T* const planes[3], const A* const lines[3], const PointStream<A>& pts,
                T* out, int64_t begin, int64_t end) {
  const int64_t max_R = std::max({p.R[0], p.R[1], p.R[2]});
  std::vector<A> buf(static_cast<size_t>(2 * max_R));
  A* prod = buf.data();
  A* scratch = prod + max_R;
  const bool concat = p.reduce == kReduceConcat;
  const int64_t out_row = concat ? p.total_R : 1;
  PointTaps<A> ring[kRing];
  auto prepare = [&](int64_t i, PointTaps<A>& q) {
    prepare_point<A>(p, pts, i, q);
    prefetch_planes<T, A>(p, planes, q);
    if (pts.ordered()) prefetch_bytes<1>(out + q.n * out_row, out_row * int64_t(sizeof(T)));  // rows out of order
  };
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) {
    prepare(i, ring[i & (kRing - 1)]);
  }
  for (int64_t i = begin; i < end; ++i) {
    if (i + kLookahead < end) prepare(i + kLookahead, ring[(i + kLookahead) & (kRing - 1)]);
    const PointTaps<A>& q = ring[i & (kRing - 1)];
    T* __restrict__ o = out + q.n * out_row;
    if (!q.ok) {
      for (int64_t c = 0; c < out_row; ++c) o[c] = ff_store<T>(A(0));
      continue;
    }
    A acc = A(0);
    for (int k = 0; k < 3; ++k) {
      const int64_t R = p.R[k], sR = p.plane_strides[k][0];
      if (sR == 1) {
        product_row<true>(prod, scratch, planes[k], q.plane[k], sR, lines[k], q.line[k], R);
      } else {
        product_row<false>(prod, scratch, planes[k], q.plane[k], sR, lines[k], q.line[k], R);
      }
      if (concat) {
        T* __restrict__ row = o + p.offset[k];
        for (int64_t r = 0; r < R; ++r) row[r] = ff_store<T>(prod[r]);
      } else {
        acc += sum_row<A>(prod, R);
      }
    }
    if (!concat) o[0] = ff_store<T>(acc);
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// Gradients of pair k for one point, given the upstream gradient g[r] of each component.
template <bool CL, typename T, typename A>
inline void pair_backward(const VmSampleParams& p, int k, const T* __restrict__ plane, const A* __restrict__ line,
                          const PlaneTaps<A>& t, const LineTaps<A>& lt, const A* __restrict__ g,
                          A* __restrict__ work, const GradBuffers<A>& gb, bool need_xyz, A dxyz[3]) {
  const int64_t R = p.R[k], sR = p.plane_strides[k][0];
  if (t.mask == 0xFu && lt.mask == 3u && gb.plane[k] != nullptr && gb.line[k] != nullptr && !need_xyz) {
    // Every tap inside, both gradients wanted (training): one pass over the components reads
    // each plane corner and line tap once and updates the four plane-gradient rows and the
    // two line-gradient rows (distinct rows: the corners and taps are distinct pixels).
    const T* __restrict__ p0 = plane + t.off[0];
    const T* __restrict__ p1 = plane + t.off[1];
    const T* __restrict__ p2 = plane + t.off[2];
    const T* __restrict__ p3 = plane + t.off[3];
    const A* __restrict__ q0 = line + lt.off[0];
    const A* __restrict__ q1 = line + lt.off[1];
    A* __restrict__ d0 = gb.plane[k] + (t.y0 * p.W[k] + t.x0) * R;
    A* __restrict__ d1 = d0 + R;
    A* __restrict__ d2 = d0 + p.W[k] * R;
    A* __restrict__ d3 = d2 + R;
    A* __restrict__ e0 = gb.line[k] + lt.l0 * R;
    A* __restrict__ e1 = e0 + R;
    const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
    const A lw0 = lt.w[0], lw1 = lt.w[1];
    // Two loops of few streams each: one loop over all ten rows did not vectorise and was
    // slower than the plane and line gradients computed apart.
    for (int64_t r = 0; r < R; ++r) {
      const A gp = g[r] * (lw0 * q0[r] + lw1 * q1[r]);
      d0[r] += w0 * gp;
      d1[r] += w1 * gp;
      d2[r] += w2 * gp;
      d3[r] += w3 * gp;
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t o = comp<CL>(r, sR);
      const A f = w0 * ff_load<A>(p0[o]) + w1 * ff_load<A>(p1[o]) + w2 * ff_load<A>(p2[o]) + w3 * ff_load<A>(p3[o]);
      const A gl = g[r] * f;
      e0[r] += lw0 * gl;
      e1[r] += lw1 * gl;
    }
    return;
  }
  A* __restrict__ g_plane = work;         // d loss / d plane value = g * line value
  A* __restrict__ g_line = work + R;      // d loss / d line value = g * plane value
  A* __restrict__ values = work + 2 * R;  // line values, then plane values
  line_row<A>(values, line, lt, R);
  for (int64_t r = 0; r < R; ++r) g_plane[r] = g[r] * values[r];
  if (gb.plane[k] != nullptr) {
    A* plane_grad = gb.plane[k];
    for (int c = 0; c < 4; ++c) {
      if (!(t.mask & (1u << c))) continue;
      A* __restrict__ dst =
          plane_grad + ((t.y0 + triplane_corner_dy(c)) * p.W[k] + (t.x0 + triplane_corner_dx(c))) * R;
      const A w = t.w[c];
      for (int64_t r = 0; r < R; ++r) dst[r] += w * g_plane[r];
    }
  }
  const bool need_line_grad = gb.line[k] != nullptr;
  if (need_line_grad || need_xyz) {
    plane_row<CL>(values, plane, t, R, sR);
    for (int64_t r = 0; r < R; ++r) g_line[r] = g[r] * values[r];
  }
  if (need_line_grad) {
    for (int j = 0; j < 2; ++j) {
      if (!(lt.mask & (1u << j))) continue;
      A* __restrict__ dst = gb.line[k] + (lt.l0 + j) * R;
      const A w = lt.w[j];
      for (int64_t r = 0; r < R; ++r) dst[r] += w * g_line[r];
    }
  }
  if (need_xyz) {
    A du = A(0), dv = A(0), dw = A(0);
    for (int c = 0; c < 4; ++c) {
      if (!(t.mask & (1u << c))) continue;
      const A s = dot<A>(g_plane, plane + t.off[c], R, sR);
      du += t.dwu[c] * s;
      dv += t.dwv[c] * s;
    }
    for (int j = 0; j < 2; ++j) {
      if (lt.mask & (1u << j)) dw += lt.dw[j] * dot<A>(g_line, line + lt.off[j], R, 1);
    }
    vm_add_to_axis(dxyz, p.mat_mode[2 * k], du);
    vm_add_to_axis(dxyz, p.mat_mode[2 * k + 1], dv);
    vm_add_to_axis(dxyz, p.vec_mode[k], dw);
  }
}

// Processes positions [begin, end) of the point stream; gxyz (may be null) is [N, 3].
template <typename T, typename A>
void bwd_points(const VmSampleParams& p, const T* grad_out, int64_t g_sN, int64_t g_sR, const T* const planes[3],
                const A* const lines[3], const PointStream<A>& pts, const GradBuffers<A>& gb, A* gxyz,
                int64_t begin, int64_t end) {
  const int64_t max_R = std::max({p.R[0], p.R[1], p.R[2]});
  std::vector<A> buf(static_cast<size_t>(4 * max_R));
  A* g = buf.data();
  A* work = g + max_R;
  const bool need_values = gxyz != nullptr || gb.line[0] != nullptr;
  const bool concat = p.reduce == kReduceConcat;
  PointTaps<A> ring[kRing];
  auto prepare = [&](int64_t i, PointTaps<A>& q) {
    prepare_point<A>(p, pts, i, q);
    if (need_values) prefetch_planes<T, A>(p, planes, q);
    prefetch_grad_rows<A>(p, gb, q);
    if (pts.ordered() && q.ok && concat && g_sR == 1) {  // rows out of order
      prefetch_bytes(grad_out + q.n * g_sN, p.total_R * int64_t(sizeof(T)));
    }
  };
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) {
    prepare(i, ring[i & (kRing - 1)]);
  }
  for (int64_t i = begin; i < end; ++i) {
    if (i + kLookahead < end) prepare(i + kLookahead, ring[(i + kLookahead) & (kRing - 1)]);
    const PointTaps<A>& q = ring[i & (kRing - 1)];
    A dxyz[3] = {A(0), A(0), A(0)};
    if (q.ok) {
      const T* go = grad_out + q.n * g_sN;
      for (int k = 0; k < 3; ++k) {
        const int64_t R = p.R[k];
        if (!concat) {
          const A gs = ff_load<A>(go[0]);
          for (int64_t r = 0; r < R; ++r) g[r] = gs;
        } else {
          const T* gk = go + p.offset[k] * g_sR;
          for (int64_t r = 0; r < R; ++r) g[r] = ff_load<A>(gk[r * g_sR]);
        }
        if (p.plane_strides[k][0] == 1) {
          pair_backward<true>(p, k, planes[k], lines[k], q.plane[k], q.line[k], g, work, gb, gxyz != nullptr, dxyz);
        } else {
          pair_backward<false>(p, k, planes[k], lines[k], q.plane[k], q.line[k], g, work, gb, gxyz != nullptr, dxyz);
        }
      }
    }
    if (gxyz) {
      gxyz[q.n * 3] = dxyz[0];
      gxyz[q.n * 3 + 1] = dxyz[1];
      gxyz[q.n * 3 + 2] = dxyz[2];
    }
  }
}

// True when dst ([R, H, W] or [R, L]) is stored as a dense channels-last [rows, R] buffer of
// the accumulation dtype A, i.e. exactly as the kernels accumulate.
template <typename A>
bool is_accumulation_layout(const at::Tensor& dst) {
  if (dst.scalar_type() != c10::CppTypeToScalarType<A>::value) return false;
  const int64_t R = dst.size(0);
  if (dst.dim() == 3) return dst.stride(0) == 1 && dst.stride(2) == R && dst.stride(1) == dst.size(2) * R;
  return dst.stride(0) == 1 && dst.stride(1) == R;
}

// dst ([R, H, W] or [R, L], any strides) = sum of the channels-last [rows, R] sources; when
// in_place, dst's storage is the first source (is_accumulation_layout) and the others are
// added to it.
template <typename T, typename A>
void sum_slots_into(const at::Tensor& dst, const std::vector<const A*>& srcs, bool in_place) {
  const int64_t R = dst.size(0);
  const int64_t elems = dst.numel();
  const int64_t rows = elems / std::max<int64_t>(1, R);
  const int64_t n = static_cast<int64_t>(srcs.size());
  T* out = dst.mutable_data_ptr<T>();
  if (in_place) {  // same layout on both sides: element-wise, contiguous
    at::parallel_for(0, elems, 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        A v = ff_load<A>(out[i]);
        for (int64_t j = 1; j < n; ++j) v += srcs[j][i];
        out[i] = ff_store<T>(v);
      }
    });
    return;
  }
  // A row index of the source is h * W + w for planes and l for lines.
  const int64_t sR = dst.stride(0);
  const int64_t W = dst.dim() == 3 ? dst.size(2) : rows;
  const int64_t sH = dst.dim() == 3 ? dst.stride(1) : 0;
  const int64_t sW = dst.stride(dst.dim() - 1);
  // Rows walked in blocks so both sides of the transposition stay in cache.
  constexpr int64_t kBlock = 16;
  at::parallel_for(0, (rows + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t row0 = b * kBlock;
      const int64_t row1 = std::min(rows, row0 + kBlock);
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t row = row0; row < row1; ++row) {
          A v = srcs[0][row * R + r];
          for (int64_t j = 1; j < n; ++j) v += srcs[j][row * R + r];
          out[r * sR + (row / W) * sH + (row % W) * sW] = ff_store<T>(v);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Torch-facing checks and dispatch
// ---------------------------------------------------------------------------------------

constexpr int64_t kPointGrain = 256;


// The kernels' working copies: xyz in the accumulation dtype (strides honoured), lines as
// channels-last [L, R] accumulation-dtype buffers (small, so the copy is cheap).
struct Inputs {
  at::Tensor xyz;
  at::Tensor lines[3];
};

Inputs prepare_inputs(VmSampleParams& p, at::TensorList lines, const at::Tensor& xyz, at::ScalarType adt) {
  Inputs in;
  in.xyz = xyz.to(adt);
  p.xyz_strides[0] = in.xyz.stride(0);
  p.xyz_strides[1] = in.xyz.stride(1);
  for (int k = 0; k < 3; ++k) {
    in.lines[k] = lines[k].to(adt).t().contiguous();
    p.line_strides[k][0] = 1;
    p.line_strides[k][1] = p.R[k];
  }
  return in;
}

at::Tensor tensorf_vm_sample_fwd_cpu(at::TensorList planes, at::TensorList lines, const at::Tensor& xyz,
                                     at::IntArrayRef mat_mode, at::IntArrayRef vec_mode, int64_t reduce,
                                     bool align_corners, int64_t padding) {
  VmSampleParams p = vm_bind::make_params(planes, lines, xyz, mat_mode, vec_mode, reduce, align_corners, padding, at::kCPU);
  const at::ScalarType dt = planes[0].scalar_type();
  const Inputs in = prepare_inputs(p, lines, xyz, acc_dtype(dt));
  at::Tensor out = p.reduce == kReduceSum ? at::empty({p.N}, planes[0].options())
                                      : at::empty({p.N, p.total_R}, planes[0].options());
  if (p.N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "tensorf_vm_sample_fwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* plane_ptrs[3];
    const A* line_ptrs[3];
    for (int k = 0; k < 3; ++k) {
      plane_ptrs[k] = planes[k].const_data_ptr<scalar_t>();
      line_ptrs[k] = in.lines[k].const_data_ptr<A>();
    }
    const A* xp = in.xyz.const_data_ptr<A>();
    const PointStream<A> pts = vm_points<scalar_t, A>(p, xp);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, p.N, kPointGrain, [&](int64_t begin, int64_t end) {
      ff_with_avx2([&] { fwd_points<scalar_t, A>(p, plane_ptrs, line_ptrs, pts, op, begin, end); });
    });
  });
  return out;
}

std::vector<at::Tensor> tensorf_vm_sample_bwd_cpu(const at::Tensor& grad_out, at::TensorList planes,
                                                  at::TensorList lines, const at::Tensor& xyz,
                                                  at::IntArrayRef mat_mode, at::IntArrayRef vec_mode, int64_t reduce,
                                                  bool align_corners, int64_t padding, bool need_planes,
                                                  bool need_lines, bool need_xyz) {
  VmSampleParams p = vm_bind::make_params(planes, lines, xyz, mat_mode, vec_mode, reduce, align_corners, padding, at::kCPU);
  check_device(grad_out, "grad_out", planes[0], "planes[0]", at::kCPU, "tensorf_vm_sample");
  const std::vector<int64_t> expected =
      p.reduce == kReduceSum ? std::vector<int64_t>{p.N} : std::vector<int64_t>{p.N, p.total_R};
  TORCH_CHECK(grad_out.sizes().equals(expected), "tensorf_vm_sample: grad_out must have shape ",
              at::IntArrayRef(expected), ", got ", grad_out.sizes());
  const at::ScalarType dt = planes[0].scalar_type();
  const at::ScalarType adt = acc_dtype(dt);
  const Inputs in = prepare_inputs(p, lines, xyz, adt);
  const at::Tensor go = grad_out.to(dt);
  const int64_t g_sN = go.stride(0), g_sR = p.reduce == kReduceSum ? 0 : go.stride(1);

  // Results in the layout of their inputs (so no copy follows); unrequested ones are empty.
  std::vector<at::Tensor> grads(7);
  for (int k = 0; k < 3; ++k) {
    grads[k] = need_planes ? at::empty_like(planes[k]) : at::empty({0}, planes[k].options());
    grads[3 + k] = need_lines ? at::empty_like(lines[k]) : at::empty({0}, lines[k].options());
  }
  at::Tensor gxyz_a = need_xyz ? at::empty({p.N, 3}, in.xyz.options()) : at::Tensor();

  // Elements of each gradient buffer: planes k = 0..2, then lines k = 0..2.
  int64_t size[6];
  for (int k = 0; k < 3; ++k) {
    size[k] = need_planes ? p.H[k] * p.W[k] * p.R[k] : 0;
    size[3 + k] = need_lines ? p.L[k] * p.R[k] : 0;
  }
  int64_t elems = 0;
  for (int64_t e : size) elems += e;

  // Slots: per-thread accumulation buffers, each owned by one thread for a contiguous range
  // of points, summed at the end (no atomics). Fewer when the buffers would cost more than the
  // work they parallelise, or take too much memory.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t work = p.N * p.total_R * ((need_planes ? 4 : 0) + (need_lines ? 2 : 0));
  int64_t slots = std::min<int64_t>(threads, std::max<int64_t>(1, work / std::max<int64_t>(1, 2 * elems)));
  constexpr int64_t kMaxScratchBytes = int64_t(1) << 30;
  const int64_t slot_bytes = std::max<int64_t>(1, elems * int64_t(at::elementSize(adt)));
  slots = std::max<int64_t>(1, std::min({slots, kMaxScratchBytes / slot_bytes, p.N}));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "tensorf_vm_sample_bwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* plane_ptrs[3];
    const A* line_ptrs[3];
    for (int k = 0; k < 3; ++k) {
      plane_ptrs[k] = planes[k].const_data_ptr<scalar_t>();
      line_ptrs[k] = in.lines[k].const_data_ptr<A>();
    }
    const A* xp = in.xyz.const_data_ptr<A>();
    const PointStream<A> pts = vm_points<scalar_t, A>(p, xp);
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    A* gx = need_xyz ? gxyz_a.mutable_data_ptr<A>() : nullptr;
    if (elems == 0) {  // only xyz: every point is independent
      const GradBuffers<A> none{{nullptr, nullptr, nullptr}, {nullptr, nullptr, nullptr}};
      at::parallel_for(0, p.N, kPointGrain, [&](int64_t begin, int64_t end) {
        ff_with_avx2([&] {
          bwd_points<scalar_t, A>(p, gop, g_sN, g_sR, plane_ptrs, line_ptrs, pts, none, gx, begin, end);
        });
      });
      return;
    }
    // Where slot s accumulates gradient j (j = plane k, then line 3 + k): slot 0 straight into
    // a result stored as the kernels accumulate (channels-last planes of the accumulation
    // dtype: the common training case, which then needs no copy), everything else in scratch.
    std::vector<std::array<A*, 6>> where(static_cast<size_t>(slots));
    bool in_place[6];
    int64_t scratch_elems = 0;
    for (int j = 0; j < 6; ++j) {
      in_place[j] = size[j] > 0 && is_accumulation_layout<A>(grads[j]);
      scratch_elems += (slots - (in_place[j] ? 1 : 0)) * size[j];
    }
    at::Tensor scratch = at::empty({scratch_elems}, in.xyz.options());
    A* next = scratch.mutable_data_ptr<A>();
    for (int64_t s = 0; s < slots; ++s) {
      for (int j = 0; j < 6; ++j) {
        if (size[j] == 0) {
          where[s][j] = nullptr;
        } else if (s == 0 && in_place[j]) {
          where[s][j] = grads[j].mutable_data_ptr<A>();
        } else {
          where[s][j] = next;
          next += size[j];
        }
      }
    }
    at::parallel_for(0, slots, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        GradBuffers<A> gb;
        for (int j = 0; j < 6; ++j) {
          if (where[s][j]) std::memset(where[s][j], 0, sizeof(A) * static_cast<size_t>(size[j]));
          (j < 3 ? gb.plane[j] : gb.line[j - 3]) = where[s][j];
        }
        ff_with_avx2([&] {
          bwd_points<scalar_t, A>(p, gop, g_sN, g_sR, plane_ptrs, line_ptrs, pts, gb, gx, p.N * s / slots,
                                  p.N * (s + 1) / slots);
        });
      }
    });
    for (int j = 0; j < 6; ++j) {
      if (size[j] == 0 || (in_place[j] && slots == 1)) continue;
      std::vector<const A*> srcs;
      for (int64_t s = 0; s < slots; ++s) srcs.push_back(where[s][j]);
      sum_slots_into<scalar_t, A>(grads[j], srcs, in_place[j]);
    }
  });
  grads[6] = need_xyz ? gxyz_a.to(xyz.scalar_type()) : at::empty({0}, xyz.options());
  return grads;
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cpu, CPU, tensorf_vm_sample, fastfields::tensorf_vm_sample_fwd_cpu, fastfields::tensorf_vm_sample_bwd_cpu)
