"""Official EG3D ``.pkl`` -> our safetensors, without running any code from the pickle.

EG3D's network pickles (``ffhq512-128.pkl`` ...) hold ``{'G', 'D', 'G_ema', 'augment_pipe',
'training_set_kwargs'}``; each network is a ``torch_utils.persistence`` object pickled as
``_reconstruct_persistent_obj(meta)``, where ``meta`` carries the *source code* of its module
(``module_src``, which EG3D's loader ``exec``s) and the object's ``__dict__`` (``state``).
Here that global is mapped to a stub that keeps ``meta['state']`` as data and never looks at
``module_src``; the plain classes in the graph (``torch.nn`` containers, EG3D's non-persistent
renderer modules, ``dnnlib.EasyDict``) become :func:`~fastfields.models._pretrained.stub_class`
dicts of their state. Everything else (any other callable) is refused by the restricted
unpickler. The flat state dict is then collected from the ``_parameters`` / ``_buffers`` /
``_modules`` of the stubs, the config from ``G_ema``'s recorded constructor arguments and the
tensors' shapes, and strictly loaded into :class:`~fastfields.models.eg3d.EG3D`.

Usage::

    python -m fastfields.models.eg3d.convert ffhq512-128.pkl ffhq512-128.safetensors
    G = EG3D.from_pretrained("ffhq512-128.safetensors")
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from fastfields.models._pretrained import CheckpointError, StubObject, load_pickle_restricted, load_state_dict_strict, stub_class

from .config import EG3DConfig
from .generator import EG3D
from .superresolution import SR_MODULES

#: Modules whose classes may appear in an EG3D pickle; they become data-only stubs.
STUB_MODULES = re.compile(r"^(training(\..*)?|torch_utils(\..*)?|dnnlib(\..*)?|torch\.nn\.modules(\..*)?|_imported_module_[0-9a-f]+)$")
PERSISTENT = ("torch_utils.persistence", "_reconstruct_persistent_obj")


class PersistentStub(StubObject):
    """A ``torch_utils.persistence`` object as data: ``qualname`` is its class name, the dict its state."""


def _reconstruct_persistent_stub(meta) -> PersistentStub:
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise CheckpointError("a persistent object without a state dict: not an EG3D network pickle")
    obj = PersistentStub()
    obj.qualname = str(meta.get("class_name", "?"))
    obj.update(meta["state"])  # meta['module_src'] (the pickled source code) is never executed
    return obj


def _allow(module: str, name: str):
    if (module, name) == PERSISTENT:
        return _reconstruct_persistent_stub
    if STUB_MODULES.match(module) and name[:1].isupper():  # classes only, never functions
        return stub_class(module, name)
    return None


def read_network_pkl(path) -> Dict[str, Any]:
    """The pickle's top-level dict, networks as :class:`PersistentStub` dicts of their state."""
    data = load_pickle_restricted(path, allow=_allow)
    if not isinstance(data, dict) or "G_ema" not in data:
        raise CheckpointError(f"{str(path)!r} is not an EG3D network pickle (no 'G_ema'; keys: "
                              f"{sorted(data) if isinstance(data, dict) else type(data).__name__})")
    return data


