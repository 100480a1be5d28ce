"""Reference TensoRF vector-matrix (VM) lookup: ``F.grid_sample`` per plane and per line, as TensoRF does it."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def tensorf_vm_sample_reference(
    planes: Sequence[torch.Tensor],
    lines: Sequence[torch.Tensor],
    xyz: torch.Tensor,
    *,
    reduce: str = "concat",
    align_corners: bool = True,
    padding: str = "zeros",
    mat_mode: Sequence[Tuple[int, int]] = ((0, 1), (0, 2), (1, 2)),
    vec_mode: Sequence[int] = (2, 1, 0),
) -> torch.Tensor:
    """Sample three VM pairs (plane ``[R_k, H_k, W_k]``, line ``[R_k, L_k]``) at ``xyz [N, 3]``.

    ``planes`` and ``lines`` are three tensors each (a ``[3, R, H, W]`` / ``[3, R, L]`` tensor
    works too). Component ``(k, r)`` is ``planes[k][r]`` read bilinearly at ``(u, v) =
    (xyz[:, mat_mode[k][0]], xyz[:, mat_mode[k][1]])`` (u along W, v along H) times
    ``lines[k][r]`` read linearly at ``xyz[:, vec_mode[k]]``: exactly ``F.grid_sample`` of the
    plane, and of the line as a ``[R_k, L_k, 1]`` texture at ``(0, coord)``, as TensoRF does.
    Points whose coordinates are not finite read zeros and get zero gradient.

    Returns ``[N, sum_k R_k]`` (``reduce="concat"``, plane-major: component ``(k, r)`` at
    ``R_0 + ... + R_{k-1} + r``) or ``[N]`` (``"sum"`` over every component). Math runs in
    float32 (float64 stays float64); the result takes the planes' dtype.
    """
    dtype = planes[0].dtype
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    finite = torch.isfinite(xyz).all(dim=-1, keepdim=True)  # [N, 1]
    coords = torch.where(finite, xyz, torch.zeros_like(xyz)).to(compute_dtype)

    products = []
    for plane, line, (a, b), c in zip(planes, lines, mat_mode, vec_mode):
        plane_grid = torch.stack((coords[:, a], coords[:, b]), dim=-1)[None, None]  # [1, 1, N, 2]
        line_grid = torch.stack((torch.zeros_like(coords[:, c]), coords[:, c]), dim=-1)[None, None]
        plane_values = F.grid_sample(
            plane[None].to(compute_dtype),
            plane_grid,
            mode="bilinear",
            padding_mode=padding,
            align_corners=align_corners,
        )  # [1, R_k, 1, N]
        line_values = F.grid_sample(
            line[None, :, :, None].to(compute_dtype),
            line_grid,
            mode="bilinear",
            padding_mode=padding,
            align_corners=align_corners,
        )
        products.append((plane_values * line_values)[0, :, 0].t())  # [N, R_k]
    features = torch.cat(products, dim=1) * finite.to(compute_dtype)  # [N, sum R_k]

    if reduce == "concat":
        out = features
    elif reduce == "sum":
        out = features.sum(dim=1)
    else:
        raise ValueError(f"reduce must be 'concat' or 'sum', got {reduce!r}")
    return out.to(dtype)
