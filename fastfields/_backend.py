"""Backend selection shared by every op.

``backend="auto"`` picks, for the tensors' device, the first usable backend of
``AUTO_ORDER`` that the op implements; ``FASTFIELDS_BACKEND`` overrides "auto". A
compiled backend that fails to build is skipped by "auto" with one warning; a backend
asked for by name that cannot serve the call raises :class:`BackendUnavailable`
saying why.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Dict, Optional, Sequence

import torch

from . import _build

BACKENDS = ("torch", "triton", "cuda", "cpu")
ENV_VAR = "FASTFIELDS_BACKEND"

# Fastest first, as measured by the benchmarks (see README, "Backends").
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this call here."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _why_triton_unusable(device_type: str) -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'fastfields[triton]')"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device"
    if device_type == "cpu":
        if triton_interpret():
            return None
        return "triton runs CPU tensors only under the interpreter (set TRITON_INTERPRET=1 before importing triton)"
    return f"triton does not run on {device_type} tensors"


_build_reasons: Dict[str, Optional[str]] = {}


def _why_compiled_unusable(kind: str, build: bool) -> Optional[str]:
    """None when the extension is loaded (building it if ``build``), else why not."""
    if kind in _build_reasons:
        return _build_reasons[kind]
    quick = _build.why_unbuildable(kind)
    if quick is not None or not build:
        return quick if quick is not None else "not built yet"
    try:
        _build.load_extension(kind)
        reason = None
    except _build.BuildError as error:
        reason = str(error)
    _build_reasons[kind] = reason
    return reason


def why_unusable(name: str, device_type: str, build: bool = True) -> Optional[str]:
    """None if backend ``name`` can run on ``device_type`` tensors here, else the reason."""
    if name == "torch":
        return None if device_type != "cuda" or torch.cuda.is_available() else "no CUDA device"
    if name == "triton":
        return _why_triton_unusable(device_type)
    if name == "cuda":
        if device_type != "cuda":
            return f"the cuda backend runs CUDA tensors, got {device_type} tensors"
        return _why_compiled_unusable("cuda", build)
    if name == "cpu":
        if device_type != "cpu":
            return f"the cpu backend runs CPU tensors, got {device_type} tensors"
        return _why_compiled_unusable("cpu", build)
    raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}")


def backends(build: bool = True) -> Dict[str, Dict[str, object]]:
    """Which backends work on this machine, and why not where they don't.

    With ``build=True`` (default) the compiled backends are built if needed, so a
    build failure is reported with its log path. Returns
    ``{name: {"available": bool, "devices": [...], "reason": str | None}}``.
    """
    report = {}
    for name in BACKENDS:
        reasons = {device: why_unusable(name, device, build) for device in ("cpu", "cuda")}
        usable = [device for device, reason in reasons.items() if reason is None]
        reason = "; ".join(f"{device} tensors: {why}" for device, why in reasons.items())
        report[name] = {"available": bool(usable), "devices": usable, "reason": None if usable else reason}
    return report


_warned = set()


def _serves_device(name: str, device_type: str) -> bool:
    return name in ("torch", "triton") or name == device_type


def resolve(op: str, requested: str, device: torch.device, implemented: Sequence[str]) -> str:
    """The backend that runs ``op`` for tensors on ``device``."""
    device_type = device.type
    if not isinstance(requested, str):
        raise TypeError(f"{op}: backend must be a string, got {type(requested).__name__}")
    source = "backend"
    if requested == "auto" and os.environ.get(ENV_VAR, "auto") != "auto":
        requested, source = os.environ[ENV_VAR], ENV_VAR
        # A process-wide override applies where it can: ops without that backend, or tensors
        # on a device it does not run, keep choosing automatically.
        if requested in BACKENDS and (requested not in implemented or not _serves_device(requested, device_type)):
            requested = "auto"
    if requested != "auto":
        if requested not in BACKENDS:
            raise ValueError(f"{op}: {source} must be 'auto' or one of {BACKENDS}, got {requested!r}")
        if requested not in implemented:
            raise BackendUnavailable(f"{op}: {source}={requested!r} is not implemented for this op (it has {tuple(implemented)})")
        reason = why_unusable(requested, device_type)
        if reason is not None:
            raise BackendUnavailable(f"{op}: {source}={requested!r} is unavailable: {reason}")
        return requested
    for name in AUTO_ORDER.get(device_type, ("torch",)):
        if name not in implemented:
            continue
        reason = why_unusable(name, device_type)
        if reason is None:
            return name
        if name in ("cpu", "cuda") and name not in _warned and _build.why_unbuildable(name) is None:
            _warned.add(name)
            warnings.warn(f"fastfields: the {name} backend is unavailable, falling back ({reason})", RuntimeWarning, stacklevel=3)
    return "torch"
