// voxel_sample: OpenMP CPU kernels, torch-facing checks, and op registration
// (namespace fastfields_cpu). The per-element math is shared with the CUDA kernels via
// fastfields/voxel_sample.h.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "fastfields/cpu_gather.h"
#include "fastfields/voxel_sample.h"
#include "fastfields/voxel_sample_bind.h"
#include "fastfields/schemas.h"

namespace fastfields {
namespace {

// ---------------------------------------------------------------------------------------
// Per-point taps with software prefetch. Points are processed in order; the taps of point
// i + kLookahead are computed (and their volume rows prefetched) while point i is
// processed, so the random volume reads of several points are in flight at once. A point
// with a non-finite coordinate gets an empty corner mask: it reads zeros and scatters
// nothing.
// ---------------------------------------------------------------------------------------

constexpr int kLookahead = 4;
constexpr int kRing = 8;  // power of two > kLookahead: entries are read in place, not copied

// CL = channels-last volume (stride_C == 1): contiguous, vectorisable channel loops.
template <bool CL>
inline int64_t chan(int64_t c, int64_t sC) {
  return CL ? c : c * sC;
}

template <typename A>
struct PointTaps {
  VoxelTaps<A> t;
  AxisTap<A> ax[3];  // along W, H, D: backward only (the gradient to xyz)
  int64_t b, n;
  int64_t row0;  // backward only: the offset of corner 0's row in the gradient buffer (GradRows)
};

template <bool GRAD, typename A>
FF_ALWAYS_INLINE void prepare_point(const VoxelSampleParams& p, const PointStream<A>& s, int64_t i, PointTaps<A>& q) {
  A pt[3];
  if (!s.load(i, q.b, q.n, pt)) {
    q.t.mask = 0u;
  } else if (GRAD) {
    voxel_axis_taps<A>(q.ax[0], q.ax[1], q.ax[2], pt[0], pt[1], pt[2], p);
    voxel_taps_from_axes<A, false>(q.t, q.ax[0], q.ax[1], q.ax[2], p);
  } else {
    voxel_taps_into<A, false>(q.t, pt[0], pt[1], pt[2], p);
  }
}

// The points as the kernels walk them (fastfields/cpu_gather.h): each batch has its own
// volume. The backward takes them in spatial order when the volume is large, so its
// read-modify-writes of gradient rows stay in cache (2^18 random points on a 4 MB volume: 2-3x
// faster with the sort). The forward keeps their own order: its four corner reads a point are
// prefetched well enough that the sort and the then scattered output rows cost more than they
// save (forward 3.5 -> 6.7 ms at 2 threads).
template <typename T, typename A>
PointStream<A> voxel_points(const VoxelSampleParams& p, const A* xyz, bool spatial) {
  const PointSet<A> pts{xyz, p.B, p.N, p.xyz_strides[0], p.xyz_strides[1], p.xyz_strides[2]};
  const int64_t bytes = spatial ? p.D * p.H * p.W * p.C * int64_t(sizeof(T)) : 0;
  return PointStream<A>(pts, bytes, std::max({p.D, p.H, p.W}), 3);
}

// Prefetch the volume data a point's taps will read (channels-last: one contiguous row of
// C values per corner; otherwise one element per channel of the x0 corners, which usually
// share a cache line with x1).
template <bool CL, typename T, typename A>
inline void prefetch_volume(const VoxelSampleParams& p, const T* volume, const PointTaps<A>& q) {
  const T* base = volume + q.b * p.volume_strides[0];
  const int64_t sC = p.volume_strides[1];
  for (int k = 0; k < 8; ++k) {
    if (!(q.t.mask & (1u << k))) continue;
    if (CL) {
      prefetch_bytes(base + q.t.off[k], p.C * int64_t(sizeof(T)));
    } else if (!(k & 1) || !(q.t.mask & (1u << (k - 1)))) {
      for (int64_t ch = 0; ch < p.C; ++ch) __builtin_prefetch(base + q.t.off[k] + ch * sC);
    }
  }
}

// The channels-last gradient buffer [B, D, H, W, C]: the element offset of corner k's row is
// the point's corner-0 row (PointTaps::row0) plus row_off[k], one constant per corner.
template <typename A>
struct GradRows {
  A* buf;  // null: the volume's gradient is not wanted
  int64_t row_off[8];

