"""Benchmark cases of ``triplane_sample`` against EG3D's eager ``sample_from_planes``."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ..ops.triplane_sample import EG3D_AXES, LRM_AXES, planes_channels_last, triplane_sample
from .harness import Case


def eg3d_sample_from_planes(planes: torch.Tensor, xyz: torch.Tensor, axes=EG3D_AXES) -> torch.Tensor:
    """The baseline: EG3D's ``sample_from_planes`` (one batched grid_sample over B*3 planes, mean)."""
    B, n_planes, C, H, W = planes.shape
    N = xyz.shape[1]
    grid = torch.stack([xyz[..., list(pair)] for pair in axes], dim=1).reshape(B * n_planes, 1, N, 2)
    sampled = F.grid_sample(planes.reshape(B * n_planes, C, H, W), grid.to(planes.dtype), align_corners=False)
    return sampled.reshape(B, n_planes, C, N).permute(0, 3, 1, 2).mean(dim=2)


def triplane_case(B, C, H, W, log2_points, dtype, axes=EG3D_AXES, label="") -> Case:
    N = 2**log2_points
    name = f"{label}B={B} 3x{C}x{H}x{W} N=2^{log2_points} {str(dtype).replace('torch.', '')}"

    def make_inputs(device):
        gen = torch.Generator(device="cpu").manual_seed(0)
        planes = torch.randn(B, 3, C, H, W, generator=gen).to(device, dtype)
        xyz = (torch.rand(B, N, 3, generator=gen) * 2 - 1).to(device, torch.float32)
        return {"planes": planes, "xyz": xyz}

    def nbytes(t):
        return t.numel() * t.element_size()

    # Compulsory traffic: every input read once, every output written once.
    def bytes_forward(x):
        return nbytes(x["planes"]) + nbytes(x["xyz"]) + B * N * C * x["planes"].element_size()

    def bytes_backward(x):
        return B * N * C * x["planes"].element_size() + 2 * nbytes(x["planes"]) + 2 * nbytes(x["xyz"])

    return Case(
        op="triplane_sample",
        name=name,
        make_inputs=make_inputs,
        fused=lambda x, backend: triplane_sample(x["planes"], x["xyz"], reduce="mean", axes=axes, backend=backend),
        baseline=lambda x: eg3d_sample_from_planes(x["planes"], x["xyz"], axes),
        bytes_forward=bytes_forward,
        bytes_backward=bytes_backward,
        grad_inputs=("planes", "xyz"),
        layouts={"channels-last": lambda x: {**x, "planes": planes_channels_last(x["planes"])}},
    )


def cases(device: torch.device, full: bool = False) -> List[Case]:
    if device.type == "cuda":
        found = []
        for dtype in (torch.bfloat16, torch.float32):
            found.append(triplane_case(1, 32, 256, 256, 21, dtype, EG3D_AXES, "EG3D "))
            found.append(triplane_case(1, 80, 64, 64, 21, dtype, LRM_AXES, "LRM "))
        return found if full else found[:2]
    found = [triplane_case(1, 32, 128, 128, 18, torch.float32)]
    if full:
        found.append(triplane_case(1, 80, 64, 64, 16, torch.float32, LRM_AXES, "LRM "))
        found.append(triplane_case(1, 32, 128, 128, 16, torch.bfloat16))
    return found
