"""EG3D's dual discriminator (``training/dual_discriminator.py``) on StyleGAN2's residual
discriminator blocks (``networks_stylegan2.py``).

``DualDiscriminator({'image': [N, 3, R, R], 'image_raw': [N, 3, r, r]}, c [N, 25]) -> logits [N, 1]``:
the raw neural rendering is resized (bilinear, antialiased) to R and concatenated with the
super-resolved image (6 channels); the camera label is mapped to a ``cmap`` that conditions the
epilogue (projection discriminator). Names equal the official ``D``'s.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .layers import Conv2dLayer, FullyConnectedLayer
from .mapping import MappingNetwork


class DiscriminatorBlock(nn.Module):
    """'resnet' block: (fromrgb at the first), conv0, conv1 (2x down), skip (1x1, 2x down)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int, img_channels: int,
                 first_layer_idx: int, activation: str = "lrelu", conv_clamp: Optional[float] = None,
                 use_fp16: bool = False, freeze_layers: int = 0):
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", ops.setup_filter([1, 3, 3, 1]))
        idx = iter(range(first_layer_idx, first_layer_idx + 4))
        self.num_layers = 0
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation=activation, conv_clamp=conv_clamp,
                                       trainable=next(idx) >= freeze_layers)
            self.num_layers += 1
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation=activation, conv_clamp=conv_clamp,
                                 trainable=next(idx) >= freeze_layers)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation=activation, down=2, conv_clamp=conv_clamp,
                                 trainable=next(idx) >= freeze_layers)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, trainable=next(idx) >= freeze_layers)
        self.num_layers += 3

    def forward(self, x, img, force_fp32: bool = False):
        if (x if x is not None else img).device.type != "cuda":
            force_fp32 = True
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        if x is not None:
            x = x.to(dtype=dtype)
        if self.in_channels == 0:
            img = img.to(dtype=dtype)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = None
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=np.sqrt(0.5))
        return y.add_(x), img


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size: Optional[int], num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        N, C, H, W = x.shape
        G = min(self.group_size, N) if self.group_size is not None else N
        Fc = self.num_channels
        c = C // Fc
        y = x.reshape(G, -1, Fc, c, H, W)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, Fc, 1, 1).repeat(G, 1, H, W)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels: int, cmap_dim: int, resolution: int, img_channels: int,
                 mbstd_group_size: int = 4, mbstd_num_channels: int = 1, activation: str = "lrelu",
                 conv_clamp: Optional[float] = None):
        super().__init__()
        self.in_channels, self.cmap_dim, self.resolution = in_channels, cmap_dim, resolution
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap):
        x = x.to(torch.float32)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


def filtered_resizing(image: torch.Tensor, size: int) -> torch.Tensor:
    """EG3D's ``filtered_resizing`` in its default 'antialiased' mode."""
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class DualDiscriminator(nn.Module):
    """Blocks ``b{R} .. b8`` ('resnet'), camera ``mapping`` (z_dim 0, c -> cmap) and epilogue ``b4``."""

    def __init__(self, c_dim: int, img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 4, conv_clamp: Optional[float] = 256,
                 cmap_dim: Optional[int] = None, disc_c_noise: float = 0.0, mbstd_group_size: int = 4,
                 mapping_layers: int = 8):
        super().__init__()
        img_channels *= 2
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        log2 = int(np.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, img_channels=img_channels, first_layer_idx=layer_idx,
                                       conv_clamp=conv_clamp, use_fp16=res >= fp16_resolution)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          num_layers=mapping_layers)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, img_channels=img_channels,
                                        mbstd_group_size=mbstd_group_size, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", ops.setup_filter([1, 3, 3, 1]))
        self.disc_c_noise = disc_c_noise

    def forward(self, img: dict, c: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        image_raw = filtered_resizing(img["image_raw"], size=img["image"].shape[-1])
        x_img = torch.cat([img["image"], image_raw], 1)
        x = None
        for res in self.block_resolutions:
            x, x_img = getattr(self, f"b{res}")(x, x_img)
        cmap = None
        if self.c_dim > 0:
            if self.disc_c_noise > 0:
                c = c + torch.randn_like(c) * c.std(0) * self.disc_c_noise
            cmap = self.mapping(None, c)
        return self.b4(x, None, cmap)
