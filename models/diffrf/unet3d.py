"""DiffRF's denoiser: an ADM-style U-Net (Dhariwal & Nichol 2021) with every 2D layer made 3D.

``UNet3D(config)(x [B, 4, D, H, W], t [B]) -> eps [B, 4, D, H, W]``. Parts, as ADM's
``UNetModel``: a sinusoidal timestep embedding and its MLP; input blocks (a 3x3x3 conv, then
per resolution level ``num_res_blocks`` res-blocks, self-attention where the grid side is in
``attention_resolutions``, and a stride-2 conv down); a middle res-block / attention /
res-block; output blocks mirroring the input ones over the concatenated skips with
nearest-neighbour upsampling and a conv; GroupNorm, SiLU, and a zero-initialised last conv.
Res-blocks take the timestep embedding as a scale and shift of their second GroupNorm
(``use_scale_shift_norm``) and zero-initialise their last conv, so each block starts as
the identity. Attention runs through ``fastfields.attention`` over the ``D*H*W`` tokens.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ... import attention as ff_attention
from .config import DiffRFConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """ADM's sinusoidal embedding ``[B, dim]``: ``[cos(t f_k), sin(t f_k)]`` with
    ``f_k = max_period^(-k / (dim / 2))`` (zero-padded when dim is odd)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (ADM's), returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResBlock3D(nn.Module):
    """``x + F(x, emb)``: GN-SiLU-conv, timestep scale/shift on the second GN, SiLU, dropout,
    zero-initialised conv; a 1x1x1 conv on the skip when the width changes."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int,
                 use_scale_shift_norm: bool):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1) * out_channels))
        self.out_norm = GroupNorm32(groups, out_channels)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv3d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv3d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


class AttentionBlock3D(nn.Module):
    """Multi-head self-attention over the voxels of ``[B, C, D, H, W]`` (``C / head_channels``
    heads), pre-GroupNorm, zero-initialised output projection, residual."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(channels // head_channels, 1)
        if channels % self.heads:
            raise ValueError(f"AttentionBlock3D: channels {channels} not divisible into {self.heads} heads")
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(tokens)).reshape(b, 3, self.heads, c // self.heads, -1)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, L, Dh]
        h = ff_attention(q.contiguous(), k.contiguous(), v.contiguous())
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj_out(h).reshape(x.shape)


class Downsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.ModuleList):
    """Layers applied in order; res-blocks also get the timestep embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock3D) else layer(x)
        return x


class UNet3D(nn.Module):
    """The ADM U-Net in 3D (see the module docstring); widths from :class:`DiffRFConfig`."""

    def __init__(self, config: DiffRFConfig):
        super().__init__()
        self.config = config
        ch, groups = config.model_channels, config.groups
        emb = 4 * ch
        block = dict(dropout=config.dropout, groups=groups, use_scale_shift_norm=config.use_scale_shift_norm)
        self.time_embed = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([TimestepSequential([nn.Conv3d(config.channels, ch, 3, padding=1)])])
        skips: List[int] = [ch]
        side, width = config.resolution, ch
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers = [ResBlock3D(width, emb, mult * ch, **block)]
                width = mult * ch
                if side in config.attention_resolutions:
                    layers.append(AttentionBlock3D(width, config.num_head_channels, groups))
                self.input_blocks.append(TimestepSequential(layers))
                skips.append(width)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential([Downsample3D(width)]))
                skips.append(width)
                side //= 2
        self.middle_block = TimestepSequential([
            ResBlock3D(width, emb, width, **block),
            AttentionBlock3D(width, config.num_head_channels, groups),
            ResBlock3D(width, emb, width, **block),
        ])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock3D(width + skips.pop(), emb, mult * ch, **block)]
                width = mult * ch
                if side in config.attention_resolutions:
                    layers.append(AttentionBlock3D(width, config.num_head_channels, groups))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample3D(width))
                    side *= 2
                self.output_blocks.append(TimestepSequential(layers))
        self.out = nn.Sequential(GroupNorm32(groups, width), nn.SiLU(), _zero(nn.Conv3d(width, config.channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x [B, 4, R, R, R]``, ``t [B]`` integer timesteps -> eps ``[B, 4, R, R, R]``."""
        cfg = self.config
        expected = (cfg.channels, cfg.resolution, cfg.resolution, cfg.resolution)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"UNet3D: x must have shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"UNet3D: t must have shape [B] = [{x.shape[0]}], got {list(t.shape)}")
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
