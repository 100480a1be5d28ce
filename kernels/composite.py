"""Triton kernels for fused volume compositing (``fastfields.composite`` / ``composite_packed``).

One program owns a block of BLOCK_R rays, one ray per lane, and walks their samples in order
with the transmittance, the colour tile ``[BLOCK_R, BLOCK_C]``, depth and opacity in
registers: no per-sample alpha, transmittance or weight is written unless the weights are
asked for. The backward walks the rays again in the same order, rebuilding the
transmittance, and takes the sum over the samples behind each one as ``total - prefix``
(``total`` per ray comes from the saved outputs), so it stores nothing per sample either.

Rays are runs of consecutive samples: dense ray r is ``[r * S, r * S + S)``, packed ray r is
``[offsets[r], offsets[r + 1])``. Geometry codes and the formulas are those of
``csrc/include/fastfields/composite.h`` (GEOM 0: deltas + optional t, 1: packed
t_starts / t_ends, 2: EG3D midpoints of consecutive samples).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from .._enums import DensityActivation, Geometry

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

GEOM_DELTAS = tl.constexpr(int(Geometry.DELTAS))
GEOM_INTERVALS = tl.constexpr(int(Geometry.INTERVALS))
GEOM_MIDPOINTS = tl.constexpr(int(Geometry.MIDPOINTS))
#: _activate / _activate_grad branch on the DensityActivation values written out (1 relu,
#: 2 softplus, 3 exp, 4 trunc_exp); tests/test_enums.py holds them to the enum.
ACTIVATION_BRANCHES = {1: DensityActivation.RELU, 2: DensityActivation.SOFTPLUS, 3: DensityActivation.EXP,
                       4: DensityActivation.TRUNC_EXP}


# --------------------------------------------------------------------------- helpers


@triton.jit
def _log1p(z):
    # Goldberg: log(u) * z / (u - 1) cancels the rounding of u = 1 + z (no log1p in tl).
    u = 1.0 + z
    return tl.where(u == 1.0, z, tl.log(u) * (z / (u - 1.0)))


@triton.jit
def _activate(x, ACT: tl.constexpr):
    """Density activation: 0 none, 1 relu, 2 softplus (threshold 20, as torch), 3 exp, 4 trunc_exp."""
    if ACT == 1:
        y = tl.where(x < 0.0, 0.0, x)
    elif ACT == 2:
        # x > 20 is False for NaN and tl.minimum drops NaNs: pass x itself through so that a NaN
        # density spoils its ray, as in torch.
        y = tl.where((x > 20.0) | (x != x), x, _log1p(tl.exp(tl.minimum(x, 20.0))))
    elif ACT == 3 or ACT == 4:
        y = tl.exp(x)
    else:
        y = x
    return y


@triton.jit
def _activate_grad(x, ACT: tl.constexpr):
    """d act / dx; trunc_exp (torch-ngp's TruncExp) uses exp(min(x, 15))."""
    if ACT == 1:
        d = tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == 2:
        z = tl.exp(tl.minimum(x, 20.0))
        d = tl.where(x > 20.0, 1.0, tl.where(x != x, x, z / (z + 1.0)))
    elif ACT == 3:
        d = tl.exp(x)
    elif ACT == 4:
        d = tl.where(x != x, x, tl.exp(tl.minimum(x, 15.0)))
    else:
        d = tl.full(x.shape, 1.0, x.dtype)
    return d


@triton.jit
def _ray_ranges(offsets_ptr, offs_r, r_mask, S, GEOM: tl.constexpr, PACKED: tl.constexpr):
    """First sample and number of intervals of each lane's ray."""
    if PACKED:
        first = tl.load(offsets_ptr + offs_r, mask=r_mask, other=0)
        count = tl.load(offsets_ptr + offs_r + 1, mask=r_mask, other=0) - first
    else:
        first = offs_r.to(tl.int64) * S
        count = tl.where(r_mask, S, 0).to(tl.int64)
    if GEOM == GEOM_MIDPOINTS:
        n = tl.maximum(count - 1, 0)
    else:
        n = count
    return first, n


@triton.jit
def _interval(sigmas_ptr, a_ptr, b_ptr, k, active, ACC: tl.constexpr, GEOM: tl.constexpr, HAS_B: tl.constexpr):
    """Raw density, emptiness (-inf), length and depth of the interval starting at sample k."""
    raw = tl.load(sigmas_ptr + k, mask=active, other=0.0).to(ACC)
    a0 = tl.load(a_ptr + k, mask=active, other=0.0).to(ACC)
    empty = raw == float("-inf")
    if GEOM == GEOM_MIDPOINTS:
        raw1 = tl.load(sigmas_ptr + k + 1, mask=active, other=0.0).to(ACC)
        a1 = tl.load(a_ptr + k + 1, mask=active, other=0.0).to(ACC)
        empty = empty | (raw1 == float("-inf"))
        raw = (raw + raw1) * 0.5
        delta = a1 - a0
        t = (a0 + a1) * 0.5
    elif GEOM == GEOM_INTERVALS:
        b0 = tl.load(b_ptr + k, mask=active, other=0.0).to(ACC)
        delta = b0 - a0
        t = (a0 + b0) * 0.5
    else:
        delta = a0
        if HAS_B:
            t = tl.load(b_ptr + k, mask=active, other=0.0).to(ACC)
        else:
            t = tl.zeros_like(a0)
    return raw, empty, delta, t


@triton.jit
def _colour(rgbs_ptr, k, active, offs_c, c_mask, C, ACC: tl.constexpr, GEOM: tl.constexpr):
    """[BLOCK_R, BLOCK_C] colour of the interval starting at sample k of each lane."""
    ptr = rgbs_ptr + (k * C)[:, None] + offs_c[None, :]
    mask = active[:, None] & c_mask[None, :]
    colour = tl.load(ptr, mask=mask, other=0.0).to(ACC)
    if GEOM == GEOM_MIDPOINTS:
        colour = (colour + tl.load(ptr + C, mask=mask, other=0.0).to(ACC)) * 0.5
    return colour


# --------------------------------------------------------------------------- forward


@triton.jit
def _composite_fwd_kernel(
    sigmas_ptr, rgbs_ptr, a_ptr, b_ptr, offsets_ptr,
    rgb_ptr, depth_ptr, opacity_ptr, weights_ptr,
    R, S, C, weights_stride,
    bias, scale, eps, t_threshold,
    GEOM: tl.constexpr, ACT: tl.constexpr, HAS_B: tl.constexpr, WEIGHTS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < R
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    first, n = _ray_ranges(offsets_ptr, offs_r, r_mask, S, GEOM, GEOM == GEOM_INTERVALS)

    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    trans = tl.full((BLOCK_R,), 1.0, ACC)
    depth = tl.zeros((BLOCK_R,), dtype=ACC)
    opacity = tl.zeros((BLOCK_R,), dtype=ACC)
    alive = r_mask
    for j in range(0, tl.max(n, axis=0)):
        inside = j < n
        alive = alive & inside & ~(trans < t_threshold)
        k = first + j
        raw, empty, delta, t = _interval(sigmas_ptr, a_ptr, b_ptr, k, alive, ACC, GEOM, HAS_B)
        sigma = tl.where(empty, 0.0, _activate(tl.where(empty, 0.0, raw) + bias, ACT))
        decay = tl.exp(-(sigma * (delta * scale)))
        alpha = 1.0 - decay
        w = tl.where(alive, trans * alpha, 0.0)
        acc += w[:, None] * _colour(rgbs_ptr, k, alive, offs_c, c_mask, C, ACC, GEOM)
        depth += w * t
        opacity += w
        trans = tl.where(alive, trans * ((1.0 - alpha) + eps), trans)
        if WEIGHTS:
            # Stopped rays (T < t_threshold) write zeros for the rest of their intervals.
            if GEOM == GEOM_MIDPOINTS:
                w_index = offs_r.to(tl.int64) * weights_stride + j
            else:
                w_index = k
            tl.store(weights_ptr + w_index, w, mask=r_mask & inside)

    offs_r64 = offs_r.to(tl.int64)
    tl.store(rgb_ptr + (offs_r64 * C)[:, None] + offs_c[None, :], acc, mask=r_mask[:, None] & c_mask[None, :])
    tl.store(depth_ptr + offs_r64, depth, mask=r_mask)
    tl.store(opacity_ptr + offs_r64, opacity, mask=r_mask)


# --------------------------------------------------------------------------- backward


@triton.jit
def _composite_bwd_kernel(
    grad_rgb_ptr, grad_depth_ptr, grad_opacity_ptr, grad_weights_ptr, total_ptr,
    sigmas_ptr, rgbs_ptr, a_ptr, b_ptr, offsets_ptr,
    grad_sigmas_ptr, grad_rgbs_ptr, grad_a_ptr, grad_b_ptr,
    R, S, C, weights_stride,
    bias, scale,
    EPS: tl.constexpr, GEOM: tl.constexpr, ACT: tl.constexpr, HAS_B: tl.constexpr, HAS_GRAD_DEPTH: tl.constexpr,
    HAS_GRAD_WEIGHTS: tl.constexpr, NEED_SIGMAS: tl.constexpr, NEED_RGBS: tl.constexpr, NEED_A: tl.constexpr,
    NEED_B: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = offs_r < R
    offs_r64 = offs_r.to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    first, n = _ray_ranges(offsets_ptr, offs_r, r_mask, S, GEOM, GEOM == GEOM_INTERVALS)

    tile = r_mask[:, None] & c_mask[None, :]
    g_rgb = tl.load(grad_rgb_ptr + (offs_r64 * C)[:, None] + offs_c[None, :], mask=tile, other=0.0).to(ACC)
    if HAS_GRAD_DEPTH:
        g_depth = tl.load(grad_depth_ptr + offs_r64, mask=r_mask, other=0.0).to(ACC)
    else:
        g_depth = tl.zeros((BLOCK_R,), dtype=ACC)
    g_opacity = tl.load(grad_opacity_ptr + offs_r64, mask=r_mask, other=0.0).to(ACC)
    total = tl.load(total_ptr + offs_r64, mask=r_mask, other=0.0).to(ACC)

    trans = tl.full((BLOCK_R,), 1.0, ACC)
    prefix = tl.zeros((BLOCK_R,), dtype=ACC)
    # eg3d: sample k is shared by intervals k - 1 and k; the first one's share waits here.
    carry_raw = tl.zeros((BLOCK_R,), dtype=ACC)
    carry_w = tl.zeros((BLOCK_R,), dtype=ACC)
    carry_t = tl.zeros((BLOCK_R,), dtype=ACC)
    for j in range(0, tl.max(n, axis=0)):
        active = r_mask & (j < n)
        k = first + j
        raw, empty, delta, t = _interval(sigmas_ptr, a_ptr, b_ptr, k, active, ACC, GEOM, HAS_B)
        x = tl.where(empty, 0.0, raw) + bias
        sigma = tl.where(empty, 0.0, _activate(x, ACT))
        dsigma = tl.where(empty, 0.0, _activate_grad(x, ACT))
        length = delta * scale
        decay = tl.exp(-(sigma * length))
        alpha = 1.0 - decay
        factor = (1.0 - alpha) + EPS
        w = trans * alpha
        colour = _colour(rgbs_ptr, k, active, offs_c, c_mask, C, ACC, GEOM)
        v = tl.sum(g_rgb * colour, axis=1) + g_depth * t + g_opacity
        if HAS_GRAD_WEIGHTS:
            if GEOM == GEOM_MIDPOINTS:
                w_index = offs_r64 * weights_stride + j
            else:
                w_index = k
            v += tl.load(grad_weights_ptr + w_index, mask=active, other=0.0).to(ACC)
        prefix += w * v
        nxt = trans * factor
        # Once T is exactly 0 every later weight is 0: the suffix is 0, not rounding noise.
        suffix = tl.where(nxt > 0.0, total - prefix, 0.0)
        # d T_later / d tau is -T_later * decay / factor: exactly -T_later when EPS = 0.
        if EPS == 0.0:
            ratio = 1.0
        else:
            ratio = decay / factor
        dtau = trans * decay * v - ratio * suffix
        g_raw = dtau * length * dsigma
        g_delta = dtau * sigma * scale
        g_t = w * g_depth
        grad_tile = active[:, None] & c_mask[None, :]
        rgb_rows = grad_rgbs_ptr + (k * C)[:, None] + offs_c[None, :]
        if GEOM == GEOM_MIDPOINTS:
            half_w = 0.5 * w
            if NEED_SIGMAS:
                tl.store(grad_sigmas_ptr + k, carry_raw + 0.5 * g_raw, mask=active)
            if NEED_RGBS:
                tl.store(rgb_rows, ((carry_w + half_w)[:, None] * g_rgb).to(grad_rgbs_ptr.dtype.element_ty),
                         mask=grad_tile)
            if NEED_A:
                tl.store(grad_a_ptr + k, carry_t - g_delta + 0.5 * g_t, mask=active)
            carry_raw = 0.5 * g_raw
            carry_w = half_w
            carry_t = g_delta + 0.5 * g_t
        else:
            if NEED_SIGMAS:
                tl.store(grad_sigmas_ptr + k, g_raw, mask=active)
            if NEED_RGBS:
                tl.store(rgb_rows, (w[:, None] * g_rgb).to(grad_rgbs_ptr.dtype.element_ty), mask=grad_tile)
            if GEOM == GEOM_INTERVALS:
                if NEED_A:
                    tl.store(grad_a_ptr + k, 0.5 * g_t - g_delta, mask=active)
                if NEED_B:
                    tl.store(grad_b_ptr + k, 0.5 * g_t + g_delta, mask=active)
            else:
                if NEED_A:
                    tl.store(grad_a_ptr + k, g_delta, mask=active)
                if NEED_B:
                    tl.store(grad_b_ptr + k, g_t, mask=active)
        trans = tl.where(active, nxt, trans)

    if GEOM == GEOM_MIDPOINTS:
        # The last sample of each ray (with at least one sample) gets the last interval's share.
        last = r_mask & (n < S)
        k = first + n
        if NEED_SIGMAS:
            tl.store(grad_sigmas_ptr + k, carry_raw, mask=last)
        if NEED_RGBS:
            tl.store(grad_rgbs_ptr + (k * C)[:, None] + offs_c[None, :],
                     (carry_w[:, None] * g_rgb).to(grad_rgbs_ptr.dtype.element_ty), mask=last[:, None] & c_mask[None, :])
        if NEED_A:
            tl.store(grad_a_ptr + k, carry_t, mask=last)


# --------------------------------------------------------------------------- launchers


def _acc_dtype(rgbs: torch.Tensor):
    return (torch.float64, tl.float64) if rgbs.dtype == torch.float64 else (torch.float32, tl.float32)


def _blocks(C: int):
    block_c = triton.next_power_of_2(C)
    # Small blocks keep the interpreter quick; on GPU about 2K colour values per program.
    budget = 64 if _INTERPRET else 2048
    block_r = max(1, min(128, budget // block_c))
    return block_r, block_c


def _prepare(sigmas, rgbs, a, b):
    acc, _ = _acc_dtype(rgbs)
    return (sigmas.to(acc).contiguous(), rgbs.contiguous(), a.to(acc).contiguous(),
            None if b is None else b.to(acc).contiguous())


def _layout(sigmas, rgbs, offsets, geometry):
    """(R, S, C, weights shape, weights row stride) of dense or packed inputs."""
    if geometry == GEOM_INTERVALS:
        return offsets.shape[0] - 1, 0, rgbs.shape[1], [sigmas.shape[0]], 0
    R, S = sigmas.shape
    width = max(S - 1, 0) if geometry == GEOM_MIDPOINTS else S
    return R, S, rgbs.shape[2], [R, width], width


def composite_fwd(sigmas, rgbs, a, b, offsets, geometry: int, activation: int, bias: float, scale: float, eps: float,
                  t_threshold: float, return_weights: bool):
    """(rgb [R, C], depth [R], opacity [R], weights or empty), all in the accumulation dtype."""
    sigmas, rgbs, a, b = _prepare(sigmas, rgbs, a, b)
    acc, acc_tl = _acc_dtype(rgbs)
    R, S, C, weights_shape, weights_stride = _layout(sigmas, rgbs, offsets, geometry)
    device = rgbs.device
    rgb = torch.empty((R, C), device=device, dtype=acc)
    depth = torch.empty((R,), device=device, dtype=acc)
    opacity = torch.empty((R,), device=device, dtype=acc)
    weights = torch.empty(weights_shape if return_weights else [0], device=device, dtype=acc)
    if R == 0:
        return rgb, depth, opacity, weights
    block_r, block_c = _blocks(C)
    _composite_fwd_kernel[(triton.cdiv(R, block_r),)](
        sigmas, rgbs, a, a if b is None else b, sigmas if offsets is None else offsets,
        rgb, depth, opacity, weights if return_weights else rgb,
        R, S, C, weights_stride,
        float(bias), float(scale), float(eps), float(t_threshold),
        GEOM=geometry, ACT=activation, HAS_B=b is not None, WEIGHTS=bool(return_weights), ACC=acc_tl,
        BLOCK_R=block_r, BLOCK_C=block_c,
    )
    return rgb, depth, opacity, weights


def composite_bwd(grad_rgb, grad_depth: Optional[torch.Tensor], grad_opacity, grad_weights: Optional[torch.Tensor],
                  total, sigmas, rgbs, a, b, offsets, geometry: int, activation: int, bias: float, scale: float,
                  eps: float, need_sigmas: bool, need_rgbs: bool, need_a: bool, need_b: bool):
    """Gradients to (sigmas, rgbs, a, b); None where not needed."""
    sigmas, rgbs, a, b = _prepare(sigmas, rgbs, a, b)
    acc, acc_tl = _acc_dtype(rgbs)
    R, S, C, _, weights_stride = _layout(sigmas, rgbs, offsets, geometry)
    grad_sigmas = torch.empty_like(sigmas) if need_sigmas else None
    grad_rgbs = torch.empty_like(rgbs) if need_rgbs else None
    grad_a = torch.empty_like(a) if need_a else None
    grad_b = torch.empty_like(b) if need_b else None
    if R > 0 and sigmas.numel() > 0:
        block_r, block_c = _blocks(C)
        per_ray = [x.to(acc).contiguous() for x in (grad_rgb, grad_opacity, total)]
        g_depth = None if grad_depth is None else grad_depth.to(acc).contiguous()
        g_weights = None if grad_weights is None else grad_weights.to(acc).contiguous()
        dummy = sigmas
        _composite_bwd_kernel[(triton.cdiv(R, block_r),)](
            per_ray[0], dummy if g_depth is None else g_depth, per_ray[1], dummy if g_weights is None else g_weights,
            per_ray[2],
            sigmas, rgbs, a, a if b is None else b, sigmas if offsets is None else offsets,
            dummy if grad_sigmas is None else grad_sigmas, rgbs if grad_rgbs is None else grad_rgbs,
            dummy if grad_a is None else grad_a, dummy if grad_b is None else grad_b,
            R, S, C, weights_stride,
            float(bias), float(scale),
            EPS=float(eps), GEOM=geometry, ACT=activation, HAS_B=b is not None, HAS_GRAD_DEPTH=g_depth is not None,
            HAS_GRAD_WEIGHTS=g_weights is not None, NEED_SIGMAS=bool(need_sigmas), NEED_RGBS=bool(need_rgbs),
            NEED_A=bool(need_a), NEED_B=bool(need_b), ACC=acc_tl, BLOCK_R=block_r, BLOCK_C=block_c,
        )
    return grad_sigmas, grad_rgbs, grad_a, grad_b