def module_state_dict(module: StubObject, prefix: str = "") -> Dict[str, torch.Tensor]:
    """The flat ``state_dict()`` of a stubbed ``nn.Module`` (persistent buffers included)."""
    if not isinstance(module, dict) or "_modules" not in module:
        raise CheckpointError(f"{prefix or 'the network'} is not a torch module (no _modules)")
    state: Dict[str, torch.Tensor] = {}
    skip = set(module.get("_non_persistent_buffers_set", ()) or ())
    for kind in ("_parameters", "_buffers"):
        for name, value in (module.get(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{prefix}{name}: expected a tensor, got {type(value).__name__}")
            state[prefix + name] = value.detach().clone()
    for name, child in (module.get("_modules") or {}).items():
        if child is not None:
            state.update(module_state_dict(child, f"{prefix}{name}."))
    return state


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_from_pickle(G: StubObject, state: Dict[str, torch.Tensor]) -> EG3DConfig:
    """EG3DConfig from ``G_ema``'s ``_init_kwargs`` (the official constructor arguments) and,
    for what the official code hard-codes, the tensors' shapes."""
    kwargs = _plain(G.get("_init_kwargs") or {})
    if not kwargs:
        raise CheckpointError("G_ema has no recorded constructor arguments (_init_kwargs)")
    rk = kwargs.get("rendering_kwargs") or {}
    sr_module = str(rk.get("superresolution_module", "SuperresolutionHybrid8XDC")).rsplit(".", 1)[-1]
    if sr_module not in SR_MODULES:
        raise CheckpointError(f"unsupported superresolution module {sr_module!r}; supported: {sorted(SR_MODULES)}")
    synthesis_res = [int(k.split(".")[2][1:]) for k in state if k.startswith("backbone.synthesis.b") and k.endswith(".const")]
    top = max(int(k.split(".")[2][1:]) for k in state if k.startswith("backbone.synthesis.b"))
    plane_channels = state[f"backbone.synthesis.b{top}.torgb.weight"].shape[0] // 3
    in_res, _, up0, default_channels, _ = SR_MODULES[sr_module]
    block0_res = state["superresolution.block0.conv1.noise_const"].shape[-1]
    sr_in = block0_res // 2 if up0 else block0_res
    sr_channels = (state["superresolution.block0.conv1.weight"].shape[0], state["superresolution.block1.conv1.weight"].shape[0])
    values = dict(
        z_dim=int(kwargs["z_dim"]), c_dim=int(kwargs["c_dim"]), w_dim=int(kwargs["w_dim"]),
        img_resolution=int(kwargs["img_resolution"]), img_channels=int(kwargs["img_channels"]),
        mapping_layers=int((kwargs.get("mapping_kwargs") or {}).get("num_layers", 8)),
        plane_resolution=top, plane_channels=int(plane_channels),
        channel_base=int(kwargs.get("channel_base", 32768)), channel_max=int(kwargs.get("channel_max", 512)),
        num_fp16_res=int(kwargs.get("num_fp16_res", 4)), conv_clamp=kwargs.get("conv_clamp"),
        fused_modconv_default=kwargs.get("fused_modconv_default", True),
        decoder_hidden=int(state["decoder.net.0.weight"].shape[0]),
        decoder_output_dim=int(state["decoder.net.2.weight"].shape[0] - 1),
        decoder_lr_mul=float(rk.get("decoder_lr_mul", 1)),
        superresolution_module=sr_module, sr_num_fp16_res=int(kwargs.get("sr_num_fp16_res", 0)),
        sr_antialias=bool(rk.get("sr_antialias", True)),
        sr_input_resolution=0 if sr_in == in_res else int(sr_in),
        sr_channels=() if sr_channels == default_channels else tuple(int(x) for x in sr_channels),
        superresolution_noise_mode=str(rk.get("superresolution_noise_mode", "none")),
        neural_rendering_resolution=int(G.get("neural_rendering_resolution", 64)),
        depth_resolution=int(rk["depth_resolution"]), depth_resolution_importance=int(rk["depth_resolution_importance"]),
        ray_start=float(rk["ray_start"]), ray_end=float(rk["ray_end"]), box_warp=float(rk["box_warp"]),
        white_back=bool(rk.get("white_back", False)),
        disparity_space_sampling=bool(rk.get("disparity_space_sampling", False)),
        clamp_mode=str(rk.get("clamp_mode", "softplus")),
        c_gen_conditioning_zero=bool(rk.get("c_gen_conditioning_zero", False)),
        c_scale=float(rk.get("c_scale", 1)),
        density_reg=float(rk.get("density_reg", 0.25)), density_reg_p_dist=float(rk.get("density_reg_p_dist", 0.004)),
        avg_camera_radius=float(rk.get("avg_camera_radius", 2.7)),
        avg_camera_pivot=tuple(float(x) for x in rk.get("avg_camera_pivot", (0, 0, 0))),
    )
    if rk.get("gpc_reg_prob") is not None:
        values["gpc_reg_prob"] = float(rk["gpc_reg_prob"])
    if synthesis_res != [4]:
        raise CheckpointError(f"expected one constant input block b4, found {synthesis_res}")
    mapping = G.get("_modules", {}).get("backbone", {}).get("_modules", {}).get("mapping", {})
    fc0 = mapping.get("_modules", {}).get("fc0", {}) if isinstance(mapping, dict) else {}
    if isinstance(fc0, dict) and "bias_gain" in fc0:  # FullyConnectedLayer.bias_gain is its lr multiplier
        values["mapping_lr_multiplier"] = float(fc0.get("bias_gain", 0.01))
    if isinstance(mapping, dict) and mapping.get("w_avg_beta") is not None:
        values["w_avg_beta"] = float(mapping["w_avg_beta"])
    try:
        return EG3DConfig(**values).replace()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the pickle's configuration does not fit EG3DConfig: {e}") from None


def convert(pkl_path, out_path, *, key: str = "G_ema") -> Tuple[EG3D, Path]:
    """Read network ``key`` of an official pickle, load it strictly into :class:`EG3D` and write
    ``out_path`` (``.safetensors`` file or folder). Returns the model and the written path."""
    data = read_network_pkl(pkl_path)
    if key not in data:
        raise CheckpointError(f"{str(pkl_path)!r} has no network {key!r}; it has {sorted(data)}")
    G = data[key]
    state = module_state_dict(G)
    config = config_from_pickle(G, state)
    with torch.device("meta"):
        model = EG3D(config)
    load_state_dict_strict(model, state, what=f"{key} of {str(pkl_path)!r}", device="cpu")
    return model, model.save_pretrained(out_path)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.models.eg3d.convert",
                                     description="Convert an official EG3D network pickle to fastfields safetensors "
                                                 "(no code from the pickle is run).")
    parser.add_argument("pkl", help="official .pkl (e.g. ffhq512-128.pkl)")
    parser.add_argument("out", help="output .safetensors file (or a folder)")
    parser.add_argument("--key", default="G_ema", help="which network of the pickle (default: G_ema)")
    args = parser.parse_args(argv)
    try:
        model, path = convert(args.pkl, args.out, key=args.key)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {path} ({n:,} parameters, preset-like config: {model.config.superresolution_module}, "
          f"{model.config.img_resolution}^2, neural rendering {model.config.neural_rendering_resolution}^2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
