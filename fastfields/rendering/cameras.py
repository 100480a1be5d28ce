"""Rays from cameras, and where rays cross an axis-aligned box.

Camera conventions. ``c2w`` maps camera coordinates to world coordinates and its last
column is the camera centre. In camera coordinates x points right along the image rows
and:

- ``"opencv"`` (OpenCV, COLMAP, EG3D): y points down the image and the camera looks
  along **+z**.
- ``"opengl"`` (OpenGL, Blender, NeRF-synthetic ``transforms.json``, the poses OpenLRM
  builds): y points up the image and the camera looks along **-z**.

The two differ by flipping the camera's y and z axes, ``c2w_opencv = c2w_opengl @
diag(1, -1, -1, 1)``; OpenLRM's ray sampler applies exactly that product to its poses.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .._checks import FLOAT_DTYPES, check_bool, check_choice, check_same_device

CONVENTIONS = ("opencv", "opengl")
Bound = Union[float, torch.Tensor]
AABB = Union[torch.Tensor, Sequence[float], Tuple[Sequence[float], Sequence[float]]]


def check_float_tensor(op: str, name: str, value, layout: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor {layout}, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16, bfloat16 or float64, got {value.dtype}")
    return value


def check_rays(op: str, rays_o, rays_d, layout: str = "[..., 3]") -> None:
    """rays_o and rays_d: float tensors of one shape ending in 3, on one device."""
    for name, value in (("rays_o", rays_o), ("rays_d", rays_d)):
        check_float_tensor(op, name, value, layout)
        if value.dim() < 1 or value.shape[-1] != 3 or (layout == "[R, 3]" and value.dim() != 2):
            raise ValueError(f"{op}: {name} must have shape {layout}, got shape {tuple(value.shape)}")
    if rays_o.shape != rays_d.shape:
        raise ValueError(f"{op}: rays_d shape {tuple(rays_d.shape)} does not match rays_o shape {tuple(rays_o.shape)}")
    check_same_device(op, [("rays_o", rays_o), ("rays_d", rays_d)])


def as_bound(op: str, name: str, value: Bound, like: torch.Tensor) -> torch.Tensor:
    """A near/far bound as a tensor broadcastable to ``like`` (a float or a tensor)."""
    if isinstance(value, bool) or not isinstance(value, (Real, torch.Tensor)):
        raise TypeError(f"{op}: {name} must be a float or a tensor, got {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        if value.device != like.device:
            raise ValueError(f"{op}: {name} is on {value.device} but the rays are on {like.device}; move them to one device")
        try:
            fits = torch.broadcast_shapes(value.shape, like.shape) == like.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"{op}: {name} of shape {tuple(value.shape)} does not broadcast to the rays' shape {tuple(like.shape)}")
        return value.to(like.dtype)
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def as_aabb(op: str, aabb: AABB, dtype: torch.dtype, device) -> torch.Tensor:
    """``aabb`` as a ``[6]`` tensor ``(x_min, y_min, z_min, x_max, y_max, z_max)``.

    Accepts six numbers or a ``[6]`` tensor (nerfacc's layout), or a pair ``(min, max)``
    of three numbers or ``[3]`` tensors each.
    """
    try:
        if isinstance(aabb, (tuple, list)) and len(aabb) == 2:
            box = torch.cat([torch.as_tensor(b, dtype=dtype).reshape(-1).to(device) for b in aabb])
        else:
            box = torch.as_tensor(aabb, dtype=dtype).to(device)
    except (TypeError, ValueError, RuntimeError):
        box = None
    if box is None or box.shape != (6,):
        raise ValueError(f"{op}: aabb must be 6 numbers (x_min, y_min, z_min, x_max, y_max, z_max) or a pair (min, max), got {aabb!r}")
    if not bool((box[:3] < box[3:]).all()):
        raise ValueError(f"{op}: aabb must have min < max on every axis, got {box.tolist()}")
    return box


def rays_from_cameras(
    c2w: torch.Tensor,
    intrinsics: torch.Tensor,
    height: int,
    width: int,
    *,
    convention: str = "opencv",
    pixel_center: float = 0.5,
    normalized_intrinsics: bool = False,
    normalize_directions: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One ray per pixel of each camera.

    Args:
        c2w: camera-to-world matrices ``[B, 4, 4]`` or ``[B, 3, 4]`` in ``convention``
            (see the module docstring: ``"opencv"`` looks along +z with y down,
            ``"opengl"`` along -z with y up).
        intrinsics: ``[B, 3, 3]`` matrices ``[[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` (the
            skew ``s`` is honoured as EG3D does) or ``[B, 4]`` rows ``(fx, fy, cx, cy)``.
            In pixels, unless ``normalized_intrinsics``.
        height, width: image size in pixels.
        convention: ``"opencv"`` or ``"opengl"``.
        pixel_center: where in its pixel a ray passes: pixel ``(row i, column j)`` is
            image point ``(j + pixel_center, i + pixel_center)``; 0.5 is the centre
            (EG3D, OpenLRM), 0 the corner (the original NeRF code).
        normalized_intrinsics: ``fx, s, cx`` are fractions of ``width`` and ``fy, cy``
            of ``height``, as EG3D's 25-value camera label (16 for ``c2w``, then the
            3x3 intrinsics) and OpenLRM's camera feature store them.
        normalize_directions: return unit directions (EG3D, OpenLRM). Otherwise the
            camera-space direction has depth component 1, so ``t`` along the ray is
            the depth along the optical axis.

    Returns:
        ``rays_o [B, H*W, 3]`` (the camera centre, repeated) and ``rays_d [B, H*W, 3]``,
        pixels in row-major order (``.view(B, H, W, 3)`` recovers the image layout).
        float32, or float64 when ``c2w`` is float64; differentiable to ``c2w`` and
        ``intrinsics``.
    """
    op = "rays_from_cameras"
    check_float_tensor(op, "c2w", c2w, "[B, 4, 4] or [B, 3, 4]")
    check_float_tensor(op, "intrinsics", intrinsics, "[B, 3, 3] or [B, 4]")
    if c2w.dim() != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{op}: c2w must have shape [B, 4, 4] or [B, 3, 4], got shape {tuple(c2w.shape)}")
    if not ((intrinsics.dim() == 3 and intrinsics.shape[1:] == (3, 3)) or (intrinsics.dim() == 2 and intrinsics.shape[1] == 4)):
        raise ValueError(f"{op}: intrinsics must have shape [B, 3, 3] or [B, 4], got shape {tuple(intrinsics.shape)}")
    if intrinsics.shape[0] != c2w.shape[0]:
        raise ValueError(f"{op}: intrinsics batch size {intrinsics.shape[0]} does not match c2w batch size {c2w.shape[0]}")
    check_same_device(op, [("c2w", c2w), ("intrinsics", intrinsics)])
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {size!r}")
    check_choice(op, "convention", convention, CONVENTIONS)
    if isinstance(pixel_center, bool) or not isinstance(pixel_center, Real):
        raise TypeError(f"{op}: pixel_center must be a float, got {pixel_center!r}")
    check_bool(op, "normalized_intrinsics", normalized_intrinsics)
    check_bool(op, "normalize_directions", normalize_directions)

    dtype = torch.float64 if c2w.dtype == torch.float64 else torch.float32
    c2w = c2w.to(dtype)
    intrinsics = intrinsics.to(dtype)
    if intrinsics.dim() == 2:
        fx, fy, cx, cy = intrinsics.unbind(-1)
        skew = torch.zeros_like(fx)
    else:
        fx, skew, cx = intrinsics[:, 0].unbind(-1)
        fy, cy = intrinsics[:, 1, 1], intrinsics[:, 1, 2]
    if normalized_intrinsics:
        fx, skew, cx, fy, cy = fx * width, skew * width, cx * width, fy * height, cy * height

    rows = torch.arange(height, dtype=dtype, device=c2w.device) + pixel_center
    cols = torch.arange(width, dtype=dtype, device=c2w.device) + pixel_center
    v, u = torch.meshgrid(rows, cols, indexing="ij")
    u, v = u.reshape(1, -1), v.reshape(1, -1)  # [1, H*W]
    y = (v - cy[:, None]) / fy[:, None]
    x = (u - cx[:, None] - skew[:, None] * y) / fx[:, None]
    z = torch.ones_like(x)
    if convention == "opengl":
        y, z = -y, -z
    directions = torch.stack((x, y, z), dim=-1) @ c2w[:, :3, :3].transpose(1, 2)  # R @ d for every pixel
    if normalize_directions:
        directions = F.normalize(directions, dim=-1)
    origins = c2w[:, None, :3, 3].expand_as(directions).contiguous()
    return origins, directions


def orbit_cameras(
    n_views: int,
    radius: float,
    *,
    elevation: float = 0.0,
    azimuth_start: float = 0.0,
    convention: str = "opengl",
    up: str = "z",
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """Camera-to-world matrices ``[n_views, 4, 4]`` of a turntable around the origin.

    The cameras sit at distance ``radius`` from the origin, ``elevation`` degrees above
    the plane normal to the ``up`` axis (``"z"``: NeRF-synthetic / Blender, OpenLRM;
    ``"y"``: y-up scenes), at azimuths ``azimuth_start + 360 * k / n_views`` degrees
    (counter-clockwise seen from above), each looking at the origin with the ``up``
    axis up in the image. ``convention`` is that of the returned matrices (see the
    module docstring). Azimuth 0 puts the camera on the -y axis for ``up="z"`` (OpenLRM's
    canonical source camera at ``(0, -radius, 0)``) and on +z for ``up="y"``.
    """
    op = "orbit_cameras"
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"{op}: n_views must be a positive int, got {n_views!r}")
    if isinstance(radius, bool) or not isinstance(radius, Real) or radius <= 0:
        raise ValueError(f"{op}: radius must be a positive float, got {radius!r}")
    check_choice(op, "convention", convention, CONVENTIONS)
    check_choice(op, "up", up, ("y", "z"))
    azimuth = torch.deg2rad(azimuth_start + torch.arange(n_views, dtype=torch.float64) * (360.0 / n_views))
    elev = torch.full_like(azimuth, math.radians(elevation))
    # Position on the sphere in a z-up frame; azimuth 0 is -y.
    x = radius * torch.cos(elev) * torch.sin(azimuth)
    y = -radius * torch.cos(elev) * torch.cos(azimuth)
    z = radius * torch.sin(elev)
    world_up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    eye = torch.stack((x, y, z), dim=-1)
    if up == "y":  # rotate the z-up frame so that z -> y, -y -> z
        eye = torch.stack((x, z, -y), dim=-1)
        world_up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    forward = F.normalize(-eye, dim=-1)
    right = torch.cross(forward, world_up.expand_as(forward), dim=-1)
    # Looking straight along the up axis: any right vector will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-9
    right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), right)
    right = F.normalize(right, dim=-1)
    cam_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=torch.float64).repeat(n_views, 1, 1)
    if convention == "opengl":  # x right, y up, looking along -z
        c2w[:, :3, :3] = torch.stack((right, cam_up, -forward), dim=-1)
    else:  # x right, y down, looking along +z
        c2w[:, :3, :3] = torch.stack((right, -cam_up, forward), dim=-1)
    c2w[:, :3, 3] = eye
    return c2w.to(dtype=dtype, device=device)


