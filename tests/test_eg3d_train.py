"""EG3D training (dual discriminator, losses, EMA) and the ``fastfields eg3d`` jobs, at the tiny preset."""

import json
import math
from pathlib import Path

import pytest
import torch

from fastfields.cli import main
from fastfields.models.eg3d import EG3D
from fastfields.models.eg3d.data import procedural_views
from fastfields.models.eg3d.discriminator import DualDiscriminator
from fastfields.models.eg3d.train import train

MANIFEST = Path(__file__).parent / "manifests" / "eg3d-ffhq512-D.json"


def test_dual_discriminator_state_dict_equals_official_manifest():
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        D = DualDiscriminator(25, 512, 3)
    assert [(k, list(v.shape)) for k, v in D.state_dict().items()] == \
        [(k, list(v)) for k, v in manifest["state_dict"].items()]
    assert sum(p.numel() for p in D.parameters()) == manifest["total_params"]


def test_procedural_views_are_posed_and_deterministic():
    a_img, a_c = procedural_views(4, 32, seed=3)
    b_img, b_c = procedural_views(4, 32, seed=3)
    assert torch.equal(a_img, b_img) and torch.equal(a_c, b_c)
    assert a_img.shape == (4, 3, 32, 32) and a_c.shape == (4, 25)
    assert a_img.min() >= -1 and a_img.max() <= 1 and a_img.std() > 0.05
    cam2world = a_c[:, :16].view(-1, 4, 4)
    assert torch.allclose(cam2world[:, :3, 3].norm(dim=-1), torch.full((4,), 2.7), atol=1e-5)


def test_a_few_training_steps_move_g_ema(tmp_path):
    torch.manual_seed(0)
    result = train(tmp_path, steps=3, batch=2, n_views=8, r1_every=2, progress=False)
    log = result["log"]
    assert {"G/loss", "D/loss", "D/r1", "G/density_reg"} <= set().union(*log)
    assert all(math.isfinite(v) for entry in log for k, v in entry.items() if k != "step")
    G_ema = result["G_ema"]
    moved = [n for (n, p), (_, q) in zip(G_ema.named_parameters(), result["G"].named_parameters())
             if not torch.equal(p, q)]
    assert moved  # G_ema lags G: it is an average, not a copy
    loaded = EG3D.from_pretrained(tmp_path / "G_ema.safetensors")
    assert torch.equal(loaded.backbone.synthesis.b4.const, G_ema.backbone.synthesis.b4.const)
    torch.manual_seed(0)
    init = EG3D.from_preset("tiny")  # the same initial weights train() started from
    assert not torch.equal(init.decoder.net[0].weight, G_ema.decoder.net[0].weight)
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "log.json").is_file()


def test_sample_job_without_checkpoint(tmp_path, capsys):
    rc = main(["eg3d", "sample", "--seeds", "0-1", "--frames", "2", "--mesh-resolution", "24", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out
    for name in ("grid.png", "seed0000.png", "seed0001_depth.png", "seed0000_raw.png", "seed0000.gif",
                 "seed0001_depth.npy"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "seed0000.ply").is_file() or "empty mesh" in out


def test_sample_job_arguments():
    from fastfields.apps.eg3d import parse_seeds

    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(Exception, match="--seeds"):
        parse_seeds("3-1")


def test_training_on_a_built_srn_dataset(tmp_path):
    from fastfields.datasets import build_dataset

    root = build_dataset(tmp_path / "data", categories=("chair",), objects_per_category=2, views=3, resolution=32,
                         include_meshes=False, split={"train": 1.0})
    result = train(tmp_path / "run", steps=1, batch=2, data=root, r1_every=1, progress=False)
    cfg = result["G_ema"].config
    assert cfg.white_back and 0 < cfg.ray_start < cfg.ray_end and cfg.avg_camera_pivot == (0.0, 0.0, 0.0)
    assert all(math.isfinite(v) for k, v in result["log"][0].items() if k != "step")
    assert EG3D.from_pretrained(tmp_path / "run" / "G_ema.safetensors").config == cfg
