"""Benchmarks of every op against its eager PyTorch baseline (``fastfields bench``).

The harness (timing, memory, report) is :mod:`.harness`; each op defines its cases in
``fastfields/bench/<op>.py`` and is listed in ``OP_MODULES``.
"""

from __future__ import annotations

import importlib
from typing import List

import torch

from .harness import Case, device_label, device_slug, fused_backends, markdown_table, pass_fn, run, write_report

OP_MODULES = ("triplane_sample", "tensorf_vm_sample", "voxel_sample", "composite", "adaln_modulate", "attention", "render_triplane")


def cases(device: torch.device, full: bool = False) -> List[Case]:
    """Every op's benchmark cases for ``device`` (``full`` adds larger and half-precision ones)."""
    found: List[Case] = []
    for name in OP_MODULES:
        found += importlib.import_module(f"{__name__}.{name}").cases(device, full)
    return found


__all__ = ["Case", "OP_MODULES", "cases", "device_label", "device_slug", "fused_backends", "markdown_table", "pass_fn", "run", "write_report"]
