"""EG3D's super-resolution modules (``training/superresolution.py``): the raw neural
rendering (``rgb [N, 3, r, r]`` and the 32-channel feature image ``x [N, 32, r, r]``) is
resized (bilinear, antialiased) to the module's input resolution and refined by two
StyleGAN2 synthesis blocks driven by the last w (``ws[:, -1:]`` repeated 3 times).

- ``SuperresolutionHybrid8XDC``: 128 -> 512 (FFHQ / AFHQ 512), blocks 32 -> 256 -> 128 channels;
- ``SuperresolutionHybrid4X``: 128 -> 256 (block0 without upsampling), 32 -> 128 -> 64;
- ``SuperresolutionHybrid2X``: 64 -> 128 (ShapeNet), 32 -> 128 -> 64.

``use_fp16`` (``sr_num_fp16_res > 0``) sets conv clamp 256 and float16 math on CUDA, as EG3D.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .synthesis import SynthesisBlock

#: name -> (input resolution, output resolution, block0 upsamples?, (block0, block1) channels, own filter buffer)
SR_MODULES = {
    "SuperresolutionHybrid8XDC": (128, 512, True, (256, 128), False),
    "SuperresolutionHybrid8X": (128, 512, True, (128, 64), True),
    "SuperresolutionHybrid4X": (128, 256, False, (128, 64), True),
    "SuperresolutionHybrid2X": (64, 128, False, (128, 64), True),
}


class Superresolution(nn.Module):
    """One of :data:`SR_MODULES` (``module``); ``channels`` is the feature image's width.

    ``input_resolution`` / ``block_channels`` default to the official module's and may be
    reduced for small test models. ``forward(rgb, x, ws, noise_mode=...) -> [N, 3, R, R]``.
    """

    def __init__(self, module: str, channels: int, img_resolution: int, w_dim: int = 512, sr_num_fp16_res: int = 4,
                 sr_antialias: bool = True, input_resolution: int = None, block_channels=None,
                 fused_modconv_default="inference_only"):
        super().__init__()
        if module not in SR_MODULES:
            raise ValueError(f"Superresolution: module must be one of {sorted(SR_MODULES)}, got {module!r}")
        in_res, out_res, up0, default_channels, has_filter = SR_MODULES[module]
        self.module_name = module
        self.input_resolution = int(input_resolution or in_res)
        factor = out_res // in_res
        if img_resolution != self.input_resolution * factor:
            raise ValueError(f"Superresolution: {module} turns {self.input_resolution}^2 into "
                             f"{self.input_resolution * factor}^2, got img_resolution={img_resolution}")
        c0, c1 = tuple(block_channels or default_channels)
        use_fp16 = sr_num_fp16_res > 0
        clamp = 256 if use_fp16 else None
        self.sr_antialias = sr_antialias
        self.resize_if_smaller_only = module == "SuperresolutionHybrid4X"
        mid = self.input_resolution * (2 if up0 else 1)
        self.block0 = SynthesisBlock(channels, c0, w_dim=w_dim, resolution=mid, img_channels=3, is_last=False,
                                     use_fp16=use_fp16, conv_clamp=clamp, upsample=up0,
                                     fused_modconv_default=fused_modconv_default)
        self.block1 = SynthesisBlock(c0, c1, w_dim=w_dim, resolution=img_resolution, img_channels=3, is_last=True,
                                     use_fp16=use_fp16, conv_clamp=clamp, fused_modconv_default=fused_modconv_default)
        if has_filter:
            self.register_buffer("resample_filter", ops.setup_filter([1, 3, 3, 1]))

    def forward(self, rgb: torch.Tensor, x: torch.Tensor, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = self.input_resolution
        resize = x.shape[-1] < size if self.resize_if_smaller_only else x.shape[-1] != size
        if resize:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=self.sr_antialias)
        x, rgb = self.block0(x, rgb, ws, **block_kwargs)
        x, rgb = self.block1(x, rgb, ws, **block_kwargs)
        return rgb
