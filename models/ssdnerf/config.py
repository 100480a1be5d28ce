"""SSDNeRF configuration and the paper presets (Lakonik/SSDNeRF ``configs/paper_cfgs``).

One flat dataclass holds what the official config spreads over ``model``, ``train_cfg`` and
``test_cfg``; field comments name the official key. Presets: the five released checkpoints
(their state dicts are the manifests' ones) and ``tiny`` for tests and CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .._pretrained import ModelConfig


@dataclass
class SSDNeRFConfig(ModelConfig):
    """Every number of an SSDNeRF run.

    Scene code: ``code_size = (3, C, H, W)`` triplanes, ``code = tanh(code_) * code_scale``
    (TanhCode); the denoiser sees them stacked as ``3C`` channels (``code_reshape``).

    Attributes (official names in brackets):
        code_size: ``(3, C, H, W)`` [code_size].
        code_scale: TanhCode scale [code_activation.scale].
        init_scale: initial codes are ``U(-init_scale, init_scale)`` before tanh [init_scale].
        grid_size: occupancy grid cells per axis [grid_size].
        num_timesteps, beta_0, beta_T: linear beta schedule [diffusion.num_timesteps, betas_cfg].
        base_channels, channels_cfg, resblocks_per_downsample, dropout, use_scale_shift_norm,
        downsample_conv, upsample_conv, num_heads, attention_res, norm_groups: the U-Net
            [diffusion.denoising.*]; ``norm_groups`` is GN(32) in the paper.
        snr_power: SNRWeightedTimeStepSampler power [timestep_sampler.power].
        weight_scale: c_diff of the v-prediction loss [ddpm_loss.weight_scale].
        test_weight_scale: c'_diff used by the EMA denoiser when fine-tuning a code at test
            time [test_cfg.override_cfg 'diffusion_ema.ddpm_loss.weight_scale'] (0: same as
            ``weight_scale``).
        scale_norm, norm_momentum: divide the diffusion loss by an EMA of mean(x0^2).
        hidden, sh_degree, sigmoid_saturation: TriPlaneDecoder [base_layers, dir_layers].
        bound, min_near, max_steps: the renderer [decoder.bound/min_near/max_steps].
        bg_color: background [bg_color].
        pixel_loss_weight, reg_loss_weight: MSE weight and code L2 weight [pixel_loss, reg_loss].
        dt_gamma_scale, density_thresh, extra_scene_step, n_inverse_rays, n_decoder_rays,
        loss_coef, code_lr: training [train_cfg.*] (loss_coef 0.1 / (128 * 128)).
        diffusion_lr, decoder_lr, warmup_iters: optimisers of the shared networks.
        ema_kimg, ema_rampup, ema_batch_size: the EMA hook's rampup momentum.
        update_extra_interval: inner steps between occupancy refreshes.
        cache_size: number of training scenes.
        test_img_size, ddim_steps, clip_range, test_density_thresh, test_dt_gamma_scale,
        guidance_gain, n_inverse_steps, test_extra_scene_step, test_n_inverse_rays,
        finetune_lr, finetune_gamma: inference [test_cfg.*]; guidance_gain 0 = unconditional.
        t_threshold: transmittance at which a ray stops (torch-ngp's T_thresh).
    """

    code_size: Tuple[int, ...] = (3, 6, 128, 128)
    code_scale: float = 2.0
    init_scale: float = 1e-4
    grid_size: int = 64
    # diffusion
    num_timesteps: int = 1000
    beta_0: float = 1e-4
    beta_T: float = 2e-2
    base_channels: int = 128
    channels_cfg: Tuple[int, ...] = (1, 2, 2, 4, 4)
    resblocks_per_downsample: int = 2
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    downsample_conv: bool = True
    upsample_conv: bool = True
    num_heads: int = 4
    attention_res: Tuple[int, ...] = (32, 16, 8)
    norm_groups: int = 32
    snr_power: float = 0.5
    weight_scale: float = 4.0
    test_weight_scale: float = 0.0
    scale_norm: bool = True
    norm_momentum: float = 0.001
    # decoder / renderer
    hidden: int = 64
    sh_degree: int = 4
    sigmoid_saturation: float = 0.001
    bound: float = 1.0
    min_near: float = 0.2
    max_steps: int = 256
    bg_color: float = 1.0
    # training
    pixel_loss_weight: float = 20.0
    reg_loss_weight: float = 3e-3
    dt_gamma_scale: float = 0.5
    density_thresh: float = 0.1
    extra_scene_step: int = 15
    n_inverse_rays: int = 4096
    n_decoder_rays: int = 4096
    loss_coef: float = 0.1 / (128 * 128)
    code_lr: float = 5e-3
    diffusion_lr: float = 1e-4
    decoder_lr: float = 1e-3
    warmup_iters: int = 500
    ema_kimg: float = 4.0
    ema_rampup: float = 0.05
    ema_batch_size: int = 16
    update_extra_interval: int = 16
    cache_size: int = 2458
    # inference
    test_img_size: int = 128
    ddim_steps: int = 50
    clip_range: float = 2.0
    test_density_thresh: float = 0.1
    test_dt_gamma_scale: float = 0.0
    guidance_gain: float = 0.0
    n_inverse_steps: int = 25
    test_extra_scene_step: int = 3
    test_n_inverse_rays: int = 1 << 14
    finetune_lr: float = 0.005
    finetune_gamma: float = 0.998
    t_threshold: float = 1e-4

    @property
    def code_channels(self) -> int:
        """Channels the denoiser sees: the three planes' channels stacked (18 in the paper)."""
        return self.code_size[0] * self.code_size[1]

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if len(self.code_size) != 4 or self.code_size[0] != 3 or any(int(s) < 1 for s in self.code_size):
            raise ValueError(f"{name}: code_size must be (3, C, H, W) with positive sizes, got {self.code_size!r}")
        if self.code_size[2] != self.code_size[3]:
            raise ValueError(f"{name}: code_size planes must be square (H == W), got {self.code_size!r}")
        if not self.channels_cfg:
            raise ValueError(f"{name}: channels_cfg must list at least one level")
        size = self.code_size[2]
        if size % (2 ** (len(self.channels_cfg) - 1)):
            raise ValueError(f"{name}: plane size {size} must be divisible by 2**(levels - 1) = {2 ** (len(self.channels_cfg) - 1)}")
        for c in [self.base_channels * f for f in self.channels_cfg]:
            if c % self.norm_groups:
                raise ValueError(f"{name}: U-Net width {c} is not divisible by norm_groups={self.norm_groups}")
            if c % self.num_heads:
                raise ValueError(f"{name}: U-Net width {c} is not divisible by num_heads={self.num_heads}")
        if self.sh_degree not in (1, 2, 3, 4):
            raise ValueError(f"{name}: sh_degree must be 1..4, got {self.sh_degree!r}")
        for key in ("bound", "code_scale", "beta_0", "beta_T", "code_lr", "clip_range"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{name}: {key} must be > 0, got {getattr(self, key)!r}")
        if not self.beta_0 < self.beta_T < 1:
            raise ValueError(f"{name}: need 0 < beta_0 < beta_T < 1, got {self.beta_0}, {self.beta_T}")
        if not 1 <= self.ddim_steps <= self.num_timesteps:
            raise ValueError(f"{name}: ddim_steps must be in [1, num_timesteps], got {self.ddim_steps}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout}")


_PAPER = SSDNeRFConfig()
#: SRN cars, unconditional (configs/paper_cfgs/ssdnerf_cars_uncond.py).
CARS_UNCOND = _PAPER
#: Single-view reconstruction variant: dropout 0.1, code lr 1e-2, guided DDIM (75 steps) + fine-tune.
CARS_RECONS1V = _PAPER.replace(
    dropout=0.1, code_lr=1e-2, ddim_steps=75, test_dt_gamma_scale=0.5, test_weight_scale=1.0,
    guidance_gain=3.2 * 2**14,
)
PRESETS = {
    "cars_uncond": CARS_UNCOND,
    "cars_recons1v": CARS_RECONS1V,
    # Same networks, other data (configs/paper_cfgs/ssdnerf_chairs_recons1v.py etc.).
    "chairs_recons1v": CARS_RECONS1V.replace(cache_size=4612, guidance_gain=0.4 * 2**14),
    "abotables_uncond": CARS_UNCOND.replace(cache_size=1520, code_lr=3e-3, diffusion_lr=6e-5, decoder_lr=6e-4),
    "cars3v_uncond_2m": CARS_UNCOND.replace(),
    # Tests and CPU runs: 3 x 4 x 16 x 16 codes, a two-level U-Net, 32^3 grid, 64 steps.
    "tiny": SSDNeRFConfig(
        code_size=(3, 4, 16, 16), grid_size=32, base_channels=32, channels_cfg=(1, 2), resblocks_per_downsample=1,
        attention_res=(8,), num_heads=2, hidden=32, max_steps=64, extra_scene_step=3, n_inverse_rays=1024,
        n_decoder_rays=1024, loss_coef=0.1 / (32 * 32), code_lr=2e-2, diffusion_lr=1e-3, decoder_lr=3e-3,
        warmup_iters=10, ema_kimg=0.05, ema_batch_size=4, cache_size=8, test_img_size=32, ddim_steps=10,
        test_dt_gamma_scale=0.5, guidance_gain=3.2 * 2**10, n_inverse_steps=10, test_n_inverse_rays=1024,
        finetune_lr=0.02, test_weight_scale=1.0,
    ),
}
