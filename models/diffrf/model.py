"""``DiffRF``: the 3D U-Net denoiser and the DDPM schedule over ``[4, R, R, R]`` radiance
fields, with unconditional sampling, masked completion and single-image synthesis.

    >>> from fastfields.models.diffrf import DiffRF
    >>> model = DiffRF.from_preset("tiny")
    >>> fields = model.sample(2, steps=50, generator=torch.Generator().manual_seed(0))  # DDIM-50
    >>> images = model.render(fields[0], c2w, intrinsics, 64, 64)                      # [V, 64, 64, 3]
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._pretrained import PretrainedModel, as_tensor
from .config import PRESETS, DiffRFConfig
from .diffusion import GaussianDiffusion
from .field import camera_rays, check_fields, render_rays, render_views
from .unet3d import UNet3D


class DiffRF(PretrainedModel, nn.Module):
    """DiffRF (Müller et al., CVPR 2023). ``model.denoiser(f_t [B, 4, R, R, R], t [B]) -> eps``
    (same shape); the schedule's buffers are ``model.betas`` and ``model.alphas_cumprod``
    (``model.schedule`` holds them and the math, :class:`GaussianDiffusion`).

    ``backend`` selects the fastfields ops backend for rendering (``"torch"``: eager PyTorch).
    """

    config_class = DiffRFConfig
    presets = PRESETS

    def __init__(self, config: DiffRFConfig, *, backend: str = "auto"):
        super().__init__()
        config.validate()
        self.config = config
        self.backend = backend
        self.denoiser = UNet3D(config)
        self.schedule = GaussianDiffusion(config.timesteps, config.beta_start, config.beta_end)

    @property
    def betas(self) -> torch.Tensor:
        return self.schedule.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule.alphas_cumprod

    @property
    def field_shape(self):
        r = self.config.resolution
        return (self.config.channels, r, r, r)

    def _device(self) -> torch.device:
        return self.betas.device

    def _render_options(self):
        c = self.config
        return dict(bound=c.bound, sigma_max=c.sigma_max, n_samples=c.n_samples, backend=self.backend)

    # ------------------------------------------------------------------ rendering
    def render_rays(self, fields, rays_o, rays_d, **options):
        """:func:`~fastfields.models.diffrf.field.render_rays` with this model's field settings."""
        return render_rays(fields, rays_o, rays_d, **{**self._render_options(), **options})

    @torch.no_grad()
    def render(self, field, c2w, intrinsics, height: int, width: int, **options) -> torch.Tensor:
        """Images ``[V, H, W, 3]`` of one field at OpenCV cameras ``c2w [V, 4, 4]``, ``intrinsics [V, 4]``."""
        return render_views(field, c2w, intrinsics, height, width, **{**self._render_options(), **options})

    # ------------------------------------------------------------------ sampling
    def _generator_device_check(self, generator):
        if generator is not None and generator.device.type != self._device().type:
            raise ValueError(f"DiffRF: generator is on {generator.device}, the model on {self._device()}")

    @torch.no_grad()
    def sample(self, n: int, steps: Optional[int] = None, generator: Optional[torch.Generator] = None, *,
               eta: float = 0.0, progress: bool = False) -> torch.Tensor:
        """``n`` unconditional fields ``[n, 4, R, R, R]``: ``steps=None`` is ancestral sampling over
        all T steps, an int runs DDIM with that many steps (``eta`` its noise, 0 deterministic)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"DiffRF.sample: n must be a positive int, got {n!r}")
        self._generator_device_check(generator)
        return self.schedule.sample(self.denoiser, (n, *self.field_shape), steps=steps, eta=eta, generator=generator,
                                    device=self._device(), progress=progress)

    @torch.no_grad()
    def complete(self, field, mask, steps: Optional[int] = None, generator: Optional[torch.Generator] = None, *,
                 jump_length: int = 10, jump_n_sample: int = 1, eta: float = 0.0, progress: bool = False) -> torch.Tensor:
        """Masked completion (RePaint-style) of ``field [B, 4, R, R, R]`` (or ``[4, R, R, R]``):
        ``mask`` (1 = known voxel) is ``[R, R, R]``, ``[B, R, R, R]`` or anything broadcasting
        to ``[B, 1 or 4, R, R, R]``; ``jump_n_sample > 1`` turns on resampling jumps. Returns
        ``[B, 4, R, R, R]``, equal to ``field`` where the mask is 1."""
        field = check_fields(field, "field", self.config.resolution).to(self._device())
        mask = as_tensor(mask, "mask", device=self._device())
        r = self.config.resolution
        if mask.dim() == 3:
            mask = mask[None, None]
        elif mask.dim() == 4:
            mask = mask[:, None]
        try:
            torch.broadcast_shapes(mask.shape, field.shape)
        except RuntimeError:
            raise ValueError(f"DiffRF.complete: mask of shape {list(mask.shape)} does not broadcast to the field's "
                             f"{list(field.shape)} (give [{r}, {r}, {r}] or [B, {r}, {r}, {r}])") from None
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("DiffRF.complete: mask must hold 0 (unknown) and 1 (known) only")
        self._generator_device_check(generator)
        return self.schedule.complete(self.denoiser, field, mask, steps=steps, jump_length=jump_length,
                                      jump_n_sample=jump_n_sample, eta=eta, generator=generator, progress=progress)

    def from_image(self, image, c2w, intrinsics, *, n: int = 1, steps: int = 50, scale: float = 1.0,
                   mask=None, through_denoiser: bool = False, generator: Optional[torch.Generator] = None,
                   progress: bool = False) -> torch.Tensor:
        """Single-image 3D synthesis: DDIM sampling guided by the rendering loss of the x0
        estimate against one posed image (:meth:`GaussianDiffusion.sample_guided`).

        Args:
            image: ``[H, W, 3]`` in ``[0, 1]`` on a white background (uint8 is rescaled).
            c2w, intrinsics: its OpenCV camera ``[4, 4]`` and ``[4]`` (fx, fy, cx, cy pixels).
            n: fields drawn for the same image. steps: DDIM steps.
            scale: guidance strength on the rendering loss ``sum_pixels ||render(x0) - image||^2``
                (``mask [H, W]`` optionally restricts it to some pixels).
            through_denoiser: backpropagate the guidance through the U-Net (slower, DPS-like).

        Returns ``[n, 4, R, R, R]``.
        """
        image = as_tensor(image, "image", dtype=None, ndim=3)
        image = image.float() / 255.0 if not image.is_floating_point() else image.float()
        if image.shape[-1] != 3:
            raise ValueError(f"DiffRF.from_image: image must be [H, W, 3], got {list(image.shape)}")
        h, w, _ = image.shape
        c2w = as_tensor(c2w, "c2w").reshape(1, 4, 4)
        intrinsics = as_tensor(intrinsics, "intrinsics").reshape(1, 4)
        rays_o, rays_d = camera_rays(c2w, intrinsics, h, w)
        device = self._device()
        target = image.reshape(1, -1, 3).to(device)
        weight = torch.ones(1, h * w, 1, device=device) if mask is None else \
            as_tensor(mask, "mask", device=device).reshape(1, h * w, 1)
        rays_o, rays_d = rays_o.to(device).expand(n, -1, -1), rays_d.to(device).expand(n, -1, -1)
        self._generator_device_check(generator)

        def loss_fn(x0):
            rgb, _, _ = self.render_rays(x0, rays_o, rays_d)  # unclipped: the activations bound it
            return (weight * (rgb - target) ** 2).sum()

        return self.schedule.sample_guided(self.denoiser, (n, *self.field_shape), loss_fn, steps=steps, scale=scale,
                                           through_denoiser=through_denoiser, generator=generator, device=device,
                                           progress=progress)
