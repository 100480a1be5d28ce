"""Triton building blocks shared by the grid-sampling kernels (triplane, TensoRF-VM, voxel).

Coordinate handling exactly as ``F.grid_sample`` (unnormalisation, zeros/border padding
with torch's clip gradient), non-finite point masking, bilinear corner setup and loads.
"""

import triton
import triton.language as tl


@triton.jit
def _pick_axis(x, y, z, AXIS: tl.constexpr):
    # Axes are compile-time constants, so picking a coordinate costs nothing.
    if AXIS == 0:
        coord = x
    elif AXIS == 1:
        coord = y
    else:
        coord = z
    return coord


@triton.jit
def _source_index(coord, size, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """Pixel-space index of a [-1, 1] coordinate and d(index)/d(coord), as grid_sample."""
    if ALIGN_CORNERS:
        index = (coord + 1) / 2 * (size - 1)
        d_index = (size - 1) * 0.5
    else:
        index = ((coord + 1) * size - 1) / 2
        d_index = size * 0.5
    if BORDER:
        # torch's clip_coordinates_set_grad: the clip passes gradient only strictly inside.
        inside = (index > 0) & (index < size - 1)
        d_index = tl.where(inside, d_index, 0.0)
        index = tl.minimum(tl.maximum(index, 0.0), size - 1)
    else:
        # Anything beyond [-2, size + 1] has all four corners outside either way;
        # clamping keeps the float -> int conversion from overflowing on huge inputs.
        index = tl.minimum(tl.maximum(index, -2.0), size + 1)
    return index, d_index


@triton.jit
def _load_points(xyz_ptr, b, offs_n, n_mask, stride_xb, stride_xn, stride_xd, ACC_DTYPE: tl.constexpr):
    """xyz of a block of points in the compute dtype; non-finite points become (0, 0, 0) and not ok."""
    p = xyz_ptr + b * stride_xb + offs_n.to(tl.int64) * stride_xn
    x = tl.load(p, mask=n_mask, other=0.0).to(ACC_DTYPE)
    y = tl.load(p + stride_xd, mask=n_mask, other=0.0).to(ACC_DTYPE)
    z = tl.load(p + 2 * stride_xd, mask=n_mask, other=0.0).to(ACC_DTYPE)
    # |nan| < inf and |inf| < inf are both false: one test catches every non-finite value.
    ok = n_mask & (tl.abs(x) < float("inf")) & (tl.abs(y) < float("inf")) & (tl.abs(z) < float("inf"))
    x = tl.where(ok, x, 0.0)
    y = tl.where(ok, y, 0.0)
    z = tl.where(ok, z, 0.0)
    return x, y, z, ok


@triton.jit
def _bilinear_setup(u, v, W, H, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """Top-left corner, fractional weights, in-range masks and index gradients of one plane."""
    ix, d_ix = _source_index(u, W, ALIGN_CORNERS, BORDER)
    iy, d_iy = _source_index(v, H, ALIGN_CORNERS, BORDER)
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    wx1 = ix - x0f
    wy1 = iy - y0f
    x0 = x0f.to(tl.int64)
    y0 = y0f.to(tl.int64)
    x0_in = (x0 >= 0) & (x0 < W)
    x1_in = (x0 + 1 >= 0) & (x0 + 1 < W)
    y0_in = (y0 >= 0) & (y0 < H)
    y1_in = (y0 + 1 >= 0) & (y0 + 1 < H)
    return x0, y0, wx1, wy1, x0_in, x1_in, y0_in, y1_in, d_ix, d_iy


@triton.jit
def _load_corners(plane_ptr, x0, y0, x0_in, x1_in, y0_in, y1_in, point_ok, offs_c, c_mask,
                  stride_c, stride_h, stride_w, ACC_DTYPE: tl.constexpr):
    """The four corner tiles [BLOCK_N, BLOCK_C]; out-of-range corners read zeros."""
    top = plane_ptr + (y0 * stride_h + x0 * stride_w)[:, None] + offs_c.to(tl.int64)[None, :] * stride_c
    c_ok = c_mask[None, :]
    v00 = tl.load(top, mask=(point_ok & y0_in & x0_in)[:, None] & c_ok, other=0.0).to(ACC_DTYPE)
    v01 = tl.load(top + stride_w, mask=(point_ok & y0_in & x1_in)[:, None] & c_ok, other=0.0).to(ACC_DTYPE)
    v10 = tl.load(top + stride_h, mask=(point_ok & y1_in & x0_in)[:, None] & c_ok, other=0.0).to(ACC_DTYPE)
    v11 = tl.load(top + stride_h + stride_w, mask=(point_ok & y1_in & x1_in)[:, None] & c_ok,
                  other=0.0).to(ACC_DTYPE)
    return v00, v01, v10, v11


@triton.jit
def _add_to_axis(gx, gy, gz, d, AXIS: tl.constexpr):
    # A custom axes tuple may use one xyz component for several plane axes: accumulate.
    if AXIS == 0:
        gx += d
    elif AXIS == 1:
        gy += d
    else:
        gz += d
    return gx, gy, gz
