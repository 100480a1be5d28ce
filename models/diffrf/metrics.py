"""Geometry metrics of generated fields, as DiffRF (after Achlioptas et al. 2018) reports
them: coverage (COV) and minimum matching distance (MMD) under the Chamfer distance between
point clouds sampled from the fields' density."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .field import check_fields


def field_points(fields, n_points: int = 1024, *, threshold: float = 0.0, bound: float = 1.0,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``[B, n_points, 3]`` points of each field's occupied voxels (density value > ``threshold``,
    i.e. ``sigma > sigma_max (threshold + 1) / 2``): voxel centres drawn with replacement,
    jittered uniformly within the voxel. A field with no occupied voxel yields the origin
    repeated (it then matches nothing well)."""
    fields = check_fields(fields)
    b, r = fields.shape[0], fields.shape[-1]
    pitch = 2 * bound / (r - 1)
    axis = torch.linspace(-bound, bound, r, device=fields.device)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    centres = torch.stack((x, y, z), dim=-1).reshape(-1, 3)
    occupied = (fields[:, 0] > threshold).reshape(b, -1).float()
    empty = occupied.sum(dim=1) == 0
    occupied[empty] = 1.0
    index = torch.multinomial(occupied, n_points, replacement=True, generator=generator)
    jitter = (torch.rand(b, n_points, 3, generator=generator, device=fields.device) - 0.5) * pitch
    points = centres[index] + jitter
    points[empty] = 0.0
    return points


def chamfer_matrix(a: torch.Tensor, b: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """``[A, B]`` Chamfer distances between clouds ``a [A, N, 3]`` and ``b [B, M, 3]``: mean
    squared nearest-neighbour distance a->b plus b->a (the L2-squared Chamfer of the
    point-cloud GAN literature). Vectorised over pairs, ``chunk`` rows of ``a`` at a time."""
    rows = []
    for part in a.split(chunk):
        d = torch.cdist(part[:, None], b[None]) ** 2  # [a, B, N, M]
        rows.append(d.amin(dim=3).mean(dim=2) + d.amin(dim=2).mean(dim=2))
    return torch.cat(rows)


def coverage_mmd(generated, reference, *, n_points: int = 1024, threshold: float = 0.0, bound: float = 1.0,
                 seed: int = 0) -> Dict[str, float]:
    """COV: the fraction of reference shapes that are the nearest (Chamfer) reference of at
    least one generated shape; MMD: the mean over reference shapes of the distance to their
    closest generated shape. Both fields batches ``[B, 4, R, R, R]``."""
    g = torch.Generator().manual_seed(seed)
    gen = field_points(generated, n_points, threshold=threshold, bound=bound, generator=g)
    ref = field_points(reference, n_points, threshold=threshold, bound=bound, generator=g)
    d = chamfer_matrix(gen, ref)  # [G, R]
    matched = torch.unique(d.argmin(dim=1))
    return {"cov": matched.numel() / ref.shape[0], "mmd": float(d.amin(dim=0).mean()),
            "n_generated": gen.shape[0], "n_reference": ref.shape[0]}