  GradRows(A* buf_, const VoxelSampleParams& p) : buf(buf_) {
    for (int k = 0; k < 8; ++k) {
      row_off[k] = ((voxel_corner_dz(k) * p.H + voxel_corner_dy(k)) * p.W + voxel_corner_dx(k)) * p.C;
    }
  }
  int64_t row0(const PointTaps<A>& q, const VoxelSampleParams& p) const {
    return ((q.b * p.D + q.t.z0) * p.H + q.t.y0) * p.W * p.C + q.t.x0 * p.C;
  }
  // Prefetch (for writing) the rows a point updates.
  void prefetch(const PointTaps<A>& q, const VoxelSampleParams& p) const {
    for (int k = 0; k < 8; k += 2) {  // the (x0, x1) rows of one (y, z) are adjacent
      const unsigned m = (q.t.mask >> k) & 3u;
      if (!m) continue;
      const int first = (m & 1u) ? k : k + 1;
      const int64_t cnt = (m == 3u) ? 2 * p.C : p.C;
      prefetch_bytes(buf + q.row0 + row_off[first], cnt * int64_t(sizeof(A)));
    }
  }
};

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// out[c] = sum over in-bounds corners of w * volume[corner, c]
template <bool CL, typename T, typename A>
inline void interpolate_row(T* __restrict__ out, const T* __restrict__ base, const VoxelTaps<A>& t, int64_t C,
                            int64_t sC) {
  if (t.mask == 0xFFu) {
    const T* __restrict__ p0 = base + t.off[0];
    const T* __restrict__ p1 = base + t.off[1];
    const T* __restrict__ p2 = base + t.off[2];
    const T* __restrict__ p3 = base + t.off[3];
    const T* __restrict__ p4 = base + t.off[4];
    const T* __restrict__ p5 = base + t.off[5];
    const T* __restrict__ p6 = base + t.off[6];
    const T* __restrict__ p7 = base + t.off[7];
    const A w0 = t.w[0], w1 = t.w[1], w2 = t.w[2], w3 = t.w[3];
    const A w4 = t.w[4], w5 = t.w[5], w6 = t.w[6], w7 = t.w[7];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t o = chan<CL>(c, sC);
      // Corner order and left-to-right sum as ATen's grid sampler, for bit-closeness.
      const A v = w0 * ff_load<A>(p0[o]) + w1 * ff_load<A>(p1[o]) + w2 * ff_load<A>(p2[o]) +
                  w3 * ff_load<A>(p3[o]) + w4 * ff_load<A>(p4[o]) + w5 * ff_load<A>(p5[o]) +
                  w6 * ff_load<A>(p6[o]) + w7 * ff_load<A>(p7[o]);
      out[c] = ff_store<T>(v);
    }
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    A v = A(0);
    for (int k = 0; k < 8; ++k) {
      if (t.mask & (1u << k)) v += t.w[k] * ff_load<A>(base[t.off[k] + chan<CL>(c, sC)]);
    }
    out[c] = ff_store<T>(v);
  }
}

// The stream is in the points' own order (voxel_points), so the output rows are written in order.
template <bool CL, typename T, typename A>
void fwd_points(const VoxelSampleParams& p, const T* volume, const PointStream<A>& pts, T* out, int64_t begin,
                int64_t end) {
  const int64_t C = p.C, sB = p.volume_strides[0], sC = p.volume_strides[1];
  PointTaps<A> ring[kRing];
  auto prepare = [&](int64_t i, PointTaps<A>& q) {
    prepare_point<false, A>(p, pts, i, q);
    prefetch_volume<CL>(p, volume, q);
  };
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) {
    prepare(i, ring[i & (kRing - 1)]);
  }
  for (int64_t i = begin; i < end; ++i) {
    if (i + kLookahead < end) prepare(i + kLookahead, ring[(i + kLookahead) & (kRing - 1)]);
    const PointTaps<A>& q = ring[i & (kRing - 1)];
    interpolate_row<CL>(out + (q.b * p.N + q.n) * C, volume + q.b * sB, q.t, C, sC);
  }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// One point's backward in a single pass over the channels: each in-bounds corner is read
// once, g * w is added to its gradient row (rows may be null), and the per-corner dot
// products s[k] = sum_c g[c] * volume[corner k, c], from which the gradient to xyz follows,
// are accumulated (when need_xyz). ALL_INSIDE drops the corner mask tests for the common
// interior point.
// The weights, offsets, row pointers and sums are copied to locals first: a store to a
// gradient row may alias anything reached through a pointer, so with the taps and the sums
// behind pointers every (channel, corner) step reloaded and re-stored them (the gradient to
// xyz alone took 1.8x the forward's time; 1.5x with locals).
template <bool CL, bool ALL_INSIDE, bool ROWS, bool XYZ, typename T, typename A>
FF_ALWAYS_INLINE void corner_pass_impl(const VoxelTaps<A>& t, const T* __restrict__ go, int64_t gC,
                                       const T* __restrict__ base, int64_t sC, A* const* rows_in, int64_t C,
                                       A s_out[8]) {
  A w[8], s[8];
  int64_t off[8];
  A* rows[8];
  for (int k = 0; k < 8; ++k) {
    w[k] = t.w[k];
    off[k] = t.off[k];
    rows[k] = ROWS ? rows_in[k] : nullptr;
    s[k] = A(0);
  }
  const unsigned mask = t.mask;
  int64_t c = 0;
  if constexpr (CL && std::is_same<T, A>::value) {
    // Channels-last rows, four channels a step: one vector update of each corner's gradient
    // row and one vector of partial dot products per corner (DiffRF's C = 4 is one step;
    // channel by channel the loop was all scalar loads, stores and spilled pointers).
    using V = FFVec<A, 4>;
    if (gC == 1 && C >= 4) {
      typename V::type sv[8];
      for (int k = 0; k < 8; ++k) sv[k] = typename V::type{};
      for (; c + 4 <= C; c += 4) {
        const typename V::type g = V::load(go + c);
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) {
          if (!ALL_INSIDE && !(mask & (1u << k))) continue;
          if (ROWS) V::store(rows[k] + c, V::load(rows[k] + c) + w[k] * g);
          if (XYZ) sv[k] += g * V::load(base + off[k] + c);
        }
      }
      for (int k = 0; k < 8; ++k) s[k] = (sv[k][0] + sv[k][1]) + (sv[k][2] + sv[k][3]);
    }
  }
  for (; c < C; ++c) {
    const A g = ff_load<A>(go[c * gC]);
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      if (!ALL_INSIDE && !(mask & (1u << k))) continue;
      if (ROWS) rows[k][c] += w[k] * g;
      if (XYZ) s[k] += g * ff_load<A>(base[off[k] + chan<CL>(c, sC)]);
    }
  }
  for (int k = 0; k < 8; ++k) s_out[k] = s[k];
}

