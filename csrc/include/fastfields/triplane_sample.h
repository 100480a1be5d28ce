// triplane_sample: parameters and per-element math shared by the CPU and CUDA kernels.
//
// planes [B, 3, C, H, W] (any strides), xyz [B, N, 3] (any strides, accumulation dtype).
// Plane k is sampled bilinearly at (u, v) = (xyz[..., axes[2k]], xyz[..., axes[2k+1]]),
// u along W and v along H, exactly like F.grid_sample(mode="bilinear").
//
// Buffer layouts the kernels write (all contiguous):
//   forward output        [B, N, 3, C] (reduce none), [B, N, C] (sum/mean/prod),
//                         [B, N, 3C] (concat; same memory as [B, N, 3, C])
//   grad_planes (accum.)  [B, 3, H, W, C]  (channels-last; accumulation dtype)
//   grad_xyz (accum.)     [B, N, 3]        (accumulation dtype)
#pragma once

#include "fastfields/common.h"

namespace fastfields {

struct TriplaneSampleParams {
  int64_t B, N, C, H, W;
  int64_t planes_strides[5];    // planes  [B, 3, C, H, W], in elements
  int64_t xyz_strides[3];       // xyz     [B, N, 3], in elements
  int64_t grad_out_strides[4];  // grad_out viewed as [B, N, 3, C]; plane stride 0 for sum/mean/prod
  int axes[6];                  // plane k reads (u, v) = (xyz[axes[2k]], xyz[axes[2k+1]])
  int reduce;                   // Reduce (enums.h)
  int padding;                  // Padding (enums.h)
  bool align_corners;
};

// Channels of one point's forward output row.
FF_HD int64_t triplane_out_channels(const TriplaneSampleParams& p) {
  return (p.reduce == kReduceNone || p.reduce == kReduceConcat) ? 3 * p.C : p.C;
}

// One axis of a bilinear tap: corners i0 and i0 + 1 with weights w0, w1.
template <typename A>
struct AxisTap {
  int64_t i0;
  A w0, w1;
  A dcoord;  // d(index) / d(normalised coordinate), times the border clip gradient
  bool in0, in1;
};

// Unnormalise a coordinate in [-1, 1] to a pixel index along an axis of `size` pixels,
// apply the padding mode, and find the two corners. Matches ATen's grid sampler
// (grid_sampler_compute_source_index_set_grad + floor/ceil corners).
template <typename A>
FF_HD AxisTap<A> triplane_axis_tap(A coord, int64_t size, bool align_corners, int padding) {
  const A s = static_cast<A>(size);
  A scale, ix;
  if (align_corners) {
    scale = (s - A(1)) * A(0.5);
    ix = (coord + A(1)) * scale;
  } else {
    scale = s * A(0.5);
    ix = (coord + A(1)) * scale - A(0.5);
  }
  A clip_grad = A(1);
  if (padding == kPadBorder) {
    // torch's clip_coordinates_set_grad: the ends count as outside (gradient 0).
    const A hi = s - A(1);
    if (!(ix > A(0))) {  // also catches NaN
      ix = A(0);
      clip_grad = A(0);
    } else if (ix >= hi) {
      ix = hi;
      clip_grad = A(0);
    }
  }
  AxisTap<A> t;
  t.dcoord = scale * clip_grad;
  // Far outside the plane (or not finite): no corner can be in bounds. Checked before the
  // float -> int conversion so huge coordinates never overflow it.
  if (!(ix > A(-2) && ix < s + A(1))) {
    t.i0 = 0;
    t.w0 = A(0);
    t.w1 = A(0);
    t.in0 = false;
    t.in1 = false;
    return t;
  }
  const A f = ff_floor(ix);
  t.i0 = static_cast<int64_t>(f);
  t.w1 = ix - f;
  t.w0 = A(1) - t.w1;
  t.in0 = t.i0 >= 0 && t.i0 < size;
  t.in1 = t.i0 + 1 >= 0 && t.i0 + 1 < size;
  return t;
}

// The four corners of one plane's bilinear tap, in the order
// 0 = (y0, x0), 1 = (y0, x1), 2 = (y1, x0), 3 = (y1, x1).
// Out-of-bounds corners have weight 0, derivative weights 0, plane offset 0 and their
// bit cleared in `mask`; they must not be read (the plane may hold anything there).
template <typename A>
struct PlaneTaps {
  int64_t x0, y0;   // lower corner pixel indices (only meaningful for in-bounds corners)
  int64_t off[4];   // y * stride_H + x * stride_W of each corner (0 when out of bounds)
  A w[4];           // bilinear weight
  A dwu[4];         // d w / d u  (u = normalised coordinate along W), incl. clip gradient
  A dwv[4];         // d w / d v  (v = normalised coordinate along H), incl. clip gradient
  unsigned mask;    // bit k set: corner k is inside the plane
};

FF_HD int triplane_corner_dx(int k) { return k & 1; }
FF_HD int triplane_corner_dy(int k) { return k >> 1; }

// The bilinear tap of a plane of H x W pixels with strides sH, sW at (u, v), as grid_sample,
// filled into t. (The CPU kernels fill their prefetch ring's entries in place: taps returned
// by value are built with scalar stores and copied with wide loads, which cannot be
// forwarded from those stores and stall.)
template <typename A>
FF_HD void bilinear_taps_into(PlaneTaps<A>& t, A u, A v, int64_t H, int64_t W, int64_t sH, int64_t sW,
                              bool align_corners, int padding) {
  const AxisTap<A> tx = triplane_axis_tap<A>(u, W, align_corners, padding);
  const AxisTap<A> ty = triplane_axis_tap<A>(v, H, align_corners, padding);
  t.x0 = tx.i0;
  t.y0 = ty.i0;
  t.mask = 0u;
  const A wx[2] = {tx.w0, tx.w1};
  const A wy[2] = {ty.w0, ty.w1};
  const bool inx[2] = {tx.in0, tx.in1};
  const bool iny[2] = {ty.in0, ty.in1};
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int k = 0; k < 4; ++k) {
    const int dx = triplane_corner_dx(k);
    const int dy = triplane_corner_dy(k);
    const bool in = inx[dx] && iny[dy];
    if (in) {
      t.mask |= (1u << k);
      t.off[k] = (ty.i0 + dy) * sH + (tx.i0 + dx) * sW;
      t.w[k] = wy[dy] * wx[dx];
      t.dwu[k] = (dx ? wy[dy] : -wy[dy]) * tx.dcoord;
      t.dwv[k] = (dy ? wx[dx] : -wx[dx]) * ty.dcoord;
    } else {
      t.off[k] = 0;
      t.w[k] = A(0);
      t.dwu[k] = A(0);
      t.dwv[k] = A(0);
    }
  }
}

