"""ZeroRF and the TensoRF-VM baseline (fastfields.models.zerorf / tensorf / field_vm), the SH
encoder and the ``fastfields zerorf`` job, on tiny configs and a few real mic views."""

import argparse
import json
import math

import pytest
import torch

from fastfields.data import load_npz, select_views, shipped_data
from fastfields.models.field_vm import CommonDecoder
from fastfields.models.tensorf import TensoRF
from fastfields.models.zerorf import (
    TENSOR_CONFIG,
    Decoder1D,
    VAEDecoder2D,
    ZeroRF,
    ZeroRFConfig,
    convert_official_state_dict,
)
from fastfields.rendering.sh import sh_encode

MODELS = [ZeroRF, TensoRF]


@pytest.fixture(scope="module")
def mic():
    """Four 100^2 views of the shipped mic scene, reduced to 25^2 (fast, still real)."""
    scene = load_npz(shipped_data("mic/mic_train_100.npz")).subset(select_views(4, 100))
    images = scene.images.reshape(4, 25, 4, 25, 4, 3).mean(dim=(2, 4))
    return images, scene.c2w, scene.focal / 4


# ---------------------------------------------------------------------------------------
# SH encoder


def test_sh_degree3_closed_form():
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen, dtype=torch.float64), dim=-1)
    x, y, z = d.unbind(-1)
    pi = math.pi
    expected = torch.stack([
        torch.full_like(x, 0.5 / math.sqrt(pi)),
        -math.sqrt(3 / (4 * pi)) * y, math.sqrt(3 / (4 * pi)) * z, -math.sqrt(3 / (4 * pi)) * x,
        0.5 * math.sqrt(15 / pi) * x * y, -0.5 * math.sqrt(15 / pi) * y * z,
        0.25 * math.sqrt(5 / pi) * (3 * z * z - 1), -0.5 * math.sqrt(15 / pi) * x * z,
        0.25 * math.sqrt(15 / pi) * (x * x - y * y),
    ], dim=-1)
    torch.testing.assert_close(sh_encode(d, 3), expected, rtol=1e-12, atol=1e-12)
    assert sh_encode(d.float(), 3).dtype == torch.float32


def test_sh_orthonormal_on_sphere():
    """The real SH of degree 4 (16 functions) are orthonormal: Monte Carlo over the sphere."""
    gen = torch.Generator().manual_seed(1)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=gen, dtype=torch.float64), dim=-1)
    Y = sh_encode(d, 4)
    gram = 4 * math.pi * Y.T @ Y / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(sh_encode(d[:5], 2), Y[:5, :4])


def test_sh_bad_input():
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        sh_encode(torch.rand(4, 2))
    with pytest.raises(ValueError, match="degree"):
        sh_encode(torch.rand(4, 3), 5)
    with pytest.raises(TypeError):
        sh_encode(torch.ones(4, 3, dtype=torch.long))


# ---------------------------------------------------------------------------------------
# generators and decoder


def test_generator_shapes_and_names():
    model = ZeroRF("tiny")
    planes, lines = model.tensors()
    c = model.config
    assert [tuple(p.shape) for p in planes] == [(c.channels, 8, 8)] * 3
    assert [tuple(l.shape) for l in lines] == [(c.channels, 8)] * 3
    assert c.plane_resolution == 8 and len(model.generator.subs) == len(TENSOR_CONFIG)
    names = set(model.state_dict())
    # ZeroRF's / diffusers' parameter names (the plane generators are subs 0, 2, 4).
    for name in ("generator.subs.0.noise", "generator.subs.0.net.conv_in.weight",
                 "generator.subs.0.net.mid_block.attentions.0.to_q.weight",
                 "generator.subs.0.net.mid_block.resnets.1.conv2.weight",
                 "generator.subs.2.net.up_blocks.0.upsamplers.0.conv.weight",
                 "generator.subs.1.net.conv_layers.0.1.weight", "generator.subs.1.net.conv_out.weight",
                 "decoder.base_net.weight", "decoder.density_net.0.weight", "decoder.dir_net.weight",
                 "decoder.color_net.0.weight", "grid.occupied"):
        assert name in names, name
    assert not any(n.endswith("noise") for n, _ in model.named_parameters())  # frozen noise is a buffer


def test_paper_generator_sizes():
    """The official sizes: 8-channel 20^2 noise -> 16 x 320^2 planes (checked on the 1D path and
    the 2D module layout; the full forward is exercised by smaller presets)."""
    c = ZeroRFConfig()
    assert c.plane_resolution == 320 and c.channels == 16 and c.noise_ch == 8
    net = VAEDecoder2D(8, 16, c.block_channels, c.layers_per_block, c.norm_groups, c.attention)
    assert len(net.up_blocks) == 5 and all(len(b.resnets) == 2 for b in net.up_blocks)
    assert sum(b.upsamplers is not None for b in net.up_blocks) == 4 and net.conv_in.out_channels == 256
    line = Decoder1D(8, 16, [20 * f for f in c.line_upsample], c.line_channels, c.line_norm_groups)
    assert tuple(line(torch.randn(1, 8, 20)).shape) == (1, 16, 320)


