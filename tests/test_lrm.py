"""LRM: OpenLRM-exact parameter names and shapes, strict checkpoint loading, the tiny model
end to end, fused vs unfused rendering, gradients, preprocessing, and the CLI jobs."""

import argparse
import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import backend_params
from fastfields.models.lrm import (
    LRM,
    PRESETS,
    CheckpointError,
    LRMConfig,
    camera_feature,
    canonical_camera,
    normalize_cameras,
    preprocess_image,
    save_pretrained,
    turntable_cameras,
)
from fastfields.models.vit import DINOv2, HFViT
from fastfields.ops.render_triplane import IMPLEMENTED as RENDER_IMPLEMENTED

HERE = Path(__file__).parent
MANIFESTS = HERE / "manifests"
EXAMPLES = HERE.parent / "examples" / "images"


def meta_model(name: str) -> LRM:
    with torch.device("meta"):
        return LRM.from_preset(name)


def tiny(seed: int = 0, **kwargs) -> LRM:
    torch.manual_seed(seed)
    return LRM.from_preset("tiny", backend="torch", **kwargs).eval()


# ---------------------------------------------------------------------------------------
# Parameter names and sizes


@pytest.mark.parametrize("name", ["openlrm-small", "openlrm-base", "openlrm-large"])
def test_state_dict_is_openlrm(name):
    """Keys, order and shapes of OpenLRM's own ModelLRM (manifests made by instantiating it)."""
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    model = meta_model(name)
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == [(k, list(v)) for k, v in manifest["state_dict"].items()]
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"]
    assert model.config.to_openlrm_kwargs() == manifest["config"]
    assert not manifest["buffers"] and not list(model.buffers())


def test_openlrm_config_round_trip():
    for name in ("openlrm-small", "openlrm-base", "openlrm-large"):
        config = PRESETS[name]
        assert LRMConfig.from_openlrm_kwargs(config.to_openlrm_kwargs()) == config


def test_paper_preset():
    model = meta_model("paper")
    n = sum(p.numel() for p in model.parameters())
    assert 4.0e8 < n < 6.0e8, n  # "about 500M parameters"
    sd = model.state_dict()
    assert list(sd["encoder.model.embeddings.position_embeddings"].shape) == [1, 197, 768]
    assert list(sd["encoder.model.encoder.layer.11.attention.attention.query.weight"].shape) == [768, 768]
    assert list(sd["camera_embedder.mlp.0.weight"].shape) == [1024, 20]
    assert list(sd["upsampler.weight"].shape) == [1024, 80, 2, 2]
    assert sum(k.startswith("transformer.layers.") and k.endswith("norm1.norm.weight") for k in sd) == 16


def test_config_errors():
    with pytest.raises(ValueError, match="triplane_high_res"):
        LRMConfig(triplane_high_res=48)
    with pytest.raises(ValueError, match="camera_feature"):
        LRMConfig(camera_feature="eg3d")
    with pytest.raises(ValueError, match="unknown preset"):
        LRM.from_preset("huge")


# ---------------------------------------------------------------------------------------
# Checkpoints


def random_state(manifest_state, generator):
    return {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in manifest_state.items()}


def test_load_openlrm_v11_folder(tmp_path):
    """A state dict with exactly OpenLRM-small's names and shapes (random values) loads
    strictly from model.safetensors + config.json, and every value lands where it belongs."""
    from safetensors.torch import save_file

    manifest = json.loads((MANIFESTS / "openlrm-small.json").read_text())
    state = random_state(manifest["state_dict"], torch.Generator().manual_seed(0))
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(manifest["config"]))
    model = LRM.from_pretrained(tmp_path)
    assert model.config == PRESETS["openlrm-small"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not any(p.is_meta for p in model.parameters())


def test_load_errors_list_every_problem(tmp_path):
    model = tiny()
    state = dict(model.state_dict())
    del state["pos_embed"], state["upsampler.bias"]
    state["encoder.model.mask_token"] = torch.zeros(1, 32)
    state["camera_embedder.mlp.0.weight"] = torch.zeros(32, 20)
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError) as error:
        LRM.from_pretrained(tmp_path / "weights.pt", preset="tiny")
    message = str(error.value)
    assert "missing keys (2): pos_embed, upsampler.bias" in message
    assert "unexpected keys (1): encoder.model.mask_token" in message
    assert "shape mismatch for camera_embedder.mlp.0.weight: checkpoint [32, 20], model [32, 16]" in message
    with pytest.raises(CheckpointError, match="without its configuration"):
        LRM.from_pretrained(tmp_path / "weights.pt")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        LRM.from_pretrained(tmp_path / "openlrm-mix-base-1.1")


