"""SSDNeRF's Gaussian diffusion (``lib/models/diffusions/gaussian_diffusion.py``, ``sampler.py``,
``lib/models/losses/ddpm_loss.py``): linear betas, v-prediction, the SNR-weighted loss with
its running normalisation, DDIM with x0 clipping and rendering-loss guidance.

Schedule (float64, as the official numpy arrays): ``betas = linspace(beta_0, beta_T, T) *
1000 / T``, ``alpha_bar = cumprod(1 - betas)``.

Training loss for codes ``x0 [B, C, H, W]`` (``DDPMMSELossMod`` with ``v_t`` targets):

    t ~ U{0..T-1};  x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps;  v_t = sqrt(ab_t) eps - sqrt(1 - ab_t) x0
    w_t = sqrt(ab_t / (1 - ab_t)) ** (2 power) * (1 - ab_t)            (SNRWeightedTimeStepSampler, 'V')
    loss = mean_b( 0.5 * mean_chw((v_pred - v_t)^2) * w_t * weight_scale ) / norm

``norm`` is an EMA (momentum 1e-3, updated before use while the module trains) of
``mean(x0^2)``: lambda_diff = c_diff / EMA(||x||^2).

DDIM (eta = 0): timesteps ``arange(T - 1, -1, -T / steps)``; at each step ``x0 = sqrt(ab_t)
x_t - sqrt(1 - ab_t) v``, clipped to ``[-clip, clip]``; with a guidance function, ``x0 -=
grad_{x_t} L(x0) * sqrt(1 - ab_t) ** (2 - 2p) * sqrt(ab_t) ** (2p - 1) * gain`` (p = 0.5, the
gradient through the U-Net), clipped again; ``x_{prev} = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .unet import DenoisingUnet


def linear_betas(num_timesteps: int, beta_0: float = 1e-4, beta_T: float = 2e-2) -> np.ndarray:
    scale = 1000 / num_timesteps
    return np.linspace(scale * beta_0, scale * beta_T, num_timesteps, dtype=np.float64)


def ddim_timesteps(num_timesteps: int, steps: int) -> torch.Tensor:
    """The official DDIM timesteps: ``arange(T - 1, -1, -T / steps).long()``."""
    return torch.arange(start=num_timesteps - 1, end=-1, step=-(num_timesteps / steps)).long()


class DDPMMSELoss(nn.Module):
    """``DDPMMSELossMod`` (``rescale_mode='timestep_weight'``, ``scale_norm=True``); buffer ``norm_factor``."""

    def __init__(self, weight: torch.Tensor, weight_scale: float = 4.0, scale_norm: bool = True, momentum: float = 0.001) -> None:
        super().__init__()
        self.weight = weight  # per-timestep weights (not state: recomputed from the schedule)
        self.weight_scale = weight_scale
        self.scale_norm = scale_norm
        self.momentum = momentum
        self.freeze_norm = False
        if scale_norm:
            self.register_buffer("norm_factor", torch.ones(1, dtype=torch.float))

    def forward(self, v_pred: torch.Tensor, v_t: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor,
                weight_scale: Optional[float] = None) -> torch.Tensor:
        scale = self.weight_scale if weight_scale is None else weight_scale
        loss = (v_pred - v_t).square().flatten(1).mean(dim=1) * 0.5
        loss = loss * self.weight.to(t.device)[t] * scale
        loss = loss.mean()
        if self.scale_norm:
            if self.training and not self.freeze_norm:
                norm = x_0.detach().square().mean()
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    torch.distributed.all_reduce(norm)
                    norm = norm / torch.distributed.get_world_size()
                self.norm_factor[:] = (1 - self.momentum) * self.norm_factor + self.momentum * norm
            loss = loss / self.norm_factor[0]
        return loss


class GaussianDiffusion(nn.Module):
    """v-prediction Gaussian diffusion over stacked triplane channels; submodules ``denoising``
    (the U-Net) and ``ddpm_loss`` (holds ``norm_factor``)."""

    def __init__(self, config) -> None:
        super().__init__()
        c = config
        self.num_timesteps = c.num_timesteps
        self.denoising = DenoisingUnet(
            c.code_size[2], c.code_channels, c.base_channels, c.channels_cfg, c.resblocks_per_downsample, c.dropout,
            c.use_scale_shift_norm, c.num_heads, c.attention_res, c.downsample_conv, c.upsample_conv, c.norm_groups,
            c.num_timesteps,
        )
        self.betas = linear_betas(c.num_timesteps, c.beta_0, c.beta_T)
        self.alphas_bar = np.cumprod(1.0 - self.betas, axis=0)
        self.alphas_bar_prev = np.append(1.0, self.alphas_bar[:-1])
        self.sqrt_alphas_bar = np.sqrt(self.alphas_bar)
        self.sqrt_one_minus_alphas_bar = np.sqrt(1.0 - self.alphas_bar)
        self.tilde_betas_t = self.betas * (1 - self.alphas_bar_prev) / (1 - self.alphas_bar)
        sqrt_snr = self.sqrt_alphas_bar / self.sqrt_one_minus_alphas_bar
        weight_raw = sqrt_snr ** (2 * c.snr_power) * self.sqrt_one_minus_alphas_bar**2  # mode 'V'
        prob = np.full(c.num_timesteps, 1.0 / c.num_timesteps)  # prob_power 0: uniform
        self.timestep_weight = torch.from_numpy(weight_raw / (prob * c.num_timesteps)).to(torch.float)
        self.ddpm_loss = DDPMMSELoss(self.timestep_weight, c.weight_scale, c.scale_norm, c.norm_momentum)

    def _coef(self, table: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor(table)[t].reshape(-1, 1, 1, 1)

    def sample_timesteps(self, batch: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        return torch.randint(self.num_timesteps, (batch,), generator=generator, device=device)

    def q_sample(self, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
        """``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise``; also returns the two coefficients."""
        mean = self._coef(self.sqrt_alphas_bar, t.cpu(), x_0).to(x_0.device)
        std = self._coef(self.sqrt_one_minus_alphas_bar, t.cpu(), x_0).to(x_0.device)
        return x_0 * mean + noise * std, mean, std

    def loss(self, x_0: torch.Tensor, *, generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, weight_scale: Optional[float] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The training loss of codes ``x_0 [B, C, H, W]`` (gradients flow to ``x_0`` and the U-Net)."""
        if x_0.dim() != 4:
            raise ValueError(f"GaussianDiffusion.loss: x_0 must be [B, C, H, W], got shape {tuple(x_0.shape)}")
        if t is None:
            t = self.sample_timesteps(x_0.shape[0], generator, "cpu").to(x_0.device)
        if noise is None:
            noise = torch.randn(x_0.shape, generator=generator, device=x_0.device if generator is None else generator.device).to(x_0.device)
        x_t, mean, std = self.q_sample(x_0, t, noise)
        v_pred = self.denoising(x_t, t)
        v_t = mean * noise - std * x_0
        loss = self.ddpm_loss(v_pred, v_t, x_0, t, weight_scale)
        return loss, {"loss_ddpm_mse": float(loss.detach())}

    def pred_x_0(self, x_t: torch.Tensor, t: torch.Tensor, *, clip_range: float, grad_guide_fn: Optional[Callable] = None,
                 guidance_gain: float = 1.0, snr_weight_power: float = 0.5) -> torch.Tensor:
        """The official ``pred_x_0`` ('V' mode, clip on, gradient through the U-Net)."""
        if t.dim() == 0 or len(t) != x_t.shape[0]:
            t = t.expand(x_t.shape[0])
        a = self._coef(self.sqrt_alphas_bar, t, x_t)
        s = self._coef(self.sqrt_one_minus_alphas_bar, t, x_t)
        if grad_guide_fn is None:
            with torch.no_grad():
                return (a * x_t - s * self.denoising(x_t, t)).clamp(-clip_range, clip_range)
        x_t = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            x_0 = (a * x_t - s * self.denoising(x_t, t)).clamp(-clip_range, clip_range)
            grad = torch.autograd.grad(grad_guide_fn(x_0), x_t)[0]
        x_0 = x_0.detach() - grad * (s ** (2 - snr_weight_power * 2) * a ** (snr_weight_power * 2 - 1) * guidance_gain)
        return x_0.clamp(-clip_range, clip_range)

    def ddim_step(self, x_t: torch.Tensor, t: torch.Tensor, t_prev: int, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM step (eta = 0): ``(x_prev, x0_pred)``."""
        ab_prev = self.alphas_bar[t_prev] if t_prev >= 0 else self.alphas_bar_prev[0]
        x_0 = self.pred_x_0(x_t, t, **kwargs)
        eps = (x_t - self.sqrt_alphas_bar[int(t)] * x_0) / self.sqrt_one_minus_alphas_bar[int(t)]
        return np.sqrt(ab_prev) * x_0 + np.sqrt(1 - ab_prev) * eps, x_0

    def ddim_sample(self, noise: torch.Tensor, steps: int, *, clip_range: float = 2.0, grad_guide_fn: Optional[Callable] = None,
                    guidance_gain: float = 1.0, progress: bool = False) -> torch.Tensor:
        """DDIM from ``noise [B, C, H, W]`` in ``steps`` steps -> samples (the last ``x_prev``)."""
        timesteps = ddim_timesteps(self.num_timesteps, steps).to(noise.device)
        it = range(len(timesteps))
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="DDIM", dynamic_ncols=True)
        x_t = noise
        for i in it:
            t_prev = int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1
            x_t, _ = self.ddim_step(x_t, timesteps[i], t_prev, clip_range=clip_range, grad_guide_fn=grad_guide_fn,
                                    guidance_gain=guidance_gain)
            x_t = x_t.detach()
        return x_t
