"""Triton kernels for the fused triplane lookup (``fastfields.triplane_sample``).

One program owns a ``[BLOCK_N points, BLOCK_C channels]`` tile of one batch
element and walks the three planes itself, so the reduction over planes
(sum / mean / prod) happens in registers and the ``[B, N, 3, C]`` intermediate
that the three-``grid_sample`` reference materialises never exists. Channels
are the vectorised axis of every tile: with channels-last planes
(``stride_c == 1``) each bilinear corner is one contiguous read of BLOCK_C
values.

The semantics are those of ``fastfields/reference/triplane_sample.py``
(``F.grid_sample``, ``mode="bilinear"``, zeros or border padding).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .._enums import Padding, Reduce
from ._grid import _add_to_axis, _bilinear_setup, _load_corners, _load_points, _pick_axis

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Reduce codes (fastfields/_enums.py) as the kernels read them.
REDUCE_CONCAT = tl.constexpr(int(Reduce.CONCAT))
REDUCE_SUM = tl.constexpr(int(Reduce.SUM))
REDUCE_MEAN = tl.constexpr(int(Reduce.MEAN))
REDUCE_NONE = tl.constexpr(int(Reduce.NONE))


# --------------------------------------------------------------------------- helpers


@triton.jit
def _sample_plane(plane_ptr, u, v, point_ok, offs_c, c_mask, W, H, stride_c, stride_h, stride_w,
                  ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr):
    x0, y0, wx1, wy1, x0_in, x1_in, y0_in, y1_in, _, _ = _bilinear_setup(u, v, W, H, ALIGN_CORNERS, BORDER)
    v00, v01, v10, v11 = _load_corners(plane_ptr, x0, y0, x0_in, x1_in, y0_in, y1_in, point_ok, offs_c,
                                       c_mask, stride_c, stride_h, stride_w, ACC_DTYPE)
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    # Same corner-weight products as grid_sample, for bit-closeness to the reference.
    return ((wx0 * wy0)[:, None] * v00 + (wx1 * wy0)[:, None] * v01
            + (wx0 * wy1)[:, None] * v10 + (wx1 * wy1)[:, None] * v11)


# --------------------------------------------------------------------------- forward


def _fwd_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w) for bn in (16, 32, 64, 128, 256) for w in (4, 8)]


def _prune_fwd_configs(configs, named_args, **kwargs):
    # Four corner tiles live in registers at once: keep a tile near 2K..8K elements.
    block_c = kwargs["BLOCK_C"]
    kept = [c for c in configs if 2048 <= c.kwargs["BLOCK_N"] * block_c <= 8192]
    return kept or [min(configs, key=lambda c: abs(c.kwargs["BLOCK_N"] * block_c - 4096))]


@triton.autotune(configs=_fwd_configs(), key=["C", "BLOCK_C", "REDUCE"],
                 prune_configs_by={"early_config_prune": _prune_fwd_configs})
@triton.jit
def _triplane_fwd_kernel(
    planes_ptr, xyz_ptr, out_ptr,
    N, C, H, W,
    stride_pb, stride_pk, stride_pc, stride_ph, stride_pw,
    stride_xb, stride_xn, stride_xd,
    stride_ob, stride_on, stride_ok, stride_oc,
    AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr, AXIS_V1: tl.constexpr,
    AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr,
    REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr,
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
    # Chained adds, not 2 * stride: a plane stride near 2^31 must not overflow int32.
    plane0 = planes_ptr + b * stride_pb
    plane1 = plane0 + stride_pk
    plane2 = plane1 + stride_pk
    f0 = _sample_plane(plane0, _pick_axis(x, y, z, AXIS_U0), _pick_axis(x, y, z, AXIS_V0), ok, offs_c,
                       c_mask, W, H, stride_pc, stride_ph, stride_pw, ALIGN_CORNERS, BORDER, ACC_DTYPE)
    f1 = _sample_plane(plane1, _pick_axis(x, y, z, AXIS_U1), _pick_axis(x, y, z, AXIS_V1), ok,
                       offs_c, c_mask, W, H, stride_pc, stride_ph, stride_pw, ALIGN_CORNERS, BORDER, ACC_DTYPE)
    f2 = _sample_plane(plane2, _pick_axis(x, y, z, AXIS_U2), _pick_axis(x, y, z, AXIS_V2), ok,
                       offs_c, c_mask, W, H, stride_pc, stride_ph, stride_pw, ALIGN_CORNERS, BORDER, ACC_DTYPE)

    out = out_ptr + b * stride_ob + (offs_n.to(tl.int64) * stride_on)[:, None] + offs_c[None, :] * stride_oc
    mask = n_mask[:, None] & c_mask[None, :]
    dtype = out_ptr.dtype.element_ty
    if REDUCE == REDUCE_NONE or REDUCE == REDUCE_CONCAT:
        # concat is "none" with the plane stride equal to C, set up by the launcher.
        tl.store(out, f0.to(dtype), mask=mask)
        tl.store(out + stride_ok, f1.to(dtype), mask=mask)
        tl.store(out + 2 * stride_ok, f2.to(dtype), mask=mask)
    elif REDUCE == REDUCE_SUM:
        tl.store(out, (f0 + f1 + f2).to(dtype), mask=mask)
    elif REDUCE == REDUCE_MEAN:
        tl.store(out, ((f0 + f1 + f2) / 3).to(dtype), mask=mask)
    else:  # prod
        tl.store(out, (f0 * f1 * f2).to(dtype), mask=mask)


# --------------------------------------------------------------------------- backward


@triton.jit
def _plane_backward(plane_ptr, grad_plane_ptr, g, u, v, point_ok, offs_c, c_mask, W, H,
                    stride_c, stride_h, stride_w, stride_gc, stride_gh, stride_gw,
                    ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr,
                    NEED_PLANES: tl.constexpr, NEED_XYZ: tl.constexpr):
    """Scatter g into one plane's gradient; return d loss / d (u, v) for this channel block."""
    x0, y0, wx1, wy1, x0_in, x1_in, y0_in, y1_in, d_ix, d_iy = _bilinear_setup(
        u, v, W, H, ALIGN_CORNERS, BORDER)
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    if NEED_PLANES:
        # Neighbouring points share corners, hence atomics into the channels-last buffer.
        c_ok = c_mask[None, :]
        offs_c64 = offs_c.to(tl.int64)
        top = grad_plane_ptr + (y0 * stride_gh + x0 * stride_gw)[:, None] + offs_c64[None, :] * stride_gc
        tl.atomic_add(top, g * (wx0 * wy0)[:, None], mask=(point_ok & y0_in & x0_in)[:, None] & c_ok)
        tl.atomic_add(top + stride_gw, g * (wx1 * wy0)[:, None], mask=(point_ok & y0_in & x1_in)[:, None] & c_ok)
        tl.atomic_add(top + stride_gh, g * (wx0 * wy1)[:, None], mask=(point_ok & y1_in & x0_in)[:, None] & c_ok)
        tl.atomic_add(top + stride_gh + stride_gw, g * (wx1 * wy1)[:, None],
                      mask=(point_ok & y1_in & x1_in)[:, None] & c_ok)
    if NEED_XYZ:
        v00, v01, v10, v11 = _load_corners(plane_ptr, x0, y0, x0_in, x1_in, y0_in, y1_in, point_ok, offs_c,
                                           c_mask, stride_c, stride_h, stride_w, ACC_DTYPE)
        d_wx = wy0[:, None] * (v01 - v00) + wy1[:, None] * (v11 - v10)
        d_wy = wx0[:, None] * (v10 - v00) + wx1[:, None] * (v11 - v01)
        d_u = tl.sum(g * d_wx, axis=1) * d_ix
        d_v = tl.sum(g * d_wy, axis=1) * d_iy
    else:
        d_u = tl.zeros_like(wx1)
        d_v = tl.zeros_like(wy1)
    return d_u, d_v