def test_save_pretrained_round_trip(tmp_path):
    model = tiny()
    save_pretrained(model, tmp_path / "ckpt")
    again = LRM.from_pretrained(tmp_path / "ckpt", backend="torch").eval()
    assert again.config == model.config
    image = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model.forward_planes(image), again.forward_planes(image))


def test_load_openlrm_v10_model_pth(tmp_path):
    """v1.0 model.pth: {'weights', 'kwargs'}, DINO ViT with HF names, pos_embed / deconv
    inside the transformer, infer sizes in kwargs['infer']."""
    kwargs = dict(camera_embed_dim=32, rendering_samples_per_ray=16, transformer_dim=32, transformer_layers=1,
                  transformer_heads=2, triplane_low_res=4, triplane_high_res=8, triplane_dim=4, encoder_freeze=True,
                  encoder_model_name="facebook/dino-vits16", encoder_feat_dim=384)
    config = LRMConfig.from_openlrm_kwargs(kwargs, image_size=32, render_size=16)
    assert (config.encoder_type, config.encoder_patch_size, config.encoder_layers) == ("dino", 16, 12)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LRM(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in shapes.items()}
    weights = {}
    for key, value in state.items():
        key = "transformer.pos_embed" if key == "pos_embed" else key.replace("upsampler.", "transformer.deconv.")
        weights[key] = value
    assert "encoder.model.embeddings.patch_embeddings.projection.weight" in weights
    torch.save({"weights": weights, "kwargs": {"model": kwargs, "infer": {"source_size": 32, "render_size": 16}}},
               tmp_path / "model.pth")
    loaded = LRM.from_pretrained(tmp_path / "model.pth", backend="torch").eval()
    assert loaded.config == config
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        assert loaded.forward_planes(torch.rand(1, 3, 32, 32)).shape == (1, 3, 4, 8, 8)


# ---------------------------------------------------------------------------------------
# Encoders


def test_dinov2_pos_embed_interpolation_is_dinov2s():
    """Antialiased bicubic by scale factor (h + offset) / grid, CLS token untouched; the
    stored grid is returned as it is at 518 px."""
    vit = DINOv2(32, 1, 2, img_size=518, num_register_tokens=4)
    assert vit.interpolate_pos_encoding(518, 518) is vit.pos_embed
    pos = vit.interpolate_pos_encoding(224, 224)
    grid = vit.pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(16 / 37, 16 / 37), mode="bicubic", antialias=True)
    assert pos.shape == (1, 257, 32)
    torch.testing.assert_close(pos[:, 0], vit.pos_embed[:, 0])
    torch.testing.assert_close(pos[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 256, 32))


def test_dinov2_drops_registers_and_matches_a_plain_transformer():
    torch.manual_seed(0)
    vit = DINOv2(16, 2, 2, img_size=28, num_register_tokens=3).eval()
    image = torch.rand(2, 3, 28, 28)
    tokens = vit(image)
    assert tokens.shape == (2, 1 + 4, 16)
    # The same computation spelled out with nn.MultiheadAttention-free plain math.
    x = vit.patch_embed.proj(image).flatten(2).transpose(1, 2)
    x = torch.cat([vit.cls_token.expand(2, -1, -1), x], 1) + vit.pos_embed
    x = torch.cat([x[:, :1], vit.register_tokens.expand(2, -1, -1), x[:, 1:]], 1)
    for block in vit.blocks:
        h = block.norm1(x)
        q, k, v = block.attn.qkv(h).view(2, -1, 3, 2, 8).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
        x = x + block.ls1.gamma * block.attn.proj(a.transpose(1, 2).reshape(2, -1, 16))
        x = x + block.ls2.gamma * block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))
    x = vit.norm(x)
    torch.testing.assert_close(tokens, torch.cat([x[:, :1], x[:, 4:]], 1), atol=1e-5, rtol=1e-5)


