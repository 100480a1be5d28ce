"""Triton kernels for the fused TensoRF VM lookup (``fastfields.tensorf_vm_sample``).

One program owns a tile of BLOCK_N points and walks the three plane/line pairs and all of
their components itself, BLOCK_R components at a time, so each point's taps are computed once
and the ``"sum"`` reduction (TensoRF's density) stays in registers; the reference's
``[R, N]`` plane and line intermediates never exist. Components are the vectorised axis of
every tile: with channels-last planes (``stride_r == 1``) each bilinear corner is one
contiguous read of BLOCK_R values. The backward keeps the same tiling: the point gradient is
finished in registers and written once, plane and line gradients are scattered with atomics
into channels-last float32 buffers.

The semantics are those of ``fastfields/reference/tensorf_vm_sample.py`` (``F.grid_sample``,
``mode="bilinear"``, zeros or border padding); the axis math is triplane_sample's.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl

from .._enums import Padding, Reduce
from ._grid import _add_to_axis, _bilinear_setup, _load_corners, _load_points, _pick_axis, _source_index

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Reduce codes (fastfields/_enums.py) as the kernels read them.
REDUCE_CONCAT = tl.constexpr(int(Reduce.CONCAT))
REDUCE_SUM = tl.constexpr(int(Reduce.SUM))


# --------------------------------------------------------------------------- helpers


@triton.jit
def _line_setup(w, L, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """Lower tap, its fractional weight, in-range masks and index gradient of a line read at w."""
    index, d_index = _source_index(w, L, ALIGN_CORNERS, BORDER)
    l0f = tl.floor(index)
    l0 = l0f.to(tl.int64)
    return l0, index - l0f, (l0 >= 0) & (l0 < L), (l0 + 1 >= 0) & (l0 + 1 < L), d_index


@triton.jit
def _load_line_taps(line_ptr, l0, l0_in, l1_in, point_ok, offs_r, r_mask, stride_r, stride_l,
                    ACC_DTYPE: tl.constexpr):
    """The two line taps [BLOCK_N, BLOCK_R]; out-of-range taps read zeros."""
    tap = line_ptr + (l0 * stride_l)[:, None] + offs_r.to(tl.int64)[None, :] * stride_r
    r_ok = r_mask[None, :]
    a0 = tl.load(tap, mask=(point_ok & l0_in)[:, None] & r_ok, other=0.0).to(ACC_DTYPE)
    a1 = tl.load(tap + stride_l, mask=(point_ok & l1_in)[:, None] & r_ok, other=0.0).to(ACC_DTYPE)
    return a0, a1


def _tile_configs():
    if _INTERPRET:
        return [triton.Config({"BLOCK_N": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w) for bn in (16, 32, 64, 128, 256) for w in (4, 8)]


def _prune_tile_configs(configs, named_args, **kwargs):
    # Four corner tiles and two line tiles live in registers at once: keep a tile near 2K..8K elements.
    block_r = kwargs["BLOCK_R"]
    kept = [c for c in configs if 2048 <= c.kwargs["BLOCK_N"] * block_r <= 8192]
    return kept or [min(configs, key=lambda c: abs(c.kwargs["BLOCK_N"] * block_r - 4096))]


# --------------------------------------------------------------------------- forward


@triton.jit
def _pair_forward(acc, out_ptr, plane_ptr, line_ptr, u, v, w, ok, offs_n, n_mask, col0,
                  R, H, W, L, s_pr, s_ph, s_pw, s_lr, s_ll, stride_on, stride_oc,
                  REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr,
                  ACC_DTYPE: tl.constexpr, BLOCK_R: tl.constexpr):
    """Components of one plane/line pair: stored at columns col0 + r (concat) or added to acc (sum)."""
    x0, y0, wx1, wy1, x0_in, x1_in, y0_in, y1_in, _, _ = _bilinear_setup(u, v, W, H, ALIGN_CORNERS, BORDER)
    l0, ww1, l0_in, l1_in, _ = _line_setup(w, L, ALIGN_CORNERS, BORDER)
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    ww0 = 1 - ww1
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_mask = offs_r < R
        v00, v01, v10, v11 = _load_corners(plane_ptr, x0, y0, x0_in, x1_in, y0_in, y1_in, ok, offs_r, r_mask,
                                           s_pr, s_ph, s_pw, ACC_DTYPE)
        a0, a1 = _load_line_taps(line_ptr, l0, l0_in, l1_in, ok, offs_r, r_mask, s_lr, s_ll, ACC_DTYPE)
        # Same corner-weight products as grid_sample, for bit-closeness to the reference.
        f = ((wx0 * wy0)[:, None] * v00 + (wx1 * wy0)[:, None] * v01
             + (wx0 * wy1)[:, None] * v10 + (wx1 * wy1)[:, None] * v11)
        product = f * (ww0[:, None] * a0 + ww1[:, None] * a1)
        if REDUCE == REDUCE_CONCAT:
            out = out_ptr + (offs_n.to(tl.int64) * stride_on)[:, None] + (col0 + offs_r)[None, :] * stride_oc
            tl.store(out, product.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & r_mask[None, :])
        else:
            acc += tl.sum(product, axis=1)
    return acc


@triton.autotune(configs=_tile_configs(), key=["BLOCK_R", "REDUCE"],
                 prune_configs_by={"early_config_prune": _prune_tile_configs})
@triton.jit
def _vm_fwd_kernel(
    xyz_ptr, out_ptr, N,
    plane0, line0, R0, H0, W0, L0, s0_pr, s0_ph, s0_pw, s0_lr, s0_ll,
    plane1, line1, R1, H1, W1, L1, s1_pr, s1_ph, s1_pw, s1_lr, s1_ll,
    plane2, line2, R2, H2, W2, L2, s2_pr, s2_ph, s2_pw, s2_lr, s2_ll,
    stride_xn, stride_xd, stride_on, stride_oc,
    MAT_U0: tl.constexpr, MAT_V0: tl.constexpr, VEC0: tl.constexpr,
    MAT_U1: tl.constexpr, MAT_V1: tl.constexpr, VEC1: tl.constexpr,
    MAT_U2: tl.constexpr, MAT_V2: tl.constexpr, VEC2: tl.constexpr,
    REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    x, y, z, ok = _load_points(xyz_ptr, 0, offs_n, n_mask, 0, stride_xn, stride_xd, ACC_DTYPE)
    acc = tl.zeros([BLOCK_N], dtype=ACC_DTYPE)
    acc = _pair_forward(acc, out_ptr, plane0, line0, _pick_axis(x, y, z, MAT_U0), _pick_axis(x, y, z, MAT_V0),
                        _pick_axis(x, y, z, VEC0), ok, offs_n, n_mask, 0, R0, H0, W0, L0,
                        s0_pr, s0_ph, s0_pw, s0_lr, s0_ll, stride_on, stride_oc,
                        REDUCE, ALIGN_CORNERS, BORDER, ACC_DTYPE, BLOCK_R)
    acc = _pair_forward(acc, out_ptr, plane1, line1, _pick_axis(x, y, z, MAT_U1), _pick_axis(x, y, z, MAT_V1),
                        _pick_axis(x, y, z, VEC1), ok, offs_n, n_mask, R0, R1, H1, W1, L1,
                        s1_pr, s1_ph, s1_pw, s1_lr, s1_ll, stride_on, stride_oc,
                        REDUCE, ALIGN_CORNERS, BORDER, ACC_DTYPE, BLOCK_R)
    acc = _pair_forward(acc, out_ptr, plane2, line2, _pick_axis(x, y, z, MAT_U2), _pick_axis(x, y, z, MAT_V2),
                        _pick_axis(x, y, z, VEC2), ok, offs_n, n_mask, R0 + R1, R2, H2, W2, L2,
                        s2_pr, s2_ph, s2_pw, s2_lr, s2_ll, stride_on, stride_oc,
                        REDUCE, ALIGN_CORNERS, BORDER, ACC_DTYPE, BLOCK_R)
    if REDUCE == REDUCE_SUM:
        tl.store(out_ptr + offs_n.to(tl.int64) * stride_on, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


# --------------------------------------------------------------------------- backward


@triton.jit
def _pair_backward(g_sum, grad_out_ptr, plane_ptr, line_ptr, grad_plane_ptr, grad_line_ptr,
                   u, v, w, ok, offs_n, n_mask, col0,
                   R, H, W, L, s_pr, s_ph, s_pw, s_lr, s_ll, s_gpr, s_gph, s_gpw, s_glr, s_gll,
                   stride_gn, stride_gc,
                   REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr,
                   ACC_DTYPE: tl.constexpr, NEED_PLANES: tl.constexpr, NEED_LINES: tl.constexpr,
                   NEED_XYZ: tl.constexpr, BLOCK_R: tl.constexpr):
    """Scatter one pair's plane and line gradients; return d loss / d (u, v, w) of each point."""
    x0, y0, wx1, wy1, x0_in, x1_in, y0_in, y1_in, d_ix, d_iy = _bilinear_setup(u, v, W, H, ALIGN_CORNERS, BORDER)
    l0, ww1, l0_in, l1_in, d_iw = _line_setup(w, L, ALIGN_CORNERS, BORDER)
    wx0 = 1 - wx1
    wy0 = 1 - wy1
    ww0 = 1 - ww1
    du = tl.zeros_like(wx1)
    dv = tl.zeros_like(wx1)
    dw = tl.zeros_like(wx1)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_mask = offs_r < R
        r_ok = r_mask[None, :]
        offs_r64 = offs_r.to(tl.int64)
        if REDUCE == REDUCE_CONCAT:
            g_ptr = grad_out_ptr + (offs_n.to(tl.int64) * stride_gn)[:, None] + (col0 + offs_r)[None, :] * stride_gc
            g = tl.load(g_ptr, mask=n_mask[:, None] & r_ok, other=0.0).to(ACC_DTYPE)
        else:
            g = tl.where(r_ok, g_sum[:, None], 0.0)
        a0, a1 = _load_line_taps(line_ptr, l0, l0_in, l1_in, ok, offs_r, r_mask, s_lr, s_ll, ACC_DTYPE)
        g_plane = g * (ww0[:, None] * a0 + ww1[:, None] * a1)  # d loss / d plane value
        if NEED_PLANES:
            # Neighbouring points share corners, hence atomics into the channels-last buffer.
            top = grad_plane_ptr + (y0 * s_gph + x0 * s_gpw)[:, None] + offs_r64[None, :] * s_gpr
            tl.atomic_add(top, g_plane * (wx0 * wy0)[:, None], mask=(ok & y0_in & x0_in)[:, None] & r_ok)
            tl.atomic_add(top + s_gpw, g_plane * (wx1 * wy0)[:, None], mask=(ok & y0_in & x1_in)[:, None] & r_ok)
            tl.atomic_add(top + s_gph, g_plane * (wx0 * wy1)[:, None], mask=(ok & y1_in & x0_in)[:, None] & r_ok)
            tl.atomic_add(top + s_gph + s_gpw, g_plane * (wx1 * wy1)[:, None],
                          mask=(ok & y1_in & x1_in)[:, None] & r_ok)
        if NEED_LINES or NEED_XYZ:
            v00, v01, v10, v11 = _load_corners(plane_ptr, x0, y0, x0_in, x1_in, y0_in, y1_in, ok, offs_r, r_mask,
                                               s_pr, s_ph, s_pw, ACC_DTYPE)
            f = ((wx0 * wy0)[:, None] * v00 + (wx1 * wy0)[:, None] * v01
                 + (wx0 * wy1)[:, None] * v10 + (wx1 * wy1)[:, None] * v11)
            g_line = g * f  # d loss / d line value
            if NEED_LINES:
                tap = grad_line_ptr + (l0 * s_gll)[:, None] + offs_r64[None, :] * s_glr
                tl.atomic_add(tap, g_line * ww0[:, None], mask=(ok & l0_in)[:, None] & r_ok)
                tl.atomic_add(tap + s_gll, g_line * ww1[:, None], mask=(ok & l1_in)[:, None] & r_ok)
            if NEED_XYZ:
                d_wx = wy0[:, None] * (v01 - v00) + wy1[:, None] * (v11 - v10)
                d_wy = wx0[:, None] * (v10 - v00) + wx1[:, None] * (v11 - v01)
                du += tl.sum(g_plane * d_wx, axis=1)
                dv += tl.sum(g_plane * d_wy, axis=1)
                dw += tl.sum(g_line * (a1 - a0), axis=1)
    return du * d_ix, dv * d_iy, dw * d_iw