template <bool CL, bool ALL_INSIDE, typename T, typename A>
inline void corner_pass(const VoxelTaps<A>& t, const T* __restrict__ go, int64_t gC, const T* __restrict__ base,
                        int64_t sC, A* const* rows, bool need_xyz, int64_t C, A s[8]) {
  if (rows && need_xyz) {
    corner_pass_impl<CL, ALL_INSIDE, true, true>(t, go, gC, base, sC, rows, C, s);
  } else if (rows) {
    corner_pass_impl<CL, ALL_INSIDE, true, false>(t, go, gC, base, sC, rows, C, s);
  } else if (need_xyz) {
    corner_pass_impl<CL, ALL_INSIDE, false, true>(t, go, gC, base, sC, rows, C, s);
  }
}

// Processes stream positions [begin, end) (pts says which point each is). gv (may be null)
// is a zeroed channels-last accumulation buffer [B, D, H, W, C] owned by the calling thread; gxyz
// (may be null) is [B, N, 3].
template <bool CL, typename T, typename A>
void bwd_points(const VoxelSampleParams& p, const T* grad_out, const T* volume, const PointStream<A>& pts, A* gv,
                A* gxyz, int64_t begin, int64_t end) {
  const int64_t C = p.C;
  const int64_t sB = p.volume_strides[0], sC = p.volume_strides[1];
  const int64_t gB = p.grad_out_strides[0], gN = p.grad_out_strides[1], gC = p.grad_out_strides[2];
  const GradRows<A> grows(gv, p);
  PointTaps<A> ring[kRing];
  const bool scattered = pts.ordered();
  auto prepare = [&](int64_t i, PointTaps<A>& q) {
    prepare_point<true, A>(p, pts, i, q);
    if (gxyz) prefetch_volume<CL>(p, volume, q);
    if (gv && q.t.mask) {  // (a non-finite point has no corners, and no corner indices)
      q.row0 = grows.row0(q, p);
      grows.prefetch(q, p);
    }
    if (scattered) {
      if (gC == 1) prefetch_bytes(grad_out + q.b * gB + q.n * gN, C * int64_t(sizeof(T)));
      if (gxyz) __builtin_prefetch(gxyz + 3 * (q.b * p.N + q.n), 1);
    }
  };
  for (int64_t i = begin; i < std::min<int64_t>(begin + kLookahead, end); ++i) {
    prepare(i, ring[i & (kRing - 1)]);
  }
  for (int64_t i = begin; i < end; ++i) {
    if (i + kLookahead < end) prepare(i + kLookahead, ring[(i + kLookahead) & (kRing - 1)]);
    const PointTaps<A>& q = ring[i & (kRing - 1)];
    const VoxelTaps<A>& t = q.t;
    A d[3] = {A(0), A(0), A(0)};
    if (t.mask != 0u) {
      A* rows[8];
      if (gv) {
        for (int k = 0; k < 8; ++k) rows[k] = (t.mask & (1u << k)) ? gv + q.row0 + grows.row_off[k] : nullptr;
      }
      const T* go = grad_out + q.b * gB + q.n * gN;
      const T* base = volume + q.b * sB;
      A s[8] = {A(0), A(0), A(0), A(0), A(0), A(0), A(0), A(0)};
      if (t.mask == 0xFFu) {
        corner_pass<CL, true>(t, go, gC, base, sC, gv ? rows : nullptr, gxyz != nullptr, C, s);
      } else {
        corner_pass<CL, false>(t, go, gC, base, sC, gv ? rows : nullptr, gxyz != nullptr, C, s);
      }
      if (gxyz) voxel_xyz_grad<A>(q.ax[0], q.ax[1], q.ax[2], s, d);  // out-of-bounds corners have s = 0
    }
    if (gxyz) {
      A* dst = gxyz + 3 * (q.b * p.N + q.n);
      dst[0] = d[0];
      dst[1] = d[1];
      dst[2] = d[2];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Torch-facing checks and dispatch
// ---------------------------------------------------------------------------------------

constexpr int64_t kPointGrain = 256;


at::Tensor voxel_sample_fwd_cpu(const at::Tensor& volume, const at::Tensor& xyz, bool align_corners,
                                int64_t padding) {
  VoxelSampleParams p = voxel_bind::make_params(volume, xyz, align_corners, padding, at::kCPU);
  // Coordinates in the accumulation dtype (a no-op for the usual fp32 xyz); strides honoured.
  const at::Tensor xyz_a = xyz.to(acc_dtype(volume.scalar_type()));
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz_a.stride(i);
  at::Tensor out = at::empty({p.B, p.N, p.C}, volume.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t total = p.B * p.N;
  if (total == 0) return out;
  const bool cl = p.volume_strides[1] == 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, volume.scalar_type(), "voxel_sample_fwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* vol = volume.const_data_ptr<scalar_t>();
    const PointStream<A> pts = voxel_points<scalar_t, A>(p, xyz_a.const_data_ptr<A>(), false);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, total, kPointGrain, [&](int64_t begin, int64_t end) {
      if (cl) {
        ff_with_avx2([&] { fwd_points<true, scalar_t, A>(p, vol, pts, op, begin, end); });
      } else {
        ff_with_avx2([&] { fwd_points<false, scalar_t, A>(p, vol, pts, op, begin, end); });
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> voxel_sample_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& volume,
                                                        const at::Tensor& xyz, bool align_corners, int64_t padding,
                                                        bool need_volume, bool need_xyz) {
  check_device(grad_out, "grad_out", volume, "volume", at::kCPU, "voxel_sample");
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()),
              "voxel_sample: grad_out must be a floating-point tensor, got ", grad_out.scalar_type());
  VoxelSampleParams p = voxel_bind::make_params(volume, xyz, align_corners, padding, at::kCPU);
  TORCH_CHECK(grad_out.sizes().equals({p.B, p.N, p.C}), "voxel_sample: grad_out must have shape [", p.B, ", ", p.N,
              ", ", p.C, "], got ", grad_out.sizes());

  const at::ScalarType adt = acc_dtype(volume.scalar_type());
  const at::Tensor xyz_a = xyz.to(adt);
  for (int i = 0; i < 3; ++i) p.xyz_strides[i] = xyz_a.stride(i);
  const at::Tensor go = grad_out.to(volume.scalar_type());
  for (int i = 0; i < 3; ++i) p.grad_out_strides[i] = go.stride(i);

  const int64_t B = p.B, C = p.C, D = p.D, H = p.H, W = p.W;
  // grad_volume: channels-last [B, D, H, W, C] storage, returned as a [B, C, D, H, W] view.
  at::Tensor gv_cl;
  if (need_volume) gv_cl = at::empty({B, D, H, W, C}, volume.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gxyz_a;
  if (need_xyz) gxyz_a = at::empty({B, p.N, 3}, xyz_a.options().memory_format(at::MemoryFormat::Contiguous));

  const int64_t total = B * p.N;
  const bool cl = p.volume_strides[1] == 1;

  if (total == 0 || (!need_volume && !need_xyz)) {
    if (need_volume) gv_cl.zero_();
    if (need_xyz) gxyz_a.zero_();
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, volume.scalar_type(), "voxel_sample_bwd_cpu", [&] {
      using A = acc_t<scalar_t>;
      const scalar_t* vol = volume.const_data_ptr<scalar_t>();
      const scalar_t* gop = go.const_data_ptr<scalar_t>();
      const PointStream<A> pts = voxel_points<scalar_t, A>(p, xyz_a.const_data_ptr<A>(), true);
      A* gx = need_xyz ? gxyz_a.mutable_data_ptr<A>() : nullptr;
      auto run = [&](A* gvbuf, int64_t begin, int64_t end) {
        if (cl) {
          ff_with_avx2([&] { bwd_points<true, scalar_t, A>(p, gop, vol, pts, gvbuf, gx, begin, end); });
        } else {
          ff_with_avx2([&] { bwd_points<false, scalar_t, A>(p, gop, vol, pts, gvbuf, gx, begin, end); });
        }
      };
      if (!need_volume) {
        at::parallel_for(0, total, kPointGrain, [&](int64_t begin, int64_t end) { run(nullptr, begin, end); });
        return;
      }
      // Per-thread channels-last buffers summed at the end (fastfields/cpu_gather.h); without
      // huge-page advice, which measured slower for these slots (benchmarks/results/backward-cpu.md).
      const int64_t work = total * 8 * C;  // accumulations into grad_volume
      accumulate_in_slots<scalar_t, A>(gv_cl.mutable_data_ptr<scalar_t>(), B * D * H * W * C, total, work,
                                       volume.options(), false, run);
    });
  }

  at::Tensor grad_volume = need_volume ? gv_cl.permute({0, 4, 1, 2, 3}) : at::empty({0}, volume.options());
  at::Tensor grad_xyz = need_xyz ? gxyz_a.to(xyz.scalar_type()) : at::empty({0}, xyz.options());
  return std::make_tuple(grad_volume, grad_xyz);
}

}  // namespace
}  // namespace fastfields

FF_REGISTER_KERNELS(fastfields_cpu, CPU, voxel_sample, fastfields::voxel_sample_fwd_cpu, fastfields::voxel_sample_bwd_cpu)
