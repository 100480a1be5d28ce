"""Procedural posed-view scenes for SSDNeRF tests and CPU runs: cars and chairs built from
coloured boxes with random proportions, rendered exactly (ray-box intersection, the nearest
hit's colour with a fixed directional shading) on white, in the layout of
``fastfields.datasets.SRNDataset`` items: ``dict(id, images [V, H, W, 3] float in [0, 1] on
white, alpha [V, H, W], c2w [V, 4, 4] OpenCV, intrinsics [V, 4] fx, fy, cx, cy in pixels)``.

A stand-in until the shared dataset builder lands; any list of such dicts (a real SRN folder
read by ``SRNDataset``) trains the same way.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from fastfields.rendering import orbit_cameras

from .renderer import camera_rays

#: SRN's 128 x 128 focal length in pixels (scaled with the image size).
SRN_FOCAL_128 = 131.25
LIGHT = torch.tensor([0.4, -0.5, 0.77])


def _box(center, size, color) -> torch.Tensor:
    return torch.tensor([*center, *size, *color], dtype=torch.float32)


def random_object(category: str, generator: torch.Generator) -> torch.Tensor:
    """Boxes ``[K, 9]`` (centre xyz, half sizes xyz, rgb) of a random ``car`` or ``chair`` (z up)."""
    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    color = torch.rand(3, generator=generator) * 0.8 + 0.1
    dark = color * 0.35
    boxes = []
    if category == "car":
        L, W, H = u(0.4, 0.55), u(0.2, 0.28), u(0.08, 0.14)
        z0 = u(0.0, 0.05)
        boxes.append(_box((0, 0, z0), (L, W, H), color))
        cl = u(0.45, 0.7) * L
        boxes.append(_box((u(-0.15, 0.1) * L, 0, z0 + H + u(0.06, 0.1)), (cl, W * 0.85, u(0.06, 0.1)), color * 0.8 + 0.15))
        r = u(0.07, 0.1)
        for sx in (-1, 1):
            for sy in (-1, 1):
                boxes.append(_box((sx * L * 0.65, sy * W * 1.02, z0 - H), (r, 0.03, r), dark))
    elif category == "chair":
        S, T = u(0.22, 0.32), u(0.03, 0.05)
        h = u(0.15, 0.25)
        z = -0.45 + 2 * h
        boxes.append(_box((0, 0, z), (S, S, T), color))
        back = u(0.2, 0.35)
        boxes.append(_box((0, S - 0.03, z + back), (S, 0.03, back), color * 0.85))
        leg = u(0.02, 0.04)
        for sx in (-1, 1):
            for sy in (-1, 1):
                boxes.append(_box((sx * (S - leg), sy * (S - leg), z - h), (leg, leg, h - T), dark))
    else:
        raise ValueError(f"random_object: category must be 'car' or 'chair', got {category!r}")
    return torch.stack(boxes)


def render_boxes(boxes: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor):
    """Exact renders of opaque boxes for rays ``[N, 3]``: ``rgb [N, 3]`` on white, ``alpha [N]``."""
    c, h, col = boxes[:, :3], boxes[:, 3:6], boxes[:, 6:]
    inv = 1.0 / rays_d[:, None]
    t1 = (c - h - rays_o[:, None]) * inv
    t2 = (c + h - rays_o[:, None]) * inv
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    near, axis = tmin.max(dim=-1)
    far = tmax.min(dim=-1).values
    hit = (near <= far) & (near > 0)
    near = torch.where(hit, near, torch.full_like(near, math.inf))
    best, k = near.min(dim=-1)
    found = torch.isfinite(best)
    normal = torch.zeros_like(rays_o)
    ax = axis.gather(1, k[:, None])[:, 0]
    sign = -torch.sign(rays_d.gather(1, ax[:, None])[:, 0])
    normal.scatter_(1, ax[:, None], sign[:, None])
    shade = 0.55 + 0.45 * (normal @ (LIGHT / LIGHT.norm())).abs()
    rgb = col[k] * shade[:, None]
    white = torch.ones_like(rgb)
    return torch.where(found[:, None], rgb, white), found.float()


def make_scenes(n: int, *, categories: Sequence[str] = ("car", "chair"), views: int = 12, resolution: int = 32,
                radius: float = 1.3, elevations: Sequence[float] = (15.0, 35.0), seed: int = 0) -> List[Dict]:
    """``n`` procedural scenes (alternating categories), each seen from ``views`` cameras on two
    rings around it, looking at the origin (OpenCV ``c2w``), SRN's field of view."""
    g = torch.Generator().manual_seed(seed)
    f = SRN_FOCAL_128 * resolution / 128
    scenes = []
    for i in range(n):
        boxes = random_object(categories[i % len(categories)], g)
        per_ring = [views // len(elevations) + (1 if r < views % len(elevations) else 0) for r in range(len(elevations))]
        c2w = torch.cat([orbit_cameras(k, radius, elevation=e, azimuth_start=float(torch.rand((), generator=g)) * 360,
                                       convention="opencv", up="z") for k, e in zip(per_ring, elevations) if k > 0])
        intr = torch.tensor([f, f, resolution / 2, resolution / 2]).expand(views, 4).clone()
        o, d = camera_rays(c2w[None], intr[None], resolution, resolution)
        rgb, alpha = render_boxes(boxes, o[0], d[0])
        scenes.append(dict(id=f"{categories[i % len(categories)]}_{i:03d}",
                           images=rgb.view(views, resolution, resolution, 3), alpha=alpha.view(views, resolution, resolution),
                           c2w=c2w, intrinsics=intr, boxes=boxes))
    return scenes
