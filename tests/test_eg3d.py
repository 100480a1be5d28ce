"""EG3D: official state-dict layout, and the model (fused renderer) against the literal
transcription of the official pipeline (fastfields.reference.eg3d, unfused renderer)."""

import json
import math
from pathlib import Path

import pytest
import torch

from fastfields import _build
from fastfields.models._pretrained import CheckpointError
from fastfields.models.eg3d import EG3D, EG3DConfig
from fastfields.models.eg3d import ops
from fastfields.reference import eg3d as ref

MANIFEST = Path(__file__).parent / "manifests" / "eg3d-ffhq512-G.json"
BACKEND = "cpu" if _build.why_unbuildable("cpu") is None else "torch"


def official_layout():
    manifest = json.loads(MANIFEST.read_text())
    return manifest, {**manifest["state_dict"], **manifest["training_added_buffers"]}


def test_ffhq512_state_dict_equals_official_manifest():
    manifest, expected = official_layout()
    G = EG3D.from_preset("ffhq512", device="meta")
    got = {k: list(v.shape) for k, v in G.state_dict().items()}
    assert got == expected
    # the official order (synthesis before mapping, parameters before buffers), after our one root buffer
    assert [k for k in got if k in manifest["state_dict"]] == list(manifest["state_dict"])
    assert sum(p.numel() for p in G.parameters()) == manifest["total_params"]
    assert sorted(k for k in got if k.endswith(("noise_const", "resample_filter", "w_avg"))) == \
        sorted(k for k in manifest["buffers"] if k != "dataset_label_std")
    assert G.num_ws == 14


@pytest.mark.parametrize("preset, sr_block0_res, image", [("ffhq512", 256, 512), ("afhq512", 256, 512),
                                                          ("shapenet128", 64, 128), ("tiny", 32, 64)])
def test_presets_build(preset, sr_block0_res, image):
    G = EG3D.from_preset(preset, device="meta")
    assert G.superresolution.block0.conv1.noise_const.shape[-1] == sr_block0_res
    assert G.img_resolution == image and G.num_ws == 2 * (int(math.log2(G.config.plane_resolution)) - 1)
    assert G.rendering_kwargs["superresolution_module"].endswith(G.config.superresolution_module)
    if preset == "shapenet128":
        assert G.rendering_kwargs["white_back"] and G.config.depth_resolution == 64
        assert G.superresolution.block0.conv0.up == 1  # SuperresolutionHybrid2X: block0 does not upsample


def test_strict_loading_of_a_manifest_state_dict(tmp_path):
    _, expected = official_layout()
    state = {k: torch.randn(shape) for k, shape in expected.items()}
    G = EG3D.from_preset("ffhq512", device="meta")
    from fastfields.models._pretrained import load_state_dict_strict

    load_state_dict_strict(G, state, device="cpu")
    assert torch.equal(G.backbone.mapping.w_avg, state["backbone.mapping.w_avg"])
    assert torch.equal(G.decoder.net[2].weight, state["decoder.net.2.weight"])
    bad = dict(state)
    bad.pop("backbone.synthesis.b64.conv0.noise_const")
    bad["decoder.net.0.weight"] = torch.randn(64, 96)
    bad["extra.key"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(EG3D.from_preset("ffhq512", device="meta"), bad)
    message = str(err.value)
    assert "b64.conv0.noise_const" in message and "extra.key" in message and "decoder.net.0.weight" in message


def configs():
    tiny = EG3D.presets["tiny"]
    return {
        "tiny": tiny,
        # ShapeNet's layout: SR 2X without upsampling in block0, white background, 64 + 64 samples
        "tiny-shapenet": tiny.replace(superresolution_module="SuperresolutionHybrid2X", img_resolution=32,
                                      white_back=True, box_warp=1.6, ray_start=0.1, ray_end=2.6, avg_camera_radius=1.7,
                                      avg_camera_pivot=(0.0, 0.0, 0.0)),
        # FFHQ's layout with fewer channels: z/w 512, 2 mapping layers, 48 + 48 samples, SR 8XDC 128 -> 512
        "ffhq-reduced": EG3D.presets["ffhq512"].replace(plane_resolution=32, channel_max=16, plane_channels=8,
                                                        decoder_output_dim=8, sr_channels=(8, 4),
                                                        neural_rendering_resolution=16),
    }


def random_model(cfg: EG3DConfig, seed: int = 0) -> EG3D:
    torch.manual_seed(seed)
    G = EG3D(cfg, render_backend=BACKEND).eval()
    with torch.no_grad():  # random init leaves biases and noise strengths at 0: make every parameter matter
        for name, p in G.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if name.endswith("noise_strength") else 0.05))
        G.backbone.mapping.w_avg.normal_()
    return G


