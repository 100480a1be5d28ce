"""Benchmark cases of ``adaln_modulate`` against OpenLRM's eager ``ModLN`` (LayerNorm, then modulate).

The shape is LRM-large's decoder: 3 x 32 x 32 = 3072 triplane tokens of width 1024, four
samples per batch.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from ..ops.adaln_modulate import adaln_modulate
from .harness import Case


def openlrm_modln(x, shift, scale, weight, bias, gate=None, residual=None, eps=1e-6):
    """The baseline: ``nn.LayerNorm`` then ``x * (1 + scale) + shift`` (OpenLRM's ModLN), plus DiT's gated residual."""
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    if gate is not None:
        y = gate.unsqueeze(1) * y
    return y if residual is None else residual + y


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def adaln_case(B: int, L: int, D: int, dtype: torch.dtype, gated: bool = False) -> Case:
    name = f"{'gated residual ' if gated else ''}B={B} L={L} D={D} {str(dtype).replace('torch.', '')} vs eager ModLN"
    optional = ("gate", "residual") if gated else ()

    def make_inputs(device) -> Dict[str, torch.Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(0)
        shapes = {"x": (B, L, D), "shift": (B, D), "scale": (B, D), "weight": (D,), "bias": (D,)}
        shapes.update({"gate": (B, D), "residual": (B, L, D)} if gated else {})
        return {k: torch.randn(*shape, generator=gen).to(device, dtype) for k, shape in shapes.items()}

    def fused(x, backend):
        return adaln_modulate(
            x["x"], x["shift"], x["scale"], weight=x["weight"], bias=x["bias"],
            gate=x.get("gate"), residual=x.get("residual"), backend=backend,
        )

    # Compulsory traffic: tokens (and residual) read once, output written once; the backward
    # reads x and dout and writes dx (and d residual).
    def bytes_forward(x):
        return _nbytes(*x.values()) + _nbytes(x["x"])

    def bytes_backward(x):
        return 3 * _nbytes(x["x"]) + (_nbytes(x["residual"]) if gated else 0)

    return Case(
        op="adaln_modulate",
        name=name,
        make_inputs=make_inputs,
        fused=fused,
        baseline=lambda x: openlrm_modln(
            x["x"], x["shift"], x["scale"], x["weight"], x["bias"], x.get("gate"), x.get("residual")
        ),
        bytes_forward=bytes_forward,
        bytes_backward=bytes_backward,
        grad_inputs=("x", "shift", "scale", "weight", "bias") + optional,
        backends=("triton", "cpu"),
    )


def cases(device: torch.device, full: bool = False) -> List[Case]:
    if device.type == "cuda":
        found = [adaln_case(4, 3072, 1024, torch.bfloat16), adaln_case(4, 3072, 1024, torch.float32)]
        if full:
            found.append(adaln_case(4, 3072, 1024, torch.bfloat16, gated=True))
        return found
    found = [adaln_case(4, 3072, 1024, torch.float32)]
    if full:
        found.append(adaln_case(4, 3072, 1024, torch.float32, gated=True))
        found.append(adaln_case(4, 3072, 1024, torch.bfloat16))
    return found
