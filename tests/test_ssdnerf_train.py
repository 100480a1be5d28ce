"""Single-stage SSDNeRF training at the tiny preset on procedural scenes (CPU)."""

import numpy as np
import torch

from fastfields.models.ssdnerf import SSDNeRF
from fastfields.models.ssdnerf.scenes import make_scenes
from fastfields.models.ssdnerf.train import Trainer


def test_tiny_training_losses_fall_and_state_is_cached():
    torch.manual_seed(0)
    scenes = make_scenes(4, views=4, resolution=16, seed=0)
    for s in scenes:
        assert s["images"].shape == (4, 16, 16, 3) and 0.1 < float(s["alpha"].mean()) < 0.9
    model = SSDNeRF.from_preset("tiny", overrides=dict(grid_size=16, extra_scene_step=2, n_inverse_rays=512,
                                                       n_decoder_rays=512, loss_coef=0.1 / 256))
    ema_before = model.decoder_ema.base_net[0].weight.clone()
    trainer = Trainer(model, scenes, batch_size=2, device="cpu", seed=0)
    history = trainer.train(18, progress=False)
    pix = np.array(history["pixel_loss"])
    # the rendering loss falls by more than 2x in 18 iterations (2.25x measured)
    assert pix[-4:].mean() < pix[:4].mean() / 2, pix
    assert np.mean(history["psnr"][-4:]) > np.mean(history["psnr"][:4]) + 2.5
    assert np.isfinite(history["loss_diffusion"]).all()
    # prior-gradient caching: every trained scene's code and its Adam state live in the cache
    trained = [i for i, st in enumerate(trainer.cache.optim_states) if st is not None]
    assert len(trained) == 4
    steps = [int(trainer.cache.optim_states[i]["state"][0]["step"]) for i in trained]
    assert all(s % 3 == 0 and s > 0 for s in steps)  # extra_scene_step + 1 code steps per visit
    assert float(trainer.cache.stacked().abs().max()) > 10 * model.config.init_scale
    # the EMA copies moved, and the loss normaliser tracks mean(code^2)
    assert not torch.equal(model.decoder_ema.base_net[0].weight, ema_before)
    assert float(model.diffusion.ddpm_loss.norm_factor) < 1.0
