"""Triton kernels for the trilinear voxel lookup (``fastfields.voxel_sample``).

One program owns a ``[BLOCK_N points, BLOCK_C channels]`` tile of one batch element and
walks the eight corners itself, accumulating in registers one corner at a time. Channels
are the vectorised axis of every tile: with a channels-last volume (``stride_c == 1``)
each trilinear corner is one contiguous read of BLOCK_C values. The backward scatters
into a float32 (float64 for float64 volumes) channels-last gradient buffer with atomics.

The semantics are those of ``fastfields/reference/voxel_sample.py`` (``F.grid_sample``
on a 5-D volume, ``mode="bilinear"``, zeros or border padding). The one-axis
unnormalisation and the point loader are the triplane kernels' own.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .._enums import Padding
from ._grid import _load_points, _source_index

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Register budget: every thread holds its elements of the eight corner tiles (64-bit
# addresses and values) at once. Checked with ptxas for sm_90: up to 8 tile elements per
# thread in the forward and 4 in the backward (which also keeps the gradient tile) stay
# free of spills. Channel tiles stop at these widths; wider volumes take several channel
# blocks per point tile.
_FWD_MAX_BLOCK_C = 64
_BWD_MAX_BLOCK_C = 32
_BWD_TILE = 512  # elements of a backward tile, 4 per thread with the default 4 warps


# --------------------------------------------------------------------------- helpers


@triton.jit
def _axis_corners(coord, size, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """Lower corner, upper-corner weight, in-range masks of both corners, d(index)/d(coord)."""
    index, d_index = _source_index(coord, size, ALIGN_CORNERS, BORDER)
    lower = tl.floor(index)
    w1 = index - lower
    i0 = lower.to(tl.int64)
    in0 = (i0 >= 0) & (i0 < size)
    in1 = (i0 + 1 >= 0) & (i0 + 1 < size)
    return i0, w1, in0, in1, d_index


@triton.jit
def _pick(lower, upper, UPPER: tl.constexpr):
    # Corner offsets are compile-time constants, so picking a side costs nothing.
    if UPPER:
        value = upper
    else:
        value = lower
    return value


@triton.jit
def _corner(k: tl.constexpr, x0, y0, z0, wx1, wy1, wz1, x_in0, x_in1, y_in0, y_in1, z_in0, z_in1,
            stride_d, stride_h, stride_w):
    """Offset, weights per axis and in-range mask of corner k (dx = k & 1, dy = k >> 1 & 1, dz = k >> 2)."""
    DX: tl.constexpr = k & 1
    DY: tl.constexpr = (k >> 1) & 1
    DZ: tl.constexpr = k >> 2
    wx = _pick(1 - wx1, wx1, DX)
    wy = _pick(1 - wy1, wy1, DY)
    wz = _pick(1 - wz1, wz1, DZ)
    inside = _pick(x_in0, x_in1, DX) & _pick(y_in0, y_in1, DY) & _pick(z_in0, z_in1, DZ)
    offset = (z0 + DZ) * stride_d + (y0 + DY) * stride_h + (x0 + DX) * stride_w
    return offset, wx, wy, wz, inside


# --------------------------------------------------------------------------- forward


def _fwd_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w) for bn in (16, 32, 64, 128, 256) for w in (4, 8)]


def _per_thread(config, block_c):
    return config.kwargs["BLOCK_N"] * block_c / (32 * config.num_warps)


def _prune_fwd_configs(configs, named_args, **kwargs):
    block_c = kwargs["BLOCK_C"]
    kept = [c for c in configs if 2 <= _per_thread(c, block_c) <= 8]
    return kept or [min(configs, key=lambda c: abs(_per_thread(c, block_c) - 4))]


@triton.autotune(configs=_fwd_configs(), key=["C", "BLOCK_C"],
                 prune_configs_by={"early_config_prune": _prune_fwd_configs})
@triton.jit
def _voxel_fwd_kernel(
    volume_ptr, xyz_ptr, out_ptr,
    N, C, D, H, W,
    stride_vb, stride_vc, stride_vd, stride_vh, stride_vw,
    stride_xb, stride_xn, stride_xd,
    stride_ob, stride_on, stride_oc,
    ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Batch is folded into axis 0 (axis 2 of a CUDA grid tops out at 65535).
    n_blocks = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    b = (pid // n_blocks).to(tl.int64)
    offs_n = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C

    x, y, z, ok = _load_points(xyz_ptr, b, offs_n, n_mask, stride_xb, stride_xn, stride_xd, ACC_DTYPE)
    x0, wx1, x_in0, x_in1, _ = _axis_corners(x, W, ALIGN_CORNERS, BORDER)
    y0, wy1, y_in0, y_in1, _ = _axis_corners(y, H, ALIGN_CORNERS, BORDER)
    z0, wz1, z_in0, z_in1, _ = _axis_corners(z, D, ALIGN_CORNERS, BORDER)

    channels = volume_ptr + b * stride_vb + (offs_c.to(tl.int64) * stride_vc)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=ACC_DTYPE)
    # ATen's corner order and weight products, for bit-closeness to the reference.
    for k in tl.static_range(8):
        offset, wx, wy, wz, inside = _corner(k, x0, y0, z0, wx1, wy1, wz1, x_in0, x_in1, y_in0, y_in1,
                                             z_in0, z_in1, stride_vd, stride_vh, stride_vw)
        value = tl.load(channels + offset[:, None], mask=(ok & inside)[:, None] & c_mask[None, :], other=0.0)
        acc += (wx * wy * wz)[:, None] * value.to(ACC_DTYPE)

    out = out_ptr + b * stride_ob + (offs_n.to(tl.int64) * stride_on)[:, None] + offs_c[None, :] * stride_oc
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & c_mask[None, :])


# --------------------------------------------------------------------------- backward


def _bwd_block_c(args):
    return min(triton.next_power_of_2(args["C"]), _BWD_MAX_BLOCK_C)


def _bwd_block_n(args):
    return max(16, min(64 if _INTERPRET else 256, _BWD_TILE // _bwd_block_c(args)))


# Heuristics, not autotune: benchmarking would re-run the atomics into the same buffers.
# num_warps stays at the default 4.
@triton.heuristics({"BLOCK_C": _bwd_block_c, "BLOCK_N": _bwd_block_n})
@triton.jit
def _voxel_bwd_kernel(
    grad_out_ptr, volume_ptr, xyz_ptr, grad_volume_ptr, grad_xyz_ptr,
    N, C, D, H, W,
    stride_ob, stride_on, stride_oc,
    stride_vb, stride_vc, stride_vd, stride_vh, stride_vw,
    stride_xb, stride_xn, stride_xd,
    stride_gvb, stride_gvc, stride_gvd, stride_gvh, stride_gvw,
    stride_gxb, stride_gxn, stride_gxd,
    ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr,
    NEED_VOLUME: tl.constexpr, NEED_XYZ: tl.constexpr, ONE_CHANNEL_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n_blocks = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    b = (pid // n_blocks).to(tl.int64)
    offs_n = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C
    offs_c64 = offs_c.to(tl.int64)

    x, y, z, ok = _load_points(xyz_ptr, b, offs_n, n_mask, stride_xb, stride_xn, stride_xd, ACC_DTYPE)
    x0, wx1, x_in0, x_in1, d_ix = _axis_corners(x, W, ALIGN_CORNERS, BORDER)
    y0, wy1, y_in0, y_in1, d_iy = _axis_corners(y, H, ALIGN_CORNERS, BORDER)
    z0, wz1, z_in0, z_in1, d_iz = _axis_corners(z, D, ALIGN_CORNERS, BORDER)

    g_ptr = grad_out_ptr + b * stride_ob + (offs_n.to(tl.int64) * stride_on)[:, None] + offs_c[None, :] * stride_oc
    g = tl.load(g_ptr, mask=n_mask[:, None] & c_mask[None, :], other=0.0).to(ACC_DTYPE)

    channels = volume_ptr + b * stride_vb + (offs_c64 * stride_vc)[None, :]
    grad_channels = grad_volume_ptr + b * stride_gvb + (offs_c64 * stride_gvc)[None, :]
    gx = tl.zeros_like(x)
    gy = tl.zeros_like(x)
    gz = tl.zeros_like(x)
    for k in tl.static_range(8):
        offset, wx, wy, wz, inside = _corner(k, x0, y0, z0, wx1, wy1, wz1, x_in0, x_in1, y_in0, y_in1,
                                             z_in0, z_in1, stride_vd, stride_vh, stride_vw)
        mask = (ok & inside)[:, None] & c_mask[None, :]
        if NEED_VOLUME:
            # Neighbouring points share corners, hence atomics into the channels-last buffer.
            grad_offset, _, _, _, _ = _corner(k, x0, y0, z0, wx1, wy1, wz1, x_in0, x_in1, y_in0, y_in1,
                                              z_in0, z_in1, stride_gvd, stride_gvh, stride_gvw)
            tl.atomic_add(grad_channels + grad_offset[:, None], g * (wx * wy * wz)[:, None], mask=mask,
                          sem="relaxed")
        if NEED_XYZ:
            value = tl.load(channels + offset[:, None], mask=mask, other=0.0).to(ACC_DTYPE)
            s = tl.sum(g * value, axis=1)  # this corner's share of d loss / d weight
            # d weight / d index: the other two axes' weights, negated for the lower corner.
            gx += _pick(-s, s, k & 1) * wy * wz
            gy += _pick(-s, s, (k >> 1) & 1) * wx * wz
            gz += _pick(-s, s, k >> 2) * wx * wy

    if NEED_XYZ:
        gp = grad_xyz_ptr + b * stride_gxb + offs_n.to(tl.int64) * stride_gxn
        if ONE_CHANNEL_BLOCK:
            tl.store(gp, gx * d_ix, mask=ok)
            tl.store(gp + stride_gxd, gy * d_iy, mask=ok)
            tl.store(gp + 2 * stride_gxd, gz * d_iz, mask=ok)
        else:
            # Other channel blocks add their share of the channel sum, hence atomics.
            tl.atomic_add(gp, gx * d_ix, mask=ok, sem="relaxed")
            tl.atomic_add(gp + stride_gxd, gy * d_iy, mask=ok, sem="relaxed")
            tl.atomic_add(gp + 2 * stride_gxd, gz * d_iz, mask=ok, sem="relaxed")


# --------------------------------------------------------------------------- launchers


def _acc_dtype(volume: torch.Tensor):
    return (torch.float64, tl.float64) if volume.dtype == torch.float64 else (torch.float32, tl.float32)


def voxel_sample_fwd(volume, xyz, align_corners: bool, padding: int) -> torch.Tensor:
    B, C, D, H, W = volume.shape
    N = xyz.shape[1]
    out = torch.empty((B, N, C), device=volume.device, dtype=volume.dtype)
    if out.numel() == 0:
        return out

    _, acc_tl = _acc_dtype(volume)
    block_c = min(triton.next_power_of_2(C), _FWD_MAX_BLOCK_C)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * B, triton.cdiv(C, meta["BLOCK_C"]))
    _voxel_fwd_kernel[grid](
        volume, xyz, out,
        N, C, D, H, W,
        *volume.stride(),
        *xyz.stride(),
        *out.stride(),
        ALIGN_CORNERS=bool(align_corners), BORDER=(padding == Padding.BORDER), ACC_DTYPE=acc_tl,
        BLOCK_C=block_c,
    )
    return out


def voxel_sample_bwd(grad_out, volume, xyz, align_corners: bool, padding: int,
                     need_volume: bool, need_xyz: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    B, C, D, H, W = volume.shape
    N = xyz.shape[1]
    acc_torch, acc_tl = _acc_dtype(volume)

    # Channels-last accumulator: each corner update is a contiguous run of channels.
    grad_volume_acc = (torch.zeros((B, D, H, W, C), device=volume.device, dtype=acc_torch)
                       .permute(0, 4, 1, 2, 3)) if need_volume else None
    grad_xyz_acc = torch.zeros((B, N, 3), device=xyz.device, dtype=acc_torch) if need_xyz else None

    if (need_volume or need_xyz) and B * N > 0:
        # A dummy (never written) pointer stands in for the gradient that is not needed.
        gv = grad_volume_acc if need_volume else volume
        gx = grad_xyz_acc if need_xyz else xyz
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * B, triton.cdiv(C, meta["BLOCK_C"]))
        _voxel_bwd_kernel[grid](
            grad_out, volume, xyz, gv, gx,
            N, C, D, H, W,
            *grad_out.stride(),
            *volume.stride(),
            *xyz.stride(),
            *gv.stride(),
            *gx.stride(),
            ALIGN_CORNERS=bool(align_corners), BORDER=(padding == Padding.BORDER), ACC_DTYPE=acc_tl,
            NEED_VOLUME=bool(need_volume), NEED_XYZ=bool(need_xyz), ONE_CHANNEL_BLOCK=C <= _BWD_MAX_BLOCK_C,
        )

    grad_volume = grad_volume_acc.to(volume.dtype) if need_volume else None
    grad_xyz = grad_xyz_acc.to(xyz.dtype) if need_xyz else None
    return grad_volume, grad_xyz
