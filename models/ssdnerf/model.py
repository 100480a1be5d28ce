"""``SSDNeRF``: the official ``DiffusionNeRF``'s networks (``lib/models/autodecoders``).

State dict, name for name and shape for shape the official one (see
``tests/manifests/ssdnerf-*.json``): ``decoder.*``, ``decoder_ema.*`` (TriPlaneDecoder),
``diffusion.*``, ``diffusion_ema.*`` (U-Net + the loss's ``norm_factor``). Scene codes are not
in it (the official code keeps them in a cache; see :mod:`.train`).
"""

from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn

from .._pretrained import PretrainedModel
from .config import PRESETS, SSDNeRFConfig
from .decoder import TriPlaneDecoder
from .diffusion import GaussianDiffusion


class SSDNeRF(PretrainedModel, nn.Module):
    """Triplane auto-decoder + diffusion prior.

    Code layout: ``code_ [S, 3, C, H, W]`` is the free parameter; ``code = tanh(code_) * scale``
    (:meth:`activate`); the denoiser sees ``code.reshape(S, 3C, H, W)`` (:meth:`to_diffusion`).
    """

    config_class = SSDNeRFConfig
    presets = PRESETS

    def __init__(self, config: SSDNeRFConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.decoder = TriPlaneDecoder(c.code_channels, c.hidden, c.sh_degree, c.sigmoid_saturation, c.bound)
        self.decoder_ema = copy.deepcopy(self.decoder)
        self.diffusion = GaussianDiffusion(c)
        self.diffusion_ema = copy.deepcopy(self.diffusion)
        self.diffusion_ema.ddpm_loss.weight_scale = c.test_weight_scale or c.weight_scale
        for module in (self.decoder_ema, self.diffusion_ema):
            module.requires_grad_(False)

    # -- codes ------------------------------------------------------------------------

    def activate(self, code_: torch.Tensor) -> torch.Tensor:
        """TanhCode: ``tanh(code_) * code_scale``."""
        return code_.tanh() * self.config.code_scale

    def inverse(self, code: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        """TanhCode.inverse: ``atanh(clamp(code / scale, -1 + eps, 1 - eps))``."""
        return (code / self.config.code_scale).clamp(min=-1 + eps, max=1 - eps).atanh()

    def init_code_(self, n: int, generator=None, device=None) -> torch.Tensor:
        """Fresh codes ``U(-init_scale, init_scale)`` of shape ``[n, 3, C, H, W]`` (pre-activation)."""
        s = self.config.init_scale
        return (torch.rand((n, *self.config.code_size), generator=generator, device=device) * 2 - 1) * s

    def to_diffusion(self, code: torch.Tensor) -> torch.Tensor:
        return code.reshape(code.shape[0], self.config.code_channels, *self.config.code_size[2:])

    def from_diffusion(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.config.code_size)

    @torch.no_grad()
    def update_ema(self, iteration: int) -> float:
        """The EMA hook (mmgen 'rampup' momentum, 'lerp'): ``ema = p + (ema - p) * beta`` for
        trainable tensors, a copy for buffers; ``beta = 0.5 ** (B / min(kimg * 1000, (it + 1) B * rampup))``."""
        c = self.config
        cur_nimg = (iteration + 1) * c.ema_batch_size
        ema_nimg = min(c.ema_kimg * 1000, cur_nimg * c.ema_rampup)
        beta = 0.5 ** (c.ema_batch_size / max(ema_nimg, 1e-8))
        for src, dst in ((self.decoder, self.decoder_ema), (self.diffusion, self.diffusion_ema)):
            ema_state = dst.state_dict()
            for k, v in src.state_dict(keep_vars=True).items():
                if v.requires_grad:
                    ema_state[k].copy_(v.detach() + (ema_state[k] - v.detach()) * beta)
                else:
                    ema_state[k].copy_(v.detach())
        return beta

    def convert_state_dict(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return state
