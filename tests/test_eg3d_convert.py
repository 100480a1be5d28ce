"""The EG3D pickle converter, on pickles synthesised with the official structure:
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` objects carrying their module
source (never executed here) and state, plain ``torch.nn`` / EG3D classes, ``dnnlib.EasyDict``."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastfields.models._pretrained import CheckpointError
from fastfields.models.eg3d import EG3D
from fastfields.models.eg3d import convert as conv
from fastfields.models.eg3d.layers import FullyConnectedLayer
from fastfields.models.eg3d.mapping import MappingNetwork
from fastfields.models.eg3d.renderer import OSGDecoder
from fastfields.models.eg3d.superresolution import Superresolution
from fastfields.models.eg3d.synthesis import StyleGAN2Backbone, SynthesisBlock, SynthesisLayer, SynthesisNetwork, ToRGBLayer

PLAIN = (type(None), bool, int, float, str, bytes, tuple, list, dict, set, torch.Tensor, np.generic)


@pytest.fixture
def official_modules(monkeypatch, tmp_path):
    """Stand-ins for the modules an EG3D pickle references, so the pickle can be written."""
    marker = tmp_path / "source-was-executed"

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called: we only pickle
        raise AssertionError

    class EasyDict(dict):
        pass

    class ImportanceRenderer(nn.Module):
        def __init__(self):
            super().__init__()
            self.plane_axes = torch.eye(3).repeat(3, 1, 1)  # an attribute, not a buffer
            self.ray_marcher = MipRayMarcher2()

    class MipRayMarcher2(nn.Module):
        pass

    class OSGDecoderStandIn:
        pass

    mods = {}
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util", "training", "training.triplane",
                 "training.volumetric_rendering", "training.volumetric_rendering.renderer"):
        mods[name] = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, mods[name])
    for fn, mod in ((_reconstruct_persistent_obj, "torch_utils.persistence"), (EasyDict, "dnnlib.util"),
                    (ImportanceRenderer, "training.volumetric_rendering.renderer"),
                    (MipRayMarcher2, "training.volumetric_rendering.renderer")):
        fn.__module__, fn.__qualname__ = mod, fn.__name__
        setattr(mods[mod], fn.__name__, fn)
    OSGDecoderStandIn.__module__, OSGDecoderStandIn.__qualname__ = "training.triplane", "OSGDecoder"
    OSGDecoderStandIn.__name__ = "OSGDecoder"
    mods["training.triplane"].OSGDecoder = OSGDecoderStandIn
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict, marker=marker,
                                 ImportanceRenderer=ImportanceRenderer, OSGDecoder=OSGDecoderStandIn)


OFFICIAL_NAMES = {EG3D: "TriPlaneGenerator", StyleGAN2Backbone: "Generator", SynthesisNetwork: "SynthesisNetwork",
                  SynthesisBlock: "SynthesisBlock", SynthesisLayer: "SynthesisLayer", ToRGBLayer: "ToRGBLayer",
                  MappingNetwork: "MappingNetwork", FullyConnectedLayer: "FullyConnectedLayer",
                  Superresolution: "SuperresolutionHybrid8XDC"}


def official_init_kwargs(G, EasyDict):
    c = G.config
    rk = EasyDict(c.rendering_kwargs())
    return EasyDict(z_dim=c.z_dim, c_dim=c.c_dim, w_dim=c.w_dim, img_resolution=c.img_resolution, img_channels=3,
                    sr_num_fp16_res=c.sr_num_fp16_res, mapping_kwargs=EasyDict(num_layers=c.mapping_layers),
                    rendering_kwargs=rk, sr_kwargs=EasyDict(channel_base=c.channel_base, channel_max=c.channel_max,
                                                            fused_modconv_default="inference_only"),
                    channel_base=c.channel_base, channel_max=c.channel_max, fused_modconv_default="inference_only",
                    num_fp16_res=c.num_fp16_res, conv_clamp=c.conv_clamp)


def write_official_style_pickle(path, G, env):
    """{'G', 'D', 'G_ema', 'augment_pipe', 'training_set_kwargs'} as EG3D's training loop writes it."""
    source = f"open({str(env.marker)!r}, 'w').write('pwned')\n"  # what EG3D's loader would exec

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, OSGDecoder):
                return env.OSGDecoder, (), self.state(obj)
            if type(obj) in OFFICIAL_NAMES:
                state = self.state(obj)
                if isinstance(obj, EG3D):
                    state["_init_kwargs"] = official_init_kwargs(obj, env.EasyDict)
                    state["_init_args"] = ()
                    state["_modules"] = {"renderer": env.ImportanceRenderer(), **state["_modules"]}
                meta = dict(type="class", version=6, module_src=source, class_name=OFFICIAL_NAMES[type(obj)], state=state)
                return env.reconstruct, (meta,)
            return NotImplemented

        @staticmethod
        def state(obj):
            return {k: v for k, v in obj.__dict__.items() if isinstance(v, PLAIN) or k == "_modules"}

    data = {"G": G, "D": None, "G_ema": G, "augment_pipe": None,
            "training_set_kwargs": {"path": "ffhq.zip", "use_labels": True}}
    with open(path, "wb") as f:
        Pickler(f, protocol=4).dump(data)


def trained_like_tiny(seed=0):
    torch.manual_seed(seed)
    G = EG3D.from_preset("tiny").eval()
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        G.backbone.mapping.w_avg.normal_()
        G.dataset_label_std.uniform_(0.1, 1.0)
    G.neural_rendering_resolution = 16
    return G


def test_pickle_converts_round_trip_without_running_its_code(tmp_path, official_modules):
    G = trained_like_tiny()
    pkl = tmp_path / "network-snapshot.pkl"
    write_official_style_pickle(pkl, G, official_modules)
    assert b"_reconstruct_persistent_obj" in pkl.read_bytes() and b"pwned" in pkl.read_bytes()

    model, out = conv.convert(pkl, tmp_path / "tiny.safetensors")
    assert not official_modules.marker.exists()  # the embedded module source never ran
    assert model.config == G.config
    loaded = EG3D.from_pretrained(out)
    expected = G.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    z, c = torch.randn(1, 32), G.camera()
    with torch.no_grad():
        a = G(z, c, noise_mode="const", generator=torch.Generator().manual_seed(0))
        b = loaded.eval()(z, c, noise_mode="const", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["image"], b["image"])


def test_cli_and_errors(tmp_path, official_modules, capsys):
    G = trained_like_tiny()
    pkl = tmp_path / "g.pkl"
    write_official_style_pickle(pkl, G, official_modules)
    assert conv.main([str(pkl), str(tmp_path / "out.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert conv.main([str(pkl), str(tmp_path / "x.safetensors"), "--key", "D"]) == 1  # D is None here
    assert conv.main([str(tmp_path / "missing.pkl"), str(tmp_path / "y.safetensors")]) == 1


class _Evil:
    def __reduce__(self):
        return os.system, ("echo should-not-run",)


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil()}))
    with pytest.raises(CheckpointError, match="refusing to load posix.system|refusing to load os.system|refusing"):
        conv.read_network_pkl(path)
    path.write_bytes(pickle.dumps({"G": 1}))
    with pytest.raises(CheckpointError, match="not an EG3D network pickle"):
        conv.read_network_pkl(path)
