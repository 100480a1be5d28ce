"""Declarative op specs: one short description per custom op, and the glue that registers it.

An op module (``fastfields/ops/<op>.py``) describes each of its ``torch.library`` custom ops
with an :class:`OpSpec` (name, schema written once, body, fake impl, the backward op, the
autograd formula) and hands it to :func:`define`, which registers

* the custom op ``fastfields::<name>`` (``torch.library.custom_op`` with the given schema),
* its fake (meta) implementation, for torch.compile and ``torch.library.opcheck``,
* its backward op (another :class:`OpSpec`) and the autograd formula tying them together,
  which fills the ``None`` gradients of non-differentiable arguments and of inputs that do
  not need one.

Backends: every backend implements an op's kernels under one launcher convention,
``<kernels>_fwd`` / ``<kernels>_bwd``, taking the same arguments (tensors, and the integer
codes of :mod:`fastfields._enums` for options) and returning the same outputs:
``fastfields.kernels.<kernels>.<kernels>_fwd`` for ``triton`` and
``torch.ops.fastfields_<cpu|cuda>.<kernels>_fwd`` for the compiled extensions.
:meth:`OpSpec.kernel` finds the launcher of a backend. The ``torch`` backend is the op's
reference, which the public function calls directly (no custom op), so eager calls,
double backward and torch.compile see plain PyTorch there.

The public function of the op stays hand-written: it holds the docstring, the argument
checks, :meth:`OpSpec.resolve` to pick the backend, and the call.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from . import _backend, _build

__all__ = ["OpSpec", "define", "compiled_ops", "grad_like", "gradients", "reference_grads", "save_inputs",
           "schema_arguments"]

NAMESPACE = "fastfields"


def compiled_ops(backend: str):
    """``torch.ops.fastfields_cpu`` or ``torch.ops.fastfields_cuda``, built and loaded on first use."""
    _build.load_extension(backend)
    return getattr(torch.ops, f"fastfields_{backend}")


_launchers: Dict[Tuple[str, str, str], Callable] = {}


def launcher(backend: str, module: str, name: str) -> Callable:
    """Kernel launcher ``name`` of ``backend`` (``triton``: ``fastfields.kernels.<module>.<name>``;
    ``cpu`` / ``cuda``: ``torch.ops.fastfields_<backend>.<name>``), looked up once."""
    key = (backend, module, name)
    found = _launchers.get(key)
    if found is None:
        if backend == "triton":
            found = getattr(importlib.import_module(f"fastfields.kernels.{module}"), name)
        elif backend in ("cpu", "cuda"):
            found = getattr(compiled_ops(backend), name)
        else:
            raise ValueError(f"{name}: backend {backend!r} has no kernels (the torch backend is the reference)")
        _launchers[key] = found
    return found


def schema_arguments(schema: str) -> Tuple[str, ...]:
    """Argument names of an op schema ``"(Tensor x, int n) -> Tensor"``."""
    parsed = torch._C.parse_schema(f"{NAMESPACE}::_probe{schema}")
    return tuple(argument.name for argument in parsed.arguments)


@dataclass(frozen=True)
class OpSpec:
    """One custom op ``fastfields::<name>``, described once.

    Attributes:
        name: op name in the ``fastfields`` namespace.
        schema: ``"(Tensor planes, ..., str backend) -> Tensor"``: the one place the
            arguments and results are written down.
        impl: the op's body, called with the schema's arguments in order.
        fake: shapes, dtypes and strides of the outputs from the inputs' (no computation).
        backends: the backends the public function accepts (``AUTO_ORDER`` picks among
            them); ``"torch"`` means the reference.
        kernels: launcher prefix: ``<kernels>_fwd`` / ``<kernels>_bwd`` on every backend.
        backward: the backward custom op, registered together with this one.
        setup_context: ``(ctx, inputs, output)``: what the backward needs (see :func:`save_inputs`).
        grads: ``(ctx, *grad_outputs) -> grads`` of the leading inputs, in order; the rest
            (options, backend) and inputs that need no gradient get ``None``.
    """

    name: str
    schema: str
    impl: Callable
    fake: Callable
    backends: Tuple[str, ...] = ()
    kernels: Optional[str] = None
    backward: Optional["OpSpec"] = None
    setup_context: Optional[Callable] = None
    grads: Optional[Callable] = None

    @property
    def qualname(self) -> str:
        return f"{NAMESPACE}::{self.name}"

    def kernel(self, backend: str, stage: str = "fwd") -> Callable:
        """The ``<kernels>_<stage>`` launcher of ``backend``."""
        return launcher(backend, self.kernels or self.name, f"{self.kernels or self.name}_{stage}")

    def resolve(self, requested: str, device: torch.device, op: Optional[str] = None,
                candidates: Optional[Sequence[str]] = None) -> str:
        """The backend that runs this op for tensors on ``device`` (errors name ``op``)."""
        return _backend.resolve(op or self.name, requested, device, self.backends if candidates is None else candidates)


def _autograd(spec: OpSpec, n_args: int) -> Callable:
    def backward(ctx, *grad_outputs):
        grads = tuple(spec.grads(ctx, *grad_outputs))
        needs = ctx.needs_input_grad
        return tuple(g if need else None for g, need in zip(grads, needs)) + (None,) * (n_args - len(grads))

    return backward


def define(spec: OpSpec):
    """Register ``spec`` (and its backward op) with torch; returns ``torch.ops.fastfields.<name>``."""
    op = torch.library.custom_op(spec.qualname, spec.impl, mutates_args=(), schema=spec.schema)
    op.register_fake(spec.fake)
    if spec.backward is not None:
        define(spec.backward)
    if spec.grads is not None:
        op.register_autograd(_autograd(spec, len(schema_arguments(spec.schema))), setup_context=spec.setup_context)
    return getattr(getattr(torch.ops, NAMESPACE), spec.name)


# ---------------------------------------------------------------------------------------
# Helpers the specs share.


def save_inputs(n_tensors: int) -> Callable:
    """A ``setup_context`` saving the first ``n_tensors`` inputs for the backward and the rest
    (options, backend) as ``ctx.options``."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.options = tuple(inputs[n_tensors:])

    return setup_context


