"""Benchmark cases of ``voxel_sample`` against EG3D / DiffRF's eager ``sample_from_3dgrid``."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ..ops.voxel_sample import volume_channels_last, voxel_sample
from .harness import Case


def sample_from_3dgrid(volume: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """The baseline: EG3D's ``sample_from_3dgrid`` (DiffRF renders its voxel grids the same way):
    one 5-D ``grid_sample`` on a ``[B, 1, 1, N, 3]`` grid, then a permute to ``[B, N, C]``."""
    B, N, _ = xyz.shape
    grid = xyz.to(volume.dtype).reshape(B, 1, 1, N, 3)
    sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.permute(0, 4, 3, 2, 1).reshape(B, N, volume.shape[1])


def voxel_case(B, C, size, log2_points, dtype, label="") -> Case:
    N = 2**log2_points
    name = f"{label}B={B} {C}x{size}^3 N=2^{log2_points} {str(dtype).replace('torch.', '')}"

    def make_inputs(device):
        gen = torch.Generator(device="cpu").manual_seed(0)
        volume = torch.randn(B, C, size, size, size, generator=gen).to(device, dtype)
        xyz = (torch.rand(B, N, 3, generator=gen) * 2 - 1).to(device, torch.float32)
        return {"volume": volume, "xyz": xyz}

    def nbytes(t):
        return t.numel() * t.element_size()

    # Compulsory traffic: every input read once, every output written once.
    def bytes_forward(x):
        return nbytes(x["volume"]) + nbytes(x["xyz"]) + B * N * C * x["volume"].element_size()

    def bytes_backward(x):
        return B * N * C * x["volume"].element_size() + 2 * nbytes(x["volume"]) + 2 * nbytes(x["xyz"])

    return Case(
        op="voxel_sample",
        name=name,
        make_inputs=make_inputs,
        fused=lambda x, backend: voxel_sample(x["volume"], x["xyz"], backend=backend),
        baseline=lambda x: sample_from_3dgrid(x["volume"], x["xyz"]),
        bytes_forward=bytes_forward,
        bytes_backward=bytes_backward,
        grad_inputs=("volume", "xyz"),
        layouts={"channels-last": lambda x: {**x, "volume": volume_channels_last(x["volume"])}},
    )


def cases(device: torch.device, full: bool = False) -> List[Case]:
    if device.type == "cuda":
        found = []
        for dtype in (torch.bfloat16, torch.float32):
            found.append(voxel_case(8, 4, 32, 20, dtype, "DiffRF "))
            found.append(voxel_case(1, 32, 128, 21, dtype))
        return found if full else found[:2]
    found = [voxel_case(1, 4, 64, 18, torch.float32)]
    if full:
        found.append(voxel_case(1, 32, 64, 16, torch.float32))
        found.append(voxel_case(1, 4, 64, 18, torch.bfloat16))
    return found
