"""TensoRF-VM baseline for ZeroRF: the same field, decoder and renderer, with the planes and lines
learned directly as parameters instead of through a deep prior.

It isolates what ZeroRF's generators contribute: both models share
:mod:`fastfields.models.field_vm` (ZeroRF's axes, border padding, per-pair products
concatenated, ZeroRF's decoder, occupancy-grid rendering, white background), and differ only in
where the planes and lines come from and how they are optimised. The parameters are
initialised and optimised as TensoRF does (``apchenstu/TensoRF``: ``0.1 * randn`` factors,
Adam with learning rate 0.02 for the factors and 1e-3 for the network, decayed to a tenth);
TensoRF's coarse-to-fine upsampling, alpha mask and L1 / TV terms are left out so that the
comparison measures the prior alone.

    >>> from fastfields.models.tensorf import TensoRF
    >>> model = TensoRF.fit(images, c2w, focal, config="cpu", iters=2000)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from .field_vm import Tensors, VMFieldConfig, VMRadianceField


@dataclass
class TensoRFConfig(VMFieldConfig):
    """The shared settings plus the factor resolution and TensoRF's optimiser.

    Attributes:
        resolution: plane side and line length (ZeroRF "paper" decodes 320; "cpu" 128).
        init_scale: standard deviation of the initial factors (TensoRF: 0.1).
        lr_factors: learning rate of the planes and lines (``lr`` is the decoder's).
    """

    resolution: int = 320
    init_scale: float = 0.1
    lr_factors: float = 0.02


PRESETS: Dict[str, Dict] = {
    # Matches ZeroRF's "paper" field (320^2 planes) and schedule, TensoRF's optimiser.
    "paper": dict(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99), grad_clip=0.0, lr_final_ratio=0.1),
    # Matches ZeroRF's "cpu" preset: 128^2 planes, same rays, marching and iterations.
    "cpu": dict(
        resolution=128, max_steps=256, grid_resolution=48, grid_every=8, grid_warmup=64, grid_decay=0.6,
        n_rays=4096, n_rays_init=1024, iters=1000,
        lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99), grad_clip=0.0, lr_final_ratio=0.1, render_chunk=1 << 14,
    ),
    "tiny": dict(
        channels=4, hidden=16, resolution=8, max_steps=64, grid_resolution=8, grid_every=4, grid_warmup=8, grid_decay=0.6,
        n_rays=256, n_rays_init=128, iters=20, lr=1e-2, lr_factors=0.05, weight_decay=0.0, betas=(0.9, 0.99),
        grad_clip=0.0, render_chunk=1 << 12,
    ),
}


class TensoRF(VMRadianceField):
    """ZeroRF's VM field with the factors as parameters: ``planes.{k}`` ``[R, res, res]`` and
    ``lines.{k}`` ``[R, res]`` (k over the planes xy, yz, zx and their lines)."""

    config_class = TensoRFConfig
    presets = PRESETS

    def __init__(self, config=None, **overrides) -> None:
        super().__init__(config, **overrides)
        c = self.config
        self.planes = nn.ParameterList(
            nn.Parameter(c.init_scale * torch.randn(c.channels, c.resolution, c.resolution)) for _ in range(3)
        )
        self.lines = nn.ParameterList(nn.Parameter(c.init_scale * torch.randn(c.channels, c.resolution)) for _ in range(3))

    def tensors(self) -> Tensors:
        return list(self.planes), list(self.lines)

    def param_groups(self) -> List[Dict]:
        factors = list(self.planes) + list(self.lines)
        return [{"params": factors, "lr": self.config.lr_factors}, {"params": list(self.decoder.parameters())}]
