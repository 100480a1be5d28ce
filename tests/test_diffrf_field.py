"""DiffRF's voxel radiance field: rendering through the fused ops, fitting, mesh init, cache."""

import pytest
import torch

from fastfields.metrics import psnr
from fastfields.models.diffrf import field as F
from fastfields.models.diffrf.synthetic import orbit_views, synthetic_object


def rays():
    c2w, k = orbit_views(2, 8, 4)
    o, d = F.camera_rays(c2w, k, 8, 4)
    return o, d


def test_fused_render_matches_eager_and_gradients():
    field = (torch.rand(2, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    o, d = rays()
    out_fused = F.render_rays(field, o, d, n_samples=24, sigma_max=30.0)
    out_eager = F.render_rays(field, o, d, n_samples=24, sigma_max=30.0, backend="torch")
    for a, b in zip(out_fused, out_eager):
        assert torch.allclose(a, b, atol=1e-5)
    g_fused, = torch.autograd.grad(out_fused[0].sum(), field)
    g_eager, = torch.autograd.grad(out_eager[0].sum(), field)
    assert g_fused.abs().sum() > 0 and torch.allclose(g_fused, g_eager, atol=1e-5)


def test_empty_and_opaque_fields():
    o, d = rays()
    empty = torch.full((2, 4, 8, 8, 8), -1.0)
    rgb, _, opacity = F.render_rays(empty, o, d, n_samples=16)
    assert bool((opacity < 1e-5).all()) and torch.allclose(rgb, torch.ones_like(rgb), atol=1e-5)
    solid = torch.ones(2, 4, 8, 8, 8)
    solid[:, 1:] = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1, 1)  # rgb (1, 0, 0.5)
    rgb, depth, opacity = F.render_rays(solid, o, d, n_samples=16)
    hit = opacity > 0.5
    assert hit.float().mean() > 0.3  # the box is in view
    assert torch.allclose(rgb[hit], torch.tensor([1.0, 0.0, 0.5]).expand_as(rgb[hit]), atol=1e-3)
    assert torch.allclose(opacity[hit], torch.ones_like(opacity[hit]), atol=1e-4)
    with pytest.raises(ValueError, match="expected shape"):
        F.render_rays(torch.zeros(1, 3, 8, 8, 8), o[:1], d[:1])


def test_fit_field_rerenders_its_views():
    gt = synthetic_object("chair", 3, 32)
    c2w, k = orbit_views(8, 20, 20, elevation=20)
    images = F.render_views(gt, c2w, k, 20, 20, n_samples=96)
    history = {}
    field = F.fit_field(images, c2w, k, resolution=16, iters=60, lr=0.1, rays_per_step=1024, n_samples=48, history=history)
    assert field.shape == (4, 16, 16, 16) and bool((field.abs() <= 1).all())
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    again = F.render_views(field, c2w, k, 20, 20, n_samples=48)
    assert psnr(again, images) > 30.0  # measured 35.9 dB (16^3 fit of a 32^3 object, 60 steps)


def test_voxelize_mesh_occupancy_and_colour():
    trimesh = pytest.importorskip("trimesh")
    box = trimesh.creation.box(extents=(1.0, 1.0, 0.5))
    box.visual.face_colors = [255, 0, 0, 255]
    field = F.voxelize_mesh(box, 16)
    assert field.shape == (4, 16, 16, 16)
    axis = torch.linspace(-1, 1, 16)
    inside = (axis.abs() < 0.45)
    inside_z = (axis.abs() < 0.2)
    occ = field[0] > 0
    assert bool(occ[inside_z][:, inside][:, :, inside].all())  # [z, y, x]: interior filled
    assert not bool(occ[axis.abs() > 0.35].any())  # nothing above / below the 0.5-high box
    assert torch.allclose(field[1:, 8, 8, 8], torch.tensor([1.0, -1.0, -1.0]))
    with pytest.raises(TypeError, match="trimesh.Trimesh"):
        F.voxelize_mesh("box")


def test_field_cache(tmp_path, monkeypatch):
    gt = synthetic_object("car", 1, 16)
    c2w, k = orbit_views(3, 8, 8)
    item = {"id": "car/001", "images": F.render_views(gt, c2w, k, 8, 8, n_samples=32), "c2w": c2w, "intrinsics": k}
    cache = F.FieldCache(tmp_path)
    calls = []
    real = F.fit_field
    monkeypatch.setattr(F, "fit_field", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    first = cache.get(item, resolution=8, iters=3, n_samples=16)
    second = cache.get(item, resolution=8, iters=3, n_samples=16)
    assert len(calls) == 1 and torch.equal(first["field"], second["field"])
    assert first["images"].shape == (3, 8, 8, 3) and cache.ids() == ["car_001"]
    cache.get(item, resolution=8, iters=4, n_samples=16)  # other options: refitted
    assert len(calls) == 2
