"""LRM's image-to-triplane transformer (the paper's "image-to-triplane decoder"): learnable
triplane tokens ``pos_embed [1, 3 h w, D]`` cross-attend to the image tokens, self-attend and
pass an MLP, each norm adaLN-modulated by the camera embedding (OpenLRM's
``TransformerDecoder`` in ``cond_mod`` mode, built from :mod:`fastfields.nn`)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fastfields.nn import TransformerDecoder

from .config import LRMConfig


class CameraEmbedder(nn.Module):
    """``Linear(raw, D), SiLU, Linear(D, D)`` (OpenLRM's ``CameraEmbedder``, from DiT):
    a raw camera feature ``[N, camera_dim]`` -> the modulation ``[N, camera_embed_dim]``."""

    def __init__(self, raw_dim: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(raw_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def triplane_tokens(config: LRMConfig) -> nn.Parameter:
    """The learnable triplane tokens ``[1, 3 * triplane_low_res^2, transformer_dim]``,
    initialised as OpenLRM: ``N(0, 1) / sqrt(D)``."""
    D, L = config.transformer_dim, 3 * config.triplane_low_res**2
    return nn.Parameter(torch.randn(1, L, D) / math.sqrt(D))


def build_transformer(config: LRMConfig, backend: str = "auto") -> TransformerDecoder:
    """OpenLRM's ``TransformerDecoder(block_type="cond_mod")`` of ``config``'s sizes (its
    parameter names: ``layers.{i}.{norm1, cross_attn, norm2, self_attn, norm3, mlp}``, ``norm``).
    ``transformer(tokens [N, L, D], image_tokens [N, Lc, Dc], mod [N, Dm]) -> [N, L, D]``."""
    return TransformerDecoder(
        "cond_mod", config.transformer_layers, config.transformer_heads, config.transformer_dim,
        config.encoder_feat_dim, config.camera_embed_dim, eps=1e-6, norm_backend=backend, attn_backend=backend,
    )


def set_transformer_backend(transformer: nn.Module, backend: str) -> None:
    """Point every fused op (adaLN, attention) of ``transformer`` at ``backend``."""
    for module in transformer.modules():
        if hasattr(module, "backend"):
            module.backend = backend


__all__ = ["CameraEmbedder", "build_transformer", "set_transformer_backend", "triplane_tokens"]