def test_hf_vit_normalises_and_keeps_every_token():
    torch.manual_seed(0)
    vit = HFViT(16, 1, 2, patch_size=8, img_size=32).eval()
    image = torch.rand(1, 3, 48, 48)  # 6 x 6 patches from a stored 4 x 4 grid
    assert vit(image).shape == (1, 37, 16)
    vit.normalize = False
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    vit_normalized = vit(((image - mean) / std))
    vit.normalize = True
    torch.testing.assert_close(vit(image), vit_normalized)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        vit(torch.rand(1, 3, 30, 30))


# ---------------------------------------------------------------------------------------
# Cameras and preprocessing


def test_cameras_are_openlrms():
    c2w, intrinsics = canonical_camera(2.0, 0.75)
    # OpenLRM's _default_source_camera extrinsics and create_intrinsics(f=0.75, c=0.5).
    expected = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -2], [0, 1, 0, 0]])
    torch.testing.assert_close(c2w[0, :3], expected)
    feature = camera_feature(c2w, intrinsics)
    torch.testing.assert_close(feature, torch.cat([expected.flatten(), torch.tensor([0.75, 0.75, 0.5, 0.5])])[None])
    paper = camera_feature(c2w, intrinsics, "paper")
    assert paper.shape == (1, 20) and torch.equal(paper[0, 12:16], torch.tensor([0.0, 0, 0, 1]))
    # surrounding_views_linspace: radius 2, height 0.8, first view in front (0, -r, 0.8).
    c2w, _ = turntable_cameras(4)
    torch.testing.assert_close(c2w[0, :3, 3], torch.tensor([0.0, -math.sqrt(4 - 0.64), 0.8]))
    torch.testing.assert_close(c2w[1, :3, 3], torch.tensor([math.sqrt(4 - 0.64), 0.0, 0.8]), atol=1e-6, rtol=0)


def test_normalize_cameras_makes_the_source_canonical():
    from fastfields.rendering import orbit_cameras

    c2w = orbit_cameras(5, 4.0, elevation=30.0, azimuth_start=70.0)
    out = normalize_cameras(c2w, source=2, distance=2.0)
    torch.testing.assert_close(out[2], canonical_camera(2.0)[0][0], atol=1e-5, rtol=0)
    # A similarity of the world: relative poses (up to the scale) are preserved.
    rel = torch.linalg.inv(c2w[2]) @ c2w[0]
    rel_out = torch.linalg.inv(out[2]) @ out[0]
    torch.testing.assert_close(rel_out[:3, :3], rel[:3, :3], atol=1e-5, rtol=0)
    torch.testing.assert_close(rel_out[:3, 3], rel[:3, 3] / 2, atol=1e-5, rtol=0)


def test_preprocess_recentres_by_alpha_bbox():
    rgba = np.zeros((100, 80, 4), np.uint8)
    rgba[10:30, 50:70] = (255, 0, 0, 255)  # a 20 x 20 red square in a corner
    out = preprocess_image(rgba, 50, border_ratio=0.2, recenter=True)
    assert out.shape == (3, 50, 50) and out.dtype == torch.float32
    red = (out[0] > 0.9) & (out[1] < 0.1)
    rows, cols = torch.nonzero(red.any(1)).flatten(), torch.nonzero(red.any(0)).flatten()
    # Longer side 50 * (1 - 0.2) = 40 px, centred.
    assert (rows[0].item(), rows[-1].item(), cols[0].item(), cols[-1].item()) == (5, 44, 5, 44)
    assert torch.allclose(out[:, 0, 0], torch.ones(3))  # transparent -> white
    # RGB inputs are accepted as they are (centre crop, resize).
    rgb = preprocess_image(np.full((40, 60, 3), 128, np.uint8), 20)
    torch.testing.assert_close(rgb, torch.full((3, 20, 20), 128 / 255))
    with pytest.raises(ValueError, match="border_ratio"):
        preprocess_image(rgba, 50, border_ratio=1.0)
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        preprocess_image(np.zeros((4, 4, 2)), 8)


