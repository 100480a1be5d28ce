"""Benchmark cases of ``attention`` against ``F.scaled_dot_product_attention``, and of a whole
LRM-large decoder block (``fastfields.nn.ModulatedTransformerBlock``) against OpenLRM's eager block.

GPU only: the Triton kernels have no CPU backend (the interpreter is for tests, never timed).
Shapes are LRM-large's: 3072 triplane tokens, width 1024, 16 heads of 64, attending to 1025
DINO image tokens of width 768.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import ModulatedTransformerBlock
from ..ops.attention import attention
from .harness import Case


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def attention_case(B: int, H: int, Lq: int, Lk: int, Dh: int, dtype: torch.dtype) -> Case:
    kind = "self" if Lq == Lk else "cross"
    name = f"{kind} B={B} H={H} Lq={Lq} Lk={Lk} Dh={Dh} {str(dtype).replace('torch.', '')} vs SDPA"

    def make_inputs(device) -> Dict[str, torch.Tensor]:
        gen = torch.Generator(device="cpu").manual_seed(0)
        return {k: torch.randn(B, H, L, Dh, generator=gen).to(device, dtype) for k, L in (("q", Lq), ("k", Lk), ("v", Lk))}

    # Compulsory traffic (attention is compute-bound; this is the floor, not the cost).
    def bytes_forward(x):
        return _nbytes(*x.values()) + _nbytes(x["q"])

    def bytes_backward(x):
        return 2 * _nbytes(*x.values()) + 2 * _nbytes(x["q"])

    return Case(
        op="attention",
        name=name,
        make_inputs=make_inputs,
        fused=lambda x, backend: attention(x["q"], x["k"], x["v"], backend=backend),
        baseline=lambda x: F.scaled_dot_product_attention(x["q"], x["k"], x["v"]),
        bytes_forward=bytes_forward,
        bytes_backward=bytes_backward,
        grad_inputs=("q", "k", "v"),
        backends=("triton",),
    )


class OpenLRMBlock(nn.Module):
    """The baseline block as OpenLRM writes it: ``nn.LayerNorm`` + modulate, ``nn.MultiheadAttention``."""

    def __init__(self, inner_dim: int, cond_dim: int, mod_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        for i in (1, 2, 3):
            norm = nn.Module()
            norm.norm = nn.LayerNorm(inner_dim, eps=eps)
            norm.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, 2 * inner_dim))
            setattr(self, f"norm{i}", norm)
        self.cross_attn = nn.MultiheadAttention(inner_dim, num_heads, kdim=cond_dim, vdim=cond_dim, bias=False, batch_first=True)
        self.self_attn = nn.MultiheadAttention(inner_dim, num_heads, bias=False, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(inner_dim, 4 * inner_dim), nn.GELU(), nn.Dropout(0.0), nn.Linear(4 * inner_dim, inner_dim), nn.Dropout(0.0)
        )

    @staticmethod
    def _modln(norm: nn.Module, x, mod):
        shift, scale = norm.mlp(mod).chunk(2, dim=-1)
        return norm.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    def forward(self, x, cond, mod):
        x = x + self.cross_attn(self._modln(self.norm1, x, mod), cond, cond, need_weights=False)[0]
        h = self._modln(self.norm2, x, mod)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self._modln(self.norm3, x, mod))


def lrm_block_case(B: int, dtype: torch.dtype, attn_backend: str) -> Case:
    """One LRM-large block: Triton norms, and the attention core on Triton (``attn_backend="same"``)
    or SDPA (``"torch"``); the projections and the MLP are the same cuBLAS GEMMs in both."""
    D, C, M, H, L, Lc = 1024, 768, 1024, 16, 3072, 1025
    core = "SDPA" if attn_backend == "torch" else "fused"
    name = f"LRM-large block B={B} {str(dtype).replace('torch.', '')} (attention core: {core}) vs OpenLRM eager"
    modules: Dict[str, nn.Module] = {}

    def make_inputs(device) -> Dict[str, torch.Tensor]:
        torch.manual_seed(0)
        baseline = OpenLRMBlock(D, C, M, H).to(device, dtype)
        modules["baseline"] = baseline
        block = ModulatedTransformerBlock(
            D, C, M, H, 1e-6, norm_backend="triton", attn_backend="triton" if attn_backend == "same" else attn_backend
        )
        block.load_state_dict(baseline.state_dict(), strict=True)
        modules["triton"] = block.to(device, dtype)
        gen = torch.Generator(device="cpu").manual_seed(0)
        shapes = {"x": (B, L, D), "cond": (B, Lc, C), "mod": (B, M)}
        return {k: torch.randn(*shape, generator=gen).to(device, dtype) for k, shape in shapes.items()}

    def weights_bytes() -> int:
        return _nbytes(*modules["baseline"].parameters())

    return Case(
        op="lrm_block",
        name=name,
        make_inputs=make_inputs,
        fused=lambda x, backend: modules[backend](x["x"], x["cond"], x["mod"]),
        baseline=lambda x: modules["baseline"](x["x"], x["cond"], x["mod"]),
        bytes_forward=lambda x: _nbytes(*x.values()) + _nbytes(x["x"]) + weights_bytes(),
        bytes_backward=lambda x: 2 * (_nbytes(*x.values()) + _nbytes(x["x"]) + weights_bytes()),
        grad_inputs=("x", "cond", "mod"),
        backends=("triton",),
    )


def cases(device: torch.device, full: bool = False) -> List[Case]:
    if device.type != "cuda":
        return []
    found = [
        attention_case(4, 16, 3072, 1025, 64, torch.bfloat16),
        lrm_block_case(1, torch.bfloat16, attn_backend="torch"),
        lrm_block_case(1, torch.bfloat16, attn_backend="same"),
    ]
    if full:
        found += [
            attention_case(4, 16, 3072, 3072, 64, torch.bfloat16),
            attention_case(4, 16, 3072, 257, 64, torch.bfloat16),
            attention_case(4, 16, 3072, 1025, 64, torch.float16),
            attention_case(2, 8, 3072, 1025, 128, torch.bfloat16),
            lrm_block_case(4, torch.bfloat16, attn_backend="torch"),
        ]
    return found
