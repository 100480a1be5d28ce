"""EG3D's training objective (``training/loss.py`` ``StyleGAN2Loss`` with dual discrimination):
non-saturating logistic loss, lazy R1 on both the image and the raw image, L1 density
regularisation between nearby points, generator pose conditioning with a swapping
probability faded in over ``gpc_reg_fade_kimg``, and the discriminator blur faded out over
``blur_fade_kimg`` (also applied to the real raw images)."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .discriminator import filtered_resizing

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    blur_size = np.floor(sigma * 3)
    if blur_size <= 0:
        return image
    f = torch.arange(-blur_size, blur_size + 1, device=image.device).div(sigma).square().neg().exp2()
    return ops.filter2d(image, f / f.sum())


class EG3DLoss:
    """``accumulate_gradients(phase, real_img, real_c, gen_z, gen_c, gain, cur_nimg)`` backpropagates
    the phase's loss (scaled by ``gain``) and returns its values for logging."""

    def __init__(self, G, D, r1_gamma: float = 1.0, blur_init_sigma: float = 10, blur_fade_kimg: float = 200,
                 gpc_reg_prob: Optional[float] = 0.5, gpc_reg_fade_kimg: float = 1000,
                 neural_rendering_resolution: Optional[int] = None, style_mixing_prob: float = 0.0):
        self.G, self.D = G, D
        self.r1_gamma = r1_gamma
        self.blur_init_sigma, self.blur_fade_kimg = blur_init_sigma, blur_fade_kimg
        self.gpc_reg_prob, self.gpc_reg_fade_kimg = gpc_reg_prob, gpc_reg_fade_kimg
        self.neural_rendering_resolution = neural_rendering_resolution or G.config.neural_rendering_resolution
        self.style_mixing_prob = style_mixing_prob
        if gpc_reg_prob is not None and not 0 <= gpc_reg_prob <= 1:
            raise ValueError(f"EG3DLoss: gpc_reg_prob must be in [0, 1] or None, got {gpc_reg_prob}")

    def _conditioning(self, c, swapping_prob, per_sample: bool = True):
        if swapping_prob is None:
            return torch.zeros_like(c)
        swapped = torch.roll(c.clone(), 1, 0)
        shape = (c.shape[0], 1) if per_sample else ()
        return torch.where(torch.rand(shape, device=c.device) < swapping_prob, swapped, c)

    def run_G(self, z, c, swapping_prob, update_emas: bool = False):
        ws = self.G.mapping(z, self._conditioning(c, swapping_prob), update_emas=update_emas)
        if self.style_mixing_prob > 0:
            cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, ws.shape[1])
            cutoff = torch.where(torch.rand([], device=ws.device) < self.style_mixing_prob, cutoff,
                                 torch.full_like(cutoff, ws.shape[1]))
            ws[:, cutoff:] = self.G.mapping(torch.randn_like(z), c, update_emas=False)[:, cutoff:]
        out = self.G.synthesis(ws, c, neural_rendering_resolution=self.neural_rendering_resolution,
                               update_emas=update_emas)
        return out, ws

    def run_D(self, img: Dict[str, torch.Tensor], c, blur_sigma: float = 0, update_emas: bool = False):
        img = dict(img)
        img["image"] = _blur(img["image"], blur_sigma)
        return self.D(img, c, update_emas=update_emas)

    def accumulate_gradients(self, phase: str, real_img, real_c, gen_z, gen_c, gain: float, cur_nimg: int) -> dict:
        if phase not in PHASES:
            raise ValueError(f"EG3DLoss: phase must be one of {PHASES}, got {phase!r}")
        rk = self.G.rendering_kwargs
        if rk.get("density_reg", 0) == 0:
            phase = {"Greg": "none", "Gboth": "Gmain"}.get(phase, phase)
        if self.r1_gamma == 0:
            phase = {"Dreg": "none", "Dboth": "Dmain"}.get(phase, phase)
        blur_sigma = max(1 - cur_nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma \
            if self.blur_fade_kimg > 0 else 0
        alpha = min(cur_nimg / (self.gpc_reg_fade_kimg * 1e3), 1) if self.gpc_reg_fade_kimg > 0 else 1
        swapping_prob = (1 - alpha) * 1 + alpha * self.gpc_reg_prob if self.gpc_reg_prob is not None else None
        real_raw = _blur(filtered_resizing(real_img, self.neural_rendering_resolution), blur_sigma)
        real = {"image": real_img, "image_raw": real_raw}
        logs = {}

        if phase in ("Gmain", "Gboth"):
            gen_img, _ = self.run_G(gen_z, gen_c, swapping_prob)
            loss = F.softplus(-self.run_D(gen_img, gen_c, blur_sigma))
            loss.mean().mul(gain).backward()
            logs["G/loss"] = float(loss.detach().mean())

        if phase in ("Greg", "Gboth") and rk.get("density_reg", 0) > 0:
            ws = self.G.mapping(gen_z, self._conditioning(gen_c, swapping_prob, per_sample=False), update_emas=False)
            initial = torch.rand((ws.shape[0], 1000, 3), device=ws.device) * 2 - 1
            perturbed = initial + torch.randn_like(initial) * rk["density_reg_p_dist"]
            coords = torch.cat([initial, perturbed], dim=1)
            sigma = self.G.sample_mixed(coords, torch.randn_like(coords), ws, update_emas=False)["sigma"]
            half = sigma.shape[1] // 2
            tv = F.l1_loss(sigma[:, :half], sigma[:, half:]) * rk["density_reg"]
            tv.mul(gain).backward()
            logs["G/density_reg"] = float(tv.detach())

        loss_gen = 0
        if phase in ("Dmain", "Dboth"):
            gen_img, _ = self.run_G(gen_z, gen_c, swapping_prob, update_emas=True)
            gen_img = {k: v.detach() for k, v in gen_img.items()}
            loss_gen = F.softplus(self.run_D(gen_img, gen_c, blur_sigma, update_emas=True))
            loss_gen.mean().mul(gain).backward()

        if phase in ("Dmain", "Dreg", "Dboth"):
            want_r1 = phase in ("Dreg", "Dboth")
            tmp = {k: v.detach().requires_grad_(want_r1) for k, v in real.items()}
            real_logits = self.run_D(tmp, real_c, blur_sigma)
            loss_real = F.softplus(-real_logits) if phase in ("Dmain", "Dboth") else 0
            loss_r1 = 0
            if want_r1:
                g_img, g_raw = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[tmp["image"], tmp["image_raw"]],
                                                   create_graph=True, only_inputs=True)
                penalty = g_img.square().sum([1, 2, 3]) + g_raw.square().sum([1, 2, 3])
                loss_r1 = penalty * (self.r1_gamma / 2)
                logs["D/r1"] = float(penalty.detach().mean())
            (loss_real + loss_r1).mean().mul(gain).backward()
            if phase in ("Dmain", "Dboth"):
                logs["D/loss"] = float((loss_gen + loss_real).detach().mean())
        return logs
