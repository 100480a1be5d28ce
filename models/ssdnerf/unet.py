"""The ADM-style denoiser: SSDNeRF's ``DenoisingUnetMod`` (lib/models/architecture/ddpm), which
subclasses mmgen's ``DenoisingUnet``; module and parameter names are mmgen's, so an official
state dict loads as it is.

    h = in_blocks[0](x)                         # Conv 3x3, in -> base
    encoder: per level, ``resblocks_per_downsample`` x [ResBlock (+ attention at the listed
             resolutions)], then a stride-2 conv (not after the last level)
    mid:     ResBlock, attention, ResBlock
    decoder: per level (reversed), ``resblocks_per_downsample + 1`` x [ResBlock on
             cat(h, skip) (+ attention)], the last one followed by nearest x2 + conv
    out:     GroupNorm -> SiLU -> Conv 3x3 (mmcv ConvModule order ('norm', 'act', 'conv'))

ResBlock: ``conv_1 = GN, SiLU, Conv``; ``norm_with_embedding``: GN then ``x * (1 + scale) +
shift`` from ``Linear(SiLU(emb))``; ``conv_2 = SiLU, [Dropout], Conv``; 1x1 ``shortcut`` when the
width changes. Attention: GN, ``qkv`` Conv1d, heads split as mmgen does (each head's q, k, v
are consecutive channel blocks), softmax in float32, ``proj`` Conv1d, residual. The time
embedding is sinusoidal (``cos`` then ``sin``) -> Linear -> SiLU -> Linear, width ``4 * base``.
Zero init as improved-DDPM: every ``conv_2`` conv, the output conv and every ``proj``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """mmgen ``TimeEmbedding.sinusodial_embedding``: ``[B] -> [B, dim]`` (cos first, then sin)."""
    half = dim // 2
    freqs = torch.exp(-np.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimeEmbedding(nn.Module):
    def __init__(self, in_channels: int, embedding_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.blocks = nn.Sequential(nn.Linear(in_channels, embedding_channels), nn.SiLU(),
                                    nn.Linear(embedding_channels, embedding_channels))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.blocks(sinusoidal_embedding(t, self.in_channels))


class NormWithEmbedding(nn.Module):
    def __init__(self, in_channels: int, embedding_channels: int, groups: int, use_scale_shift: bool = True) -> None:
        super().__init__()
        self.use_scale_shift = use_scale_shift
        self.norm = nn.GroupNorm(groups, in_channels)
        out = in_channels * 2 if use_scale_shift else in_channels
        self.embedding_layer = nn.Sequential(nn.SiLU(), nn.Linear(embedding_channels, out))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding_layer(y)[:, :, None, None]
        if self.use_scale_shift:
            scale, shift = torch.chunk(embedding, 2, dim=1)
            return self.norm(x) * (1 + scale) + shift
        return self.norm(x + embedding)


class DenoisingResBlock(nn.Module):
    def __init__(self, in_channels: int, embedding_channels: int, use_scale_shift_norm: bool, dropout: float,
                 out_channels: int = None, groups: int = 32) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.conv_1 = nn.Sequential(nn.GroupNorm(groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.norm_with_embedding = NormWithEmbedding(out_channels, embedding_channels, groups, use_scale_shift_norm)
        layers = [nn.SiLU()] + ([nn.Dropout(dropout)] if dropout > 0 else []) + [nn.Conv2d(out_channels, out_channels, 3, padding=1)]
        self.conv_2 = nn.Sequential(*layers)
        self.learnable_shortcut = out_channels != in_channels
        if self.learnable_shortcut:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        nn.init.zeros_(self.conv_2[-1].weight)
        nn.init.zeros_(self.conv_2[-1].bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if self.learnable_shortcut else x
        x = self.conv_1(x)
        x = self.norm_with_embedding(x, y)
        return self.conv_2(x) + shortcut


class MultiHeadAttention(nn.Module):
    def __init__(self, in_channels: int, num_heads: int, groups: int = 32) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, in_channels)
        self.qkv = nn.Conv1d(in_channels, in_channels * 3, 1)
        self.proj = nn.Conv1d(in_channels, in_channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @staticmethod
    def qkv_attention(qkv: torch.Tensor) -> torch.Tensor:
        """mmgen ``QKVAttention``: ``[B*heads, 3c, T] -> [B*heads, c, T]``."""
        channel = qkv.shape[1] // 3
        q, k, v = torch.chunk(qkv, 3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(channel))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        n = x.shape[-1]
        qkv = self.qkv(self.norm(x)).reshape(b * self.num_heads, -1, n)
        h = self.qkv_attention(qkv).reshape(b, -1, n)
        return (self.proj(h) + x).reshape(b, c, *spatial)


class DenoisingDownsample(nn.Module):
    def __init__(self, in_channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.downsample = nn.Conv2d(in_channels, in_channels, 3, 2, 1) if with_conv else nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x)


class DenoisingUpsample(nn.Module):
    def __init__(self, in_channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.with_conv else x


class EmbedSequential(nn.Sequential):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, y) if isinstance(layer, DenoisingResBlock) else layer(x)
        return x


class OutBlock(nn.Module):
    """mmcv ``ConvModule(order=('norm', 'act', 'conv'))``: names ``conv`` and ``gn``."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.gn = nn.GroupNorm(groups, in_channels)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.gn(x)))


