// tensorf_vm_sample: parameters and per-element math shared by the CPU and CUDA kernels.
//
// Three VM pairs k = 0, 1, 2: plane k [R_k, H_k, W_k] and line k [R_k, L_k] (any strides),
// xyz [N, 3] (any strides, accumulation dtype). Component (k, r) of point n is
//   plane_k[r](u, v) * line_k[r](w),  (u, v) = (xyz[n, mat_mode[2k]], xyz[n, mat_mode[2k+1]]),
//                                     w = xyz[n, vec_mode[k]],
// the plane read bilinearly (u along W, v along H) and the line linearly along L, exactly as
// F.grid_sample reads a [R, H, W] plane and a [R, L, 1] line texture at (0, w). The axis math
// (unnormalisation, padding, corners) is triplane_sample's.
//
// Outputs: [N, total_R] plane-major (concat) or [N] (sum over all components).
// Gradient buffers the kernels accumulate (accumulation dtype, zeroed by the caller):
//   plane k  [H_k, W_k, R_k]  (channels-last)     line k  [L_k, R_k]     xyz  [N, 3]
#pragma once

#include "fastfields/common.h"
#include "fastfields/triplane_sample.h"

namespace fastfields {

struct VmSampleParams {
  int64_t N;
  int64_t R[3], H[3], W[3], L[3];
  int64_t offset[3];            // first output column of pair k (concat): R_0 + ... + R_{k-1}
  int64_t total_R;              // R_0 + R_1 + R_2
  int64_t plane_strides[3][3];  // plane k [R, H, W], in elements
  int64_t line_strides[3][2];   // line k [R, L], in elements
  int64_t xyz_strides[2];       // xyz [N, 3], in elements
  int mat_mode[6];              // plane k reads (u, v) = (xyz[mat_mode[2k]], xyz[mat_mode[2k+1]])
  int vec_mode[3];              // line k reads xyz[vec_mode[k]]
  int reduce;                   // Reduce (enums.h): kReduceConcat or kReduceSum
  int padding;                  // Padding (enums.h)
  bool align_corners;
};

// Plane k's bilinear tap at (u, v); corner offsets use plane k's H and W strides. The _into
// forms fill a caller's struct (see bilinear_taps_into).
template <typename A>
FF_HD void vm_plane_taps_into(PlaneTaps<A>& t, A u, A v, const VmSampleParams& p, int k) {
  bilinear_taps_into<A>(t, u, v, p.H[k], p.W[k], p.plane_strides[k][1], p.plane_strides[k][2], p.align_corners,
                        p.padding);
}
template <typename A>
FF_HD PlaneTaps<A> vm_plane_taps(A u, A v, const VmSampleParams& p, int k) {
  PlaneTaps<A> t;
  vm_plane_taps_into<A>(t, u, v, p, k);
  return t;
}

// The two taps of a line along L, 0 = l0 and 1 = l0 + 1. Like PlaneTaps, an out-of-range tap
// has weight 0, derivative 0, its mask bit cleared, and must not be read. (The width-1
// dimension of grid_sample's [R, L, 1] texture is read at 0: one in-range column of weight 1.)
template <typename A>
struct LineTaps {
  int64_t l0;      // lower tap index along L (only meaningful for in-range taps)
  int64_t off[2];  // l * stride_L of each tap (0 when out of range)
  A w[2];          // linear weight
  A dw[2];         // d w / d coord, incl. the border clip gradient
  unsigned mask;   // bit j set: tap j is inside the line
};

template <typename A>
FF_HD void vm_line_taps_into(LineTaps<A>& lt, A coord, const VmSampleParams& p, int k) {
  const AxisTap<A> t = triplane_axis_tap<A>(coord, p.L[k], p.align_corners, p.padding);
  const int64_t sL = p.line_strides[k][1];
  lt.l0 = t.i0;
  lt.mask = (t.in0 ? 1u : 0u) | (t.in1 ? 2u : 0u);
  lt.off[0] = t.in0 ? t.i0 * sL : 0;
  lt.off[1] = t.in1 ? (t.i0 + 1) * sL : 0;
  lt.w[0] = t.in0 ? t.w0 : A(0);
  lt.w[1] = t.in1 ? t.w1 : A(0);
  lt.dw[0] = t.in0 ? -t.dcoord : A(0);
  lt.dw[1] = t.in1 ? t.dcoord : A(0);
}
template <typename A>
FF_HD LineTaps<A> vm_line_taps(A coord, const VmSampleParams& p, int k) {
  LineTaps<A> lt;
  vm_line_taps_into<A>(lt, coord, p, k);
  return lt;
}

// Read point n; returns false when any coordinate is not finite (the point then reads zeros
// and gets zero gradient).
template <typename A>
FF_HD bool vm_load_point(const A* xyz, const VmSampleParams& p, int64_t n, A pt[3]) {
  const A* q = xyz + n * p.xyz_strides[0];
  pt[0] = q[0];
  pt[1] = q[p.xyz_strides[1]];
  pt[2] = q[2 * p.xyz_strides[1]];
  return ff_isfinite(pt[0]) && ff_isfinite(pt[1]) && ff_isfinite(pt[2]);
}

// pt[axis] and d[axis] += v with constant indices only, so the three values stay in
// registers on the GPU (a runtime index would move the array to local memory).
template <typename A>
FF_HD A vm_pick(const A pt[3], int axis) {
  return axis == 0 ? pt[0] : (axis == 1 ? pt[1] : pt[2]);
}
template <typename A>
FF_HD void vm_add_to_axis(A d[3], int axis, A v) {
  d[0] += axis == 0 ? v : A(0);
  d[1] += axis == 1 ? v : A(0);
  d[2] += axis == 2 ? v : A(0);
}

// Component r of pair k from its corner values (out-of-range corners passed as 0):
// plane value f, line value l, and their derivatives along u, v and the line coordinate w.
template <typename A>
FF_HD A vm_bilinear(const PlaneTaps<A>& t, const A v[4]) {
  return t.w[0] * v[0] + t.w[1] * v[1] + t.w[2] * v[2] + t.w[3] * v[3];
}
template <typename A>
FF_HD A vm_bilinear_du(const PlaneTaps<A>& t, const A v[4]) {
  return t.dwu[0] * v[0] + t.dwu[1] * v[1] + t.dwu[2] * v[2] + t.dwu[3] * v[3];
}
template <typename A>
FF_HD A vm_bilinear_dv(const PlaneTaps<A>& t, const A v[4]) {
  return t.dwv[0] * v[0] + t.dwv[1] * v[1] + t.dwv[2] * v[2] + t.dwv[3] * v[3];
}
template <typename A>
FF_HD A vm_linear(const LineTaps<A>& t, A v0, A v1) {
  return t.w[0] * v0 + t.w[1] * v1;
}
template <typename A>
FF_HD A vm_linear_dw(const LineTaps<A>& t, A v0, A v1) {
  return t.dw[0] * v0 + t.dw[1] * v1;
}

}  // namespace fastfields
