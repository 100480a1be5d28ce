"""Reference voxel lookup: one trilinear ``F.grid_sample`` over a 5-D volume, as EG3D and DiffRF do it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def voxel_sample_reference(
    volume: torch.Tensor,
    xyz: torch.Tensor,
    *,
    align_corners: bool = False,
    padding: str = "zeros",
) -> torch.Tensor:
    """Sample ``volume [B, C, D, H, W]`` trilinearly at ``xyz [B, N, 3]``.

    ``xyz[..., 0]`` runs along W, ``xyz[..., 1]`` along H and ``xyz[..., 2]`` along D,
    ``[-1, 1]`` spanning the volume, exactly as ``F.grid_sample(volume, xyz.view(B, N, 1,
    1, 3), mode="bilinear")``. Points whose coordinates are not finite read zeros and get
    zero gradient.

    Returns ``[B, N, C]``. Math runs in float32 (float64 stays float64); the result takes
    the volume's dtype.
    """
    B, C = volume.shape[:2]
    N = xyz.shape[1]
    compute_dtype = torch.float64 if volume.dtype == torch.float64 else torch.float32
    finite = torch.isfinite(xyz).all(dim=-1, keepdim=True)  # [B, N, 1]
    coords = torch.where(finite, xyz, torch.zeros_like(xyz)).to(compute_dtype)
    sampled = F.grid_sample(
        volume.to(compute_dtype),
        coords.reshape(B, N, 1, 1, 3),
        mode="bilinear",
        padding_mode=padding,
        align_corners=align_corners,
    )  # [B, C, N, 1, 1]
    out = sampled.reshape(B, C, N).transpose(1, 2) * finite.to(compute_dtype)  # [B, N, C]
    return out.to(volume.dtype)