def test_generator_residuals_start_at_zero():
    net = ZeroRF("tiny").generator.subs[0].net
    assert all(float(b.conv2.weight.detach().abs().sum()) == 0 for blk in net.up_blocks for b in blk.resnets)
    assert float(net.mid_block.attentions[0].to_out[0].weight.detach().abs().sum()) == 0


def test_decoder_closed_form():
    torch.manual_seed(0)
    dec = CommonDecoder(6, hidden=8, sh_degree=3)
    torch.nn.init.normal_(dec.dir_net.weight)
    f, d = torch.randn(5, 6), torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    sigma, rgb = dec(f, d)
    base = dec.base_net(f)
    torch.testing.assert_close(sigma, dec.density_net[0](torch.nn.functional.silu(base))[:, 0])
    color = torch.sigmoid(dec.color_net[0](torch.nn.functional.silu(base + dec.dir_net(sh_encode(d, 3)))))
    torch.testing.assert_close(rgb, color * 1.002 - 0.001)
    assert dec(f)[1] is None


def test_features_are_zerorf_vm_products():
    """The field's features are ZeroRF's grid_sample lookups: plane(xy|yz|zx) x line, border
    padding, align_corners=False, concatenated; the line is read as ZeroRF reads it."""
    model = TensoRF("tiny")
    planes, lines = model.tensors()
    xyz = (torch.rand(40, 3) * 2 - 1) * model.config.bound * 1.1  # some points outside the box
    got = model.features((planes, lines), xyz, backend="torch")
    u = xyz / model.config.bound
    F = torch.nn.functional
    expected = []
    for k, (a, b) in enumerate(((0, 1), (1, 2), (2, 0))):
        pv = F.grid_sample(planes[k][None], u[:, (a, b)].view(1, 1, -1, 2), padding_mode="border", align_corners=False)
        # ZeroRF: the [R, L] line as an [R, L, 1] texture sampled at grid (named axis, x).
        named = (2, 0, 1)[k]
        lv = F.grid_sample(lines[k][None, :, :, None], u[:, (named, 0)].view(1, 1, -1, 2), padding_mode="border",
                           align_corners=False)
        expected.append((pv * lv)[0, :, 0].T)
    torch.testing.assert_close(got, torch.cat(expected, dim=-1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# fitting, rendering, checkpoints


@pytest.mark.parametrize("Model", MODELS)
def test_fit_lowers_loss_and_renders(Model, mic):
    images, c2w, focal = mic
    model = Model.fit(images, c2w, focal, config="tiny", iters=40, progress=False, seed=3)
    loss = model.history["loss"]
    assert len(loss) == 40 and model.history["iters"] == 40 and model.history["time_s"] > 0
    assert sum(loss[-8:]) / 8 < 0.7 * sum(loss[:4]) / 4
    out = model.render(c2w[:2], 25, 25, focal)
    assert out.shape == (2, 25, 25, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    # The fitted field explains the input views better than a blank white image does.
    assert float(((out - images[:2]) ** 2).mean()) < float(((1 - images[:2]) ** 2).mean())


def test_fit_accepts_uint8_rgba(mic):
    images, c2w, focal = mic
    rgba = torch.cat([images, torch.ones_like(images[..., :1])], dim=-1)
    a = ZeroRF.fit((rgba * 255).round().to(torch.uint8), c2w, focal, config="tiny", iters=2, progress=False)
    b = ZeroRF.fit((images * 255).round() / 255, c2w, focal, config="tiny", iters=2, progress=False)
    assert a.history["loss"] == pytest.approx(b.history["loss"], rel=1e-5)


def test_gradients_reach_the_generator(mic):
    images, c2w, focal = mic
    model = ZeroRF("tiny")
    rays_o = c2w[:1, :3, 3].expand(64, 3)
    rays_d = torch.nn.functional.normalize(-rays_o + 0.3 * torch.randn(64, 3), dim=-1)
    color, _, _, n = model.render_rays(model.tensors(), rays_o, rays_d, backend="torch")
    assert n > 0
    color.square().sum().backward()
    net = model.generator.subs[0].net
    for name, p in [("conv_in", net.conv_in.weight), ("conv_out", net.conv_out.weight),
                    ("line conv_in", model.generator.subs[1].net.conv_in.weight), ("decoder", model.decoder.base_net.weight)]:
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert model.generator.subs[0].noise.grad is None


def test_backends_agree(mic):
    """The fused ops (auto) and the eager torch backend give the same fit, step for step."""
    images, c2w, focal = mic
    fused = TensoRF.fit(images, c2w, focal, config="tiny", iters=3, progress=False, backend="auto")
    eager = TensoRF.fit(images, c2w, focal, config="tiny", iters=3, progress=False, backend="torch")
    assert fused.history["loss"] == pytest.approx(eager.history["loss"], rel=1e-3)


@pytest.mark.parametrize("Model", MODELS)
def test_save_load_round_trip(Model, mic, tmp_path):
    images, c2w, focal = mic
    model = Model.fit(images, c2w, focal, config="tiny", iters=4, progress=False)
    path = model.save(tmp_path / "m.pt")
    loaded = Model.load(path)
    assert loaded.config == model.config and loaded.history["iters"] == 4
    torch.testing.assert_close(loaded.render(c2w[:1], 12, 12, focal / 2), model.render(c2w[:1], 12, 12, focal / 2))
    other = TensoRF if Model is ZeroRF else ZeroRF
    with pytest.raises(ValueError, match=f"holds a {Model.__name__}"):
        other.load(path)


def test_convert_official_state_dict():
    source = ZeroRF("tiny")
    official = {("decoder.preprocessor." + k[len("generator."):] if k.startswith("generator.")
                 else "decoder.common_decoder." + k[len("decoder."):]): v
                for k, v in source.state_dict().items() if not k.startswith("grid.")}
    official["decoder.density_bitfield"] = torch.zeros(4)  # torch-ngp state: dropped
    fresh = ZeroRF("tiny")  # other noise and weights
    missing, unexpected = fresh.load_state_dict(convert_official_state_dict(official), strict=False)
    assert not unexpected and missing and all(k.startswith("grid.") for k in missing)
    for got, want in zip(fresh.tensors()[0] + fresh.tensors()[1], source.tensors()[0] + source.tensors()[1]):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="ZeroRF"):
        convert_official_state_dict({"weights": torch.zeros(1)})


def test_presets_and_bad_config():
    assert ZeroRF("cpu").config.plane_resolution == 128 and TensoRF("cpu").config.resolution == 128
    with pytest.raises(ValueError, match="unknown preset"):
        ZeroRF("huge")
    with pytest.raises(ValueError, match="unknown fields"):
        ZeroRF({"noise_resolution": 4})
    with pytest.raises(ValueError, match="line_upsample"):
        ZeroRF("tiny", line_upsample=(2, 8))
    with pytest.raises(ValueError, match="GroupNorm"):
        ZeroRF("tiny", norm_groups=3)
    with pytest.raises(ValueError, match="channels must be an int >= 1"):
        TensoRF("tiny", channels=0)
    with pytest.raises(TypeError, match="preset name"):
        ZeroRF(42)


def test_fit_and_render_bad_input(mic):
    images, c2w, focal = mic
    with pytest.raises(ValueError, match=r"\[V, H, W, 3 or 4\]"):
        ZeroRF.fit(images[0], c2w, focal, config="tiny", iters=1, progress=False)
    with pytest.raises(ValueError, match="4 images but 3 cameras"):
        ZeroRF.fit(images, c2w[:3], focal, config="tiny", iters=1, progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ZeroRF.fit(images * 2, c2w, focal, config="tiny", iters=1, progress=False)
    with pytest.raises(ValueError, match="focal"):
        ZeroRF.fit(images, c2w, -1.0, config="tiny", iters=1, progress=False)
    with pytest.raises(ValueError, match="iters"):
        ZeroRF.fit(images, c2w, focal, config="tiny", iters=-1, progress=False)
    model = TensoRF("tiny")
    with pytest.raises(ValueError, match=r"c2w must have shape"):
        model.render(c2w[0], 8, 8, focal)
    with pytest.raises(ValueError, match="height"):
        model.render(c2w, 0, 8, focal)


# ---------------------------------------------------------------------------------------
# the CLI job


def test_cli_end_to_end(tmp_path):
    from fastfields.apps import zerorf as app

    parser = argparse.ArgumentParser()
    app.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = parser.parse_args([
        "zerorf", "--config", "tiny", "--iters", "6", "--views", "3", "--eval-views", "2", "--renders", "1",
        "--turntable", "3", "--mesh-res", "16", "--mesh-threshold", "0.5", "--no-progress", "--out", str(out),
    ])
    assert args.run(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out"] == 2 and len(metrics["views"]) == 3 and metrics["iters"] == 6
    assert 0 < metrics["psnr"] < 60 and 0 < metrics["ssim"] <= 1
    assert (out / "turntable.gif").is_file() and (out / "model.pt").is_file()
    assert len(list((out / "renders").glob("*.png"))) == 1
    assert metrics["mesh_faces"] == 0 or (out / "mesh.ply").is_file()
    assert ZeroRF.load(out / "model.pt").history["iters"] == 6
