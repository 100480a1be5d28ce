"""DiffRF training: a tiny model overfits one field, its samples render finite images."""

import torch

from fastfields.models.diffrf import DiffRF
from fastfields.models.diffrf.field import render_views
from fastfields.models.diffrf.synthetic import orbit_views, synthetic_object
from fastfields.models.diffrf.train import EMA, RaySource, diffrf_loss, plot_losses, train


def test_tiny_model_overfits_one_field(tmp_path):
    torch.manual_seed(0)
    model = DiffRF.from_preset("tiny", overrides=dict(resolution=8, n_samples=16, train_rays=64))
    field = synthetic_object("chair", 0, 8)
    c2w, k = orbit_views(4, 12, 12)
    entry = {"field": field, "images": render_views(field, c2w, k, 12, 12, n_samples=32), "c2w": c2w, "intrinsics": k}
    # A fixed evaluation batch: 16 timesteps spread over [0, T), fixed noise and rays.
    g = torch.Generator().manual_seed(5)
    fields, o, d, target = RaySource([entry]).batch(torch.zeros(16, dtype=torch.long), 64, g)
    t, noise = torch.linspace(0, 999, 16).long(), torch.randn(fields.shape, generator=g)

    def evaluate():
        with torch.no_grad():
            return diffrf_loss(model, fields, o, d, target, t=t, noise=noise)

    before = evaluate()
    history = train(model, [entry], steps=60, batch_size=4, lr=3e-3, ema_decay=0.99, log_every=15)
    after = evaluate()
    # Measured (seeded): 1.008 -> 0.295 in 60 steps, a factor of 3.4; ask for 2.5.
    assert after["loss"] < before["loss"] / 2.5, (before["loss"], after["loss"])
    assert after["loss_rgb"] > 0 and history["loss"][-1] < history["loss"][0]
    assert isinstance(history["ema"], DiffRF) and len(history["step"]) == 4  # logged every 15 steps
    samples = model.sample(2, steps=5, generator=torch.Generator().manual_seed(0))
    ema_samples = history["ema"].sample(1, steps=5, generator=torch.Generator().manual_seed(0))
    for s in (samples[0], samples[1], ema_samples[0]):
        image = model.render(s, c2w[:2], k[:2], 12, 12)
        assert image.shape == (2, 12, 12, 3) and image.isfinite().all()
    if plot_losses(history, tmp_path / "loss.png") is not None:
        assert (tmp_path / "loss.png").stat().st_size > 0


def test_rgb_loss_weight_zero_is_the_ablation():
    model = DiffRF.from_preset("tiny", overrides=dict(resolution=8, n_samples=8, train_rays=16, rgb_loss_weight=0.0))
    f = torch.zeros(2, 4, 8, 8, 8)
    o = torch.zeros(2, 16, 3)
    o[..., 2] = -3
    dirs = torch.zeros(2, 16, 3)
    dirs[..., 2] = 1
    out = diffrf_loss(model, f, o, dirs, torch.ones(2, 16, 3), t=torch.tensor([0, 1]))
    assert out["loss_rgb"].item() == 0.0 and out["loss"].item() == out["loss_rf"].item()
    full = diffrf_loss(model, f, o, dirs, torch.ones(2, 16, 3), t=torch.tensor([0, 1]), rgb_loss_weight=1.0,
                       noise=torch.zeros_like(f))
    assert full["loss_rgb"].item() > 0  # a grey field against white pixels


def test_ema_tracks_with_warmup():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ema = EMA(a, decay=0.9)
    ema.update(b)  # warm-up decay min(0.9, 2 / 11)
    d = 2 / 11
    assert torch.allclose(ema.model.weight, d * a.weight + (1 - d) * b.weight)
