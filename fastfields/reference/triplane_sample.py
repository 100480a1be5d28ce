"""Reference triplane lookup: three ``F.grid_sample`` calls and a reduction, as EG3D does it."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def triplane_sample_reference(
    planes: torch.Tensor,
    xyz: torch.Tensor,
    *,
    reduce: str = "mean",
    align_corners: bool = False,
    padding: str = "zeros",
    axes: Sequence[Tuple[int, int]] = ((0, 1), (0, 2), (2, 0)),
) -> torch.Tensor:
    """Sample ``planes [B, 3, C, H, W]`` at ``xyz [B, N, 3]``.

    Plane ``k`` is read at ``(u, v) = (xyz[..., axes[k][0]], xyz[..., axes[k][1]])``
    with u along W and v along H, exactly as ``F.grid_sample``. Points whose
    coordinates are not finite read zeros and get zero gradient.

    Returns ``[B, N, 3, C]`` (``reduce="none"``), ``[B, N, C]`` (sum/mean/prod)
    or ``[B, N, 3C]`` (``concat``, plane-major). Math runs in float32 (float64
    stays float64); the result takes the planes' dtype.
    """
    B, n_planes, C, H, W = planes.shape
    N = xyz.shape[1]
    compute_dtype = torch.float64 if planes.dtype == torch.float64 else torch.float32
    finite = torch.isfinite(xyz).all(dim=-1, keepdim=True)  # [B, N, 1]
    coords = torch.where(finite, xyz, torch.zeros_like(xyz)).to(compute_dtype)

    features = []
    for k in range(n_planes):
        a, b = axes[k]
        grid = torch.stack((coords[..., a], coords[..., b]), dim=-1).unsqueeze(1)  # [B, 1, N, 2]
        plane = planes[:, k].to(compute_dtype)
        sampled = F.grid_sample(
            plane, grid, mode="bilinear", padding_mode=padding, align_corners=align_corners
        )  # [B, C, 1, N]
        features.append(sampled.squeeze(2).transpose(1, 2))  # [B, N, C]
    stacked = torch.stack(features, dim=2) * finite.unsqueeze(-1).to(compute_dtype)  # [B, N, 3, C]

    if reduce == "none":
        out = stacked
    elif reduce == "sum":
        out = stacked.sum(dim=2)
    elif reduce == "mean":
        out = stacked.mean(dim=2)
    elif reduce == "prod":
        out = stacked.prod(dim=2)
    elif reduce == "concat":
        out = stacked.reshape(B, N, n_planes * C)
    else:
        raise ValueError(f"reduce must be one of none/sum/mean/prod/concat, got {reduce!r}")
    return out.to(planes.dtype)