def _bwd_block_n(args):
    # ~4K-element tiles on GPU; small tiles keep the interpreter quick.
    budget = 512 if _INTERPRET else 4096
    return max(16, min(64 if _INTERPRET else 256, budget // args["BLOCK_R"]))


# A heuristic, not autotune: benchmarking would re-run the atomics into the same buffers.
@triton.heuristics({"BLOCK_N": _bwd_block_n})
@triton.jit
def _vm_bwd_kernel(
    grad_out_ptr, xyz_ptr, grad_xyz_ptr, N,
    plane0, line0, gplane0, gline0, R0, H0, W0, L0, s0_pr, s0_ph, s0_pw, s0_lr, s0_ll,
    s0_gpr, s0_gph, s0_gpw, s0_glr, s0_gll,
    plane1, line1, gplane1, gline1, R1, H1, W1, L1, s1_pr, s1_ph, s1_pw, s1_lr, s1_ll,
    s1_gpr, s1_gph, s1_gpw, s1_glr, s1_gll,
    plane2, line2, gplane2, gline2, R2, H2, W2, L2, s2_pr, s2_ph, s2_pw, s2_lr, s2_ll,
    s2_gpr, s2_gph, s2_gpw, s2_glr, s2_gll,
    stride_xn, stride_xd, stride_gn, stride_gc, stride_gxn, stride_gxd,
    MAT_U0: tl.constexpr, MAT_V0: tl.constexpr, VEC0: tl.constexpr,
    MAT_U1: tl.constexpr, MAT_V1: tl.constexpr, VEC1: tl.constexpr,
    MAT_U2: tl.constexpr, MAT_V2: tl.constexpr, VEC2: tl.constexpr,
    REDUCE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr, ACC_DTYPE: tl.constexpr,
    NEED_PLANES: tl.constexpr, NEED_LINES: tl.constexpr, NEED_XYZ: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    x, y, z, ok = _load_points(xyz_ptr, 0, offs_n, n_mask, 0, stride_xn, stride_xd, ACC_DTYPE)
    if REDUCE == REDUCE_SUM:
        g_sum = tl.load(grad_out_ptr + offs_n.to(tl.int64) * stride_gn, mask=n_mask, other=0.0).to(ACC_DTYPE)
    else:
        g_sum = tl.zeros_like(x)
    u0 = _pick_axis(x, y, z, MAT_U0)
    v0 = _pick_axis(x, y, z, MAT_V0)
    w0 = _pick_axis(x, y, z, VEC0)
    u1 = _pick_axis(x, y, z, MAT_U1)
    v1 = _pick_axis(x, y, z, MAT_V1)
    w1 = _pick_axis(x, y, z, VEC1)
    u2 = _pick_axis(x, y, z, MAT_U2)
    v2 = _pick_axis(x, y, z, MAT_V2)
    w2 = _pick_axis(x, y, z, VEC2)
    du0, dv0, dw0 = _pair_backward(g_sum, grad_out_ptr, plane0, line0, gplane0, gline0, u0, v0, w0, ok, offs_n,
                                   n_mask, 0, R0, H0, W0, L0, s0_pr, s0_ph, s0_pw, s0_lr, s0_ll,
                                   s0_gpr, s0_gph, s0_gpw, s0_glr, s0_gll, stride_gn, stride_gc,
                                   REDUCE, ALIGN_CORNERS, BORDER, ACC_DTYPE, NEED_PLANES, NEED_LINES, NEED_XYZ,
                                   BLOCK_R)
    du1, dv1, dw1 = _pair_backward(g_sum, grad_out_ptr, plane1, line1, gplane1, gline1, u1, v1, w1, ok, offs_n,
                                   n_mask, R0, R1, H1, W1, L1, s1_pr, s1_ph, s1_pw, s1_lr, s1_ll,
                                   s1_gpr, s1_gph, s1_gpw, s1_glr, s1_gll, stride_gn, stride_gc,
                                   REDUCE, ALIGN_CORNERS, BORDER, ACC_DTYPE, NEED_PLANES, NEED_LINES, NEED_XYZ,
                                   BLOCK_R)
    du2, dv2, dw2 = _pair_backward(g_sum, grad_out_ptr, plane2, line2, gplane2, gline2, u2, v2, w2, ok, offs_n,
                                   n_mask, R0 + R1, R2, H2, W2, L2, s2_pr, s2_ph, s2_pw, s2_lr, s2_ll,
                                   s2_gpr, s2_gph, s2_gpw, s2_glr, s2_gll, stride_gn, stride_gc,
                                   REDUCE, ALIGN_CORNERS, BORDER, ACC_DTYPE, NEED_PLANES, NEED_LINES, NEED_XYZ,
                                   BLOCK_R)
    if NEED_XYZ:
        # One program owns its points across every component: no atomics for the point gradient.
        gx = tl.zeros_like(x)
        gy = tl.zeros_like(x)
        gz = tl.zeros_like(x)
        gx, gy, gz = _add_to_axis(gx, gy, gz, du0, MAT_U0)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dv0, MAT_V0)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dw0, VEC0)
        gx, gy, gz = _add_to_axis(gx, gy, gz, du1, MAT_U1)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dv1, MAT_V1)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dw1, VEC1)
        gx, gy, gz = _add_to_axis(gx, gy, gz, du2, MAT_U2)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dv2, MAT_V2)
        gx, gy, gz = _add_to_axis(gx, gy, gz, dw2, VEC2)
        gp = grad_xyz_ptr + offs_n.to(tl.int64) * stride_gxn
        tl.store(gp, tl.where(ok, gx, 0.0), mask=n_mask)
        tl.store(gp + stride_gxd, tl.where(ok, gy, 0.0), mask=n_mask)
        tl.store(gp + 2 * stride_gxd, tl.where(ok, gz, 0.0), mask=n_mask)


