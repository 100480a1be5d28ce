"""fastfields.data (npz and Blender loaders, compositing, view selection) and fastfields.metrics."""

import json
import math

import numpy as np
import pytest
import torch

from fastfields.data import (
    MultiViewData,
    composite_background,
    farthest_views,
    load_blender,
    load_npz,
    select_views,
    shipped_data,
    to_float_images,
)
from fastfields.metrics import psnr, ssim

MIC_100 = shipped_data("mic/mic_train_100.npz")


def write_npz(path, images, poses, **extra):
    np.savez(path, images_train=images, poses_train=poses, **extra)
    return path


def random_scene(V=3, H=8, W=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(V, H, W, 4), dtype=np.uint8)
    poses = np.tile(np.eye(4, dtype=np.float32), (V, 1, 1))
    poses[:, :3, 3] = rng.normal(size=(V, 3)) * 4
    return images, poses


# ---------------------------------------------------------------------------------------
# compositing and conversion


def test_composite_background_closed_form():
    rgba = torch.tensor([[[[1.0, 0.0, 0.0, 0.25], [0.2, 0.4, 0.6, 1.0], [0.9, 0.9, 0.9, 0.0]]]])
    rgb, alpha = composite_background(rgba, background=(0.0, 1.0, 0.5))
    expected = torch.tensor([[[[0.25, 0.75, 0.375], [0.2, 0.4, 0.6], [0.0, 1.0, 0.5]]]])
    torch.testing.assert_close(rgb, expected)
    torch.testing.assert_close(alpha, torch.tensor([[[0.25, 1.0, 0.0]]]))


def test_composite_background_uint8_and_rgb_passthrough():
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255]]], dtype=np.uint8)
    rgb, alpha = composite_background(rgba, 1.0)
    torch.testing.assert_close(rgb, torch.tensor([[[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]))
    plain = torch.rand(2, 3, 3)
    rgb, alpha = composite_background(plain, 0.0)
    assert torch.equal(rgb, plain) and torch.equal(alpha, torch.ones(2, 3))


@pytest.mark.parametrize(
    "images, error, match",
    [
        (torch.rand(4, 4, 5), ValueError, r"\[\.\.\., H, W, 3\]"),
        (torch.full((2, 2, 3), 1.5), ValueError, r"\[0, 1\]"),
        (torch.full((2, 2, 3), float("nan")), ValueError, "NaN"),
        (torch.ones(2, 2, 3, dtype=torch.int32), TypeError, "uint8"),
        ("image.png", TypeError, "tensor or numpy"),
    ],
)
def test_composite_background_bad_input(images, error, match):
    with pytest.raises(error, match=match):
        composite_background(images)


@pytest.mark.parametrize("background", [2.0, (1.0, 0.0), "white", (0.0, -0.1, 0.0)])
def test_composite_background_bad_colour(background):
    with pytest.raises(ValueError, match="background"):
        composite_background(torch.rand(2, 2, 4), background)


def test_to_float_images_scales_uint8():
    out = to_float_images(np.array([[[0, 51, 255]]], dtype=np.uint8))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.2, 1.0]]]))


# ---------------------------------------------------------------------------------------
# loaders


def test_load_npz_layout(tmp_path):
    images, poses = random_scene()
    path = write_npz(tmp_path / "scene.npz", images, poses, camera_angle_x=np.float32(0.5), near=2.0, far=6.0)
    scene = load_npz(path, background=0.0)
    assert isinstance(scene, MultiViewData) and len(scene) == 3 and (scene.height, scene.width) == (8, 10)
    a = images[..., 3:] / 255.0
    torch.testing.assert_close(scene.images, torch.from_numpy(images[..., :3] / 255.0 * a).float())
    torch.testing.assert_close(scene.alpha, torch.from_numpy(a[..., 0]).float())
    torch.testing.assert_close(scene.c2w, torch.from_numpy(poses))
    assert scene.focal == pytest.approx(0.5 * 10 / math.tan(0.25)) and (scene.near, scene.far) == (2.0, 6.0)
    K = scene.intrinsics()
    assert K.shape == (3, 4) and K[0].tolist() == pytest.approx([scene.focal, scene.focal, 5.0, 4.0])


