// voxel_sample: parameters and per-element math shared by the CPU and CUDA kernels.
//
// volume [B, C, D, H, W] (any strides), xyz [B, N, 3] (any strides, accumulation dtype).
// Point (x, y, z) is sampled trilinearly with x along W, y along H and z along D, exactly
// like F.grid_sample(volume, xyz.view(B, N, 1, 1, 3), mode="bilinear").
//
// Buffer layouts the kernels write (all contiguous):
//   forward output        [B, N, C]
//   grad_volume (accum.)  [B, D, H, W, C]  (channels-last; accumulation dtype)
//   grad_xyz (accum.)     [B, N, 3]        (accumulation dtype)
#pragma once

#include "fastfields/common.h"
// The one-axis tap (unnormalise, pad, find the two corners) and the padding codes are
// those of the bilinear triplane lookup; a trilinear tap is three of them.
#include "fastfields/triplane_sample.h"

namespace fastfields {

struct VoxelSampleParams {
  int64_t B, N, C, D, H, W;
  int64_t volume_strides[5];    // volume   [B, C, D, H, W], in elements
  int64_t xyz_strides[3];       // xyz      [B, N, 3], in elements
  int64_t grad_out_strides[3];  // grad_out [B, N, C], in elements
  int padding;                  // Padding (enums.h): kPadZeros or kPadBorder
  bool align_corners;
};

// The eight corners of a trilinear tap. Corner k sits at (x0 + dx, y0 + dy, z0 + dz) with
// dx = k & 1, dy = (k >> 1) & 1, dz = k >> 2: ATen's order tnw, tne, tsw, tse, bnw, bne,
// bsw, bse. Out-of-bounds corners have weight 0, derivative weights 0, volume offset 0 and
// their bit cleared in `mask`; they must not be read (the volume may hold anything there).
template <typename A>
struct VoxelTaps {
  int64_t x0, y0, z0;  // lower corner voxel indices (only meaningful for in-bounds corners)
  int64_t off[8];      // z * stride_D + y * stride_H + x * stride_W of each corner (0 when out)
  A w[8];              // trilinear weight
  A dwx[8];            // d w / d x (normalised coordinate along W), incl. clip gradient
  A dwy[8];            // d w / d y (along H), incl. clip gradient
  A dwz[8];            // d w / d z (along D), incl. clip gradient
  unsigned mask;       // bit k set: corner k is inside the volume
};

FF_HD int voxel_corner_dx(int k) { return k & 1; }
FF_HD int voxel_corner_dy(int k) { return (k >> 1) & 1; }
FF_HD int voxel_corner_dz(int k) { return k >> 2; }

// Corner k's trilinear weight and (GRAD) its derivatives along x, y, z, from the per-axis
// weights w*[0 / 1] and coordinate scales d*.
template <typename A, bool GRAD>
FF_HD void voxel_corner_weights(VoxelTaps<A>& t, int k, const A wx[2], const A wy[2], const A wz[2], A dx_coord,
                                A dy_coord, A dz_coord) {
  const int dx = voxel_corner_dx(k);
  const int dy = voxel_corner_dy(k);
  const int dz = voxel_corner_dz(k);
  // x * y * z, the product order of ATen's grid sampler.
  t.w[k] = wx[dx] * wy[dy] * wz[dz];
  if (GRAD) {
    t.dwx[k] = (dx ? wy[dy] : -wy[dy]) * wz[dz] * dx_coord;
    t.dwy[k] = (dy ? wx[dx] : -wx[dx]) * wz[dz] * dy_coord;
    t.dwz[k] = (dz ? wx[dx] : -wx[dx]) * wy[dy] * dz_coord;
  }
}

// Fills t with the taps of the point whose taps along W, H and D are tx, ty and tz. GRAD =
// false leaves dwx / dwy / dwz unset (the forward never reads them; nor does the CPU backward,
// which takes the gradient to xyz from the axis taps, see voxel_xyz_grad). The CPU kernels fill
// their prefetch ring's entry in place: a VoxelTaps returned by value is built with scalar
// stores and then copied with wide loads, which cannot be forwarded from those stores (a stall
// of ~15 cycles each; a third of the forward's time).
template <typename A, bool GRAD = true>
FF_HD void voxel_taps_from_axes(VoxelTaps<A>& t, const AxisTap<A>& tx, const AxisTap<A>& ty, const AxisTap<A>& tz,
                                const VoxelSampleParams& p) {
  const int64_t sD = p.volume_strides[2];
  const int64_t sH = p.volume_strides[3];
  const int64_t sW = p.volume_strides[4];
  t.x0 = tx.i0;
  t.y0 = ty.i0;
  t.z0 = tz.i0;
  t.mask = 0u;
  const A wx[2] = {tx.w0, tx.w1};
  const A wy[2] = {ty.w0, ty.w1};
  const A wz[2] = {tz.w0, tz.w1};
  if (tx.in0 && tx.in1 && ty.in0 && ty.in1 && tz.in0 && tz.in1) {
    // The common interior point: the same values as below, without a test per corner.
    t.mask = 0xFFu;
    const int64_t base = tz.i0 * sD + ty.i0 * sH + tx.i0 * sW;
#ifdef __CUDA_ARCH__
#pragma unroll
#elif defined(__GNUC__) && !defined(__CUDACC__)
#pragma GCC unroll 8
#endif
    for (int k = 0; k < 8; ++k) {
      const int dx = voxel_corner_dx(k);
      const int dy = voxel_corner_dy(k);
      const int dz = voxel_corner_dz(k);
      t.off[k] = base + dz * sD + dy * sH + dx * sW;
      voxel_corner_weights<A, GRAD>(t, k, wx, wy, wz, tx.dcoord, ty.dcoord, tz.dcoord);
    }
    return;
  }
  const bool inx[2] = {tx.in0, tx.in1};
  const bool iny[2] = {ty.in0, ty.in1};
  const bool inz[2] = {tz.in0, tz.in1};
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int k = 0; k < 8; ++k) {
    const int dx = voxel_corner_dx(k);
    const int dy = voxel_corner_dy(k);
    const int dz = voxel_corner_dz(k);
    if (inx[dx] && iny[dy] && inz[dz]) {
      t.mask |= (1u << k);
      t.off[k] = (tz.i0 + dz) * sD + (ty.i0 + dy) * sH + (tx.i0 + dx) * sW;
      voxel_corner_weights<A, GRAD>(t, k, wx, wy, wz, tx.dcoord, ty.dcoord, tz.dcoord);
    } else {
      t.off[k] = 0;
      t.w[k] = A(0);
      t.dwx[k] = A(0);
      t.dwy[k] = A(0);
      t.dwz[k] = A(0);
    }
  }
}

