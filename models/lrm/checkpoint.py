"""LRM checkpoints: every layout :meth:`LRM.from_pretrained` reads, and the folder
:func:`save_pretrained` writes (which OpenLRM loads too).

Read, in this order of precedence for the configuration (``preset``, when given, always wins):

- our single file (the convention of :mod:`fastfields.models._pretrained`): ``*.safetensors``
  with the config in its metadata (``fastfields.model`` = ``"LRM"``, ``fastfields.config``);
- our folder: ``model.safetensors`` + ``config.json`` = ``{"model": "LRM", "config": {...}}``;
- the folder :func:`save_pretrained` writes: OpenLRM's layout plus ``fastfields_config.json``
  with the whole :class:`LRMConfig` (input / render sizes OpenLRM's kwargs cannot name);
- an OpenLRM v1.1 folder (HF ``PyTorchModelHubMixin``): ``model.safetensors`` (or
  ``pytorch_model.bin``) + ``config.json`` holding the ``ModelLRM`` kwargs; or the weights file
  itself with its ``config.json`` beside it;
- an OpenLRM v1.0 ``model.pth``: ``{"weights": state_dict, "kwargs": {"model": ..., "infer": ...}}``
  (its ``transformer.pos_embed`` / ``transformer.deconv`` become ``pos_embed`` / ``upsampler``);
- a bare state dict (``.safetensors``, ``.bin``, ``.pt``, ``.pth``) with ``preset`` naming its
  configuration.

Pickles (``.bin``, ``.pt``, ``.pth``) are read with :func:`load_pickle_restricted`: tensors
and plain containers only, no pickled code runs. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from .._pretrained import (
    CONFIG_NAME,
    META_CONFIG,
    META_MODEL,
    WEIGHTS_NAME,
    CheckpointError,
    load_pickle_restricted,
    read_safetensors,
    write_safetensors,
)
from .config import LRMConfig, preset_config

PathLike = Union[str, Path]
#: The full configuration :func:`save_pretrained` writes beside OpenLRM's ``config.json``.
FULL_CONFIG = "fastfields_config.json"
#: Weights files a folder may hold, in the order they are looked for.
WEIGHTS_FILES = (WEIGHTS_NAME, "pytorch_model.bin", "model.pth")
MODEL_NAME = "LRM"


def convert_v10_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """OpenLRM v1.0 (``LRMGenerator``) names -> these: the triplane tokens and the
    deconvolution moved out of ``transformer`` in v1.1."""
    out = {}
    for key, value in state.items():
        if key == "transformer.pos_embed":
            key = "pos_embed"
        elif key.startswith("transformer.deconv."):
            key = "upsampler." + key[len("transformer.deconv."):]
        out[key] = value
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"LRM: {str(path)!r} is not valid JSON ({e})") from None


def _is_ours(blob: Any) -> bool:
    return isinstance(blob, dict) and set(blob) == {"model", "config"} and isinstance(blob["config"], dict)


def _our_config(blob: Any, where: Path, overrides: Mapping[str, Any]) -> LRMConfig:
    """An :class:`LRMConfig` from our JSON: ``{"model": "LRM", "config": {...}}`` or (older
    ``fastfields_config.json``) the bare field dict."""
    if _is_ours(blob):
        if blob["model"] != MODEL_NAME:
            raise CheckpointError(f"LRM: {str(where)!r} holds a {blob['model']}, not an LRM")
        blob = blob["config"]
    if not isinstance(blob, dict):
        raise CheckpointError(f"LRM: the configuration in {str(where)!r} must be a JSON object")
    try:
        return LRMConfig.from_dict(blob, **overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"LRM: bad configuration in {str(where)!r}: {e}") from None


def _tensor_dict(state: Any, path: Path) -> Dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"LRM: {str(path)!r} does not hold a state dict of tensors")
    return dict(state)


def read_checkpoint(path: PathLike, *, preset: Optional[str] = None,
                    **config_overrides) -> Tuple[Dict[str, torch.Tensor], LRMConfig, str]:
    """``(state_dict, config, what it was)`` of any layout in the module doc.
    ``config_overrides`` set :class:`LRMConfig` fields the checkpoint does not fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LRM: no such checkpoint: {str(path)!r} (nothing is downloaded; pass a local path)")
    overrides = dict(config_overrides)
    if path.is_dir():
        config_json = path / CONFIG_NAME
        blob = _read_json(config_json) if config_json.is_file() else None
        if _is_ours(blob) and (path / WEIGHTS_NAME).is_file():
            state, _ = read_safetensors(path / WEIGHTS_NAME)
            config = preset_config(preset, **overrides) if preset else _our_config(blob, config_json, overrides)
            return state, config, "fastfields folder"
        found = [path / name for name in WEIGHTS_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"LRM: {str(path)!r} has none of {list(WEIGHTS_FILES)}")
        weights_path = found[0]
    else:
        weights_path = path

    metadata: Dict[str, str] = {}
    if weights_path.suffix == ".safetensors":
        raw, metadata = read_safetensors(weights_path)
    else:
        raw = load_pickle_restricted(weights_path)
    if isinstance(raw, dict) and "weights" in raw and "kwargs" in raw:  # OpenLRM v1.0 model.pth
        kwargs = raw["kwargs"] if isinstance(raw["kwargs"], dict) else {}
        infer = kwargs.get("infer") or {}
        for ours, theirs in (("image_size", "source_size"), ("render_size", "render_size")):
            if theirs in infer and ours not in overrides:
                overrides[ours] = int(infer[theirs])
        state = convert_v10_state_dict(_tensor_dict(raw["weights"], weights_path))
        if preset:
            return state, preset_config(preset, **overrides), "OpenLRM v1.0 model.pth"
        return state, LRMConfig.from_openlrm_kwargs(dict(kwargs.get("model") or {}), **overrides), "OpenLRM v1.0 model.pth"

    state = _tensor_dict(raw, weights_path)
    if preset:
        return state, preset_config(preset, **overrides), "state dict"
    if META_CONFIG in metadata:
        if metadata.get(META_MODEL, MODEL_NAME) != MODEL_NAME:
            raise CheckpointError(f"LRM: {str(weights_path)!r} holds a {metadata[META_MODEL]}, not an LRM")
        try:
            blob = json.loads(metadata[META_CONFIG])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"LRM: the config in {str(weights_path)!r} is not valid JSON ({e})") from None
        return state, _our_config(blob, weights_path, overrides), "fastfields file"
    full_json, config_json = weights_path.parent / FULL_CONFIG, weights_path.parent / CONFIG_NAME
    if full_json.is_file():
        return state, _our_config(_read_json(full_json), full_json, overrides), "fastfields folder"
    if config_json.is_file():
        blob = _read_json(config_json)
        if _is_ours(blob):
            return state, _our_config(blob, config_json, overrides), "fastfields folder"
        if not isinstance(blob, dict):
            raise CheckpointError(f"LRM: {str(config_json)!r} must hold OpenLRM's ModelLRM kwargs as a JSON object")
        return state, LRMConfig.from_openlrm_kwargs(blob, **overrides), "OpenLRM v1.1 folder"
    from .config import PRESETS

    raise CheckpointError(
        f"LRM: {str(weights_path)!r} comes without its configuration: put OpenLRM's config.json beside it or "
        f"name a preset ({sorted(PRESETS)})"
    )


