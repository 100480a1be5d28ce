"""SSDNeRF inference: fine-tuning, guided reconstruction, sampling and the CLI job (tiny preset)."""

import torch

from fastfields.metrics import psnr
from fastfields.models.ssdnerf import SSDNeRF
from fastfields.models.ssdnerf.reconstruct import reconstruct, render, sample
from fastfields.models.ssdnerf.scenes import make_scenes


def _views(scene, k=1):
    return scene["images"][None, :k], scene["c2w"][None, :k], scene["intrinsics"][None, :k]


def test_finetuning_fits_the_input_view():
    torch.manual_seed(0)
    model = SSDNeRF.from_preset("tiny", overrides=dict(grid_size=16, test_n_inverse_rays=256, finetune_lr=0.05))
    scene = make_scenes(1, views=2, resolution=16, seed=3)[0]
    images, c2w, K = _views(scene)
    scores = []
    for steps in (0, 5):
        code, grids = reconstruct(model, images, c2w, K, guided=False, use_prior=False, finetune_steps=steps,
                                  generator=torch.Generator().manual_seed(0))
        pred = render(model, code, grids, c2w, K, 16, 16)
        scores.append(float(psnr(pred[0], images[0])))
    assert scores[1] > scores[0] + 3, scores


def test_guided_reconstruction_and_sampling_run():
    torch.manual_seed(1)
    model = SSDNeRF.from_preset("tiny", overrides=dict(grid_size=16, test_n_inverse_rays=256, ddim_steps=3))
    scene = make_scenes(1, views=1, resolution=16, seed=4)[0]
    images, c2w, K = (torch.cat([x, x]) for x in _views(scene))  # two scenes at once
    code, grids = reconstruct(model, images.numpy(), c2w, K, guided=True, use_prior=True, finetune_steps=1,
                              generator=torch.Generator().manual_seed(0))
    assert code.shape == (2, 3, 4, 16, 16) and torch.isfinite(code).all() and float(code.abs().max()) <= 2
    assert len(grids) == 2
    codes, grids = sample(model, 2, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 3, 4, 16, 16) and float(codes.abs().max()) <= 2.0


def test_cli_sample_writes_renders_turntable_and_mesh(tmp_path):
    from fastfields.cli import main

    out = tmp_path / "samples"
    assert main(["ssdnerf", "sample", "--n", "1", "--out", str(out), "--res", "16", "--turntable", "4",
                 "--mesh-res", "16", "--mesh-threshold", "1", "--no-progress"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "sample00_turntable.gif" in names and "sample00_view00.png" in names
