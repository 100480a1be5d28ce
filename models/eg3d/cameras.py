"""EG3D's camera labels (``camera_utils.py``): ``c [N, 25]`` = cam2world ``[4, 4]`` (OpenCV,
y up) flattened + normalised intrinsics ``[3, 3]`` flattened."""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch


def fov_to_intrinsics(fov_degrees: float, device=None) -> torch.Tensor:
    """``FOV_to_intrinsics``: ``[3, 3]`` normalised by the image size (EG3D's constants kept)."""
    focal = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    return torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1]], device=device)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.norm(v, dim=-1, keepdim=True)


def cam2world_from_forward(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """``create_cam2world_matrix``: ``forward, origin [N, 3]`` -> ``[N, 4, 4]`` (no roll)."""
    forward = _normalize(forward)
    up = torch.tensor([0, 1, 0], dtype=torch.float, device=origin.device).expand_as(forward)
    right = -_normalize(torch.cross(up, forward, dim=-1))
    up = _normalize(torch.cross(forward, right, dim=-1))
    rotation = torch.eye(4, device=origin.device).unsqueeze(0).repeat(forward.shape[0], 1, 1)
    rotation[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    translation = torch.eye(4, device=origin.device).unsqueeze(0).repeat(forward.shape[0], 1, 1)
    translation[:, :3, 3] = origin
    return translation @ rotation


def lookat_pose(horizontal: Union[float, torch.Tensor], vertical: Union[float, torch.Tensor],
                pivot: Sequence[float], radius: float, device=None) -> torch.Tensor:
    """``LookAtPoseSampler.sample`` without its zero-stddev ``randn`` draws: cameras on a sphere
    of ``radius`` around ``pivot`` looking at it; yaw ``horizontal`` and pitch ``vertical``
    (``pi / 2, pi / 2`` = frontal) of shape ``[N]`` or scalars -> ``[N, 4, 4]``."""
    h = torch.as_tensor(horizontal, dtype=torch.float32, device=device).reshape(-1, 1)
    v = torch.as_tensor(vertical, dtype=torch.float32, device=device).reshape(-1, 1)
    h, v = torch.broadcast_tensors(h, v)
    v = torch.clamp(v, 1e-5, math.pi - 1e-5) / math.pi
    phi = torch.arccos(1 - 2 * v)
    origins = torch.zeros((h.shape[0], 3), device=h.device)
    origins[:, 0:1] = radius * torch.sin(phi) * torch.cos(math.pi - h)
    origins[:, 2:3] = radius * torch.sin(phi) * torch.sin(math.pi - h)
    origins[:, 1:2] = radius * torch.cos(phi)
    pivot = torch.as_tensor(pivot, dtype=torch.float32, device=h.device)
    return cam2world_from_forward(pivot - origins, origins)


def camera_labels(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """``c [N, 25]`` from ``cam2world [N, 4, 4]`` and ``intrinsics [3, 3]`` or ``[N, 3, 3]``."""
    N = cam2world.shape[0]
    intrinsics = intrinsics.to(cam2world).reshape(-1, 9).expand(N, 9)
    return torch.cat([cam2world.reshape(N, 16), intrinsics], dim=1)
