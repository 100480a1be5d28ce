"""Benchmark cases of ``tensorf_vm_sample`` against TensoRF's eager ``TensorVMSplit`` feature code."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ..ops.tensorf_vm_sample import TENSORF_MAT_MODE, TENSORF_VEC_MODE, ZERORF_VM, tensorf_vm_sample
from ..ops.triplane_sample import planes_channels_last
from .harness import Case

PLANES = ("plane0", "plane1", "plane2")
LINES = ("line0", "line1", "line2")


def tensorf_features(plane_coef, line_coef, xyz, reduce="concat", mat_mode=TENSORF_MAT_MODE, vec_mode=TENSORF_VEC_MODE,
                     align_corners=True, padding="zeros"):
    """The baseline: TensoRF's ``compute_appfeature`` (``"concat"``, before ``basis_mat``) or
    ``compute_densityfeature`` (``"sum"``) on its ``[1, R_k, H_k, W_k]`` / ``[1, R_k, L_k, 1]``
    parameters: two ``grid_sample`` calls per pair, with coordinates in the parameters' dtype."""
    coords = xyz.to(plane_coef[0].dtype)
    coordinate_plane = torch.stack([coords[..., list(pair)] for pair in mat_mode]).detach().view(3, -1, 1, 2)
    coordinate_line = torch.stack([coords[..., axis] for axis in vec_mode])
    coordinate_line = torch.stack((torch.zeros_like(coordinate_line), coordinate_line), dim=-1)
    coordinate_line = coordinate_line.detach().view(3, -1, 1, 2)
    sample = lambda t, grid: F.grid_sample(t, grid, padding_mode=padding, align_corners=align_corners)  # noqa: E731
    if reduce == "sum":
        sigma_feature = torch.zeros(xyz.shape[0], device=xyz.device, dtype=plane_coef[0].dtype)
        for k in range(3):
            plane_points = sample(plane_coef[k], coordinate_plane[[k]]).view(-1, xyz.shape[0])
            line_points = sample(line_coef[k], coordinate_line[[k]]).view(-1, xyz.shape[0])
            sigma_feature = sigma_feature + torch.sum(plane_points * line_points, dim=0)
        return sigma_feature
    plane_points = [sample(plane_coef[k], coordinate_plane[[k]]).view(-1, xyz.shape[0]) for k in range(3)]
    line_points = [sample(line_coef[k], coordinate_line[[k]]).view(-1, xyz.shape[0]) for k in range(3)]
    return (torch.cat(plane_points) * torch.cat(line_points)).T


def vm_case(R, size, log2_points, dtype, reduce, options=None, label="") -> Case:
    """Three R-component planes size x size and lines of length size, as TensoRF stores them."""
    options = options or {}
    N = 2**log2_points
    name = f"{label}3x{R}x{size}x{size} N=2^{log2_points} {reduce} {str(dtype).replace('torch.', '')}"

    def make_inputs(device):
        gen = torch.Generator(device="cpu").manual_seed(0)
        inputs = {k: (0.1 * torch.randn(1, R, size, size, generator=gen)).to(device, dtype) for k in PLANES}
        inputs.update({k: (0.1 * torch.randn(1, R, size, 1, generator=gen)).to(device, dtype) for k in LINES})
        inputs["xyz"] = (torch.rand(N, 3, generator=gen) * 2 - 1).to(device, torch.float32)
        return inputs

    def nbytes(t):
        return t.numel() * t.element_size()

    def out_bytes(x):
        return N * (3 * R if reduce == "concat" else 1) * x["plane0"].element_size()

    # Compulsory traffic: every input read once, every output written once.
    def bytes_forward(x):
        return sum(nbytes(x[k]) for k in PLANES + LINES + ("xyz",)) + out_bytes(x)

    def bytes_backward(x):
        return out_bytes(x) + 2 * sum(nbytes(x[k]) for k in PLANES + LINES) + nbytes(x["xyz"])

    return Case(
        op="tensorf_vm_sample",
        name=name,
        make_inputs=make_inputs,
        fused=lambda x, backend: tensorf_vm_sample(
            [x[k] for k in PLANES], [x[k] for k in LINES], x["xyz"], reduce=reduce, backend=backend, **options
        ),
        baseline=lambda x: tensorf_features([x[k] for k in PLANES], [x[k] for k in LINES], x["xyz"], reduce, **options),
        bytes_forward=bytes_forward,
        bytes_backward=bytes_backward,
        # What TensoRF and ZeroRF train: the planes and lines (their sample coordinates are detached).
        grad_inputs=PLANES + LINES,
        layouts={"channels-last": lambda x: {**x, **{k: planes_channels_last(x[k]) for k in PLANES}}},
    )


def cases(device: torch.device, full: bool = False) -> List[Case]:
    if device.type == "cuda":
        found = []
        for dtype in (torch.float32, torch.bfloat16):
            found.append(vm_case(48, 300, 20, dtype, "concat", label="TensoRF app "))
            found.append(vm_case(16, 300, 20, dtype, "sum", label="TensoRF density "))
        found.append(vm_case(16, 320, 20, torch.float32, "concat", ZERORF_VM, "ZeroRF "))
        return found if full else found[:2]
    found = [
        vm_case(48, 300, 17, torch.float32, "concat", label="TensoRF app "),
        vm_case(16, 300, 17, torch.float32, "sum", label="TensoRF density "),
    ]
    if full:
        found.append(vm_case(16, 320, 16, torch.float32, "concat", ZERORF_VM, "ZeroRF "))
        found.append(vm_case(48, 300, 16, torch.bfloat16, "concat", label="TensoRF app "))
    return found