@pytest.mark.parametrize("name", ["tiny", "tiny-shapenet", "ffhq-reduced"])
def test_generator_matches_official_transcription(name):
    cfg = configs()[name]
    G = random_model(cfg)
    sd = G.state_dict()
    torch.manual_seed(1)
    z = torch.randn(2, cfg.z_dim)
    c = torch.cat([G.camera(yaw=0.3, pitch=-0.1), G.camera(yaw=-0.4, pitch=0.2)])
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=3)
        ws_ref = ref.mapping(sd, cfg, z, c, truncation_psi=0.7, truncation_cutoff=3, num_ws=G.num_ws)
        torch.testing.assert_close(ws, ws_ref, rtol=0, atol=0)
        torch.manual_seed(5)
        out = G.synthesis(ws, c, noise_mode="random", return_planes=True, return_features=True)
        torch.manual_seed(5)
        expected = ref.synthesis(sd, cfg, ws, c, noise_mode="random")
    torch.testing.assert_close(out["planes"], expected["planes"], rtol=0, atol=0)
    for key in ("feature_image", "image_raw", "image_depth", "image"):
        assert out[key].shape == expected[key].shape, key
        torch.testing.assert_close(out[key], expected[key], rtol=1e-4, atol=2e-5, msg=key)
    assert torch.isfinite(out["image_depth"]).all()
    assert out["image"].shape == (2, 3, cfg.img_resolution, cfg.img_resolution)


def test_renderer_seeded_by_generator_and_unfused_backend_agrees():
    cfg = configs()["tiny"]
    G = random_model(cfg)
    z, c = torch.randn(1, cfg.z_dim), G.camera()
    with torch.no_grad():
        ws = G.mapping(z, c)
        def run(seed):
            return G.synthesis(ws, c, noise_mode="const", generator=torch.Generator().manual_seed(seed))

        a, b, d = run(3), run(3), run(4)
        expected = ref.synthesis(G.state_dict(), cfg, ws, c, noise_mode="const",
                                 generator=torch.Generator().manual_seed(3))
        G.render_backend = "torch"
        eager = run(3)
    assert torch.equal(a["image"], b["image"])
    assert not torch.allclose(a["image_raw"], d["image_raw"])  # the jitter is live at inference, as in EG3D
    for key in ("image_raw", "image_depth", "image"):
        torch.testing.assert_close(a[key], expected[key], rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(eager[key], expected[key], rtol=1e-4, atol=2e-5)


def test_training_mode_convolutions_equal_inference_ones():
    """fused_modconv 'inference_only': grouped convolution in eval, scaled activations in
    train mode; same math."""
    cfg = configs()["tiny"]
    G = random_model(cfg)
    ws = G.mapping(torch.randn(2, cfg.z_dim), G.camera(batch_size=2))
    with torch.no_grad():
        planes_eval = G.backbone.synthesis(ws, noise_mode="const")
        G.train()
        planes_train = G.backbone.synthesis(ws, noise_mode="const")
        expected = ref.backbone_synthesis(G.state_dict(), cfg, ws, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(planes_train, expected, rtol=0, atol=0)
    torch.testing.assert_close(planes_eval, planes_train, rtol=1e-4, atol=1e-5)


def test_sample_density_and_gradients_reach_parameters():
    cfg = configs()["tiny"]
    G = random_model(cfg)
    z, c = torch.randn(1, cfg.z_dim), G.camera()
    coords = torch.rand(1, 100, 3) - 0.5
    out = G.sample(coords, torch.zeros_like(coords), z, c, noise_mode="const")
    ws = G.mapping(z, c)
    planes = ref.backbone_synthesis(G.state_dict(), cfg, ws).view(1, 3, cfg.plane_channels, 32, 32)
    expected = ref.run_model(G.state_dict(), cfg, planes, coords)
    torch.testing.assert_close(out["sigma"], expected["sigma"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["rgb"], expected["rgb"], rtol=1e-5, atol=1e-5)
    # gradients of an image through the fused renderer reach the decoder's stored weights
    G.zero_grad()
    img = G(z, c, generator=torch.Generator().manual_seed(0))["image_raw"]
    img.square().mean().backward()
    for p in (G.decoder.net[0].weight, G.decoder.net[2].bias, G.backbone.synthesis.b4.const):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_fir_ops_fast_paths_equal_the_generic_path():
    torch.manual_seed(0)
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    # upsampling conv (transpose fast path) == zero-insert + FIR + conv (generic path)
    fast = ops.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)
    # padding 1 w.r.t. the upsampled image, plus the filter's (fw + up - 1) // 2 and (fw - up) // 2
    generic = torch.nn.functional.conv2d(ops.upfirdn2d(x, f, up=2, padding=[3, 2, 3, 2], gain=4), w.flip([2, 3]))
    torch.testing.assert_close(fast, generic, rtol=1e-5, atol=1e-5)
    # a constant image stays constant in the interior after FIR upsampling and downsampling
    ones = torch.ones(1, 1, 8, 8)
    assert torch.allclose(ops.upsample2d(ones, f)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    assert torch.allclose(ops.downsample2d(ones, f)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))
    assert ops.bias_act(torch.tensor([-1.0, 300.0]), act="lrelu", clamp=256).tolist() == \
        pytest.approx([-0.2 * math.sqrt(2), 256.0])


def test_inputs_accept_numpy_and_errors_name_the_argument():
    import numpy as np

    G = random_model(configs()["tiny"])
    c = G.camera().numpy()
    ws = G.mapping(np.random.randn(1, 32).astype(np.float32), c)
    assert ws.shape == (1, G.num_ws, 32)
    with pytest.raises(ValueError, match="z must have shape"):
        G.mapping(torch.randn(1, 7), c)
    with pytest.raises(ValueError, match="ws must have shape"):
        G.synthesis(ws[:, :3], c)
    with pytest.raises(ValueError, match="superresolution_module"):
        EG3D.presets["tiny"].replace(superresolution_module="nope")