def ray_aabb_intersect(
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    aabb: AABB,
    near: Bound = 0.0,
    far: Bound = math.inf,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each ray ``o + t d`` is inside an axis-aligned box (the slab method).

    Args:
        rays_o, rays_d: ``[..., 3]``; directions need not be unit length (``t`` is then
            in units of their length). Components of ``rays_d`` that are exactly zero
            are handled: such a ray is inside that slab for all ``t`` or for none.
        aabb: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` (six numbers or a ``[6]``
            tensor, nerfacc's layout) or a pair ``(min, max)`` of three values each.
        near, far: floats or tensors broadcastable to ``[...]``; the result is clipped
            to ``[near, far]``, so a ray starting inside the box gets ``t_near = near``.

    Returns:
        ``t_near [...]``, ``t_far [...]`` and ``hit [...]`` (bool): the ray is in the
        box for ``t`` in ``[t_near, t_far]``, and ``hit`` says that interval is not
        empty (``t_far > t_near``; a ray grazing an edge or corner misses). Where
        ``hit`` is False both are ``near``, an empty interval. Rays with a NaN
        component miss. Differentiable to ``rays_o`` and ``rays_d``.
    """
    op = "ray_aabb_intersect"
    check_rays(op, rays_o, rays_d)
    box = as_aabb(op, aabb, rays_o.dtype, rays_o.device)
    lead = rays_o[..., 0]
    near_t = as_bound(op, "near", near, lead)
    far_t = as_bound(op, "far", far, lead)

    lo, hi = box[:3], box[3:]
    parallel = rays_d == 0
    safe_d = torch.where(parallel, torch.ones_like(rays_d), rays_d)  # keeps inf/NaN out of the gradient
    t_lo = (lo - rays_o) / safe_d
    t_hi = (hi - rays_o) / safe_d
    in_slab = (rays_o >= lo) & (rays_o <= hi)
    inf = torch.full_like(t_lo, math.inf)
    enter = torch.where(parallel, torch.where(in_slab, -inf, inf), torch.minimum(t_lo, t_hi))
    leave = torch.where(parallel, torch.where(in_slab, inf, -inf), torch.maximum(t_lo, t_hi))

    t_near = torch.maximum(enter.amax(dim=-1), near_t)
    t_far = torch.minimum(leave.amin(dim=-1), far_t)
    hit = t_far > t_near
    empty = near_t.expand_as(t_near)
    return torch.where(hit, t_near, empty), torch.where(hit, t_far, empty), hit