def test_preprocess_example_images():
    chair = preprocess_image(EXAMPLES / "triposr_chair.png", 64)
    owl = preprocess_image(EXAMPLES / "openlrm_owl.png", 64)
    for image in (chair, owl):
        assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
        assert torch.allclose(image[:, :3, :3], torch.ones(3, 3, 3), atol=0.02)  # white border


# ---------------------------------------------------------------------------------------
# End to end, rendering, gradients


def test_tiny_end_to_end():
    model = tiny()
    image = preprocess_image(EXAMPLES / "triposr_chair.png", model.config.image_size)[None]
    with torch.no_grad():
        planes = model.forward_planes(image)
        assert planes.shape == (1, 3, 8, 16, 16)
        c2w, intrinsics = model.turntable(2)
        rgb, depth, opacity = model.render(planes, c2w, intrinsics, 16, 16)
        assert rgb.shape == (1, 2, 16, 16, 3) and depth.shape == opacity.shape == (1, 2, 16, 16)
        assert torch.isfinite(rgb).all() and (opacity > 0).all() and (opacity < 1).all()
        # Explicit canonical camera == default.
        torch.testing.assert_close(model.forward_planes(image, model.source_camera(1)), planes)
        sigma, _ = model.query_points(planes, torch.rand(1, 512, 3) * 2 - 1)
        level = sigma.median().item()
        vertices, faces, colors = model.extract_mesh(planes, 32, level)
    assert len(faces) > 0 and vertices.shape[1] == 3 and colors.shape == vertices.shape
    assert np.abs(vertices).max() <= 1.0 and 0 <= colors.min() and colors.max() <= 1


def test_render_matches_openlrm_rays_and_chunking():
    """The rays of render() are OpenLRM's RaySampler's (OpenGL c2w through diag(1,-1,-1,1),
    pixel centres, normalised intrinsics) and chunking the unfused path changes nothing."""
    model = tiny()
    planes = torch.randn(1, 3, 8, 16, 16)
    c2w, intrinsics = model.turntable(1)
    with torch.no_grad():
        full = model.render(planes, c2w, intrinsics, 6, 6)
        model.render_chunk = 7
        chunked = model.render(planes, c2w, intrinsics, 6, 6)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b)
    # OpenLRM's RaySampler for pixel (row 1, col 4) of a 6 x 6 image.
    fx, fy, cx, cy = intrinsics[0]
    x, y = (4 + 0.5) / 6, (1 + 0.5) / 6
    d_cam = torch.tensor([(x - cx) / fx, (y - cy) / fy, 1.0, 0.0])
    opencv = c2w[0] @ torch.diag(torch.tensor([1.0, -1, -1, 1]))
    direction = F.normalize((opencv @ d_cam)[:3], dim=0)
    rgb_one, _, _ = model.render_rays(planes, c2w[0, :3, 3].view(1, 1, 3), direction.view(1, 1, 3))
    torch.testing.assert_close(rgb_one[0, 0], full[0][0, 0, 1, 4])


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] in RENDER_IMPLEMENTED])
def test_fused_render_matches_unfused(backend, device):
    model = tiny().to(device)
    image = torch.rand(1, 3, 56, 56, device=device)
    c2w, intrinsics = model.turntable(1)
    with torch.no_grad():
        planes = model.forward_planes(image)
        reference = model.render(planes, c2w, intrinsics, 6, 6, backend="torch")
        fused = model.render(planes, c2w, intrinsics, 6, 6, backend=backend)
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_fused_and_unfused_transformer_agree():
    model = tiny()
    image = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        reference = model.forward_planes(image)
        fused = model.set_backend("auto").forward_planes(image)
    torch.testing.assert_close(fused, reference, atol=1e-4, rtol=1e-4)


