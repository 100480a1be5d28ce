"""Argument checks shared by the ops: each error names the op, the argument and what was expected."""

from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(op: str, name: str, value, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{op}: {name} must be a {ndim}-D tensor {layout}, got shape {tuple(value.shape)}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16, bfloat16 or float64, got {value.dtype}")
    return value


def check_dim(op: str, name: str, value: torch.Tensor, dim: int, expected: int, layout: str) -> None:
    if value.shape[dim] != expected:
        raise ValueError(f"{op}: {name} must have shape {layout} with size {expected} at dim {dim}, got shape {tuple(value.shape)}")


def check_same_device(op: str, named: Iterable[Tuple[str, torch.Tensor]]) -> None:
    named = list(named)
    first_name, first = named[0]
    for name, tensor in named[1:]:
        if tensor.device != first.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but {first_name} is on {first.device}; move them to one device")


def check_coords_dtype(op: str, name: str, coords: torch.Tensor, features_name: str, features: torch.Tensor) -> None:
    """Coordinates share the features' dtype, or are float32 (finer coordinates for half-precision features)."""
    if coords.dtype != features.dtype and coords.dtype != torch.float32:
        raise TypeError(
            f"{op}: {name} must have the dtype of {features_name} ({features.dtype}) or float32, got {coords.dtype}"
        )


def check_choice(op: str, name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {value!r}")
    return value


def check_finite_float(op: str, name: str, value, *, positive: bool = False, allow_none: bool = False):
    """A real number (not a bool) that is finite (and > 0 when ``positive``); None when ``allow_none``."""
    import math
    import numbers

    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a float{' or None' if allow_none else ''}, got {value!r}")
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{op}: {name} must be a finite{' positive' if positive else ''} float, got {value!r}")
    return value


def check_not_meta(op: str, named: Iterable[Tuple[str, object]], why: str) -> None:
    """Refuse meta tensors (no data) where the op must read values on the host (``why``)."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_meta:
            raise ValueError(f"{op}: {name} is a meta tensor (shape only, no data), but {why}; pass a CPU or CUDA tensor")
