"""Posed training views for EG3D at small sizes: procedurally generated scenes (1-3
coloured spheres inside EG3D's box) ray-cast from cameras on EG3D's orbit, with their
camera labels ``c [N, 25]``. Deterministic given the seed; no files needed.

:func:`srn_views` reads a dataset written by the shared builder (``fastfields dataset build``:
procedural categories and the shipped meshes, SRN layout) instead.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

from .cameras import camera_labels, fov_to_intrinsics, lookat_pose
from .renderer import ray_sampler


def _hit_spheres(o, d, centres, radii):
    """Nearest positive hit of rays ``o, d [M, 3]`` with spheres -> ``t [M]`` (inf: miss), index."""
    oc = o[:, None, :] - centres[None]
    b = (oc * d[:, None, :]).sum(-1)
    c = oc.square().sum(-1) - radii[None] ** 2
    disc = b * b - c
    t = -b - disc.clamp_min(0).sqrt()
    t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))
    return t.min(dim=1)


def procedural_views(n_views: int, resolution: int, *, seed: int = 0, n_scenes: int = 8, radius: float = 2.7,
                     pivot=(0.0, 0.0, 0.0), fov_deg: float = 18.837, yaw_range: float = 0.6,
                     pitch_range: float = 0.3, box: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """``images [n_views, 3, R, R]`` in ``[-1, 1]`` and camera labels ``c [n_views, 25]``.

    ``n_scenes`` random scenes of 1-3 coloured spheres within ``[-box/2, box/2]^3``, each seen
    from random yaw / pitch around the frontal view, Lambertian-shaded on a grey background."""
    g = torch.Generator().manual_seed(seed)
    intrinsics = fov_to_intrinsics(fov_deg)
    scenes = []
    for _ in range(n_scenes):
        k = int(torch.randint(1, 4, (1,), generator=g))
        centres = (torch.rand(k, 3, generator=g) - 0.5) * box * 0.6
        radii = 0.08 + torch.rand(k, generator=g) * box * 0.3
        colours = torch.rand(k, 3, generator=g) * 0.8 + 0.2
        scenes.append((centres, radii, colours))
    images, labels = [], []
    light = torch.nn.functional.normalize(torch.tensor([0.4, 0.6, 1.0]), dim=0)
    for i in range(n_views):
        centres, radii, colours = scenes[i % n_scenes]
        yaw = (torch.rand((), generator=g) * 2 - 1) * yaw_range
        pitch = (torch.rand((), generator=g) * 2 - 1) * pitch_range
        pose = lookat_pose(math.pi / 2 + yaw, math.pi / 2 + pitch, pivot, radius)
        c = camera_labels(pose, intrinsics)
        o, d = ray_sampler(pose, intrinsics[None], resolution)
        t, idx = _hit_spheres(o[0], d[0], centres, radii)
        hit = torch.isfinite(t)
        p = o[0] + t.nan_to_num(0, posinf=0)[:, None] * d[0]
        normal = torch.nn.functional.normalize(p - centres[idx], dim=-1)
        shade = 0.25 + 0.75 * (normal @ light).clamp_min(0)
        rgb = torch.where(hit[:, None], colours[idx] * shade[:, None], torch.full((1, 3), 0.5))
        images.append(rgb.reshape(resolution, resolution, 3).permute(2, 0, 1) * 2 - 1)
        labels.append(c[0])
    return torch.stack(images), torch.stack(labels)


def srn_views(root, resolution: int, *, split: str = "train", max_objects: int = 0):
    """All views of an SRN-layout dataset (``fastfields dataset build`` writes one) as EG3D
    training data: ``images [N, 3, R, R]`` in ``[-1, 1]`` (on white), camera labels ``c [N, 25]``
    (the OpenCV cam2world as stored, intrinsics normalised by the image size) and the camera
    distances ``[N]`` (to set the renderer's depth range)."""
    from fastfields.datasets import SRNDataset

    dataset = SRNDataset(root, split=split, image_size=(resolution, resolution))
    images, labels = [], []
    count = len(dataset) if max_objects <= 0 else min(max_objects, len(dataset))
    for i in range(count):
        item = dataset[i]
        fx, fy, cx, cy = item["intrinsics"].unbind(-1)
        K = torch.zeros(len(fx), 3, 3)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = (fx / resolution, fy / resolution,
                                                                    cx / resolution, cy / resolution, 1.0)
        labels.append(camera_labels(item["c2w"], K))
        images.append(item["images"].permute(0, 3, 1, 2) * 2 - 1)
    labels = torch.cat(labels)
    return torch.cat(images), labels, labels[:, :16].view(-1, 4, 4)[:, :3, 3].norm(dim=-1)
