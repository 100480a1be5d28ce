"""SSDNeRF diffusion: schedule, v-prediction loss, DDIM sampler and guidance vs direct computations."""

import math

import numpy as np
import pytest
import torch

from fastfields.models.ssdnerf import SSDNeRF
from fastfields.models.ssdnerf.diffusion import ddim_timesteps


def _model(seed=0):
    torch.manual_seed(seed)
    model = SSDNeRF.from_preset("tiny")
    with torch.no_grad():  # the zero-initialised layers would make the U-Net output 0
        for name, p in model.diffusion.denoising.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    return model


def test_schedule_numbers():
    d = SSDNeRF.from_preset("tiny").diffusion
    assert d.betas[0] == pytest.approx(1e-4) and d.betas[-1] == pytest.approx(2e-2) and len(d.betas) == 1000
    ab = np.cumprod(1 - np.linspace(1e-4, 2e-2, 1000))
    np.testing.assert_allclose(d.alphas_bar, ab, rtol=1e-12)
    assert d.alphas_bar[-1] == pytest.approx(4.0358e-5, rel=1e-3)
    # SNR-weighted sampler, power 0.5, 'V' mode: w_t = sqrt(snr) * (1 - ab) = sqrt(ab (1 - ab))
    np.testing.assert_allclose(d.timestep_weight.numpy(), np.sqrt(ab * (1 - ab)), rtol=1e-6)
    assert ddim_timesteps(1000, 50).tolist() == list(range(999, -1, -20))
    t75 = ddim_timesteps(1000, 75).tolist()
    assert len(t75) == 75 and t75[:4] == [999, 985, 972, 959] and t75[-1] == 12


def test_v_prediction_loss_matches_direct_computation():
    model = _model()
    d = model.diffusion.train()
    x0 = torch.randn(3, 12, 16, 16) * 0.7
    t = torch.tensor([5, 500, 990])
    noise = torch.randn_like(x0)
    before = float(d.ddpm_loss.norm_factor)
    loss, _ = d.loss(x0, t=t, noise=noise)
    ab = torch.tensor(np.cumprod(1 - np.linspace(1e-4, 2e-2, 1000))[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    v_pred = d.denoising(x_t, t)
    w = (ab * (1 - ab)).sqrt().view(-1)
    norm = 0.999 * before + 0.001 * float(x0.square().mean())
    want = (0.5 * (v_pred - v).square().mean(dim=(1, 2, 3)) * w * 4.0).mean() / norm
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-7)
    assert float(d.ddpm_loss.norm_factor) == pytest.approx(norm, rel=1e-6)
    # eval mode does not move the normaliser; gradients reach the codes
    d.eval()
    x0 = x0.clone().requires_grad_(True)
    d.loss(x0, t=t, noise=noise)[0].backward()
    assert float(d.ddpm_loss.norm_factor) == pytest.approx(norm, rel=1e-6) and float(x0.grad.abs().sum()) > 0


def _reference_ddim(unet, x, steps, clip):
    ab_all = np.cumprod(1 - np.linspace(1e-4, 2e-2, 1000))
    ts = list(range(999, -1, -1))[:: 1000 // steps] if 1000 % steps == 0 else None
    for i, t in enumerate(ts):
        ab = float(ab_all[t])
        ab_prev = float(ab_all[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        v = unet(x, torch.full((x.shape[0],), t))
        x0 = (math.sqrt(ab) * x - math.sqrt(1 - ab) * v).clamp(-clip, clip)
        eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    return x


def test_ddim_equals_reference_loop():
    model = _model(1)
    d = model.diffusion.eval()
    noise = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        got = d.ddim_sample(noise, 10, clip_range=2.0)
        want = _reference_ddim(d.denoising, noise, 10, 2.0)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert float((got - noise).abs().mean()) > 0.1


def test_guidance_step_matches_formula():
    model = _model(2)
    d = model.diffusion.eval()
    x_t = torch.randn(1, 12, 16, 16)
    target = torch.randn(1, 12, 16, 16)
    t = torch.tensor(600)
    gain = 0.05

    def guide(x0):
        return (x0 - target).square().sum()

    got = d.pred_x_0(x_t, t, clip_range=2.0, grad_guide_fn=guide, guidance_gain=gain)
    ab = float(d.alphas_bar[600])
    x = x_t.clone().requires_grad_(True)
    x0 = (math.sqrt(ab) * x - math.sqrt(1 - ab) * d.denoising(x, t.expand(1))).clamp(-2, 2)
    grad, = torch.autograd.grad(guide(x0), x)
    want = (x0.detach() - grad * math.sqrt(1 - ab) * gain).clamp(-2, 2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    unguided = d.pred_x_0(x_t, t, clip_range=2.0)
    assert float((got - target).square().sum()) < float((unguided - target).square().sum())