# --------------------------------------------------------------------------- launchers


def _acc_dtype(planes: Sequence[torch.Tensor]):
    return (torch.float64, tl.float64) if planes[0].dtype == torch.float64 else (torch.float32, tl.float32)


def _mode_kwargs(mat_mode: Sequence[int], vec_mode: Sequence[int]) -> dict:
    m = [int(a) for a in mat_mode]
    v = [int(a) for a in vec_mode]
    return dict(MAT_U0=m[0], MAT_V0=m[1], VEC0=v[0], MAT_U1=m[2], MAT_V1=m[3], VEC1=v[1],
                MAT_U2=m[4], MAT_V2=m[5], VEC2=v[2])


def _pair_args(plane: torch.Tensor, line: torch.Tensor) -> tuple:
    return (plane.shape[0], plane.shape[1], plane.shape[2], line.shape[1], *plane.stride(), *line.stride())


def _block_r(planes: Sequence[torch.Tensor]) -> int:
    """The component block that pads sum_k R_k the least (the largest on ties): 16 for R_k = 48."""
    counts = [p.shape[0] for p in planes]
    return min((8, 16, 32, 64), key=lambda b: (sum(triton.cdiv(r, b) * b for r in counts), -b))


def tensorf_vm_sample_fwd(planes, lines, xyz, mat_mode, vec_mode, reduce: int, align_corners: bool,
                          padding: int) -> torch.Tensor:
    N = xyz.shape[0]
    total_r = sum(p.shape[0] for p in planes)
    shape = (N, total_r) if reduce == Reduce.CONCAT else (N,)
    out = torch.empty(shape, device=xyz.device, dtype=planes[0].dtype)
    if N == 0:
        return out
    _, acc_tl = _acc_dtype(planes)
    stride_oc = out.stride(1) if reduce == Reduce.CONCAT else 0
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)
    _vm_fwd_kernel[grid](
        xyz, out, N,
        planes[0], lines[0], *_pair_args(planes[0], lines[0]),
        planes[1], lines[1], *_pair_args(planes[1], lines[1]),
        planes[2], lines[2], *_pair_args(planes[2], lines[2]),
        *xyz.stride(), out.stride(0), stride_oc,
        **_mode_kwargs(mat_mode, vec_mode),
        REDUCE=int(reduce), ALIGN_CORNERS=bool(align_corners), BORDER=(padding == Padding.BORDER), ACC_DTYPE=acc_tl,
        BLOCK_R=_block_r(planes),
    )
    return out


