"""Procedural objects as fine voxel fields, and orbit views of them: DiffRF's own test data.

The shared posed-view dataset (``fastfields.datasets``: meshes rendered to SRN-style views)
is the real input of :mod:`~fastfields.models.diffrf.train`; this module makes small,
self-contained stand-ins that need nothing but torch, so the tests, the benchmark and a
first run work anywhere: a "chair" (seat, back, four legs) and a "car" (body, cabin, four
wheels) with seed-dependent proportions and part colours, as ``[4, R, R, R]`` fields in
DiffRF's value convention, rendered with the same renderer at more samples per ray.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

from ...rendering import orbit_cameras

Box = Tuple[Tuple[float, float, float], Tuple[float, float, float], Tuple[float, float, float]]  # centre, half-size, rgb


def _parts(kind: str, g: torch.Generator) -> List[Box]:
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))  # noqa: E731
    colour = lambda: tuple(float(c) for c in 0.15 + 0.8 * torch.rand(3, generator=g))  # noqa: E731
    if kind == "chair":
        w, d, seat_h, leg = u(0.35, 0.6), u(0.35, 0.55), u(-0.2, 0.05), u(0.04, 0.08)
        back_h, thick = u(0.35, 0.7), u(0.05, 0.1)
        body, legs = colour(), colour()
        parts = [((0.0, 0.0, seat_h), (w, d, thick), body),
                 ((0.0, d - thick, seat_h + thick + back_h / 2), (w, thick, back_h / 2), body)]
        floor = -0.85
        for sx in (-1, 1):
            for sy in (-1, 1):
                h = (seat_h - floor) / 2
                parts.append(((sx * (w - leg), sy * (d - leg), floor + h), (leg, leg, h), legs))
        return parts
    if kind == "car":
        length, width, height = u(0.65, 0.85), u(0.3, 0.42), u(0.12, 0.2)
        cabin_l, cabin_h, wheel = u(0.3, 0.5), u(0.1, 0.2), u(0.1, 0.15)
        body, glass, tyre = colour(), colour(), (0.1, 0.1, 0.1)
        z0 = -0.3
        parts = [((0.0, 0.0, z0), (length, width, height), body),
                 ((u(-0.15, 0.1), 0.0, z0 + height + cabin_h), (cabin_l, width * 0.9, cabin_h), glass)]
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(((sx * length * 0.65, sy * (width + 0.02), z0 - height), (wheel, 0.05, wheel), tyre))
        return parts
    raise ValueError(f"synthetic_object: kind must be 'chair' or 'car', got {kind!r}")


def synthetic_object(kind: str, seed: int, resolution: int = 64, bound: float = 1.0) -> torch.Tensor:
    """A ``[4, R, R, R]`` field of a procedural ``kind`` ("chair" or "car"): density 1 inside
    the parts, -1 outside, with a soft one-voxel edge; each voxel takes the colour of the
    nearest part (so colours are smooth in empty space too)."""
    g = torch.Generator().manual_seed(int(seed))
    parts = _parts(kind, g)
    axis = torch.linspace(-bound, bound, resolution)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    p = torch.stack((x, y, z), dim=-1)  # [z, y, x, 3]
    centres = torch.tensor([c for c, _, _ in parts])
    halves = torch.tensor([h for _, h, _ in parts])
    colours = torch.tensor([c for _, _, c in parts])
    q = (p[..., None, :] - centres).abs() - halves  # box SDF per part
    sdf = q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)  # [z, y, x, parts]
    dist, nearest = sdf.min(dim=-1)
    voxel = 2 * bound / (resolution - 1)
    density = (-dist / voxel).clamp(-1, 1)
    rgb = colours[nearest] * 2 - 1
    return torch.cat([density[None], rgb.permute(3, 0, 1, 2)], dim=0).contiguous()


def orbit_views(n_views: int, height: int, width: int, *, radius: float = 2.6, elevation: float = 25.0,
                fov_degrees: float = 45.0, azimuth_start: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(c2w [V, 4, 4], intrinsics [V, 4])`` of an OpenCV-convention orbit (z up) looking at
    the origin, intrinsics ``fx, fy, cx, cy`` in pixels for a ``fov_degrees`` vertical field
    of view: the dataset's conventions."""
    c2w = orbit_cameras(n_views, radius, elevation=elevation, azimuth_start=azimuth_start, convention="opencv", up="z")
    focal = 0.5 * height / math.tan(math.radians(fov_degrees) / 2)
    intrinsics = torch.tensor([[focal, focal, width / 2, height / 2]]).repeat(n_views, 1)
    return c2w, intrinsics