// The taps along W, H and D of point (x, y, z).
template <typename A>
FF_HD void voxel_axis_taps(AxisTap<A>& tx, AxisTap<A>& ty, AxisTap<A>& tz, A x, A y, A z, const VoxelSampleParams& p) {
  tx = triplane_axis_tap<A>(x, p.W, p.align_corners, p.padding);
  ty = triplane_axis_tap<A>(y, p.H, p.align_corners, p.padding);
  tz = triplane_axis_tap<A>(z, p.D, p.align_corners, p.padding);
}

// Fills t with the taps of (x, y, z).
template <typename A, bool GRAD = true>
FF_HD void voxel_taps_into(VoxelTaps<A>& t, A x, A y, A z, const VoxelSampleParams& p) {
  AxisTap<A> tx, ty, tz;
  voxel_axis_taps<A>(tx, ty, tz, x, y, z, p);
  voxel_taps_from_axes<A, GRAD>(t, tx, ty, tz, p);
}

// The gradient to (x, y, z) from the per-corner sums s[k] = sum_c grad_out[c] * volume[corner
// k, c] (0 for an out-of-bounds corner), one axis at a time: d/dx = dcoord_x * sum over the
// (y, z) corner pairs of wy * wz * (s[x1] - s[x0]), and likewise along y and z. The same sum as
// sum_k dwx[k] * s[k] in another order, with 39 flops instead of 96 (the derivative weights
// need not be formed).
template <typename A>
FF_HD void voxel_xyz_grad(const AxisTap<A>& tx, const AxisTap<A>& ty, const AxisTap<A>& tz, const A s[8], A d[3]) {
  const A wx0 = tx.w0, wx1 = tx.w1, wy0 = ty.w0, wy1 = ty.w1, wz0 = tz.w0, wz1 = tz.w1;
  const A gx = wy0 * wz0 * (s[1] - s[0]) + wy1 * wz0 * (s[3] - s[2]) + wy0 * wz1 * (s[5] - s[4]) +
               wy1 * wz1 * (s[7] - s[6]);
  const A gy = wx0 * wz0 * (s[2] - s[0]) + wx1 * wz0 * (s[3] - s[1]) + wx0 * wz1 * (s[6] - s[4]) +
               wx1 * wz1 * (s[7] - s[5]);
  const A gz = wx0 * wy0 * (s[4] - s[0]) + wx1 * wy0 * (s[5] - s[1]) + wx0 * wy1 * (s[6] - s[2]) +
               wx1 * wy1 * (s[7] - s[3]);
  d[0] = gx * tx.dcoord;
  d[1] = gy * ty.dcoord;
  d[2] = gz * tz.dcoord;
}

template <typename A, bool GRAD = true>
FF_HD VoxelTaps<A> voxel_taps(A x, A y, A z, const VoxelSampleParams& p) {
  VoxelTaps<A> t;
  voxel_taps_into<A, GRAD>(t, x, y, z, p);
  return t;
}

// Linear voxel index (z * H + y) * W + x of in-bounds corner k, for the channels-last
// gradient buffer [B, D, H, W, C].
template <typename A>
FF_HD int64_t voxel_corner_cell(const VoxelTaps<A>& t, int k, const VoxelSampleParams& p) {
  return ((t.z0 + voxel_corner_dz(k)) * p.H + (t.y0 + voxel_corner_dy(k))) * p.W + (t.x0 + voxel_corner_dx(k));
}

// Read point (b, n); returns false when any coordinate is not finite (the point then reads
// zeros and gets zero gradient).
template <typename A>
FF_HD bool voxel_load_point(const A* xyz, const VoxelSampleParams& p, int64_t b, int64_t n, A pt[3]) {
  const A* q = xyz + b * p.xyz_strides[0] + n * p.xyz_strides[1];
  pt[0] = q[0];
  pt[1] = q[p.xyz_strides[2]];
  pt[2] = q[2 * p.xyz_strides[2]];
  return ff_isfinite(pt[0]) && ff_isfinite(pt[1]) && ff_isfinite(pt[2]);
}

}  // namespace fastfields