class DenoisingUnet(nn.Module):
    """``DenoisingUnetMod(image_size, in_channels, base_channels, channels_cfg, ...)``.

    ``forward(x_t [B, C, H, W], t [B] int) -> [B, C, H, W]`` (v-prediction in SSDNeRF).
    """

    def __init__(self, image_size: int, in_channels: int, base_channels: int = 128,
                 channels_cfg: Sequence[int] = (1, 2, 2, 4, 4), resblocks_per_downsample: int = 2, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True, num_heads: int = 4, attention_res: Sequence[int] = (32, 16, 8),
                 downsample_conv: bool = True, upsample_conv: bool = True, norm_groups: int = 32,
                 num_timesteps: int = 1000) -> None:
        super().__init__()
        self.image_size = image_size
        self.in_channels = in_channels
        self.num_timesteps = num_timesteps
        emb = base_channels * 4
        self.time_embedding = TimeEmbedding(base_channels, emb)

        def resblock(cin, cout=None):
            return DenoisingResBlock(cin, emb, use_scale_shift_norm, dropout, cout, norm_groups)

        def attention(c):
            return MultiHeadAttention(c, num_heads, norm_groups)

        attention_scale = [image_size // int(r) for r in attention_res]
        scale = 1
        self.in_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, base_channels, 3, 1, padding=1))])
        skip_channels = [base_channels]
        ch = base_channels
        for level, factor in enumerate(channels_cfg):
            for _ in range(resblocks_per_downsample):
                layers = [resblock(ch, base_channels * factor)]
                ch = base_channels * factor
                if scale in attention_scale:
                    layers.append(attention(ch))
                skip_channels.append(ch)
                self.in_blocks.append(EmbedSequential(*layers))
            if level != len(channels_cfg) - 1:
                self.in_blocks.append(EmbedSequential(DenoisingDownsample(ch, downsample_conv)))
                skip_channels.append(ch)
                scale *= 2
        self.mid_blocks = EmbedSequential(resblock(ch), attention(ch), resblock(ch))
        self.out_blocks = nn.ModuleList()
        for level, factor in enumerate(list(channels_cfg)[::-1]):
            for idx in range(resblocks_per_downsample + 1):
                layers = [resblock(ch + skip_channels.pop(), base_channels * factor)]
                ch = base_channels * factor
                if scale in attention_scale:
                    layers.append(attention(ch))
                if level != len(channels_cfg) - 1 and idx == resblocks_per_downsample:
                    layers.append(DenoisingUpsample(ch, upsample_conv))
                    scale //= 2
                self.out_blocks.append(EmbedSequential(*layers))
        self.out = OutBlock(ch, in_channels, norm_groups)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.float() * (1000.0 / self.num_timesteps)  # use_rescale_timesteps
        embedding = self.time_embedding(t)
        h, hs = x_t, []
        for block in self.in_blocks:
            h = block(h, embedding)
            hs.append(h)
        h = self.mid_blocks(h, embedding)
        for block in self.out_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), embedding)
        return self.out(h)
