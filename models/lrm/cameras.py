"""LRM's cameras, as OpenLRM defines them (``openlrm/datasets/cam_utils.py`` and the
inferrer's defaults): camera-to-world matrices in the OpenGL / Blender convention, intrinsics
``(fx, fy, cx, cy)`` as fractions of the image size, the canonical source camera at
``(0, -2, 0)`` looking at the origin with z up.

Every function takes tensors or numpy arrays and returns float32 tensors.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from fastfields.rendering import orbit_cameras

from .._pretrained import as_tensor
from .config import CAMERA_FEATURES


def check_cameras(op: str, c2w, intrinsics) -> Tuple[torch.Tensor, torch.Tensor]:
    """``c2w [N, 4|3, 4]`` and ``intrinsics [N, 4]`` (tensors or arrays) as float32 tensors on
    ``c2w``'s device; errors name ``op`` and the argument."""
    c2w = as_tensor(c2w, f"{op}: c2w", dtype=None)
    intrinsics = as_tensor(intrinsics, f"{op}: intrinsics", dtype=None)
    if c2w.dim() != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{op}: c2w must be a tensor [N, 4, 4] or [N, 3, 4], got {tuple(c2w.shape)}")
    if intrinsics.dim() != 2 or intrinsics.shape != (c2w.shape[0], 4):
        raise ValueError(f"{op}: intrinsics must be a tensor [N, 4] = (fx, fy, cx, cy) with N = {c2w.shape[0]}, "
                         f"got {tuple(intrinsics.shape)}")
    return c2w.float(), intrinsics.float().to(c2w.device)


def camera_feature(c2w, intrinsics, kind: str = "openlrm") -> torch.Tensor:
    """The raw camera vector LRM's camera embedder takes.

    Args:
        c2w: camera-to-world ``[N, 4, 4]`` or ``[N, 3, 4]`` (OpenGL convention, as OpenLRM).
        intrinsics: ``[N, 4]`` rows ``(fx, fy, cx, cy)`` as fractions of the image width /
            height (OpenLRM's ``get_normalized_camera_intrinsics``).
        kind: ``"openlrm"``: ``cat(c2w[:3, :4].flatten(), fx, fy, cx, cy)`` -> ``[N, 16]``
            (``build_camera_principle``); ``"paper"``: the full 4x4 flattened -> ``[N, 20]``.
    """
    op = "camera_feature"
    if kind not in CAMERA_FEATURES:
        raise ValueError(f"{op}: kind must be one of {tuple(CAMERA_FEATURES)}, got {kind!r}")
    c2w, intrinsics = check_cameras(op, c2w, intrinsics)
    N = c2w.shape[0]
    if kind == "openlrm":
        pose = c2w[:, :3, :4].reshape(N, 12)
    else:
        if c2w.shape[1] == 3:
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=c2w.device).expand(N, 1, 4)
            c2w = torch.cat([c2w, bottom], dim=1)
        pose = c2w.reshape(N, 16)
    return torch.cat([pose, intrinsics], dim=-1)


def canonical_camera(distance: float = 2.0, focal: float = 0.75) -> Tuple[torch.Tensor, torch.Tensor]:
    """OpenLRM's canonical source camera (``_default_source_camera``): at ``(0, -distance, 0)``
    looking at the origin, z up, OpenGL convention; ``c2w [1, 4, 4]`` and normalised
    intrinsics ``[1, 4] = (focal, focal, 0.5, 0.5)``."""
    c2w = orbit_cameras(1, distance, convention="opengl", up="z")
    return c2w, torch.tensor([[focal, focal, 0.5, 0.5]])


def turntable_cameras(n_views: int, distance: float = 2.0, height: float = 0.8,
                      focal: float = 0.75) -> Tuple[torch.Tensor, torch.Tensor]:
    """OpenLRM's render orbit (``surrounding_views_linspace``): ``n_views`` cameras at
    ``distance`` from the origin, ``height`` above the xy plane, starting in front of the
    object (azimuth of the source camera) and turning counter-clockwise seen from above;
    ``c2w [n, 4, 4]`` (OpenGL) and intrinsics ``[n, 4]``. Unlike OpenLRM's ``linspace`` the
    last view does not repeat the first, so the GIF loops without a stutter."""
    if not 0 <= height < distance:
        raise ValueError(f"turntable_cameras: height must be in [0, distance={distance}), got {height!r}")
    c2w = orbit_cameras(n_views, distance, elevation=math.degrees(math.asin(height / distance)), convention="opengl")
    return c2w, torch.tensor([[focal, focal, 0.5, 0.5]]).expand(n_views, 4).clone()


def normalize_cameras(c2w, source: int = 0, distance: Optional[float] = None) -> torch.Tensor:
    """Re-express posed views in the frame where view ``source`` is LRM's canonical camera
    (OpenLRM's ``camera_normalization_objaverse``): one rigid transform of the world maps
    the source camera onto ``canonical_camera(d)``, with ``d`` its distance from the origin;
    ``distance`` then rescales the world so that ``d = distance``. The triplane LRM predicts
    lives in this frame. ``c2w [M, 4, 4]`` (OpenGL; tensor or array) -> ``[M, 4, 4]``."""
    c2w = as_tensor(c2w, "normalize_cameras: c2w", dtype=torch.float64)
    if c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"normalize_cameras: c2w must be [M, 4, 4], got {tuple(c2w.shape)}")
    if not -c2w.shape[0] <= source < c2w.shape[0]:
        raise ValueError(f"normalize_cameras: source must index one of the {c2w.shape[0]} views, got {source}")
    d = float(c2w[source, :3, 3].norm())
    if d == 0:
        raise ValueError("normalize_cameras: the source camera sits at the origin; it has no canonical pose")
    canonical, _ = canonical_camera(d)
    out = canonical.double().to(c2w.device) @ torch.linalg.inv(c2w[source]) @ c2w
    if distance is not None:
        out[:, :3, 3] *= distance / d
    return out.float()


__all__ = ["camera_feature", "canonical_camera", "check_cameras", "normalize_cameras", "turntable_cameras"]
