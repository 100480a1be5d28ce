"""Triton kernels for the fused LayerNorm + adaLN modulation (``fastfields.adaln_modulate``).

Forward: one program per token row, as the Triton layer-norm tutorial: the row's mean and
1/std in float32, then ``out = residual + gate * ((xhat * weight + bias) * (1 + scale) +
shift)`` in the same pass, with the per-sample modulation row ``b = row // L``. Mean and
1/std are saved for the backward.

Backward: one program per (sample, chunk of rows). Besides dx it accumulates in registers
the two per-sample sums every parameter gradient derives from,
``P = sum_l dout * xhat`` and ``Q = sum_l dout``, and writes them as per-program partials;
``fastfields/ops/adaln_modulate.py`` reduces the chunks and forms the shift / scale /
gate / weight / bias gradients from them (O(B * D) work).
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
#: Widest row one program holds in registers (the tutorial's 64 KB budget).
MAX_D = 65536


@triton.jit
def _normalize_row(x_ptr, row, D, offs, mask, eps, ACC_DTYPE: tl.constexpr):
    x = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    mean = tl.sum(x, axis=0) / D
    centered = tl.where(mask, x - mean, 0.0)
    # The squares of float32 deviations beyond ~1e19 overflow (1/std would be 0): divide them by
    # a power of two near the largest first (1 for ordinary rows, so those are unchanged).
    largest = tl.max(tl.abs(centered), axis=0)
    p = tl.where((largest > 1e15) & (largest < float("inf")), tl.exp2(tl.floor(tl.log2(largest))), 1.0)
    c = centered / p
    rstd = 1.0 / (p * tl.sqrt(tl.sum(c * c, axis=0) / D + eps / p / p))
    return centered * rstd, mean, rstd


@triton.jit
def _adaln_fwd_kernel(
    x_ptr, shift_ptr, scale_ptr, weight_ptr, bias_ptr, gate_ptr, residual_ptr,
    out_ptr, mean_ptr, rstd_ptr,
    L, D, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # int64: B * L * D passes 2^31 at LRM-large sizes with a few samples.
    row = tl.program_id(0).to(tl.int64)
    mod_row = (row // L) * D
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D

    xhat, mean, rstd = _normalize_row(x_ptr, row, D, offs, mask, eps, ACC_DTYPE)
    normed = xhat
    if HAS_WEIGHT:
        normed = normed * tl.load(weight_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_BIAS:
        normed = normed + tl.load(bias_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    scale = tl.load(scale_ptr + mod_row + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    shift = tl.load(shift_ptr + mod_row + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    y = normed * (1 + scale) + shift
    if HAS_GATE:
        y = tl.load(gate_ptr + mod_row + offs, mask=mask, other=0.0).to(ACC_DTYPE) * y
    if HAS_RESIDUAL:
        y = y + tl.load(residual_ptr + row * D + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    tl.store(out_ptr + row * D + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _adaln_bwd_kernel(
    grad_out_ptr, x_ptr, scale_ptr, weight_ptr, gate_ptr, mean_ptr, rstd_ptr,
    grad_x_ptr, partial_p_ptr, partial_q_ptr,
    L, D, rows_per_program,
    HAS_WEIGHT: tl.constexpr, HAS_GATE: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D

    # d out / d xhat = gate * weight * (1 + scale): one row per sample, loaded once.
    dxhat_dout = 1 + tl.load(scale_ptr + b * D + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_WEIGHT:
        dxhat_dout = dxhat_dout * tl.load(weight_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_GATE:
        dxhat_dout = dxhat_dout * tl.load(gate_ptr + b * D + offs, mask=mask, other=0.0).to(ACC_DTYPE)

    sum_dout_xhat = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    sum_dout = tl.zeros([BLOCK_D], dtype=ACC_DTYPE)
    first = chunk * rows_per_program
    last = tl.minimum(first + rows_per_program, L)
    for l in range(first, last):
        row = b * L + l
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        x = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(ACC_DTYPE)
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        dout = tl.load(grad_out_ptr + row * D + offs, mask=mask, other=0.0).to(ACC_DTYPE)
        sum_dout_xhat += dout * xhat
        sum_dout += dout
        dxhat = dout * dxhat_dout
        # LayerNorm's backward: project out the mean and the xhat direction.
        mean_dxhat = tl.sum(dxhat, axis=0) / D
        mean_dxhat_xhat = tl.sum(dxhat * xhat, axis=0) / D
        dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * rstd
        tl.store(grad_x_ptr + row * D + offs, dx.to(grad_x_ptr.dtype.element_ty), mask=mask)

    partial = (b * n_chunks + chunk) * D + offs
    tl.store(partial_p_ptr + partial, sum_dout_xhat, mask=mask)
    tl.store(partial_q_ptr + partial, sum_dout, mask=mask)


# --------------------------------------------------------------------------- launchers


def _acc_dtype(x: torch.Tensor):
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def _block_d(D: int) -> Tuple[int, int]:
    if D > MAX_D:
        raise ValueError(f"adaln_modulate (triton): D must be at most {MAX_D}, got {D}")
    block = triton.next_power_of_2(D)
    return block, min(max(block // 256, 1), 8)


@functools.lru_cache(maxsize=None)
def _program_budget(device: torch.device) -> int:
    # Enough (sample, chunk) programs to fill the GPU a few times over; the interpreter runs
    # programs one after another, so there a few long ones are quickest.
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def adaln_modulate_fwd(x, shift, scale, weight, bias, gate, residual, eps: float):
    """``(out [B, L, D] in x's dtype, mean [B, L], rstd [B, L] in the accumulation dtype)``."""
    B, L, D = x.shape
    acc_torch, acc_tl = _acc_dtype(x)
    x, shift, scale, weight, bias, gate, residual = map(_contiguous, (x, shift, scale, weight, bias, gate, residual))
    out = torch.empty_like(x)
    mean = torch.empty((B, L), device=x.device, dtype=acc_torch)
    rstd = torch.empty((B, L), device=x.device, dtype=acc_torch)
    if B * L == 0:
        return out, mean, rstd
    block_d, num_warps = _block_d(D)
    # Absent optional tensors are never read: x stands in for their pointers.
    _adaln_fwd_kernel[(B * L,)](
        x, shift, scale, x if weight is None else weight, x if bias is None else bias,
        x if gate is None else gate, x if residual is None else residual,
        out, mean, rstd,
        L, D, float(eps),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_GATE=gate is not None,
        HAS_RESIDUAL=residual is not None, ACC_DTYPE=acc_tl, BLOCK_D=block_d, num_warps=num_warps,
    )
    return out, mean, rstd


def adaln_modulate_bwd(grad_out, x, scale, weight, gate, mean, rstd):
    """``(grad_x [B, L, D], P [B, D], Q [B, D])`` with ``P = sum_l dout * xhat``, ``Q = sum_l dout``
    (accumulation dtype)."""
    B, L, D = x.shape
    acc_torch, acc_tl = _acc_dtype(x)
    grad_out, x, scale, weight, gate = map(_contiguous, (grad_out, x, scale, weight, gate))
    grad_x = torch.empty_like(x)
    if B * L == 0:
        zeros = torch.zeros((B, D), device=x.device, dtype=acc_torch)
        return grad_x, zeros, zeros.clone()
    block_d, num_warps = _block_d(D)
    rows_per_program = triton.cdiv(B * L, _program_budget(x.device))
    n_chunks = triton.cdiv(L, rows_per_program)
    partial_p = torch.empty((B, n_chunks, D), device=x.device, dtype=acc_torch)
    partial_q = torch.empty_like(partial_p)
    _adaln_bwd_kernel[(B, n_chunks)](
        grad_out, x, scale, x if weight is None else weight, x if gate is None else gate, mean, rstd,
        grad_x, partial_p, partial_q,
        L, D, rows_per_program,
        HAS_WEIGHT=weight is not None, HAS_GATE=gate is not None, ACC_DTYPE=acc_tl, BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return grad_x, partial_p.sum(1), partial_q.sum(1)
