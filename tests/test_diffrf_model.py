"""DiffRF model: U-Net shapes, presets, strict save/load, sampling, completion, image guidance, metrics."""

import pytest
import torch

from fastfields.models._pretrained import CheckpointError, write_safetensors
from fastfields.models.diffrf import DiffRF, DiffRFConfig
from fastfields.models.diffrf.metrics import chamfer_matrix, coverage_mmd, field_points
from fastfields.models.diffrf.synthetic import orbit_views, synthetic_object

SMALL = dict(resolution=8, n_samples=16, train_rays=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DiffRF.from_preset("tiny", overrides=SMALL).eval()
    # A non-trivial denoiser: ADM zero-initialises every block's last layer (eps = 0 at init).
    with torch.no_grad():
        for p in m.denoiser.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(std=0.05)
    return m


def test_paper_preset_shapes():
    config = DiffRF.preset_config("paper")
    assert (config.resolution, config.channels, config.timesteps) == (32, 4, 1000)
    assert (config.beta_start, config.beta_end) == (0.0015, 0.05)
    with torch.device("meta"):
        paper = DiffRF(config)  # no forward on meta tensors: it imports torch's slow reference kernels
    n_params = sum(p.numel() for p in paper.denoiser.parameters())
    assert 40e6 < n_params < 60e6  # 49.4 M: ADM's 64^2 layout in 3D
    assert paper.betas.shape == (1000,) and paper.alphas_cumprod.shape == (1000,)
    assert "schedule.betas" in paper.state_dict() and "schedule.alphas_cumprod" in paper.state_dict()


def test_tiny_denoiser_and_bad_input(model):
    x = torch.randn(3, 4, 8, 8, 8)
    eps = model.denoiser(x, torch.tensor([0, 500, 999]))
    assert eps.shape == x.shape and eps.isfinite().all()
    assert not torch.allclose(eps[0], model.denoiser(x, torch.tensor([999, 0, 0]))[0])  # depends on t
    with pytest.raises(ValueError, match=r"x must have shape \[B, 4, 8, 8, 8\]"):
        model.denoiser(torch.randn(1, 3, 8, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="t must have shape"):
        model.denoiser(x, torch.tensor([0]))
    with pytest.raises(ValueError, match="attention_resolutions"):
        DiffRFConfig(attention_resolutions=(5,)).validate()
    with pytest.raises(ValueError, match="channels must be 4"):
        DiffRFConfig(channels=3).validate()


def test_save_load_roundtrip_strict(model, tmp_path):
    x, t = torch.randn(1, 4, 8, 8, 8), torch.tensor([10])
    for target in (tmp_path / "m.safetensors", tmp_path / "folder"):
        model.save_pretrained(target)
        loaded = DiffRF.from_pretrained(target).eval()
        assert loaded.config == model.config
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
        assert torch.allclose(loaded.denoiser(x, t), model.denoiser(x, t), atol=1e-6)
        assert torch.equal(loaded.alphas_cumprod, model.alphas_cumprod)
    state = {k: v for k, v in model.state_dict().items() if k != "schedule.betas"}
    state["extra.weight"] = torch.zeros(1)
    bad = write_safetensors(tmp_path / "bad.safetensors", state,
                            {"fastfields.model": "DiffRF", "fastfields.config": __import__("json").dumps(model.config.to_dict())})
    with pytest.raises(CheckpointError, match=r"(?s)missing keys.*schedule\.betas.*unexpected keys.*extra\.weight"):
        DiffRF.from_pretrained(bad)


def test_sample_shapes_and_seeds(model):
    a = model.sample(2, steps=4, generator=torch.Generator().manual_seed(1))
    b = model.sample(2, steps=4, generator=torch.Generator().manual_seed(1))
    c = model.sample(2, steps=4, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 4, 8, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert bool((a.abs() <= 1).all())
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0)


def test_complete_and_from_image(model):
    field = synthetic_object("chair", 0, 8)
    mask = torch.zeros(8, 8, 8)
    mask[:, :, :4] = 1  # the x < 0 half is known
    out = model.complete(field, mask, steps=6, jump_length=2, jump_n_sample=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 4, 8, 8, 8)
    assert torch.equal(out[0][:, :, :, :4], field[:, :, :, :4])
    with pytest.raises(ValueError, match="mask must hold 0"):
        model.complete(field, mask * 0.5)
    with pytest.raises(ValueError, match="does not broadcast"):
        model.complete(field, torch.ones(2, 3, 8))
    c2w, k = orbit_views(1, 8, 8)
    image = model.render(field, c2w, k, 8, 8)[0]
    fields = model.from_image(image.numpy(), c2w[0].numpy(), k[0], n=2, steps=4, scale=1.0,
                              generator=torch.Generator().manual_seed(0))
    assert fields.shape == (2, 4, 8, 8, 8) and fields.isfinite().all()
    with pytest.raises(ValueError, match=r"image must be \[H, W, 3\]"):
        model.from_image(torch.rand(8, 8, 4), c2w[0], k[0])


def test_coverage_mmd():
    shapes = torch.stack([synthetic_object(kind, s, 16) for kind in ("chair", "car") for s in range(2)])
    points = field_points(shapes, 256, generator=torch.Generator().manual_seed(0))
    assert points.shape == (4, 256, 3) and bool((points.abs() <= 1.05).all())
    d = chamfer_matrix(points, points)
    assert torch.allclose(d, d.T, atol=1e-6) and bool((d.diagonal() < 1e-6).all())
    # Brute force for one pair.
    a, b = points[0], points[3]
    sq = ((a[:, None] - b[None]) ** 2).sum(-1)
    assert d[0, 3].item() == pytest.approx((sq.min(1).values.mean() + sq.min(0).values.mean()).item(), rel=1e-4)
    same = coverage_mmd(shapes, shapes, n_points=256)
    assert same["cov"] == 1.0 and same["mmd"] < 0.02
    collapsed = coverage_mmd(shapes[:1].expand(4, -1, -1, -1, -1), shapes, n_points=256)
    assert collapsed["cov"] == 0.25 and collapsed["mmd"] > same["mmd"]
