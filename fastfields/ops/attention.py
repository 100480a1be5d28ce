"""``attention``: softmax(q k^T * scale) v, flash-style, for self- and cross-attention.

The public function validates its arguments, picks a backend and either calls
``F.scaled_dot_product_attention`` (the ``torch`` backend,
:func:`fastfields.reference.attention_reference`) or the custom op
``fastfields::attention`` (Triton flash attention), whose autograd calls
``fastfields::attention_backward``.

``backend="auto"`` picks ``torch`` (SDPA) on every device for now: SDPA already runs
FlashAttention-2 / cuDNN kernels on GPUs, and the Triton kernel stays opt-in
(``backend="triton"``) until a GPU benchmark report shows it is faster.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import _backend
from .._checks import check_finite_float, check_same_device, check_tensor
from .._op import OpSpec, define, reference_grads
from ..reference.attention import attention_reference

OP = "attention"
IMPLEMENTED = ("torch", "triton")
#: What "auto" may pick: SDPA until a GPU benchmark shows the Triton kernel wins.
AUTO_CANDIDATES = ("torch",)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Widest head dim of the Triton kernel (tiles of [block, Dh] must fit in shared memory).
MAX_HEAD_DIM = 256


def _check(q, k, v, scale) -> None:
    check_tensor(OP, "q", q, 4, "[B, H, Lq, Dh]")
    check_tensor(OP, "k", k, 4, "[B, H, Lk, Dh]")
    check_tensor(OP, "v", v, 4, "[B, H, Lk, Dh]")
    if k.shape != v.shape:
        raise ValueError(f"{OP}: k and v must have the same shape [B, H, Lk, Dh], got {tuple(k.shape)} and {tuple(v.shape)}")
    if (k.shape[0], k.shape[1], k.shape[3]) != (q.shape[0], q.shape[1], q.shape[3]):
        raise ValueError(
            f"{OP}: k must match q in batch, heads and head dim (k [B, H, Lk, Dh] for q [B, H, Lq, Dh]), "
            f"got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{OP}: q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    check_same_device(OP, [("q", q), ("k", k), ("v", v)])
    check_finite_float(OP, "scale", scale, allow_none=True)


def _resolve(backend: str, device: torch.device) -> str:
    explicit = backend != "auto" or os.environ.get(_backend.ENV_VAR, "auto") != "auto"
    return SPEC.resolve(backend, device, candidates=IMPLEMENTED if explicit else AUTO_CANDIDATES)


def _default_scale(q: torch.Tensor) -> float:
    return q.shape[-1] ** -0.5 if q.shape[-1] > 0 else 1.0


def _reference_backward(grad_out, q, k, v, scale, needs):
    # SDPA's math kernel: the flash / efficient kernels have no double backward.
    return reference_grads(lambda q, k, v: attention_reference(q, k, v, scale=scale), (q, k, v), needs, grad_out,
                           context=lambda: sdpa_kernel(SDPBackend.MATH))


# ---------------------------------------------------------------------------------------
# The op spec (Triton only). The forward also returns the per-query log-sum-exp (base 2,
# float32), saved for the backward. The output is stored as [B, Lq, H, Dh] (a transposed
# view): merging the heads afterwards costs nothing.


def _forward_fake(q, k, v, scale, backend):
    B, H, Lq, Dh = q.shape
    out = q.new_empty((B, Lq, H, Dh)).transpose(1, 2)
    return out, q.new_empty((B, H, Lq), dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    q, k, v, scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.config = (scale, backend)


def _grads(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    scale, backend = ctx.config
    if torch.is_grad_enabled():
        # create_graph=True: a differentiable backward through SDPA's math kernel.
        return _reference_backward(grad_out, q, k, v, scale, ctx.needs_input_grad[:3])
    return torch.ops.fastfields.attention_backward(grad_out, q, k, v, out, lse, scale, backend)


SPEC = OpSpec(
    name=OP,
    schema="(Tensor q, Tensor k, Tensor v, float scale, str backend) -> (Tensor, Tensor)",
    impl=lambda q, k, v, scale, backend: SPEC.kernel(backend, "fwd")(q, k, v, scale),
    fake=_forward_fake,
    backends=IMPLEMENTED,
    kernels=OP,
    backward=OpSpec(
        name=f"{OP}_backward",
        schema="(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale, str backend) -> "
               "(Tensor, Tensor, Tensor)",
        impl=lambda grad_out, q, k, v, out, lse, scale, backend: SPEC.kernel(backend, "bwd")(
            grad_out, q, k, v, out, lse, scale),
        fake=lambda grad_out, q, k, v, *_: (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)),
    ),
    setup_context=_setup_context,
    grads=_grads,
)
_attention_op = define(SPEC)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: Optional[float] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention without mask or dropout: ``softmax(q k^T * scale) v``.

    Args:
        q: ``[B, H, Lq, Dh]`` queries.
        k, v: ``[B, H, Lk, Dh]`` keys and values; ``Lk`` may differ from ``Lq``
            (cross-attention, e.g. 3072 triplane tokens attending to 257..1025 image tokens).
        scale: multiplies the scores; default ``1 / sqrt(Dh)``.
        backend: ``"auto"`` (``torch`` for now, see the module docstring), ``"torch"``
            (``F.scaled_dot_product_attention``) or ``"triton"`` (flash attention: never
            materialises the ``[Lq, Lk]`` scores; float16, bfloat16, float32; head dims up to 256,
            any lengths and strides).

    Returns:
        ``[B, H, Lq, Dh]`` in q's dtype (softmax and accumulation in float32). Zero keys give
        zeros, as SDPA. Differentiable w.r.t. q, k and v; twice through SDPA's math kernel
        (``backend="torch"`` is SDPA itself: double backward there needs
        ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``).

    Example:
        >>> import torch, fastfields as ff
        >>> q = torch.randn(2, 16, 3072, 64)
        >>> kv = torch.randn(2, 16, 1025, 64)
        >>> ff.attention(q, kv, kv).shape
        torch.Size([2, 16, 3072, 64])
    """
    _check(q, k, v, scale)
    name = _resolve(backend, q.device)
    if name == "torch":
        return attention_reference(q, k, v, scale=scale)
    if q.dtype not in TRITON_DTYPES:
        raise TypeError(f"{OP}: backend='triton' takes float16, bfloat16 or float32, got {q.dtype}; use backend='torch'")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"{OP}: backend='triton' takes head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}; use backend='torch'")
    out, _ = _attention_op(q, k, v, float(_default_scale(q) if scale is None else scale), name)
    return out
