"""SSDNeRF networks: the official state-dict layout, strict loading, the checkpoint converter."""

import collections
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from fastfields.models._pretrained import CheckpointError
from fastfields.models.ssdnerf import SSDNeRF
from fastfields.models.ssdnerf.convert import convert, main as convert_main
from fastfields.models.ssdnerf.unet import MultiHeadAttention

MANIFESTS = Path(__file__).parent / "manifests"
LAYOUT = {"cars_uncond": "cars_uncond", "abotables_uncond": "cars_uncond", "cars3v_uncond_2m": "cars_uncond",
          "cars_recons1v": "cars_recons1v", "chairs_recons1v": "cars_recons1v"}


@pytest.mark.parametrize("preset", sorted(LAYOUT))
def test_state_dict_equals_official_manifest(preset):
    manifest = json.loads((MANIFESTS / f"ssdnerf-{LAYOUT[preset]}.json").read_text())
    model = SSDNeRF.from_preset(preset, device="meta")
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(state) == list(manifest["state_dict"])  # names and order
    assert state == manifest["state_dict"]  # shapes
    assert sum(p.numel() for p in model.parameters()) == manifest["total_params"] == 244_873_516
    buffers = [k for k, _ in model.named_buffers()]
    assert sorted(buffers) == sorted(manifest["buffers"])


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = SSDNeRF.from_preset("tiny")
    with torch.no_grad():  # make every tensor distinct so that a wrong mapping shows
        for p in model.parameters():
            p.normal_()
    return model


def test_pretrained_round_trip_and_strict_errors(tmp_path):
    model = _tiny()
    for path in (tmp_path / "m.safetensors", tmp_path / "folder"):
        model.save_pretrained(path)
        loaded = SSDNeRF.from_pretrained(path)
        for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(a, b)
        assert loaded.config == model.config
    state = dict(model.state_dict())
    del state["decoder.base_net.0.bias"]
    state["diffusion.extra"] = torch.zeros(1)
    state["decoder_ema.color_net.0.weight"] = torch.zeros(3, 7)
    with pytest.raises(CheckpointError) as info:
        from fastfields.models._pretrained import load_state_dict_strict
        load_state_dict_strict(SSDNeRF.from_preset("tiny"), state)
    msg = str(info.value)
    assert "decoder.base_net.0.bias" in msg and "diffusion.extra" in msg and "decoder_ema.color_net.0.weight" in msg


def _fake_mmcv_pth(path, state, cls_module="mmcv.utils.config", cls_name="ConfigDict"):
    """A checkpoint laid out as mmcv's save_checkpoint writes it, with an mmcv object in 'meta'."""
    parts = cls_module.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    cls = type(cls_name, (dict,), {"__module__": cls_module, "__qualname__": cls_name})
    setattr(sys.modules[cls_module], cls_name, cls)
    try:
        meta = {"mmcv_version": "1.6.0", "iter": 80000, "config": cls(model="DiffusionNeRF")}
        optimizer = {"diffusion": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}}
        torch.save({"meta": meta, "state_dict": collections.OrderedDict(state), "optimizer": optimizer}, path)
    finally:
        for n in added:
            del sys.modules[n]


def test_converter_round_trip(tmp_path):
    model = _tiny(1)
    src = tmp_path / "ssdnerf_tiny.pth"
    _fake_mmcv_pth(src, model.state_dict())
    out = convert(src, tmp_path / "tiny.safetensors", preset="tiny")
    loaded = SSDNeRF.from_pretrained(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    convert_main([str(src), str(tmp_path / "cli"), "--preset", "tiny"])
    assert (tmp_path / "cli" / "model.safetensors").is_file()


def test_converter_refuses_code_and_wrong_layouts(tmp_path):
    model = _tiny(2)
    src = tmp_path / "evil.pth"
    _fake_mmcv_pth(src, model.state_dict(), cls_module="evil.payload", cls_name="RunMe")
    with pytest.raises(CheckpointError, match="refusing to load evil.payload.RunMe"):
        convert(src, tmp_path / "x.safetensors", preset="tiny")
    src2 = tmp_path / "ok.pth"
    _fake_mmcv_pth(src2, model.state_dict())
    with pytest.raises(CheckpointError, match="does not fit"):
        convert(src2, tmp_path / "y.safetensors", preset="cars_uncond")


def test_attention_heads_split_as_mmgen():
    torch.manual_seed(0)
    att = MultiHeadAttention(64, num_heads=4, groups=32)
    with torch.no_grad():
        att.proj.weight.normal_(0, 0.1)
    x = torch.randn(2, 64, 4, 4)
    out = att(x)
    # direct: head h owns channels [h*48, (h+1)*48) of qkv, split into its q, k, v
    qkv = att.qkv(att.norm(x.reshape(2, 64, 16)))
    heads = []
    for h in range(4):
        q, k, v = qkv[:, h * 48:(h + 1) * 48].chunk(3, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / 16**0.5, dim=-1)
        heads.append(torch.einsum("bts,bcs->bct", w, v))
    want = att.proj(torch.cat(heads, dim=1)) + x.reshape(2, 64, 16)
    torch.testing.assert_close(out.reshape(2, 64, 16), want, rtol=1e-5, atol=1e-5)


def test_unet_shapes_and_zero_init():
    model = SSDNeRF.from_preset("tiny")
    unet = model.diffusion.denoising
    x = torch.randn(2, 12, 16, 16)
    out = unet(x, torch.tensor([0, 999]))
    assert out.shape == x.shape and float(out.detach().abs().max()) == 0.0  # zero-initialised output conv
    assert model.config.code_channels == 12
