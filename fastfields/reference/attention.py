"""Reference attention: ``F.scaled_dot_product_attention`` (softmax(q k^T * scale) v)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None
) -> torch.Tensor:
    """``softmax(q @ k^T * scale) @ v`` over the keys, no mask, no dropout.

    ``q [B, H, Lq, Dh]``, ``k`` and ``v [B, H, Lk, Dh]``; ``scale`` defaults to
    ``1 / sqrt(Dh)``. Returns ``[B, H, Lq, Dh]`` in q's dtype; zero keys (Lk = 0)
    give zeros, as SDPA does. A NaN in a query row makes that row's output NaN, as the
    math formula does (SDPA's fused CPU kernel returns zeros for it; the mask below costs
    one elementwise pass and no host sync).
    """
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return out
    nan_rows = torch.isnan(q).any(dim=-1, keepdim=True)
    return out.masked_fill(nan_rows, float("nan"))