def tensorf_vm_sample_bwd(grad_out, planes, lines, xyz, mat_mode, vec_mode, reduce: int, align_corners: bool,
                          padding: int, need_planes: bool, need_lines: bool,
                          need_xyz: bool) -> List[Optional[torch.Tensor]]:
    """Gradients (planes[0..2], lines[0..2], xyz); None where not needed."""
    N = xyz.shape[0]
    acc_torch, acc_tl = _acc_dtype(planes)
    device = xyz.device
    # Channels-last accumulators: each corner / tap update is a contiguous run of components.
    grad_planes = [torch.zeros((p.shape[1], p.shape[2], p.shape[0]), device=device, dtype=acc_torch).permute(2, 0, 1)
                   for p in planes] if need_planes else None
    grad_lines = [torch.zeros((line.shape[1], line.shape[0]), device=device, dtype=acc_torch).t()
                  for line in lines] if need_lines else None
    grad_xyz = torch.zeros((N, 3), device=device, dtype=acc_torch) if need_xyz else None

    if N > 0 and (need_planes or need_lines or need_xyz):
        # A dummy (never written) pointer stands in for a gradient that is not needed.
        gps = grad_planes or planes
        gls = grad_lines or lines
        gx = grad_xyz if need_xyz else xyz
        stride_gc = grad_out.stride(1) if reduce == Reduce.CONCAT else 0
        pair_args = []
        for k in range(3):
            pair_args += [planes[k], lines[k], gps[k], gls[k], *_pair_args(planes[k], lines[k]),
                          *gps[k].stride(), *gls[k].stride()]
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)
        _vm_bwd_kernel[grid](
            grad_out, xyz, gx, N,
            *pair_args,
            *xyz.stride(), grad_out.stride(0), stride_gc, *gx.stride(),
            **_mode_kwargs(mat_mode, vec_mode),
            REDUCE=int(reduce), ALIGN_CORNERS=bool(align_corners), BORDER=(padding == Padding.BORDER), ACC_DTYPE=acc_tl,
            NEED_PLANES=bool(need_planes), NEED_LINES=bool(need_lines), NEED_XYZ=bool(need_xyz),
            BLOCK_R=_block_r(planes),
        )

    dtype = planes[0].dtype
    grads = [g.to(dtype) for g in grad_planes] if need_planes else [None] * 3
    grads += [g.to(dtype) for g in grad_lines] if need_lines else [None] * 3
    grads.append(grad_xyz.to(xyz.dtype) if need_xyz else None)
    return grads
