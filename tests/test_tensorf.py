"""The TensoRF-VM baseline (fastfields.models.tensorf) against a plain transcription of
apchenstu/TensoRF's TensorVMSplit, and its official checkpoints (manifests from the official code)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastfields.models._pretrained import CheckpointError
from fastfields.models.tensorf import TensoRF, TensoRFConfig, cal_n_samples, n_to_reso, positional_encoding

MANIFESTS = Path(__file__).parent / "manifests"


def _official_density(model, xyz):
    """``compute_densityfeature`` as written in models/tensoRF.py."""
    mat, vec = [[0, 1], [0, 2], [1, 2]], [2, 1, 0]
    cp = torch.stack((xyz[..., mat[0]], xyz[..., mat[1]], xyz[..., mat[2]])).view(3, -1, 1, 2)
    cl = torch.stack((xyz[..., vec[0]], xyz[..., vec[1]], xyz[..., vec[2]]))
    cl = torch.stack((torch.zeros_like(cl), cl), dim=-1).view(3, -1, 1, 2)
    out = torch.zeros(xyz.shape[0])
    for i in range(3):
        p = F.grid_sample(model.density_plane[i], cp[[i]], align_corners=True).view(-1, xyz.shape[0])
        l = F.grid_sample(model.density_line[i], cl[[i]], align_corners=True).view(-1, xyz.shape[0])
        out = out + torch.sum(p * l, dim=0)
    return out


def _official_app(model, xyz):
    mat, vec = [[0, 1], [0, 2], [1, 2]], [2, 1, 0]
    cp = torch.stack((xyz[..., mat[0]], xyz[..., mat[1]], xyz[..., mat[2]])).view(3, -1, 1, 2)
    cl = torch.stack((xyz[..., vec[0]], xyz[..., vec[1]], xyz[..., vec[2]]))
    cl = torch.stack((torch.zeros_like(cl), cl), dim=-1).view(3, -1, 1, 2)
    ps, ls = [], []
    for i in range(3):
        ps.append(F.grid_sample(model.app_plane[i], cp[[i]], align_corners=True).view(-1, xyz.shape[0]))
        ls.append(F.grid_sample(model.app_line[i], cl[[i]], align_corners=True).view(-1, xyz.shape[0]))
    return model.basis_mat((torch.cat(ps) * torch.cat(ls)).T)


def _official_forward(model, rays_o, rays_d):
    """TensorBase.forward (no alpha mask, eval, white background), transcribed."""
    c = model.config
    aabb = model.aabb
    vec = torch.where(rays_d == 0, torch.full_like(rays_d, 1e-6), rays_d)
    t_min = torch.minimum((aabb[1] - rays_o) / vec, (aabb[0] - rays_o) / vec).amax(-1).clamp(min=c.near_far[0], max=c.near_far[1])
    z = t_min[..., None] + model.step_size * torch.arange(model.n_samples)[None].float()
    pts = rays_o[..., None, :] + rays_d[..., None, :] * z[..., None]
    valid = ~((aabb[0] > pts) | (pts > aabb[1])).any(dim=-1)
    dists = torch.cat((z[:, 1:] - z[:, :-1], torch.zeros_like(z[:, :1])), dim=-1)
    viewdirs = rays_d.view(-1, 1, 3).expand(pts.shape)
    sigma, rgb = torch.zeros(pts.shape[:-1]), torch.zeros((*pts.shape[:2], 3))
    normed = (pts - aabb[0]) * (2.0 / (aabb[1] - aabb[0])) - 1
    sigma[valid] = F.softplus(_official_density(model, normed[valid]) + c.density_shift)
    alpha = 1.0 - torch.exp(-sigma * dists * c.distance_scale)
    T = torch.cumprod(torch.cat([torch.ones(alpha.shape[0], 1), 1.0 - alpha + 1e-10], -1), -1)
    weight = alpha * T[:, :-1]
    mask = weight > c.ray_march_weight_thres
    feats = _official_app(model, normed[mask])
    inp = [feats, viewdirs[mask], positional_encoding(feats, c.fea_pe), positional_encoding(viewdirs[mask], c.view_pe)]
    rgb[mask] = torch.sigmoid(model.renderModule.mlp(torch.cat(inp, -1)))
    acc = weight.sum(-1)
    return ((weight[..., None] * rgb).sum(-2) + (1.0 - acc[..., None])).clamp(0, 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = TensoRF("tiny")
    with torch.no_grad():  # a density that is not all ~0 (softplus(x - 10))
        for p in m.density_plane:
            p.add_(0.4)
        for l in m.density_line:
            l.add_(1.1)
    return m


def test_features_are_tensorvmsplit(model):
    xyz = torch.rand(200, 3) * 2.2 - 1.1  # some outside [-1, 1]: zero padding
    torch.testing.assert_close(model.density_feature(xyz, backend="torch"), _official_density(model, xyz), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.density_feature(xyz), _official_density(model, xyz), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.app_feature(xyz), _official_app(model, xyz), atol=1e-5, rtol=1e-5)


def test_forward_is_tensorbase_forward(model):
    gen = torch.Generator().manual_seed(1)
    rays_o = torch.tensor([[0.0, -4.0, 0.5]]).repeat(64, 1)
    rays_d = F.normalize(torch.tensor([0.0, 1.0, -0.12]) + 0.15 * torch.randn(64, 3, generator=gen), dim=-1)
    with torch.no_grad():
        rgb, _, acc = model(rays_o, rays_d)
        expected = _official_forward(model, rays_o, rays_d)
    assert 0.05 < float(acc.mean()) < 0.95  # the test field is neither empty nor opaque
    torch.testing.assert_close(rgb, expected, atol=1e-5, rtol=1e-4)


def test_shader_and_sizes():
    c = TensoRFConfig()
    m = TensoRF(c.replace(grid_size=(8, 8, 8)))
    assert m.renderModule.mlp[0].in_features == 150 and m.basis_mat.weight.shape == (27, 144)
    box = c.box()
    assert n_to_reso(c.n_voxel_init, box) == [128, 128, 128] and cal_n_samples([128] * 3, 0.5) == 443
    x = torch.tensor([[0.5, -1.0]])
    # channel-major (x0 * 1, x0 * 2, x1 * 1, x1 * 2), sines then cosines, as official
    torch.testing.assert_close(positional_encoding(x, 2), torch.tensor([[math.sin(0.5), math.sin(1.0), math.sin(-1.0),
                                                                        math.sin(-2.0), math.cos(0.5), math.cos(1.0),
                                                                        math.cos(-1.0), math.cos(-2.0)]]))


def test_upsample_alpha_mask_and_shrink(model):
    m = TensoRF(model.config)
    m.load_state_dict(model.state_dict())
    before = m.density_plane[0].detach().clone()
    m.upsample_volume_grid([20, 22, 24])
    assert m.density_plane[0].shape == (1, 4, 22, 20) and m.density_line[0].shape == (1, 4, 24, 1)
    torch.testing.assert_close(m.density_plane[0].detach(),
                               F.interpolate(before, size=(22, 20), mode="bilinear", align_corners=True))
    new_box = m.update_alpha_mask((20, 22, 24))
    assert m.alpha_volume.shape == (24, 22, 20) and set(m.alpha_volume.unique().tolist()) <= {0.0, 1.0}
    # official: alpha = 1 - exp(-sigma * stepSize) on the grid, 3^3 max-pool, >= alphaMask_thres
    samples = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, n) for n in (20, 22, 24)], indexing="ij"), -1)
    dense = m.aabb[0] * (1 - samples) + m.aabb[1] * samples
    sigma = F.softplus(_official_density(m, m.normalize_coord(dense.reshape(-1, 3))) - 10).reshape(20, 22, 24)
    alpha = (1 - torch.exp(-sigma * m.step_size)).transpose(0, 2)[None, None]
    alpha = F.max_pool3d(alpha, kernel_size=3, padding=1, stride=1)[0, 0]
    assert torch.equal(m.alpha_volume, (alpha >= 1e-4).float())
    m.shrink(new_box)
    assert all(n <= o for n, o in zip(m.config.grid_size, (20, 22, 24)))
    assert m.density_plane[1].shape[2:] == (m.config.grid_size[2], m.config.grid_size[0])


def _official_state(manifest):
    return {k: torch.zeros(v) for k, v in manifest["state_dict"].items()}


def _official_kwargs(manifest):
    c = manifest["config"]
    keys = ("density_n_comp", "appearance_n_comp", "app_dim", "density_shift", "alphaMask_thres", "distance_scale",
            "fea2denseAct", "near_far", "step_ratio", "shadingMode", "pos_pe", "view_pe", "fea_pe", "featureC")
    kwargs = {k: c[k] for k in keys}
    kwargs.update(aabb=torch.tensor(c["aabb"]), gridSize=list(manifest["gridSize"]), rayMarch_weight_thres=1e-4)
    return kwargs


@pytest.mark.parametrize("name", ["tensorf-lego-init", "tensorf-lego-final-noshrink", "tensorf-lego-nominal300"])
def test_state_dict_matches_official_manifest(name):
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    assert callable(TensoRF.from_official_dict)
    from fastfields.models.tensorf import config_from_official_kwargs

    cfg = config_from_official_kwargs(_official_kwargs(manifest))
    with torch.device("meta"):
        m = TensoRF(cfg)
    shapes = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert shapes == manifest["state_dict"]
    assert sum(p.numel() for p in m.parameters()) == manifest["total_params"]


def test_load_official_checkpoint(tmp_path):
    """An official ``tensorf.save`` file (kwargs, state_dict, packed alpha mask) loads strictly."""
    manifest = json.loads((MANIFESTS / "tensorf-lego-init.json").read_text())
    kwargs = _official_kwargs(manifest)
    kwargs["gridSize"] = [20, 24, 28]
    torch.manual_seed(0)
    with torch.device("meta"):
        ref = TensoRF(__import__("fastfields.models.tensorf", fromlist=["x"]).config_from_official_kwargs(kwargs))
    state = {k: torch.randn(v.shape) for k, v in ref.state_dict().items()}
    mask = np.random.default_rng(0).random((14, 12, 10)) > 0.5
    blob = {"kwargs": kwargs, "state_dict": state, "alphaMask.shape": mask.shape,
            "alphaMask.mask": np.packbits(mask.reshape(-1)), "alphaMask.aabb": torch.tensor(manifest["config"]["aabb"])}
    torch.save(blob, tmp_path / "lego.th")
    model = TensoRF.from_official(tmp_path / "lego.th")
    assert model.config.grid_size == (20, 24, 28) and model.config.shading_mode == "MLP_Fea"
    torch.testing.assert_close(model.app_plane[2].detach(), state["app_plane.2"])
    assert torch.equal(model.alpha_volume.bool(), torch.from_numpy(mask))
    out = model.render(torch.eye(4)[None] + torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 4.0], [0, 0, 0, 0]]), 4, 4, 5.0)
    assert out.shape == (1, 4, 4, 3)
    # our format round trip keeps everything, the mask included
    again = TensoRF.from_pretrained(model.save_pretrained(tmp_path / "ours.safetensors"))
    assert torch.equal(again.alpha_volume, model.alpha_volume) and again.config == model.config
    # strict: every problem listed
    bad = dict(blob, state_dict={**{k: v for k, v in state.items() if k != "basis_mat.weight"},
                                 "density_plane.0": torch.zeros(1, 16, 3, 3), "extra": torch.zeros(1)})
    torch.save(bad, tmp_path / "bad.th")
    with pytest.raises(CheckpointError) as err:
        TensoRF.from_official(tmp_path / "bad.th")
    assert "basis_mat.weight" in str(err.value) and "extra" in str(err.value) and "density_plane.0" in str(err.value)
    with pytest.raises(CheckpointError, match="kwargs"):
        TensoRF.from_official_dict({"state_dict": state})
    with pytest.raises(CheckpointError, match="unknown \\['bogus'\\]"):
        TensoRF.from_official_dict({"kwargs": {**kwargs, "bogus": 1}, "state_dict": state})


def test_fit_runs_the_schedule(tmp_path):
    from fastfields.data import load_npz, select_views, shipped_data

    scene = load_npz(shipped_data("mic/mic_train_100.npz")).subset(select_views(3, 100))
    images = scene.images.reshape(3, 25, 4, 25, 4, 3).mean(dim=(2, 4))
    m = TensoRF.fit(images.numpy(), scene.c2w.numpy(), scene.focal / 4, config="tiny", iters=30, progress=False,
                    bound=1.25)
    kinds = [s[1] for s in m.history["stages"]]
    assert kinds.count("upsample") == 2 and "alpha_mask" in kinds and m.config.grid_size != (16, 16, 16)
    assert m.config.box().abs().max() <= 1.25 + 1e-6
    out = m.render(scene.c2w[:1], 10, 10, scene.focal / 10)
    assert out.shape == (1, 10, 10, 3) and bool(torch.isfinite(out).all())