def _bwd_block_c(args):
    return min(triton.next_power_of_2(args["C"]), 128)


def _bwd_block_n(args):
    # ~4K-element tiles on GPU; small tiles keep the interpreter quick.
    budget = 512 if _INTERPRET else 4096
    return max(16, min(64 if _INTERPRET else 256, budget // _bwd_block_c(args)))


# Heuristics, not autotune: benchmarking would re-run the atomics into the same buffers.
# num_warps stays at the default 4.
@triton.heuristics({"BLOCK_C": _bwd_block_c, "BLOCK_N": _bwd_block_n})
@triton.jit
def _triplane_bwd_kernel(
    grad_out_ptr, planes_ptr, xyz_ptr, grad_planes_ptr, grad_xyz_ptr,
    N, C, H, W,
    stride_ob, stride_on, stride_ok, stride_oc,
    stride_pb, stride_pk, stride_pc, stride_ph, stride_pw,
    stride_xb, stride_xn, stride_xd,
    stride_gpb, stride_gpk, stride_gpc, stride_gph, stride_gpw,
    stride_gxb, stride_gxn, stride_gxd,
    AXIS_U0: tl.constexpr, AXIS_V0: tl.constexpr, AXIS_U1: tl.constexpr, AXIS_V1: tl.constexpr,
    AXIS_U2: tl.constexpr, AXIS_V2: tl.constexpr,
    REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr,
    NEED_PLANES: tl.constexpr, NEED_XYZ: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n_blocks = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    b = (pid // n_blocks).to(tl.int64)
    offs_n = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n_mask = offs_n < N
    c_mask = offs_c < C
    mask = n_mask[:, None] & c_mask[None, :]

    x, y, z, ok = _load_points(xyz_ptr, b, offs_n, n_mask, stride_xb, stride_xn, stride_xd, ACC_DTYPE)
    u0 = _pick_axis(x, y, z, AXIS_U0)
    v0 = _pick_axis(x, y, z, AXIS_V0)
    u1 = _pick_axis(x, y, z, AXIS_U1)
    v1 = _pick_axis(x, y, z, AXIS_V1)
    u2 = _pick_axis(x, y, z, AXIS_U2)
    v2 = _pick_axis(x, y, z, AXIS_V2)
    # Chained adds, not 2 * stride: a plane stride near 2^31 must not overflow int32.
    plane0 = planes_ptr + b * stride_pb
    plane1 = plane0 + stride_pk
    plane2 = plane1 + stride_pk
    grad_plane0 = grad_planes_ptr + b * stride_gpb
    grad_plane1 = grad_plane0 + stride_gpk
    grad_plane2 = grad_plane1 + stride_gpk

    # Upstream gradient of each plane's feature tile.
    g_ptr = grad_out_ptr + b * stride_ob + (offs_n.to(tl.int64) * stride_on)[:, None] + offs_c[None, :] * stride_oc
    if REDUCE == REDUCE_NONE or REDUCE == REDUCE_CONCAT:
        g0 = tl.load(g_ptr, mask=mask, other=0.0).to(ACC_DTYPE)
        g1 = tl.load(g_ptr + stride_ok, mask=mask, other=0.0).to(ACC_DTYPE)
        g2 = tl.load(g_ptr + 2 * stride_ok, mask=mask, other=0.0).to(ACC_DTYPE)
    elif REDUCE == REDUCE_SUM:
        g0 = tl.load(g_ptr, mask=mask, other=0.0).to(ACC_DTYPE)
        g1 = g0
        g2 = g0
    elif REDUCE == REDUCE_MEAN:
        g0 = tl.load(g_ptr, mask=mask, other=0.0).to(ACC_DTYPE) / 3
        g1 = g0
        g2 = g0
    else:  # prod: recompute the features and multiply by the other two (no division, zeros are fine)
        g = tl.load(g_ptr, mask=mask, other=0.0).to(ACC_DTYPE)
        f0 = _sample_plane(plane0, u0, v0, ok, offs_c, c_mask, W, H, stride_pc, stride_ph, stride_pw,
                           ALIGN_CORNERS, BORDER, ACC_DTYPE)
        f1 = _sample_plane(plane1, u1, v1, ok, offs_c, c_mask, W, H, stride_pc, stride_ph,
                           stride_pw, ALIGN_CORNERS, BORDER, ACC_DTYPE)
        f2 = _sample_plane(plane2, u2, v2, ok, offs_c, c_mask, W, H, stride_pc, stride_ph,
                           stride_pw, ALIGN_CORNERS, BORDER, ACC_DTYPE)
        g0 = g * f1 * f2
        g1 = g * f0 * f2
        g2 = g * f0 * f1

    du0, dv0 = _plane_backward(plane0, grad_plane0, g0, u0, v0, ok, offs_c, c_mask, W, H,
                               stride_pc, stride_ph, stride_pw, stride_gpc, stride_gph, stride_gpw,
                               ALIGN_CORNERS, BORDER, ACC_DTYPE, NEED_PLANES, NEED_XYZ)
    du1, dv1 = _plane_backward(plane1, grad_plane1, g1, u1, v1, ok, offs_c, c_mask,
                               W, H, stride_pc, stride_ph, stride_pw, stride_gpc, stride_gph, stride_gpw,
                               ALIGN_CORNERS, BORDER, ACC_DTYPE, NEED_PLANES, NEED_XYZ)
    du2, dv2 = _plane_backward(plane2, grad_plane2, g2, u2, v2, ok, offs_c,
                               c_mask, W, H, stride_pc, stride_ph, stride_pw, stride_gpc, stride_gph, stride_gpw,
                               ALIGN_CORNERS, BORDER, ACC_DTYPE, NEED_PLANES, NEED_XYZ)

    if NEED_XYZ:
        gx = tl.zeros_like(x)
        gy = tl.zeros_like(x)
        gz = tl.zeros_like(x)
        gx, gy, gz = _add_to_axis(gx, gy, gz, du0, AXIS_U0)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dv0, AXIS_V0)
        gx, gy, gz = _add_to_axis(gx, gy, gz, du1, AXIS_U1)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dv1, AXIS_V1)
        gx, gy, gz = _add_to_axis(gx, gy, gz, du2, AXIS_U2)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dv2, AXIS_V2)
        # Other channel blocks add their share of the channel sum, hence atomics.
        gp = grad_xyz_ptr + b * stride_gxb + offs_n.to(tl.int64) * stride_gxn
        tl.atomic_add(gp, gx, mask=ok)
        tl.atomic_add(gp + stride_gxd, gy, mask=ok)
        tl.atomic_add(gp + 2 * stride_gxd, gz, mask=ok)


# --------------------------------------------------------------------------- launchers


def _acc_dtype(planes: torch.Tensor):
    return (torch.float64, tl.float64) if planes.dtype == torch.float64 else (torch.float32, tl.float32)


def _axes_kwargs(axes: Sequence[int]) -> dict:
    axes = [int(a) for a in axes]
    names = ("AXIS_U0", "AXIS_V0", "AXIS_U1", "AXIS_V1", "AXIS_U2", "AXIS_V2")
    return dict(zip(names, axes))


def _feature_strides(out: torch.Tensor, reduce: int, C: int) -> Tuple[int, int, int, int]:
    """(stride_b, stride_n, stride_plane, stride_c) of an output / grad_out of any layout."""
    if reduce == Reduce.NONE:
        return out.stride(0), out.stride(1), out.stride(2), out.stride(3)
    if reduce == Reduce.CONCAT:
        # [B, N, 3C] plane-major: plane k channel c sits at (k * C + c).
        return out.stride(0), out.stride(1), C * out.stride(2), out.stride(2)
    return out.stride(0), out.stride(1), 0, out.stride(2)


def triplane_sample_fwd(planes, xyz, axes, reduce: int, align_corners: bool, padding: int) -> torch.Tensor:
    B, _, C, H, W = planes.shape
    N = xyz.shape[1]
    if reduce == Reduce.NONE:
        out = torch.empty((B, N, 3, C), device=planes.device, dtype=planes.dtype)
    elif reduce == Reduce.CONCAT:
        out = torch.empty((B, N, 3 * C), device=planes.device, dtype=planes.dtype)
    else:
        out = torch.empty((B, N, C), device=planes.device, dtype=planes.dtype)
    if out.numel() == 0:
        return out

    _, acc_tl = _acc_dtype(planes)
    block_c = min(triton.next_power_of_2(C), 128)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * B, triton.cdiv(C, meta["BLOCK_C"]))
    _triplane_fwd_kernel[grid](
        planes, xyz, out,
        N, C, H, W,
        *planes.stride(),
        *xyz.stride(),
        *_feature_strides(out, reduce, C),
        **_axes_kwargs(axes),
        REDUCE=int(reduce), ALIGN_CORNERS=bool(align_corners), BORDER=(padding == Padding.BORDER), ACC_DTYPE=acc_tl,
        BLOCK_C=block_c,
    )
    return out


