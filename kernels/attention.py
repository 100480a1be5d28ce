"""Triton flash attention, forward and backward (``fastfields.attention``).

The FlashAttention-2 scheme of the Triton fused-attention tutorial, without the causal
mask, with masks for any query / key length and head dim (padded to a power of two), any
input strides, and separate query and key lengths (cross-attention):

- forward: one program per (block of queries, batch * head); it streams blocks of keys and
  values with an online softmax, so the ``[Lq, Lk]`` scores never exist in memory, and
  saves the per-query log-sum-exp (base 2) for the backward;
- backward: a preprocess kernel for ``delta = rowsum(dO * O)``, a dK/dV kernel (one
  program per block of keys, looping over the queries) and a dQ kernel (one program per
  block of queries, looping over the keys); each recomputes the probabilities from the
  log-sum-exp instead of storing them.

Scores live in base 2 (``qk_scale = scale * log2(e)``, ``exp2``), as in the tutorial.
float16 / bfloat16 use the tensor cores with float32 accumulation; float32 runs the dots in
IEEE float32 (no TF32), so it matches ``F.scaled_dot_product_attention`` in float32.
"""

from __future__ import annotations

import os
from typing import Tuple

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


def _configs(outer: str, inner: str):
    if _INTERPRET:
        return [triton.Config({outer: 16, inner: 16}, num_warps=4)]
    return [
        triton.Config({outer: bo, inner: bi}, num_stages=s, num_warps=w)
        for bo in (64, 128)
        for bi in (32, 64, 128)
        for s in (2, 3)
        for w in (4, 8)
    ]


def _keep(configs, named_args, **kwargs):
    # Large head dims need small tiles to fit shared memory / registers.
    head = kwargs["BLOCK_D"]
    kept = [c for c in configs if head <= 64 or min(c.kwargs.values()) * head <= 8192]
    if named_args["Lq"] * named_args["Lk"] <= 256 * 256:
        # Small problems: tuning would cost more than it could gain.
        kept = kept[:1]
    return kept or configs[:1]