def test_training_step_gradients_flow_and_loss_drops():
    model = tiny()
    model.train()
    c2w, intrinsics = turntable_cameras(2)
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(1, 3, 56, 56, generator=generator), "c2w": c2w[None], "intrinsics": intrinsics[None],
             "target": torch.rand(1, 2, 8, 8, 3, generator=generator)}
    out = model.training_step(batch, perturb=False)
    out["loss"].backward()
    for name in ("encoder.model.patch_embed.proj.weight", "encoder.model.blocks.0.attn.qkv.weight",
                 "camera_embedder.mlp.0.weight", "pos_embed", "transformer.layers.0.norm1.mlp.1.weight",
                 "transformer.layers.1.cross_attn.in_proj_weight", "upsampler.weight", "synthesizer.decoder.net.0.weight",
                 "synthesizer.decoder.net.6.bias"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = out["loss"].item()
    for _ in range(4):
        optimizer.zero_grad()
        loss = model.training_step(batch, perturb=False, n_rays=96, generator=torch.Generator().manual_seed(1))["loss"]
        loss.backward()
        optimizer.step()
    assert model.training_step(batch, perturb=False)["loss"].item() < first


# ---------------------------------------------------------------------------------------
# CLI jobs


def cli(module, argv):
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    module.add_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_refuses_without_weights(capsys):
    from fastfields.apps import lrm

    assert cli(lrm, ["lrm", str(EXAMPLES / "openlrm_owl.png")]) == 2
    assert "--random-init" in capsys.readouterr().err


def test_cli_random_init(tmp_path, capsys):
    from fastfields.apps import lrm

    argv = ["lrm", str(EXAMPLES / "openlrm_owl.png"), "--random-init", "--preset", "tiny", "--out", str(tmp_path),
            "--views", "3", "--render-size", "12", "--mesh-resolution", "16", "--backend", "torch", "--no-progress"]
    assert cli(lrm, argv) == 0
    out = capsys.readouterr().out
    assert "meaningless" in out and "transformer" in out and "render 3 x 12^2" in out
    folder = tmp_path / "openlrm_owl"
    assert sorted(p.name for p in folder.glob("view_*.png")) == ["view_000.png", "view_001.png", "view_002.png"]
    assert (folder / "turntable.gif").stat().st_size > 0 and (folder / "input.png").is_file()
    timings = json.loads((folder / "timings.json").read_text())
    assert set(timings["seconds"]) >= {"encode image", "transformer", "triplane (upsampler)", "mesh 16^3"}


def test_cli_checkpoint_writes_mesh(tmp_path):
    from fastfields.apps import lrm

    model = tiny(seed=3)
    save_pretrained(model, tmp_path / "ckpt")
    image = preprocess_image(EXAMPLES / "triposr_chair.png", model.config.image_size)[None]
    with torch.no_grad():
        sigma, _ = model.query_points(model.forward_planes(image), torch.rand(1, 512, 3) * 2 - 1)
    argv = ["lrm", str(EXAMPLES / "triposr_chair.png"), "--checkpoint", str(tmp_path / "ckpt"), "--out",
            str(tmp_path / "out"), "--views", "0", "--mesh-resolution", "24", "--mesh-threshold",
            str(sigma.median().item()), "--mesh-format", "obj", "--backend", "torch", "--no-progress"]
    assert cli(lrm, argv) == 0
    import trimesh

    mesh = trimesh.load(tmp_path / "out" / "triposr_chair" / "mesh.obj", process=False)
    assert len(mesh.faces) > 0 and np.abs(mesh.vertices).max() <= 1.0


def test_train_single_process_gloo(tmp_path, monkeypatch, capsys):
    """The DDP path with one process: a gloo group, DistributedDataParallel, saved weights."""
    from fastfields.apps import lrm_train
    from fastfields.rendering import orbit_cameras

    c2w = orbit_cameras(5, 4.0, elevation=20.0).numpy()
    images = (np.random.RandomState(0).rand(5, 16, 16, 4) * 255).astype(np.uint8)
    images[..., 3] = 255
    np.savez(tmp_path / "scene.npz", images_train=images, poses_train=c2w, focal=np.float32(20.0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    argv = ["lrm-train", "--data", str(tmp_path / "scene.npz"), "--preset", "tiny", "--steps", "2", "--views", "2",
            "--rays", "64", "--render-size", "8", "--backend", "torch", "--out", str(tmp_path / "trained"),
            "--log-every", "1"]
    assert cli(lrm_train, argv) == 0
    out = capsys.readouterr().out
    assert "1 process(es)" in out and "step     2" in out
    trained = LRM.from_pretrained(tmp_path / "trained")
    assert trained.config == PRESETS["tiny"]
    assert not torch.distributed.is_initialized()


def test_e2e_benchmark_rows_and_report(tmp_path):
    from fastfields.bench import lrm as bench_lrm

    rows = bench_lrm.bench_preset("tiny", torch.device("cpu"), render_size=8, mesh_resolution=8, repeats=1,
                                  backends={"unfused": "torch", "fused": "torch"}, log=lambda line: None)
    assert [(r["path"], r["stage"]) for r in rows] == [(p, s) for p in ("unfused", "fused") for s in bench_lrm.STAGES]
    assert all(r["ms"] is not None and r["ms"] > 0 for r in rows)
    table = bench_lrm.markdown(rows)
    assert "| tiny | render |" in table and "| tiny | **total** |" in table
    written = bench_lrm.write_report(rows, tmp_path, torch.device("cpu"),
                                     {"render_size": 8, "mesh_resolution": 8, "repeats": 1, "presets": ["tiny"]})
    assert json.loads(written[0].read_text())["rows"] == rows


# ---------------------------------------------------------------------------------------
# The package layout and its convention (issue 14), OpenLRM's preprocessing (issue 18)


def openlrm_infer_single_image(image_path, source_size, device="cpu"):
    """A plain transcription of OpenLRM's LRMInferrer.infer_single (openlrm/runners/infer/lrm.py
    @ 3108b69), up to the model call."""
    from PIL import Image

    image = torch.from_numpy(np.array(Image.open(image_path))).to(device)
    image = image.permute(2, 0, 1).unsqueeze(0) / 255.0
    if image.shape[1] == 4:  # RGBA
        image = image[:, :3, ...] * image[:, 3:, ...] + (1 - image[:, 3:, ...])
    image = torch.nn.functional.interpolate(image, size=(source_size, source_size), mode='bicubic', align_corners=True)
    image = torch.clamp(image, 0, 1)
    return image


@pytest.mark.parametrize("name", ["triposr_chair.png", "openlrm_owl.png"])
@pytest.mark.parametrize("size", [56, 224, 336])
def test_preprocess_is_openlrms_infer_single(name, size):
    """The default path gives OpenLRM's tensor for the same file, bit for bit, from a path,
    a PIL image or the uint8 array."""
    from PIL import Image

    expected = openlrm_infer_single_image(EXAMPLES / name, size)[0]
    got = preprocess_image(EXAMPLES / name, size)
    assert got.dtype == torch.float32 and got.shape == (3, size, size) and got.is_contiguous()
    assert torch.equal(got, expected)
    with Image.open(EXAMPLES / name) as pil:
        assert torch.equal(preprocess_image(pil, size), expected)
        assert torch.equal(preprocess_image(np.array(pil), size), expected)
    if torch.cuda.is_available():  # OpenLRM preprocesses on its model's device
        on_gpu = openlrm_infer_single_image(EXAMPLES / name, size, "cuda")[0]
        assert torch.equal(preprocess_image(EXAMPLES / name, size, device="cuda"), on_gpu)


def test_preprocess_modes_openlrm_cannot_read_are_converted(tmp_path):
    """OpenLRM reads RGB / RGBA files only; a palette file with transparency is read as its
    RGBA conversion, a grey one as RGB; a non-square image is stretched as OpenLRM does."""
    from PIL import Image

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 10:25] = (200, 40, 10, 255)
    Image.fromarray(rgba).convert("P").save(tmp_path / "palette.png", transparency=0)
    with Image.open(tmp_path / "palette.png") as pil:
        assert pil.mode == "P"
        expected = preprocess_image(np.array(pil.convert("RGBA")), 16)
    torch.testing.assert_close(preprocess_image(tmp_path / "palette.png", 16), expected, rtol=0, atol=0)
    Image.fromarray(rgba[..., 0]).save(tmp_path / "grey.png")
    grey = preprocess_image(tmp_path / "grey.png", 16)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    Image.fromarray(rgba).save(tmp_path / "wide.png")
    assert torch.equal(preprocess_image(tmp_path / "wide.png", 16), openlrm_infer_single_image(tmp_path / "wide.png", 16)[0])
    with pytest.raises(FileNotFoundError, match="no such image"):
        preprocess_image(tmp_path / "missing.png", 16)
    with pytest.raises(ValueError, match="background"):
        preprocess_image(rgba, 16, background=2.0)


def test_preprocess_recenter_is_an_option():
    """recenter=True scales the alpha box of the chair to size * (1 - border_ratio), centred;
    the default keeps OpenLRM's framing (which differs)."""
    size, border = 64, 0.25
    out = preprocess_image(EXAMPLES / "triposr_chair.png", size, border, recenter=True)
    default = preprocess_image(EXAMPLES / "triposr_chair.png", size)
    assert (out - default).abs().max() > 0.5
    ink = (out < 0.98).any(0)
    rows, cols = torch.nonzero(ink.any(1)).flatten(), torch.nonzero(ink.any(0)).flatten()
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1).item()
    assert abs(extent - size * (1 - border)) <= 2, extent
    for first, last in ((rows[0], rows[-1]), (cols[0], cols[-1])):  # centred on both axes
        assert abs((first + last).item() / 2 - (size - 1) / 2) <= 1.5, (first, last)
    # RGB inputs have no alpha to recentre by: the default path.
    assert torch.equal(preprocess_image(EXAMPLES / "openlrm_owl.png", 32, recenter=True),
                       preprocess_image(EXAMPLES / "openlrm_owl.png", 32))


def test_package_layout_keeps_the_old_import_paths():
    import fastfields.models._pretrained as pretrained
    import fastfields.models.lrm as lrm
    import fastfields.models.vit as vit
    from fastfields.models.lrm import encoder

    assert lrm.CheckpointError is pretrained.CheckpointError
    assert lrm.state_dict_problems is pretrained.state_dict_problems
    assert vit.DINOv2 is encoder.DINOv2 and vit.HFViT is encoder.HFViT
    assert issubclass(LRM, pretrained.PretrainedModel) and issubclass(LRMConfig, pretrained.ModelConfig)
    assert LRM.presets is PRESETS and LRM.config_class is LRMConfig
    for name in lrm.__all__:
        assert hasattr(lrm, name), name
    # The config follows the convention: JSON round trip, validated replace.
    config = PRESETS["tiny"]
    assert LRMConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="triplane_high_res"):
        config.replace(triplane_high_res=17)
    with pytest.raises(ValueError, match="unknown fields"):
        LRMConfig.from_dict({"widht": 3})
    assert LRM.from_preset("tiny", overrides={"render_size": 8}).config.render_size == 8


