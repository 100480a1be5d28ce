"""The scene a per-scene fit is given: posed views from disk, cameras and intrinsics checked
and normalised, and the scene box (ZeroRF's per-object ``model_scale``, or a visual hull of
the masks). Shared by ZeroRF and the TensoRF baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fastfields.data import MultiViewData, load_blender, load_npz

from ._pretrained import as_tensor

#: ZeroRF's ``model_scale`` per NeRF-synthetic object (``zerorf.py``): bound = model_scale / 2.
NERF_SYNTHETIC_MODEL_SCALE = dict(chair=2.1, drums=2.3, ficus=2.3, hotdog=3.0, lego=2.4, materials=2.4, mic=2.5, ship=2.75)
#: The bound used when neither the caller, the config nor the masks give one (TensoRF's Blender box).
DEFAULT_BOUND = 1.5


def nerf_synthetic_bound(name: str) -> Optional[float]:
    """ZeroRF's scene half-size for a NeRF-synthetic object named in ``name`` (e.g. ``"mic"``,
    ``"nerf_synthetic_mic"``), or None."""
    lowered = str(name).lower()
    for obj, scale in NERF_SYNTHETIC_MODEL_SCALE.items():
        if obj in lowered.replace("-", "_").split("_") or lowered.endswith(obj):
            return scale / 2
    return None


def bound_from_masks(c2w: torch.Tensor, intrinsics: torch.Tensor, alpha: torch.Tensor, *, resolution: int = 64,
                     threshold: float = 0.5, margin: float = 1.1) -> Optional[float]:
    """The scene half-size from the views' masks: the largest ``|x|, |y|, |z|`` of the visual
    hull (points inside every view's frustum and mask, on a ``resolution^3`` lattice within
    the cameras' sphere), one lattice cell and ``margin`` added; None if the hull is empty.

    ``c2w [V, 4, 4]`` (OpenGL), ``intrinsics [V, 4]`` (fx, fy, cx, cy), ``alpha [V, H, W]``."""
    V, H, W = alpha.shape
    extent = float(c2w[:, :3, 3].norm(dim=-1).min())
    axis = torch.linspace(-extent, extent, resolution, device=alpha.device)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    inside = torch.ones(points.shape[0], dtype=torch.bool, device=alpha.device)
    for v in range(V):
        local = (points - c2w[v, :3, 3]) @ c2w[v, :3, :3]  # camera frame: x right, y up, looking along -z
        depth = -local[:, 2]
        fx, fy, cx, cy = intrinsics[v].tolist()
        u = fx * local[:, 0] / depth.clamp_min(1e-6) + cx
        w = cy - fy * local[:, 1] / depth.clamp_min(1e-6)
        seen = (depth > 0) & (u >= 0) & (u < W) & (w >= 0) & (w < H)
        pixel = w.long().clamp(0, H - 1) * W + u.long().clamp(0, W - 1)
        inside &= seen & (alpha[v].reshape(-1)[pixel] > threshold)
    if not bool(inside.any()):
        return None
    return (float(points[inside].abs().max()) + 2 * extent / (resolution - 1)) * margin


def _intrinsics(op: str, focal, n: int, height: int, width: int, device) -> torch.Tensor:
    """``[n, 4]`` (fx, fy, cx, cy) from a focal length (number, ``[n]``) or intrinsics ``[4]`` / ``[n, 4]``."""
    if isinstance(focal, (bool, str)) or focal is None:
        raise ValueError(f"{op}: focal must be a positive number of pixels, [V] focals or [V, 4] intrinsics, got {focal!r}")
    if isinstance(focal, (int, float, np.generic)):
        focal = torch.tensor([float(focal)])
    values = as_tensor(focal, "focal", dtype=torch.float32).to(device)
    if values.dim() == 2 or (values.dim() == 1 and values.numel() == 4 and n != 4):
        values = values.reshape(-1, 4)
        if values.shape[0] not in (1, n):
            raise ValueError(f"{op}: intrinsics must be [4] or [{n}, 4] (fx, fy, cx, cy), got shape {tuple(values.shape)}")
        K = values.expand(n, 4).clone()
    else:
        values = values.reshape(-1)
        if values.numel() not in (1, n):
            raise ValueError(f"{op}: focal must be a number or one per camera ({n}), got {values.numel()} values")
        centre = torch.tensor([width / 2, height / 2], device=device).expand(n, 2)
        K = torch.cat([values.expand(n)[:, None], values.expand(n)[:, None], centre], dim=-1)
    if not bool(torch.isfinite(K).all()) or not bool((K[:, :2] > 0).all()):
        raise ValueError(f"{op}: focal must be a positive number of pixels, got {focal!r}")
    return K


def _check_cameras(op: str, c2w) -> torch.Tensor:
    if not isinstance(c2w, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{op}: c2w must be a float tensor or array [V, 4, 4] (Blender/OpenGL camera-to-world), "
                        f"got {type(c2w).__name__}")
    c2w = as_tensor(c2w, "c2w", dtype=None)
    if not c2w.is_floating_point():
        raise TypeError(f"{op}: c2w must be floating point, got {c2w.dtype}")
    if c2w.dim() != 3 or tuple(c2w.shape[1:]) not in ((4, 4), (3, 4)):
        raise ValueError(f"{op}: c2w must have shape [V, 4, 4] or [V, 3, 4], got shape {tuple(c2w.shape)}")
    if not bool(torch.isfinite(c2w).all()):
        raise ValueError(f"{op}: c2w contains NaN or inf")
    return c2w[:, :3, :4].float()


def load_views(source, *, split: str = "train", background: float = 1.0) -> MultiViewData:
    """Posed views from a Blender folder (``transforms_<split>.json``), a ``transforms_*.json``
    file, an npz in the shipped layout, or a :class:`~fastfields.data.MultiViewData`."""
    if isinstance(source, MultiViewData):
        return source
    path = Path(source)
    if path.is_dir():
        return load_blender(path, split, background=background)
    if path.suffix == ".json" and path.name.startswith("transforms_"):
        return load_blender(path.parent, path.stem[len("transforms_"):], background=background)
    if path.suffix == ".npz":
        return load_npz(path, background=background)
    raise FileNotFoundError(f"load_views: {str(path)!r} is not a Blender folder, transforms_*.json or .npz")