def triplane_sample_bwd(grad_out, planes, xyz, axes, reduce: int, align_corners: bool, padding: int,
                        need_planes: bool, need_xyz: bool) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    B, n_planes, C, H, W = planes.shape
    N = xyz.shape[1]
    acc_torch, acc_tl = _acc_dtype(planes)

    # Channels-last accumulators: each corner update is a contiguous run of channels.
    grad_planes_acc = (torch.zeros((B, n_planes, H, W, C), device=planes.device, dtype=acc_torch)
                       .permute(0, 1, 4, 2, 3)) if need_planes else None
    grad_xyz_acc = torch.zeros((B, N, 3), device=xyz.device, dtype=acc_torch) if need_xyz else None

    if (need_planes or need_xyz) and B * N * C > 0:
        # A dummy (never written) pointer stands in for the gradient that is not needed.
        gp = grad_planes_acc if need_planes else planes
        gx = grad_xyz_acc if need_xyz else xyz
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * B, triton.cdiv(C, meta["BLOCK_C"]))
        _triplane_bwd_kernel[grid](
            grad_out, planes, xyz, gp, gx,
            N, C, H, W,
            *_feature_strides(grad_out, reduce, C),
            *planes.stride(),
            *xyz.stride(),
            *gp.stride(),
            *gx.stride(),
            **_axes_kwargs(axes),
            REDUCE=int(reduce), ALIGN_CORNERS=bool(align_corners), BORDER=(padding == Padding.BORDER), ACC_DTYPE=acc_tl,
            NEED_PLANES=bool(need_planes), NEED_XYZ=bool(need_xyz),
        )

    grad_planes = grad_planes_acc.to(planes.dtype) if need_planes else None
    grad_xyz = grad_xyz_acc.to(xyz.dtype) if need_xyz else None
    return grad_planes, grad_xyz
