"""The one convention every model follows: configs, presets, checkpoints, inputs.

A model is ``class Model(PretrainedModel, nn.Module)`` with a dataclass config
(subclass of :class:`ModelConfig`) and a dict of presets::

    @dataclass
    class EG3DConfig(ModelConfig):
        z_dim: int = 512
        ...

    class EG3D(PretrainedModel, nn.Module):
        config_class = EG3DConfig
        presets = {"ffhq512": EG3DConfig(...), "tiny": EG3DConfig(z_dim=16, ...)}
        def __init__(self, config: EG3DConfig, **options): ...

Then:

- ``Model.from_preset(name, **overrides)``: a freshly initialised model of a preset;
- ``Model.from_pretrained(path)``: our format, strictly loaded. ``path`` is a
  ``.safetensors`` file whose metadata holds the config (``fastfields.model`` and
  ``fastfields.config``), or a folder with ``config.json`` + ``model.safetensors``;
- ``model.save_pretrained(path)``: writes either form (a path ending in ``.safetensors`` is
  a file, anything else a folder).

Strict loading reports every missing, unexpected, mis-shaped and wrongly typed key in one
:class:`CheckpointError`. Official checkpoints are turned into our format by conversion
scripts that read them with :func:`load_pickle_restricted` (tensors and plain containers
only: no pickled code ever runs). :func:`as_tensor` is how model inputs accept numpy arrays
as well as tensors.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union

import numpy as np
import torch

PathLike = Union[str, Path]
#: The weights file inside a model folder, and its config beside it.
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: safetensors metadata keys of a single-file checkpoint.
META_MODEL = "fastfields.model"
META_CONFIG = "fastfields.config"

C = TypeVar("C", bound="ModelConfig")
M = TypeVar("M", bound="PretrainedModel")


class CheckpointError(ValueError):
    """A checkpoint does not fit the model, or is not a checkpoint: the message lists every
    missing, unexpected and mis-shaped key."""


# ---------------------------------------------------------------------------------------
# Configs


def _plain(value):
    """JSON-friendly form of a config value (tuples -> lists, nested dataclasses -> dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _like(default, value):
    """``value`` (as read from JSON) in the container type of the field's ``default``."""
    if isinstance(default, tuple) and isinstance(value, list):
        inner = default[0] if default else None
        return tuple(_like(inner, v) for v in value)
    if isinstance(value, list):
        return tuple(_like(None, v) for v in value) if default is None else value
    return value


@dataclasses.dataclass
class ModelConfig:
    """Base of every model config: a dataclass with JSON round-trips and field checks.

    Subclasses add fields and may override :meth:`validate` (call ``super().validate()``).
    """

    def to_dict(self) -> Dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_dict(cls: Type[C], values: Mapping[str, Any], **overrides) -> C:
        """Build from a dict (e.g. a ``config.json``); unknown keys are an error that names them."""
        values = {**dict(values), **overrides}
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known fields: {sorted(by_name)}")
        kwargs = {}
        for name, value in values.items():
            field = by_name[name]
            default = field.default if field.default is not dataclasses.MISSING else None
            if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = field.default_factory()  # type: ignore[misc]
            kwargs[name] = _like(default, value)
        config = cls(**kwargs)
        config.validate()
        return config

    def replace(self: C, **overrides) -> C:
        """A copy with ``overrides`` applied (and validated)."""
        config = dataclasses.replace(self, **overrides)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field when a value is out of range. Base: ints
        that are not bools where the default is an int."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{type(self).__name__}: {f.name} must be a bool, got {value!r}")
            elif isinstance(f.default, int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{type(self).__name__}: {f.name} must be an int, got {value!r}")


# ---------------------------------------------------------------------------------------
# State dicts


def state_dict_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> List[str]:
    """Every way ``state`` fails to match ``expected`` (names, shapes, tensor-ness), one line each."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    for k in expected:
        if k not in state:
            continue
        value = state[k]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{k}: expected a tensor, got {type(value).__name__}")
        elif tuple(value.shape) != tuple(expected[k].shape):
            problems.append(f"shape mismatch for {k}: checkpoint {list(value.shape)}, model {list(expected[k].shape)}")
        elif expected[k].is_floating_point() != value.is_floating_point():
            problems.append(f"dtype mismatch for {k}: checkpoint {value.dtype}, model {expected[k].dtype}")
    return problems


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, Any], *, what: str = "checkpoint",
                           device=None, dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
    """Load ``state`` into ``module`` strictly (buffers included); one :class:`CheckpointError`
    lists every problem. Floating tensors are cast to ``dtype`` (default: the module's own
    tensor's dtype), everything moves to ``device`` (default: where the module's tensor is)."""
    expected = module.state_dict()
    problems = state_dict_problems(expected, state)
    if problems:
        raise CheckpointError(f"{type(module).__name__}: the {what} does not fit the model:\n  " + "\n  ".join(problems))
    cast = {}
    for k, v in state.items():
        target = expected[k]
        to_device = device if device is not None else (None if target.is_meta else target.device)
        to_dtype = (dtype or target.dtype) if v.is_floating_point() else target.dtype
        cast[k] = v.to(device=to_device, dtype=to_dtype)
    assign = any(t.is_meta for t in expected.values())
    module.load_state_dict(cast, strict=True, assign=assign)
    return module


def read_safetensors(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, with a clear error for anything else."""
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - the models extra brings it
        raise ImportError("reading checkpoints needs safetensors: pip install 'fastfields[models]'") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {str(path)!r} (nothing is downloaded; pass a local path)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    return tensors, metadata


def write_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``tensors`` (made contiguous, on the CPU) atomically: a temporary name, then a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------
# Official checkpoints: pickles read as data only

#: Globals a restricted unpickler may build: tensors, storages, numpy arrays and plain types.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"), ("torch", "device"), ("torch", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes (numpy arrays' buffers)
}
#: The first object of a legacy (pre-zip) ``torch.save`` file.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_NAMES = {"FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
                  "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "UntypedStorage"}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors, numpy arrays and plain containers; refuses every other global.

    ``allow`` adds ``(module, name) -> callable`` replacements, e.g. to turn an official
    code's class into a plain dict of its state without importing that code (``stub_class``).
    """

    def __init__(self, file, *, allow: Optional[Mapping[Tuple[str, str], Any]] = None, persistent_load=None):
        super().__init__(file)
        self.allow = dict(allow or {})
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in self.allow:
            return self.allow[(module, name)]
        if (module, name) in _SAFE_GLOBALS or (module == "torch" and name in _STORAGE_NAMES):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a checkpoint may hold tensors and plain containers only "
            f"(no pickled code is executed)"
        )


def _storage_from_bytes(data: bytes):
    """How a tensor inside a plain pickle is stored: a nested ``torch.save`` blob, read restricted."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class StubObject(dict):
    """What a stubbed class becomes: its pickled state as a dict (``qualname`` names the class,
    ``args`` holds constructor arguments when the pickle calls it)."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        super().__init__(kwargs)
        self.args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            self.update(state)
        else:
            self["__state__"] = state

    def __repr__(self) -> str:
        return f"StubObject({self.qualname}, keys={sorted(self)})"


def stub_class(module: str, name: str) -> type:
    """A stand-in type for ``module.name`` whose instances are :class:`StubObject` dicts of their state."""
    return type(name, (StubObject,), {"qualname": f"{module}.{name}", "__module__": __name__})


def load_pickle_restricted(path: PathLike, *, allow: Optional[Mapping[Tuple[str, str], Any]] = None) -> Any:
    """Read a pickle (``.pkl``) or a ``torch.save`` file (``.pt/.pth``, zip or legacy) as data.

    Only tensors, numpy arrays and plain containers are rebuilt (plus what ``allow`` maps);
    any other global raises :class:`CheckpointError` naming it, before anything runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {str(path)!r} (nothing is downloaded; pass a local path)")
    try:
        if zipfile.is_zipfile(path):
            return _load_torch_zip(path, allow)
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f, allow=allow).load()
        if data == _TORCH_LEGACY_MAGIC:  # torch's own restricted loader knows that layout
            return torch.load(str(path), map_location="cpu", weights_only=True)
        return data
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{str(path)!r}: {e}") from None
    except (EOFError, ValueError, KeyError, RuntimeError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({type(e).__name__}: {e})") from None


def _load_torch_zip(path: Path, allow) -> Any:
    """The zip format of ``torch.save``: ``data.pkl`` plus one file per storage."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if not pickles:
            raise CheckpointError(f"{str(path)!r}: a zip file without data.pkl is not a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]

        def persistent_load(saved_id):
            kind, storage_type, key, _location, numel = saved_id[:5]
            if kind != "storage":
                raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
            dtype = getattr(storage_type, "dtype", torch.uint8)
            raw = archive.read(f"{prefix}data/{key}")
            storage = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
            return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)

        with archive.open(pickles[0]) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation: it is how torch rebuilds
            return RestrictedUnpickler(io.BytesIO(f.read()), allow=allow, persistent_load=persistent_load).load()


# ---------------------------------------------------------------------------------------
# Inputs


def as_tensor(value, name: str, *, dtype: Optional[torch.dtype] = torch.float32, device=None,
              ndim: Optional[Union[int, Tuple[int, ...]]] = None) -> torch.Tensor:
    """``value`` (a tensor, numpy array or nested list) as a tensor; errors name ``name``.

    ``dtype=None`` keeps the input's dtype (a numpy float64 array stays float64).
    ``ndim`` checks the number of dimensions (an int or a tuple of allowed ones).
    """
    if isinstance(value, torch.Tensor):
        tensor = value
    elif isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        array = np.asarray(value)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise TypeError(f"{name}: expected a numeric array or tensor, got an array of {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if tensor.dim() not in allowed:
            raise ValueError(f"{name}: expected {' or '.join(map(str, allowed))} dimensions, got shape {list(tensor.shape)}")
    if dtype is not None or device is not None:
        tensor = tensor.to(device=device, dtype=dtype)
    return tensor


# ---------------------------------------------------------------------------------------
# The model mixin


class PretrainedModel:
    """``from_preset`` / ``from_pretrained`` / ``save_pretrained`` for an ``nn.Module`` whose
    first constructor argument is its config. Subclasses set ``config_class`` and ``presets``
    (name -> config instance) and may override :meth:`convert_state_dict` (e.g. to accept an
    older layout of our own format)."""

    config_class: Type[ModelConfig] = ModelConfig
    presets: Dict[str, ModelConfig] = {}

    @classmethod
    def preset_config(cls, name: str, **overrides) -> ModelConfig:
        if name not in cls.presets:
            raise ValueError(f"{cls.__name__}: unknown preset {name!r}; presets: {sorted(cls.presets)}")
        return cls.presets[name].replace(**overrides)

    @classmethod
    def from_preset(cls: Type[M], name: str, *, device=None, dtype: Optional[torch.dtype] = None,
                    overrides: Optional[Mapping[str, Any]] = None, **options) -> M:
        """A randomly initialised model of preset ``name``; ``overrides`` replace config
        fields, ``options`` go to the constructor."""
        model = cls(cls.preset_config(name, **dict(overrides or {})), **options)  # type: ignore[call-arg]
        return model.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else model

    @classmethod
    def read_pretrained(cls, path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """``(state_dict, config dict)`` of our format at ``path`` (file or folder)."""
        path = Path(path)
        if path.is_dir():
            weights, config_path = path / WEIGHTS_NAME, path / CONFIG_NAME
            if not weights.is_file() or not config_path.is_file():
                raise CheckpointError(f"{cls.__name__}: folder {str(path)!r} must hold {WEIGHTS_NAME} and {CONFIG_NAME}")
            state, _ = read_safetensors(weights)
            try:
                blob = json.loads(config_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{cls.__name__}: {str(config_path)!r} is not valid JSON ({e})") from None
            if not isinstance(blob, dict):
                raise CheckpointError(f"{cls.__name__}: {str(config_path)!r} must hold a JSON object")
            model_name, config = blob.get("model", cls.__name__), blob.get("config", blob)
        else:
            state, metadata = read_safetensors(path)
            if META_CONFIG not in metadata:
                raise CheckpointError(f"{cls.__name__}: {str(path)!r} has no {META_CONFIG!r} metadata; it is not a "
                                      f"fastfields checkpoint (official checkpoints go through the conversion script)")
            model_name = metadata.get(META_MODEL, cls.__name__)
            try:
                config = json.loads(metadata[META_CONFIG])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cls.__name__}: the config in {str(path)!r} is not valid JSON ({e})") from None
        if model_name != cls.__name__:
            raise CheckpointError(f"{cls.__name__}: {str(path)!r} holds a {model_name}, not a {cls.__name__}")
        if not isinstance(config, dict):
            raise CheckpointError(f"{cls.__name__}: the config in {str(path)!r} must be a JSON object")
        return state, config

    def convert_state_dict(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Hook: map a stored state dict onto this model's names before strict loading."""
        return state

    @classmethod
    def from_pretrained(cls: Type[M], path: PathLike, *, device=None, dtype: Optional[torch.dtype] = None,
                        overrides: Optional[Mapping[str, Any]] = None, **options) -> M:
        """Load our format (see the module doc) strictly; ``overrides`` replace config fields
        that do not change parameter shapes (render sizes and the like)."""
        state, config_dict = cls.read_pretrained(path)
        try:
            config = cls.config_class.from_dict(config_dict, **dict(overrides or {}))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{cls.__name__}: bad config in {str(path)!r}: {e}") from None
        with torch.device("meta"):
            model = cls(config, **options)  # type: ignore[call-arg]
        state = model.convert_state_dict(dict(state))
        load_state_dict_strict(model, state, what=f"checkpoint {str(path)!r}", device=device or "cpu", dtype=dtype)
        return model

    def save_pretrained(self, path: PathLike) -> Path:
        """Write weights + config: ``*.safetensors`` -> one file (config in its metadata),
        anything else -> a folder with ``model.safetensors`` and ``config.json``."""
        path = Path(path)
        state = self.state_dict()  # type: ignore[attr-defined]
        config = self.config.to_dict()  # type: ignore[attr-defined]
        if path.suffix == ".safetensors":
            return write_safetensors(path, state, {META_MODEL: type(self).__name__, META_CONFIG: json.dumps(config)})
        path.mkdir(parents=True, exist_ok=True)
        write_safetensors(path / WEIGHTS_NAME, state)
        tmp = path / (CONFIG_NAME + ".partial")
        tmp.write_text(json.dumps({"model": type(self).__name__, "config": config}, indent=2))
        tmp.replace(path / CONFIG_NAME)
        return path


__all__ = [
    "CheckpointError",
    "ModelConfig",
    "PretrainedModel",
    "RestrictedUnpickler",
    "StubObject",
    "as_tensor",
    "load_pickle_restricted",
    "load_state_dict_strict",
    "read_safetensors",
    "state_dict_problems",
    "stub_class",
    "write_safetensors",
]