def test_our_format_file_and_folder(tmp_path):
    """save_pretrained: '*.safetensors' -> one file with the config in its metadata; else an
    OpenLRM folder (config.json = ModelLRM kwargs) with our config beside it. Both load strictly;
    the convention's own folder layout and older flat fastfields_config.json files load too."""
    from fastfields.models._pretrained import PretrainedModel, read_safetensors

    model = tiny(seed=1)
    image = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        expected = model.forward_planes(image)
    file = model.save_pretrained(tmp_path / "tiny.safetensors")
    _, metadata = read_safetensors(file)
    assert metadata["fastfields.model"] == "LRM" and json.loads(metadata["fastfields.config"]) == model.config.to_dict()
    folder = model.save_pretrained(tmp_path / "folder")
    assert json.loads((folder / "config.json").read_text()) == model.config.to_openlrm_kwargs()
    assert json.loads((folder / "fastfields_config.json").read_text()) == {"model": "LRM", "config": model.config.to_dict()}
    convention = PretrainedModel.save_pretrained(model, tmp_path / "convention")
    legacy = save_pretrained(model, tmp_path / "legacy")
    (legacy / "fastfields_config.json").write_text(json.dumps(model.config.to_dict()))
    for path in (file, folder, folder / "model.safetensors", convention, legacy):
        loaded = LRM.from_pretrained(path, backend="torch").eval()
        assert loaded.config == model.config, path
        with torch.no_grad():
            assert torch.equal(loaded.forward_planes(image), expected), path
    assert LRM.from_pretrained(file, render_size=8).config.render_size == 8
    assert LRM.from_pretrained(file, overrides={"render_size": 12}).config.render_size == 12
    assert LRM.from_pretrained(file, dtype=torch.float64).pos_embed.dtype == torch.float64
    state, config = LRM.read_pretrained(file)
    assert config == model.config.to_dict() and set(state) == set(model.state_dict())