template <typename A>
FF_HD void triplane_plane_taps_into(PlaneTaps<A>& t, A u, A v, const TriplaneSampleParams& p) {
  bilinear_taps_into<A>(t, u, v, p.H, p.W, p.planes_strides[3], p.planes_strides[4], p.align_corners, p.padding);
}

template <typename A>
FF_HD PlaneTaps<A> triplane_plane_taps(A u, A v, const TriplaneSampleParams& p) {
  PlaneTaps<A> t;
  triplane_plane_taps_into<A>(t, u, v, p);
  return t;
}

// Read point (b, n); returns false when any coordinate is not finite (the point then reads
// zeros and gets zero gradient).
template <typename A>
FF_HD bool triplane_load_point(const A* xyz, const TriplaneSampleParams& p, int64_t b, int64_t n,
                               A pt[3]) {
  const A* q = xyz + b * p.xyz_strides[0] + n * p.xyz_strides[1];
  pt[0] = q[0];
  pt[1] = q[p.xyz_strides[2]];
  pt[2] = q[2 * p.xyz_strides[2]];
  return ff_isfinite(pt[0]) && ff_isfinite(pt[1]) && ff_isfinite(pt[2]);
}

// Combine the three planes' features of one channel (sum / mean / prod).
template <typename A>
FF_HD A triplane_reduce3(int reduce, A f0, A f1, A f2) {
  if (reduce == kReduceProd) return f0 * f1 * f2;
  const A s = f0 + f1 + f2;
  return reduce == kReduceMean ? s * A(1.0 / 3.0) : s;
}

// Gradient reaching plane k's feature from the upstream gradient g of the reduced output
// (sum / mean / prod). prod multiplies by the other two features (never divides).
template <typename A>
FF_HD A triplane_reduce3_grad(int reduce, int k, A g, A f0, A f1, A f2) {
  if (reduce == kReduceProd) {
    return k == 0 ? g * (f1 * f2) : (k == 1 ? g * (f0 * f2) : g * (f0 * f1));
  }
  return reduce == kReduceMean ? g * A(1.0 / 3.0) : g;
}

}  // namespace fastfields