def grad_like(grad: Optional[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """``grad`` in the layout and dtype of ``torch.empty_like(target)`` (zeros if None).

    Custom ops promise their output strides through the fake implementation; gradients
    follow their input's layout (channels-last planes get channels-last gradients).
    """
    out = torch.empty_like(target)
    if grad is None:
        return out.zero_()
    if grad.stride() == out.stride() and grad.dtype == out.dtype:
        return grad
    return out.copy_(grad)


def gather_layout(grid: torch.Tensor, channel_dim: int, taps: int) -> torch.Tensor:
    """The layout a gather kernel reads fastest: ``grid`` (same shape and values) stored with
    dimension ``channel_dim`` innermost, copied when it is not and its texels will be read at
    least once each on average (``taps``, the kernel's corner reads, >= texels = numel / C).

    In any other layout a tap costs one cache line (GPU: one sector) per channel instead of one
    contiguous run of C values; the copy reads and writes each value once. Few points on a large
    grid keep the grid as it is.
    """
    channels = grid.shape[channel_dim]
    if channels <= 1 or grid.stride(channel_dim) == 1 or taps < grid.numel() // channels:
        return grid
    return grid.movedim(channel_dim, -1).contiguous().movedim(-1, channel_dim)


def gradients(grads: Sequence[Optional[torch.Tensor]], inputs: Sequence[torch.Tensor], needs: Sequence[bool]):
    """A backward op's outputs: each needed gradient in its input's layout (:func:`grad_like`),
    an empty tensor for each one not needed (custom ops cannot return None)."""
    return tuple(grad_like(g, t) if need else t.new_empty(0) for g, t, need in zip(grads, inputs, needs))


def gradients_fake(inputs: Sequence[torch.Tensor], needs: Sequence[bool]):
    """The fake of :func:`gradients`."""
    return tuple(torch.empty_like(t) if need else t.new_empty(0) for t, need in zip(inputs, needs))


def reference_grads(reference: Callable, inputs: Sequence[Optional[torch.Tensor]], needs: Sequence[bool], grad_out,
                    context: Callable = contextlib.nullcontext):
    """Gradients of ``reference(*inputs)`` w.r.t. the needed inputs with ``create_graph=True``.

    The compiled backends have first-order kernels; a backward run with ``create_graph=True``
    (eikonal losses, R1 penalties) comes here so its result can be differentiated again.
    Returns one entry per input: the gradient (zeros if unused) where needed, else None.
    """
    with torch.enable_grad(), context():
        out = reference(*inputs)
        wanted = [t for t, need in zip(inputs, needs) if need]
        found = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = [next(found) if need else None for need in needs]
    return [torch.zeros_like(t) if need and g is None else g for g, t, need in zip(result, inputs, needs)]


def backward_or_reference(backward: str, reference: Callable, n_tensors: int,
                          flags: Callable[[Sequence[bool]], Sequence[bool]] = tuple) -> Callable:
    """The ``grads`` of an op saved with :func:`save_inputs` whose backward op takes
    ``(grad_out, *tensors, *options, *flags(needs))``.

    First-order backward: the backward op ``fastfields::<backward>`` on the forward's backend.
    With ``create_graph=True``: :func:`reference_grads` through ``reference(*tensors, *options)``.
    """

    def grads(ctx, grad_out):
        tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[:n_tensors]
        if torch.is_grad_enabled():
            return reference_grads(lambda *ts: reference(*ts, *ctx.options), tensors, needs, grad_out)
        return getattr(torch.ops.fastfields, backward)(grad_out, *tensors, *ctx.options, *flags(needs))

    return grads