def test_load_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(KeyError, match="images_train"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_npz(tmp_path / "absent.npz")
    images, poses = random_scene()
    write_npz(tmp_path / "nofocal.npz", images, poses)
    with pytest.raises(KeyError, match="focal"):
        load_npz(tmp_path / "nofocal.npz")
    write_npz(tmp_path / "mismatch.npz", images, poses[:2], focal=10.0)
    with pytest.raises(ValueError, match="3 images but 2 poses"):
        load_npz(tmp_path / "mismatch.npz")


def test_shipped_mic_conventions():
    scene = load_npz(MIC_100)
    assert len(scene) == 100 and scene.images.shape == (100, 100, 100, 3) and scene.focal == pytest.approx(138.889, abs=1e-3)
    # Blender/OpenGL: every camera looks along its -z axis, towards the object at the origin.
    centres, forward = scene.c2w[:, :3, 3], -scene.c2w[:, :3, 2]
    cosine = (forward * -centres).sum(-1) / centres.norm(dim=-1)
    assert bool((cosine > 0.999).all()) and centres.norm(dim=-1).mean() == pytest.approx(4.03, abs=0.01)
    # White background where alpha is zero.
    assert torch.equal(scene.images[scene.alpha == 0], torch.ones_like(scene.images[scene.alpha == 0]))


def test_load_blender_matches_npz(tmp_path):
    """A Blender folder written from the shipped npz at 2x size reads back, downscaled by 2,
    as the npz itself: premultiplied area averaging, focal scaling and pose order."""
    from PIL import Image

    raw = np.load(MIC_100)
    keep = [0, 7, 42]
    frames = []
    (tmp_path / "train").mkdir()
    for i in keep:
        big = np.repeat(np.repeat(raw["images_train"][i], 2, axis=0), 2, axis=1)  # exact under 2x averaging
        Image.fromarray(big, "RGBA").save(tmp_path / "train" / f"r_{i}.png")
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": raw["poses_train"][i].tolist()})
    meta = {"camera_angle_x": float(raw["camera_angle_x"]), "frames": frames}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))

    scene = load_blender(tmp_path, "train", downscale=2)
    reference = load_npz(MIC_100).subset(keep)
    torch.testing.assert_close(scene.images, reference.images, atol=1e-6, rtol=0)
    torch.testing.assert_close(scene.c2w, reference.c2w)
    assert scene.focal == pytest.approx(reference.focal, rel=1e-4) and scene.names == ["r_0", "r_7", "r_42"]
    full = load_blender(tmp_path, "train", max_views=2)
    assert full.images.shape == (2, 200, 200, 3) and full.focal == pytest.approx(2 * reference.focal, rel=1e-4)
    with pytest.raises(ValueError, match="downscale 3 does not divide"):
        load_blender(tmp_path, "train", downscale=3)
    with pytest.raises(FileNotFoundError, match="transforms_val.json"):
        load_blender(tmp_path, "val")


# ---------------------------------------------------------------------------------------
# view selection


def test_select_views():
    assert select_views(4, 100) == [0, 25, 50, 75]
    assert select_views(3, 10) == [0, 3, 7]
    assert select_views(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot pick"):
        select_views(6, 5)
    with pytest.raises(ValueError, match="n must be a positive int"):
        select_views(0, 5)


def test_farthest_views_spread_and_subsets():
    scene = load_npz(MIC_100)
    chosen = farthest_views(scene.c2w, 6)
    assert len(set(chosen)) == 6 and chosen[0] == 0
    centres = scene.c2w[:, :3, 3]
    gap = lambda idx: torch.cdist(centres[idx], centres[idx]).masked_fill(torch.eye(len(idx), dtype=torch.bool), 1e9).min()
    assert gap(chosen) > gap(select_views(6, 100))  # spatially better spread than consecutive indices
    held_out = scene.complement(chosen)
    assert len(held_out) == 94 and not set(chosen) & {int(n) for n in held_out.names}
    with pytest.raises(IndexError):
        scene.subset([100])


# ---------------------------------------------------------------------------------------
# metrics


def test_psnr_closed_form():
    target = torch.zeros(2, 4, 4, 3)
    pred = torch.full_like(target, 0.1)
    pred[1] = 0.01
    assert psnr(pred, target, reduction="none").tolist() == pytest.approx([20.0, 40.0])
    assert psnr(pred, target) == pytest.approx(30.0)
    assert psnr(target, target) == math.inf


def test_ssim_matches_skimage_and_orders_quality():
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(0)
    target = torch.rand(24, 24, 3, generator=gen)
    slight = (target + 0.02 * torch.randn(24, 24, 3, generator=gen)).clamp(0, 1)
    heavy = (target + 0.3 * torch.randn(24, 24, 3, generator=gen)).clamp(0, 1)
    assert ssim(target, target) == pytest.approx(1.0)
    assert ssim(slight, target) > ssim(heavy, target)
    expected = structural_similarity(slight.double().numpy(), target.double().numpy(), channel_axis=-1, data_range=1.0,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(slight, target) == pytest.approx(expected)


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="does not match"):
        psnr(torch.rand(4, 4, 3), torch.rand(4, 5, 3))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match="reduction"):
        psnr(torch.rand(4, 4, 3), torch.rand(4, 4, 3), reduction="sum")
