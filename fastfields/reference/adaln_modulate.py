"""Reference adaLN modulation: ``F.layer_norm``, then the per-sample shift/scale (and gate), as DiT/OpenLRM write it."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def adaln_modulate_reference(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-6,
    gate: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Layer-normalise ``x [B, L, D]`` over D and modulate it per sample.

    ``y = LayerNorm(x; weight, bias, eps) * (1 + scale) + shift`` with ``shift``,
    ``scale`` (and ``gate``) ``[B, D]`` broadcast over the L tokens, then
    ``out = residual + gate * y``, where a missing ``gate`` counts as 1 and a missing
    ``residual [B, L, D]`` as 0. Math runs in float32 (float64 stays float64); the
    result takes x's dtype.
    """
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    def up(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t.to(compute_dtype)

    y = F.layer_norm(up(x), (x.shape[-1],), up(weight), up(bias), eps)
    y = y * (1 + up(scale).unsqueeze(1)) + up(shift).unsqueeze(1)
    if gate is not None:
        y = up(gate).unsqueeze(1) * y
    if residual is not None:
        y = up(residual) + y
    return y.to(x.dtype)
