"""The shared model convention (fastfields.models._pretrained): configs, strict loading,
our safetensors format, and the restricted unpickler official checkpoints are read with."""

import os
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("safetensors")

from fastfields.models._pretrained import (
    CheckpointError,
    ModelConfig,
    PretrainedModel,
    as_tensor,
    load_pickle_restricted,
    stub_class,
)


@dataclass
class ToyConfig(ModelConfig):
    width: int = 4
    depth: int = 2
    scale: float = 1.0
    sizes: tuple = (1, 2)


class Toy(PretrainedModel, nn.Module):
    config_class = ToyConfig
    presets = {"tiny": ToyConfig(), "wide": ToyConfig(width=8)}

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.layers = nn.Sequential(*[nn.Linear(config.width, config.width) for _ in range(config.depth)])
        self.register_buffer("w_avg", torch.zeros(config.width))


def test_config_round_trip_and_unknown_fields():
    config = ToyConfig(width=3, sizes=(4, 5))
    assert ToyConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown fields \\['colour'\\]"):
        ToyConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="width must be an int"):
        ToyConfig(width=2.5).validate()


@pytest.mark.parametrize("name", ["model.safetensors", "folder"])
def test_save_and_load_round_trip(tmp_path, name):
    model = Toy.from_preset("wide")
    model.w_avg.fill_(3.0)
    path = model.save_pretrained(tmp_path / name)
    loaded = Toy.from_pretrained(path)
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    assert not any(f.name.endswith(".partial") for f in tmp_path.rglob("*"))


def test_strict_loading_lists_every_problem(tmp_path):
    model = Toy.from_preset("tiny")
    state = model.state_dict()
    state.pop("layers.0.bias")
    state["extra"] = torch.zeros(1)
    state["layers.1.weight"] = torch.zeros(3, 3)
    state["w_avg"] = torch.zeros(4, dtype=torch.int32)
    from fastfields.models._pretrained import write_safetensors

    import json

    write_safetensors(tmp_path / "bad.safetensors", state,
                      {"fastfields.model": "Toy", "fastfields.config": json.dumps(model.config.to_dict())})
    with pytest.raises(CheckpointError) as info:
        Toy.from_pretrained(tmp_path / "bad.safetensors")
    text = str(info.value)
    for needle in ("missing keys (1): layers.0.bias", "unexpected keys (1): extra",
                   "shape mismatch for layers.1.weight", "dtype mismatch for w_avg"):
        assert needle in text


def test_unknown_preset_and_garbage_files(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        Toy.from_preset("huge")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(100))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        Toy.from_pretrained(garbage)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="must hold model.safetensors and config.json"):
        Toy.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        Toy.from_pretrained(tmp_path / "missing.safetensors")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class _Net:  # a class of an official code base, which the converter maps to a stub
    def __init__(self):
        self.weight = torch.arange(3.0)


def test_restricted_unpickler_reads_data_and_refuses_code(tmp_path):
    data = {"state_dict": {"a": torch.arange(4.0), "b": np.ones(2)}, "meta": [1, "x", (2.0,)]}
    zipped, legacy, plain = tmp_path / "z.pth", tmp_path / "l.pth", tmp_path / "p.pkl"
    torch.save(data, zipped)
    torch.save({"state_dict": {"a": torch.arange(4.0)}}, legacy, _use_new_zipfile_serialization=False)
    plain.write_bytes(pickle.dumps(data))
    torch.testing.assert_close(load_pickle_restricted(legacy)["state_dict"]["a"], torch.arange(4.0))
    for path in (zipped, plain):
        out = load_pickle_restricted(path)
        torch.testing.assert_close(out["state_dict"]["a"], torch.arange(4.0))
        assert out["meta"] == [1, "x", (2.0,)]
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(CheckpointError, match="refusing to load posix.system|refusing to load os.system"):
        load_pickle_restricted(evil)
    torch.save({"x": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing"):
        load_pickle_restricted(tmp_path / "evil.pth")
    net = tmp_path / "net.pkl"
    net.write_bytes(pickle.dumps({"G": _Net()}))
    key = (_Net.__module__, "_Net")
    out = load_pickle_restricted(net, allow={key: stub_class(*key)})
    torch.testing.assert_close(out["G"]["weight"], torch.arange(3.0))


def test_as_tensor():
    t = as_tensor(np.eye(4), "c2w", ndim=(2, 3))
    assert t.dtype == torch.float32 and t.shape == (4, 4)
    assert as_tensor(torch.ones(2, dtype=torch.float64), "x", dtype=None).dtype == torch.float64
    with pytest.raises(ValueError, match="c2w: expected 3 dimensions"):
        as_tensor(np.eye(4), "c2w", ndim=3)
    with pytest.raises(TypeError, match="image: expected a torch.Tensor or numpy array, got str"):
        as_tensor("a.png", "image")
