"""``adaln_modulate``: LayerNorm and the adaLN (DiT / LRM) shift-scale modulation in one pass.

The public function validates its arguments, picks a backend and calls the custom op
``fastfields::adaln_modulate``, which also returns the per-row mean and 1/std the backward
needs; autograd is registered on that op and calls ``fastfields::adaln_modulate_backward``.
The ``torch`` backend is :func:`fastfields.reference.adaln_modulate_reference`.

Both compiled backends return, besides dx, two per-sample sums over the tokens,
``P = sum_l dout * xhat`` and ``Q = sum_l dout`` (``[B, D]``, float32); every parameter
gradient follows from them in O(B * D) (:func:`_parameter_grads`). The op is described by
``SPEC`` and registered by :func:`fastfields._op.define`.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from .._checks import check_same_device, check_tensor
from ..reference.adaln_modulate import adaln_modulate_reference
from .._op import OpSpec, define, grad_like, reference_grads

OP = "adaln_modulate"
IMPLEMENTED = ("torch", "triton", "cpu")


def _check_param(name: str, value, x: torch.Tensor, per_sample: bool) -> None:
    layout = "[B, D]" if per_sample else "[D]"
    check_tensor(OP, name, value, 2 if per_sample else 1, layout)
    expected = (x.shape[0], x.shape[2]) if per_sample else (x.shape[2],)
    if tuple(value.shape) != expected:
        raise ValueError(f"{OP}: {name} must have shape {layout} = {list(expected)} to match x, got shape {tuple(value.shape)}")


def _check(x, shift, scale, weight, bias, gate, residual, eps) -> None:
    check_tensor(OP, "x", x, 3, "[B, L, D]")
    if x.shape[2] < 1:
        raise ValueError(f"{OP}: x must have D >= 1 features to normalise, got shape {tuple(x.shape)}")
    named = [("x", x)]
    for name, value, per_sample in (
        ("shift", shift, True), ("scale", scale, True), ("weight", weight, False), ("bias", bias, False), ("gate", gate, True)
    ):
        if value is not None or name in ("shift", "scale"):
            _check_param(name, value, x, per_sample)
            named.append((name, value))
    if residual is not None:
        check_tensor(OP, "residual", residual, 3, "[B, L, D]")
        if residual.shape != x.shape:
            raise ValueError(f"{OP}: residual must have the shape of x {tuple(x.shape)}, got shape {tuple(residual.shape)}")
        if residual.dtype != x.dtype:
            raise TypeError(f"{OP}: residual must have the dtype of x ({x.dtype}), got {residual.dtype}")
        named.append(("residual", residual))
    check_same_device(OP, named)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"{OP}: eps must be a non-negative float, got {eps!r}")


# ---------------------------------------------------------------------------------------
# The op spec. The torch backend is the reference itself, called directly so autograd and
# torch.compile see plain PyTorch. The forward op also returns mean and 1/std per row
# ([B, L], float32; float64 for float64 x), saved for the backward. Gradients of absent or
# unrequested inputs are empty tensors.


def _parameter_grads(P, Q, shift, scale, weight, bias, gate):
    """Gradients of shift, scale, weight, bias, gate from ``P = sum_l dout * xhat``, ``Q = sum_l dout``.

    With ``n = xhat * weight + bias`` and ``y = n * (1 + scale) + shift``, ``out = residual + gate * y``:
    ``d shift = gate Q``, ``d scale = gate (weight P + bias Q)``, ``d gate = weight (1 + scale) P +
    (bias (1 + scale) + shift) Q``, ``d weight = sum_b gate (1 + scale) P``, ``d bias = sum_b gate (1 + scale) Q``.
    """
    acc = P.dtype
    one_plus_scale = 1 + scale.to(acc)
    w = 1 if weight is None else weight.to(acc)
    b = 0 if bias is None else bias.to(acc)
    g = 1 if gate is None else gate.to(acc)
    grad_shift = g * Q
    grad_scale = g * (w * P + b * Q)
    grad_weight = (g * one_plus_scale * P).sum(0)
    grad_bias = (g * one_plus_scale * Q).sum(0)
    grad_gate = w * one_plus_scale * P + (b * one_plus_scale + shift.to(acc)) * Q
    return grad_shift, grad_scale, grad_weight, grad_bias, grad_gate


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _forward(x, shift, scale, weight, bias, gate, residual, eps, backend):
    out, mean, rstd = SPEC.kernel(backend, "fwd")(x, shift, scale, weight, bias, gate, residual, eps)
    return out.contiguous(), mean, rstd


def _forward_fake(x, shift, scale, weight, bias, gate, residual, eps, backend):
    stats = x.new_empty(x.shape[:2], dtype=_stats_dtype(x))
    return x.new_empty(x.shape), stats, torch.empty_like(stats)


def _backward(grad_out, x, shift, scale, weight, bias, gate, mean, rstd, backend, needs):
    grad_x, P, Q = SPEC.kernel(backend, "bwd")(grad_out, x, scale, weight, gate, mean, rstd)
    grad_shift, grad_scale, grad_weight, grad_bias, grad_gate = _parameter_grads(P, Q, shift, scale, weight, bias, gate)
    grads = (grad_x, grad_shift, grad_scale, grad_weight, grad_bias, grad_gate)
    inputs = (x, shift, scale, weight, bias, gate)
    return tuple(
        grad_like(g, t) if t is not None and need else x.new_empty(0) for g, t, need in zip(grads, inputs, needs)
    )


def _backward_fake(grad_out, x, shift, scale, weight, bias, gate, mean, rstd, backend, needs):
    inputs = (x, shift, scale, weight, bias, gate)
    return tuple(torch.empty_like(t) if t is not None and need else x.new_empty(0) for t, need in zip(inputs, needs))


def _setup_context(ctx, inputs, output):
    x, shift, scale, weight, bias, gate, residual, eps, backend = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, shift, scale, weight, bias, gate, residual, mean, rstd)
    ctx.config = (eps, backend)


def _grads(ctx, grad_out, _grad_mean, _grad_rstd):
    """Gradients to (x, shift, scale, weight, bias, gate, residual)."""
    x, shift, scale, weight, bias, gate, residual, mean, rstd = ctx.saved_tensors
    eps, backend = ctx.config
    inputs = (x, shift, scale, weight, bias, gate)
    needs = [bool(need) and t is not None for need, t in zip(ctx.needs_input_grad[:6], inputs)]
    if torch.is_grad_enabled():
        # create_graph=True: a differentiable backward through the reference.
        def reference(x, shift, scale, weight, bias, gate):
            return adaln_modulate_reference(x, shift, scale, weight=weight, bias=bias, eps=eps, gate=gate,
                                            residual=residual)

        grads = reference_grads(reference, inputs, needs, grad_out)
    else:
        grads = _adaln_modulate_backward_op(grad_out, x, shift, scale, weight, bias, gate, mean, rstd, backend, needs)
    grads = [g if need else None for g, need in zip(grads, needs)]
    grad_residual = grad_out.to(residual.dtype) if residual is not None and ctx.needs_input_grad[6] else None
    return (*grads, grad_residual)


SPEC = OpSpec(
    name=OP,
    schema="(Tensor x, Tensor shift, Tensor scale, Tensor? weight, Tensor? bias, Tensor? gate, Tensor? residual, "
           "float eps, str backend) -> (Tensor, Tensor, Tensor)",
    impl=_forward,
    fake=_forward_fake,
    backends=IMPLEMENTED,
    kernels=OP,
    backward=OpSpec(
        name=f"{OP}_backward",
        schema="(Tensor grad_out, Tensor x, Tensor shift, Tensor scale, Tensor? weight, Tensor? bias, Tensor? gate, "
               "Tensor mean, Tensor rstd, str backend, bool[] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        impl=_backward,
        fake=_backward_fake,
    ),
    setup_context=_setup_context,
    grads=_grads,
)
_adaln_modulate_op = define(SPEC)
_adaln_modulate_backward_op = torch.ops.fastfields.adaln_modulate_backward


def adaln_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    gate: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """LayerNorm over the features, modulated per sample, in one pass over x.

    ``out = residual + gate * (LayerNorm(x; weight, bias, eps) * (1 + scale) + shift)``,
    where ``shift``, ``scale`` and ``gate`` hold one row per sample and are broadcast over
    the L tokens, a missing ``gate`` counts as 1 and a missing ``residual`` as 0. Without
    gate and residual this is OpenLRM's ``ModLN`` (DiT's ``modulate(norm(x), shift, scale)``).

    Args:
        x: ``[B, L, D]`` float32/float16/bfloat16/float64 tokens.
        shift, scale: ``[B, D]`` per-sample modulation.
        weight, bias: optional ``[D]`` LayerNorm affine parameters.
        eps: added to the variance, as ``nn.LayerNorm``.
        gate: optional ``[B, D]`` per-sample gate. shift, scale, weight, bias and gate may
            each have any floating dtype (e.g. a bfloat16 modulation MLP under autocast
            feeding float32 tokens); each gets its gradient in its own dtype.
        residual: optional ``[B, L, D]`` in x's dtype, added last.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cpu"``.

    Returns:
        ``[B, L, D]`` in x's dtype (statistics and arithmetic in float32). Differentiable
        w.r.t. every tensor argument, twice through a slower reference path. Non-finite
        values propagate as in ``F.layer_norm``: a NaN or inf in a token row makes that row NaN.

    Example:
        >>> import torch, fastfields as ff
        >>> x, mod = torch.randn(2, 3072, 512), torch.randn(2, 1024)
        >>> shift, scale = torch.nn.Linear(1024, 1024)(mod).chunk(2, dim=-1)
        >>> ff.adaln_modulate(x, shift, scale).shape
        torch.Size([2, 3072, 512])
    """
    _check(x, shift, scale, weight, bias, gate, residual, eps)
    name = SPEC.resolve(backend, x.device)
    if name == "torch":
        return adaln_modulate_reference(x, shift, scale, weight=weight, bias=bias, eps=eps, gate=gate, residual=residual)
    out, _, _ = _adaln_modulate_op(x, shift, scale, weight, bias, gate, residual, float(eps), name)
    return out
