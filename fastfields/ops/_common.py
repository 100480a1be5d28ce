"""Pieces every op module shares: reaching a compiled backend, and gradient layouts."""

from __future__ import annotations

from typing import Optional

import torch

from .. import _build


def compiled_ops(backend: str):
    """``torch.ops.fastfields_cpu`` or ``torch.ops.fastfields_cuda``, built and loaded on first use."""
    _build.load_extension(backend)
    return getattr(torch.ops, f"fastfields_{backend}")


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
