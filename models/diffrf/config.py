"""DiffRF's configuration and presets.

DiffRF (Müller et al., CVPR 2023, arXiv 2212.01206) has no public code, so every number
below is either the paper's or, where the paper leaves a detail open, what ADM (Dhariwal &
Nichol 2021) / DDPM (Ho et al. 2020) do; each field says which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .._pretrained import ModelConfig


@dataclass
class DiffRFConfig(ModelConfig):
    """Field, denoiser, diffusion and rendering-loss settings.

    Radiance field (paper: an explicit ``32^3`` grid with 4 channels, pre-activation density
    and RGB, queried by trilinear interpolation and volume rendered):

    - ``resolution``: grid side (paper: 32). ``channels``: 4 (density + RGB), fixed.
    - The field lives in ``[-1, 1]`` per channel, the data range DDPM/ADM assume (x0
      estimates are clipped there while sampling, as in DDPM). The paper does not print its
      activations; ours are linear in the stored value so that the Gaussian noise the
      diffusion adds means the same thing everywhere: ``sigma = sigma_max * relu((f_0 + 1) /
      2)`` (``f_0 = -1`` is exactly empty space; fused into ``composite`` as its ``relu``
      activation) and ``rgb = clamp((f_rgb + 1) / 2, 0, 1)``.
    - ``sigma_max``: density (per world unit) of ``f_0 = 1``. The field spans the box
      ``[-bound, bound]^3``; with bound 1 a voxel is 1/16 long, so 120 makes one voxel
      99.9 % opaque, which keeps surfaces one voxel thin.
    - ``n_samples``: stratified samples per ray inside the box (2 per voxel along a diagonal
      at 32^3; ``voxel_sample`` with ``align_corners=True``, border padding: voxel ``i`` sits
      at ``-bound + 2 bound i / (res - 1)``, the lattice ``fastfields.export.grid_points`` uses).

    Denoiser (paper: an ADM-style 3D U-Net; its exact widths are not stated in the sources we
    have, so ``paper`` is ADM's 64^2 ImageNet layout scaled to 32^3, marked unverified):
    ``model_channels``, ``channel_mult`` (one entry per resolution level, each halving the
    grid), ``num_res_blocks`` per level, ``attention_resolutions`` (grid sides with 3D
    self-attention: ADM attends at 32/16/8 of 64^2; here the two lowest, 8^3 and 4^3, because
    attention over 16^3 = 4096 tokens is what a 32^3 grid cannot afford at batch size > 1),
    ``num_head_channels`` (ADM: 64 channels per head), ``dropout`` (ADM 64^2: 0.1),
    ``groups`` (GroupNorm groups, ADM: 32), ``use_scale_shift_norm`` (ADM: True, the timestep
    embedding scales and shifts the normalised activations), ``resblock_updown`` (ADM: True
    for 64^2; we use strided/interpolating convs to stay light: False).

    Diffusion (paper): ``timesteps`` T = 1000, ``beta_start`` 0.0015 -> ``beta_end`` 0.05,
    linear, t uniform in {0, ..., T-1}; eps prediction. Variance of the reverse steps:
    DDPM's "fixed small" posterior variance (``beta~_t``), clipped at t = 0 as in ADM.

    Rendering loss (paper: ``L = L_RF + w_t L_RGB``, ``w_t = alpha_bar_t^2``, ``L_RGB`` renders
    the one-step x0 estimate at a training view): ``rgb_loss_weight`` multiplies ``w_t
    L_RGB`` (1 = the paper's sum; 0 = the "without rendering loss" ablation); ``train_rays``
    random pixels of one training view per field and step (the paper renders images; a ray
    subset is the usual unbiased estimate of the same mean).
    """

    resolution: int = 32
    channels: int = 4
    bound: float = 1.0
    sigma_max: float = 120.0
    n_samples: int = 96

    model_channels: int = 64
    channel_mult: Tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: Tuple[int, ...] = (8, 4)
    num_head_channels: int = 64
    dropout: float = 0.1
    groups: int = 32
    use_scale_shift_norm: bool = True

    timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.05

    rgb_loss_weight: float = 1.0
    train_rays: int = 1024

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.channels != 4:
            raise ValueError(f"{name}: channels must be 4 (density + RGB), got {self.channels}")
        levels = len(self.channel_mult)
        if self.resolution < 4 or self.resolution % (2 ** (levels - 1)):
            raise ValueError(f"{name}: resolution {self.resolution} must be >= 4 and divisible by "
                             f"2^(len(channel_mult) - 1) = {2 ** (levels - 1)}")
        sides = {self.resolution // 2 ** i for i in range(levels)}
        bad = [r for r in self.attention_resolutions if r not in sides]
        if bad:
            raise ValueError(f"{name}: attention_resolutions {bad} are not grid sides of the U-Net {sorted(sides)}")
        if self.model_channels < 1 or any(m < 1 for m in self.channel_mult) or levels < 1:
            raise ValueError(f"{name}: model_channels and channel_mult must be positive, got "
                             f"{self.model_channels}, {self.channel_mult}")
        for c in [self.model_channels * m for m in self.channel_mult]:
            if c % self.groups:
                raise ValueError(f"{name}: every level's width ({c}) must be divisible by groups={self.groups}")
        if self.num_head_channels < 1:
            raise ValueError(f"{name}: num_head_channels must be >= 1, got {self.num_head_channels}")
        if self.num_res_blocks < 1:
            raise ValueError(f"{name}: num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout}")
        if self.timesteps < 2:
            raise ValueError(f"{name}: timesteps must be >= 2, got {self.timesteps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"{name}: need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.bound <= 0 or self.sigma_max <= 0:
            raise ValueError(f"{name}: bound and sigma_max must be positive, got {self.bound}, {self.sigma_max}")
        if self.n_samples < 2 or self.train_rays < 1:
            raise ValueError(f"{name}: n_samples must be >= 2 and train_rays >= 1, got {self.n_samples}, {self.train_rays}")
        if self.rgb_loss_weight < 0:
            raise ValueError(f"{name}: rgb_loss_weight must be >= 0, got {self.rgb_loss_weight}")


PRESETS = {
    # The paper's setting at 32^3 (U-Net widths: ADM's layout, unverified; see the class doc).
    "paper": DiffRFConfig(),
    # For tests and CPU runs: same field, schedule and losses; a three-level 8-channel U-Net (0.19 M parameters), attention at 8^3.
    "tiny": DiffRFConfig(model_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
                         num_head_channels=16, dropout=0.0, groups=4, n_samples=64, train_rays=512),
}