@triton.jit
def _tile_ptrs(base, offs_row, offs_d, stride_row, stride_d):
    return base + offs_row.to(tl.int64)[:, None] * stride_row + offs_d[None, :] * stride_d


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_N"), key=["Lq", "Lk", "BLOCK_D"],
                 prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, Lq, Lk, Dh, qk_scale,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < Lq
    d_mask = offs_d < Dh

    q = tl.load(_tile_ptrs(q_ptr + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qm, stride_qd),
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        keys = start_n + offs_n
        n_mask = keys < Lk
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(_tile_ptrs(k_base, keys, offs_d, stride_kn, stride_kd), mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        scores = tl.where(n_mask[None, :], scores, float("-inf"))
        # Every key block holds at least one real key, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.math.exp2(scores - m_new[:, None])
        correction = tl.math.exp2(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, axis=1)
        v = tl.load(_tile_ptrs(v_base, keys, offs_d, stride_vn, stride_vd), mask=kv_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None], input_precision=PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(_tile_ptrs(out_ptr + b * stride_ob + h * stride_oh, offs_m, offs_d, stride_om, stride_od),
             acc.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])
    tl.store(lse_ptr + bh * Lq + offs_m, m_i + tl.math.log2(l_i), mask=m_mask)


@triton.jit
def _attn_bwd_preprocess_kernel(
    out_ptr, grad_out_ptr, delta_ptr,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,
    H, Lq, Dh,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < Lq
    mask = m_mask[:, None] & (offs_d < Dh)[None, :]
    o = tl.load(_tile_ptrs(out_ptr + b * stride_ob + h * stride_oh, offs_m, offs_d, stride_om, stride_od),
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(_tile_ptrs(grad_out_ptr + b * stride_gb + h * stride_gh, offs_m, offs_d, stride_gm, stride_gd),
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(delta_ptr + bh * Lq + offs_m, tl.sum(o * do, axis=1), mask=m_mask)


@triton.autotune(configs=_configs("BLOCK_N", "BLOCK_M"), key=["Lq", "Lk", "BLOCK_D"],
                 prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr, grad_k_ptr, grad_v_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, Lq, Lk, Dh, qk_scale, scale,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_mask = offs_n < Lk
    d_mask = offs_d < Dh
    kv_mask = n_mask[:, None] & d_mask[None, :]

    k = tl.load(_tile_ptrs(k_ptr + b * stride_kb + h * stride_kh, offs_n, offs_d, stride_kn, stride_kd),
                mask=kv_mask, other=0.0)
    v = tl.load(_tile_ptrs(v_ptr + b * stride_vb + h * stride_vh, offs_n, offs_d, stride_vn, stride_vd),
                mask=kv_mask, other=0.0)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    g_base = grad_out_ptr + b * stride_gb + h * stride_gh
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        queries = start_m + offs_m
        m_mask = queries < Lq
        q_mask = m_mask[:, None] & d_mask[None, :]
        q = tl.load(_tile_ptrs(q_base, queries, offs_d, stride_qm, stride_qd), mask=q_mask, other=0.0)
        do = tl.load(_tile_ptrs(g_base, queries, offs_d, stride_gm, stride_gd), mask=q_mask, other=0.0)
        # lse = inf gives padded queries probability 0: they contribute nothing.
        lse = tl.load(lse_ptr + bh * Lq + queries, mask=m_mask, other=float("inf"))
        delta = tl.load(delta_ptr + bh * Lq + queries, mask=m_mask, other=0.0)
        # Transposed probabilities [keys, queries].
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale - lse[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)

    dk = dk * scale
    tl.store(_tile_ptrs(grad_k_ptr + b * stride_dkb + h * stride_dkh, offs_n, offs_d, stride_dkn, stride_dkd),
             dk.to(grad_k_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(_tile_ptrs(grad_v_ptr + b * stride_dvb + h * stride_dvh, offs_n, offs_d, stride_dvn, stride_dvd),
             dv.to(grad_v_ptr.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_N"), key=["Lq", "Lk", "BLOCK_D"],
                 prune_configs_by={"early_config_prune": _keep})
@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr, grad_q_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    H, Lq, Lk, Dh, qk_scale, scale,
    PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < Lq
    d_mask = offs_d < Dh
    q_mask = m_mask[:, None] & d_mask[None, :]

    q = tl.load(_tile_ptrs(q_ptr + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qm, stride_qd),
                mask=q_mask, other=0.0)
    do = tl.load(_tile_ptrs(grad_out_ptr + b * stride_gb + h * stride_gh, offs_m, offs_d, stride_gm, stride_gd),
                 mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + bh * Lq + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(delta_ptr + bh * Lq + offs_m, mask=m_mask, other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        keys = start_n + offs_n
        n_mask = keys < Lk
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(_tile_ptrs(k_base, keys, offs_d, stride_kn, stride_kd), mask=kv_mask, other=0.0)
        v = tl.load(_tile_ptrs(v_base, keys, offs_d, stride_vn, stride_vd), mask=kv_mask, other=0.0)
        p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale - lse[:, None])
        p = tl.where(n_mask[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)

    dq = dq * scale
    tl.store(_tile_ptrs(grad_q_ptr + b * stride_dqb + h * stride_dqh, offs_m, offs_d, stride_dqm, stride_dqd),
             dq.to(grad_q_ptr.dtype.element_ty), mask=q_mask)


# --------------------------------------------------------------------------- launchers


def _precision(q: torch.Tensor):
    # IEEE float32 dots for float32 (no TF32); the default for float16/bfloat16.
    return "ieee" if q.dtype == torch.float32 else None


def _block_d(Dh: int) -> int:
    # Head dims pad to a power of two (masked); tl.dot needs every tile dim >= 16. The ops
    # module caps Dh at 256, beyond which the tiles no longer fit in shared memory.
    return max(16, triton.next_power_of_2(Dh))


def output_buffer(q: torch.Tensor, Dh: int) -> torch.Tensor:
    """``[B, H, Lq, Dh]`` stored as ``[B, Lq, H, Dh]``: merging the heads afterwards is a free view."""
    B, H, Lq = q.shape[:3]
    return torch.empty((B, Lq, H, Dh), device=q.device, dtype=q.dtype).transpose(1, 2)


def attention_fwd(q, k, v, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, H, Lq, Dh], lse [B, H, Lq] float32, base 2, of the scaled scores)``."""
    B, H, Lq, Dh = q.shape
    Lk = k.shape[2]
    out = output_buffer(q, Dh)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    if out.numel() == 0 or Lk == 0:
        # No keys: zeros, as SDPA; lse = -inf keeps the backward's probabilities at zero.
        return out.zero_(), lse.fill_(float("-inf"))
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)
    _attn_fwd_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Lq, Lk, Dh, scale * LOG2E,
        PRECISION=_precision(q), BLOCK_D=_block_d(Dh),
    )
    return out, lse


def attention_bwd(grad_out, q, k, v, out, lse, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``, each in its input's layout (``empty_like``)."""
    B, H, Lq, Dh = q.shape
    Lk = k.shape[2]
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if B * H * Dh == 0 or Lq == 0 or Lk == 0:
        return grad_q.zero_(), grad_k.zero_(), grad_v.zero_()
    block_d = _block_d(Dh)
    precision = _precision(q)
    delta = torch.empty_like(lse)
    preprocess_block = 16 if _INTERPRET else 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(Lq, preprocess_block), B * H)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), H, Lq, Dh,
        BLOCK_D=block_d, BLOCK_M=preprocess_block,
    )
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    _attn_bwd_dkdv_kernel[lambda meta: (triton.cdiv(Lk, meta["BLOCK_N"]), B * H)](
        q, k, v, grad_out, lse, delta, grad_k, grad_v,
        *strides, *grad_k.stride(), *grad_v.stride(),
        H, Lq, Lk, Dh, scale * LOG2E, scale,
        PRECISION=precision, BLOCK_D=block_d,
    )
    _attn_bwd_dq_kernel[lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)](
        q, k, v, grad_out, lse, delta, grad_q,
        *strides, *grad_q.stride(),
        H, Lq, Lk, Dh, scale * LOG2E, scale,
        PRECISION=precision, BLOCK_D=block_d,
    )
    return grad_q, grad_k, grad_v
