"""ZeroRF (Shi et al., CVPR 2024): sparse-view 360 reconstruction with a deep image prior on
a factorised (TensoRF-VM) field, fitted per scene with no pretraining.

The planes and lines are not parameters: each is decoded from its own frozen Gaussian noise
by an untrained generator, and the generators' weights are what is optimised. The
convolutional structure biases the field towards smooth, natural signals, which is what
makes four to eight views enough. Generators (``lib/models/zerorf/generators.py``):

- ``Tensorial2D``: a Stable-Diffusion-VAE-style decoder (diffusers ``Decoder``): ``conv_in`` ->
  mid block (resnet, single-head self-attention, resnet) -> up blocks of ``layers_per_block + 1``
  resnets with a nearest x2 + conv upsampler between them -> GroupNorm, SiLU, ``conv_out``.
  Noise ``[1, noise_ch, r, r]`` becomes a plane ``[1, channels, 2^(n-1) r, 2^(n-1) r]`` for n
  blocks (official: n = 5, x16). Kaiming (fan-out) convolutions, zero-initialised residual
  branches (every resnet's ``conv2`` and the attention output), as ZeroRF's ``VAEDecoder``.
- ``Tensorial1D``: conv1d blocks (conv, GroupNorm, SiLU, linear upsampling to a set length),
  ``conv_out`` and a final SiLU: noise ``[1, noise_ch, r]`` -> a line ``[1, channels, 16 r]``.

Everything after the generators (VM lookup, decoder, occupancy-grid rendering) is
ZeroRF's renderer and loss: :mod:`fastfields.models.field_vm` (the TensoRF baseline is its own
model, :mod:`fastfields.models.tensorf`).

Parameter names follow the official code: ``generator.subs.{i}`` is ZeroRF's
``decoder.preprocessor.subs.{i}`` (order xy, z, yz, x, zx, y; ``.noise`` and ``.net.*`` with
diffusers' names) and ``decoder`` its ``decoder.common_decoder``; :func:`convert_official_state_dict`
maps a ``nerf-zerorf.pt`` onto this model.

    >>> from fastfields.models.zerorf import ZeroRF
    >>> model = ZeroRF.fit(images, c2w, focal, config="cpu", iters=2000)    # doctest: +SKIP
    >>> frames = model.render(c2w_test, 100, 100, focal)                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .field_vm import Tensors, VMFieldConfig, VMRadianceField

#: ZeroRF's ``tensor_config``: the generator order, planes and lines interleaved.
TENSOR_CONFIG = ("xy", "z", "yz", "x", "zx", "y")
NORM_EPS = 1e-6  # diffusers' resnet_eps / GroupNorm eps in the VAE decoder


#: The cpu preset refreshes the full 64^3 grid every CPU_GRID_EVERY iterations with decay
#: 0.9^CPU_GRID_EVERY (the same forgetting per iteration as ZeroRF's 0.9 every iteration).
#: Measured on 2 cores (mic 100^2, 4 views, 2026-12-05): one full-grid update (a density decode
#: at each of the 64^3 cells) takes 120 ms against 223 ms for a training
#: iteration without it. Every iteration would make training 1.54x longer (2400 iterations:
#: about 820 s instead of 530 s, past the ten-minute budget); every 4th costs 13%.
CPU_GRID_EVERY = 4


@dataclass
class ZeroRFConfig(VMFieldConfig):
    """ZeroRF's generator sizes on top of the shared field / renderer / schedule settings.

    Attributes:
        noise_res: side of the frozen noise (``--model-res``; plane side = ``noise_res * 2^(n-1)``).
        noise_ch: noise channels (``--model-ch``).
        block_channels: the 2D decoder's ``block_out_channels`` (n blocks, n - 1 upsamplers).
        layers_per_block: resnets per up block minus one (diffusers' convention).
        norm_groups: GroupNorm groups of the 2D decoder.
        attention: the mid block's self-attention (the official decoder has it).
        line_channels: the 1D decoder's channels, ``conv_in`` output first (``len = n + 1``).
        line_upsample: length of each 1D block's output in units of ``noise_res`` (the last
            must equal the planes' factor ``2^(n-1)``).
        line_norm_groups: GroupNorm groups of the 1D decoder.
    """

    noise_res: int = 20
    noise_ch: int = 8
    block_channels: Tuple[int, ...] = (32, 64, 64, 128, 256)
    layers_per_block: int = 1
    norm_groups: int = 32
    attention: bool = True
    line_channels: Tuple[int, ...] = (128, 128, 128, 64, 32, 32)
    line_upsample: Tuple[int, ...] = (2, 4, 8, 16, 16)
    line_norm_groups: int = 16

    zero_allowed = ("layers_per_block",)

    @property
    def upsample(self) -> int:
        return 2 ** (len(self.block_channels) - 1)

    @property
    def plane_resolution(self) -> int:
        return self.noise_res * self.upsample

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if len(self.line_channels) != len(self.line_upsample) + 1:
            raise ValueError(f"{name}: line_channels needs one more entry than line_upsample, got "
                             f"{self.line_channels} and {self.line_upsample}")
        if self.line_upsample[-1] != self.upsample:
            raise ValueError(f"{name}: lines must match the planes: line_upsample[-1] = {self.line_upsample[-1]} "
                             f"but block_channels give x{self.upsample}")
        for key, groups, chans in (("block_channels", self.norm_groups, self.block_channels),
                                   ("line_channels", self.line_norm_groups, self.line_channels[1:])):
            bad = [ch for ch in chans if ch % groups]
            if bad:
                raise ValueError(f"{name}: {key} {bad} are not divisible by their GroupNorm groups ({groups})")


PRESETS: Dict[str, ZeroRFConfig] = {
    # The official ZeroRF --rep=tensorf setup (zerorf.py / opt.py defaults, NeRF-synthetic, GPU).
    "paper": ZeroRFConfig(),
    # Two CPU cores, about nine minutes on the shipped 100^2 mic views (4 views: 528 s, 27.4 dB
    # held-out; 1000 iterations gave 24.3 dB in 239 s): 128^2 planes from 8^2 noise, a quarter
    # of the generator channels, fewer rays and a coarser smallest step. CPU_GRID_EVERY says
    # why the grid is refreshed every 4th iteration.
    "cpu": ZeroRFConfig(
        noise_res=8, block_channels=(16, 32, 32, 64, 64), norm_groups=8, line_channels=(64, 64, 64, 32, 16, 16),
        line_norm_groups=8, max_steps=256, grid_every=CPU_GRID_EVERY, grid_decay=round(0.9**CPU_GRID_EVERY, 4),
        n_rays=4096, n_rays_init=1024, iters=2400, lr=4e-3, render_chunk=1 << 14,
    ),
    # Unit tests: 8^2 planes, a few hundred rays, an 8^3 grid.
    "tiny": ZeroRFConfig(
        channels=4, hidden=16, noise_res=2, noise_ch=4, block_channels=(8, 8, 16), norm_groups=4,
        line_channels=(8, 8, 8), line_upsample=(2, 4), line_norm_groups=4, max_steps=64, grid_resolution=8,
        n_rays=256, n_rays_init=128, iters=20, lr=1e-2, render_chunk=1 << 12,
    ),
}


# ---------------------------------------------------------------------------------------
# The 2D generator: a lean SD-VAE-style decoder with diffusers' module names.


class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels, pre-GroupNorm, residual (diffusers ``Attention``
    as the VAE mid block configures it)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]
        out = self.to_out[1](self.to_out[0](out))
        return x + out.transpose(1, 2).reshape(B, C, H, W)


class UNetMidBlock2D(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_layers: int, groups: int, upsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(n_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class VAEDecoder2D(nn.Module):
    """``[B, in_ch, r, r] -> [B, out_ch, 2^(n-1) r, 2^(n-1) r]`` for n = len(block_channels)."""

    def __init__(self, in_channels: int, out_channels: int, block_channels: Sequence[int], layers_per_block: int,
                 groups: int, attention: bool) -> None:
        super().__init__()
        widths = list(reversed(block_channels))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(widths[0], groups, attention)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(widths[max(i - 1, 0)], width, layers_per_block + 1, groups, upsample=i < len(widths) - 1)
            for i, width in enumerate(widths)
        )
        self.conv_norm_out = nn.GroupNorm(groups, block_channels[0], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(block_channels[0], out_channels, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # mmcv kaiming_init: normal, fan_out, relu gain, zero bias
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # Residual branches start at zero: each block is the identity (plus shortcut) at init.
        for module in self.modules():
            if isinstance(module, ResnetBlock2D):
                nn.init.zeros_(module.conv2.weight)
                nn.init.zeros_(module.conv2.bias)
            elif isinstance(module, AttentionBlock):
                nn.init.zeros_(module.to_out[0].weight)
                nn.init.zeros_(module.to_out[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder1D(nn.Module):
    """ZeroRF's ``arch_1d.Decoder1D``: ``[B, in_ch, r] -> [B, out_ch, lengths[-1]]``, SiLU output."""

    def __init__(self, in_channels: int, out_channels: int, lengths: Sequence[int], channels: Sequence[int],
                 groups: int) -> None:
        super().__init__()
        self.lengths = tuple(int(n) for n in lengths)
        self.conv_in = nn.Conv1d(in_channels, channels[0], 3, padding=1, bias=False)
        self.conv_layers = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels[i], channels[i + 1], 3, padding=1, bias=False),
                          nn.GroupNorm(groups, channels[i + 1]), nn.SiLU())
            for i in range(len(self.lengths))
        )
        self.conv_out = nn.Conv1d(channels[-1], out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for layer, length in zip(self.conv_layers, self.lengths):
            x = F.interpolate(layer(x), size=length, mode="linear", align_corners=False)
        return F.silu(self.conv_out(x))


class Tensorial2D(nn.Module):
    noise: torch.Tensor

    def __init__(self, config: ZeroRFConfig) -> None:
        super().__init__()
        c = config
        self.register_buffer("noise", torch.randn(1, c.noise_ch, c.noise_res, c.noise_res))
        self.net = VAEDecoder2D(c.noise_ch, c.channels, c.block_channels, c.layers_per_block, c.norm_groups, c.attention)

    def forward(self) -> torch.Tensor:
        return self.net(self.noise)[0]  # [R, H, W]


class Tensorial1D(nn.Module):
    noise: torch.Tensor

    def __init__(self, config: ZeroRFConfig) -> None:
        super().__init__()
        c = config
        self.register_buffer("noise", torch.randn(1, c.noise_ch, c.noise_res))
        lengths = [c.noise_res * f for f in c.line_upsample]
        self.net = Decoder1D(c.noise_ch, c.channels, lengths, c.line_channels, c.line_norm_groups)

    def forward(self) -> torch.Tensor:
        return self.net(self.noise)[0]  # [R, L]


class TensorialGenerator(nn.Module):
    """One generator per entry of ``TENSOR_CONFIG`` (planes xy, yz, zx; lines z, x, y)."""

    def __init__(self, config: ZeroRFConfig) -> None:
        super().__init__()
        self.subs = nn.ModuleList((Tensorial2D if len(axes) == 2 else Tensorial1D)(config) for axes in TENSOR_CONFIG)

    def forward(self) -> Tensors:
        outputs = [sub() for sub in self.subs]
        return outputs[0::2], outputs[1::2]


class ZeroRF(VMRadianceField):
    """ZeroRF ``--rep=tensorf``: VM planes and lines decoded from frozen noise, fitted per scene.

    Build with ``ZeroRF(config)`` or fit directly with :meth:`ZeroRF.fit`; presets ``"paper"``
    (official sizes: 20^2 noise -> 320^2 planes), ``"cpu"`` (128^2 planes, about nine minutes
    on two cores for 4 views at 100^2) and ``"tiny"`` (tests). See
    :class:`~fastfields.models.field_vm.VMRadianceField` for ``fit``, ``render`` and the
    checkpoints (``save_pretrained`` / ``from_pretrained``, safetensors).
    """

    config_class = ZeroRFConfig
    presets = PRESETS

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.generator = TensorialGenerator(self.config)

    def tensors(self) -> Tensors:
        return self.generator()

    def param_groups(self) -> List[Dict]:
        return [{"params": list(self.generator.parameters()) + list(self.decoder.parameters())}]


def convert_official_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map an official ZeroRF ``nerf-zerorf.pt`` state dict (``--rep=tensorf``) onto :class:`ZeroRF`'s
    names: ``decoder.preprocessor.`` -> ``generator.``, ``decoder.common_decoder.`` -> ``decoder.``.
    Entries of the official model with no counterpart here (the scene code cache, torch-ngp's
    density bitfield, the background colour) are dropped; load the result with
    ``model.load_state_dict(converted, strict=False)`` and refresh the occupancy grid."""
    prefixes = (("decoder.preprocessor.", "generator."), ("decoder.common_decoder.", "decoder."))
    out = {}
    for key, value in state_dict.items():
        for old, new in prefixes:
            if key.startswith(old):
                out[new + key[len(old):]] = value
    if not out:
        raise ValueError("convert_official_state_dict: no 'decoder.preprocessor.' or 'decoder.common_decoder.' keys; "
                         "is this a ZeroRF --rep=tensorf checkpoint?")
    return out