def load_checkpoint(path: PathLike, *, preset: Optional[str] = None,
                    **config_overrides) -> Tuple[Dict[str, torch.Tensor], LRMConfig]:
    """Read any LRM checkpoint (see the module doc): ``(state_dict, config)``."""
    state, config, _ = read_checkpoint(path, preset=preset, **config_overrides)
    return state, config


def save_pretrained(model, path: PathLike) -> Path:
    """Write ``model`` (an :class:`LRM`).

    - ``*.safetensors``: our single file, the whole config in its metadata.
    - anything else: a folder OpenLRM loads as it is (``ModelLRM.from_pretrained``):
      ``model.safetensors`` + ``config.json`` (OpenLRM's ``ModelLRM`` kwargs), plus
      ``fastfields_config.json`` = ``{"model": "LRM", "config": {...}}`` with the whole
      :class:`LRMConfig`, which :meth:`LRM.from_pretrained` prefers.
    """
    path = Path(path)
    state = model.state_dict()
    config = model.config.to_dict()
    if path.suffix == ".safetensors":
        return write_safetensors(path, state, {"format": "pt", META_MODEL: MODEL_NAME, META_CONFIG: json.dumps(config)})
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / WEIGHTS_NAME, state, {"format": "pt"})
    for name, blob in ((CONFIG_NAME, model.config.to_openlrm_kwargs()),
                       (FULL_CONFIG, {"model": MODEL_NAME, "config": config})):
        tmp = path / (name + ".partial")
        tmp.write_text(json.dumps(blob, indent=2))
        tmp.replace(path / name)
    return path


__all__ = ["FULL_CONFIG", "convert_v10_state_dict", "load_checkpoint", "read_checkpoint", "save_pretrained"]