def test_our_format_strict_errors(tmp_path):
    from fastfields.models._pretrained import write_safetensors

    model = tiny()
    state = dict(model.state_dict())
    del state["upsampler.bias"]
    state["pos_embed"] = torch.zeros(1, 3, 32)
    state["extra.weight"] = torch.zeros(2)
    meta = {"fastfields.model": "LRM", "fastfields.config": json.dumps(model.config.to_dict())}
    write_safetensors(tmp_path / "bad.safetensors", state, meta)
    with pytest.raises(CheckpointError) as error:
        LRM.from_pretrained(tmp_path / "bad.safetensors")
    message = str(error.value)
    assert "fastfields file, read as preset 'tiny'" in message
    assert "missing keys (1): upsampler.bias" in message and "unexpected keys (1): extra.weight" in message
    assert "shape mismatch for pos_embed: checkpoint [1, 3, 32], model [1, 192, 32]" in message
    write_safetensors(tmp_path / "zerorf.safetensors", model.state_dict(), {**meta, "fastfields.model": "ZeroRF"})
    with pytest.raises(CheckpointError, match="holds a ZeroRF, not an LRM"):
        LRM.from_pretrained(tmp_path / "zerorf.safetensors")
    write_safetensors(tmp_path / "badconf.safetensors", model.state_dict(),
                      {**meta, "fastfields.config": json.dumps({**model.config.to_dict(), "colour": 1})})
    with pytest.raises(CheckpointError, match="unknown fields \\['colour'\\]"):
        LRM.from_pretrained(tmp_path / "badconf.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        LRM.from_pretrained(tmp_path / "junk.pth", preset="tiny")


def test_inputs_accept_numpy():
    model = tiny()
    image = np.random.RandomState(0).rand(1, 3, 56, 56)  # float64, as numpy makes it
    c2w, intrinsics = model.turntable(2)
    with torch.no_grad():
        planes = model.forward_planes(torch.from_numpy(image).float())
        torch.testing.assert_close(model.forward_planes(image), planes)
        reference = model.render(planes, c2w, intrinsics, 6, 6)
        from_numpy = model.render(planes.numpy(), c2w.numpy(), intrinsics.numpy().astype(np.float64), 6, 6)
        for a, b in zip(reference, from_numpy):
            torch.testing.assert_close(a, b)
        xyz = np.random.RandomState(1).rand(1, 7, 3) * 2 - 1
        sigma, rgb = model.query_points(planes, xyz)
        torch.testing.assert_close(sigma, model.query_points(planes, torch.from_numpy(xyz).float())[0])
        camera = model.source_camera(1).numpy()
        torch.testing.assert_close(model.forward_planes(image, camera), planes)
    c2w_np, intrinsics_np = canonical_camera()[0].numpy(), np.array([[0.75, 0.75, 0.5, 0.5]])
    torch.testing.assert_close(camera_feature(c2w_np, intrinsics_np), model.source_camera(1))
    torch.testing.assert_close(normalize_cameras(c2w.numpy(), source=1), normalize_cameras(c2w, source=1))
    with pytest.raises(TypeError, match="forward_planes: image: expected floats in \\[0, 1\\], got torch.uint8"):
        model.forward_planes(np.zeros((1, 3, 56, 56), np.uint8))
    with pytest.raises(TypeError, match="camera_feature: c2w: expected a torch.Tensor or numpy array"):
        camera_feature("c2w.txt", intrinsics_np)


def test_cli_recenter_flag(tmp_path):
    from PIL import Image

    from fastfields.apps import lrm

    base = ["lrm", str(EXAMPLES / "triposr_chair.png"), "--random-init", "--preset", "tiny", "--views", "0",
            "--mesh-resolution", "0", "--backend", "torch", "--no-progress"]
    for flags, recenter in (([], False), (["--recenter", "--border-ratio", "0.3"], True)):
        out = tmp_path / str(recenter)
        assert cli(lrm, base + ["--out", str(out)] + flags) == 0
        saved = np.asarray(Image.open(out / "triposr_chair" / "input.png").convert("RGB")).astype(np.float32) / 255
        expected = preprocess_image(EXAMPLES / "triposr_chair.png", 56, 0.3, recenter=recenter).permute(1, 2, 0).numpy()
        assert np.abs(saved - expected).max() <= 1 / 255 + 1e-6, (recenter, np.abs(saved - expected).max())
