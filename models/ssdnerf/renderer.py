"""SSDNeRF's renderer: torch-ngp ray marching through a per-scene occupancy grid, packed
compositing on a white background (``lib/models/decoders/base_volume_renderer.py`` and the
``lib/ops/raymarching`` CUDA kernels it calls, in vectorised PyTorch plus fastfields ops).

What is reproduced, from the official kernels:

- near/far: the ray's slab intersection with ``[-bound, bound]^3``, near clamped to
  ``min_near`` (0.2); rays that miss get no samples.
- marching: ``t_0 = near + dt(near) * u`` (``u ~ U[0, 1)`` when perturbed, else 0), then
  ``t_{k+1} = t_k + dt(t_k)`` with ``dt(t) = clamp(t * dt_gamma, 2 sqrt(3) / max_steps,
  2 sqrt(3) / grid_size)``; a step is a sample when the point ``o + t d`` (clamped to the box)
  lies in an occupied cell, at most ``max_steps`` samples per ray. The sample is decoded at
  that point, with interval length ``dt`` (torch-ngp samples at ``t``, not at the midpoint).
- occupancy: the official ``update_extra_state``: every cell's density (trunc_exp) at one
  jittered point, ``grid = max(grid * decay, new)``, occupied where
  ``grid > min(mean(grid), density_thresh)``. It is stored in a
  :class:`fastfields.rendering.OccupancyGrid` (its ``densities`` / ``occupied`` buffers; cell
  ``(ix, iy, iz)`` is the official morton cell of the same coordinates).
- compositing: ``fastfields.composite_packed`` with ``trunc_exp``: the same ``alpha``,
  transmittance and weights as torch-ngp's ``composite_rays_train``; inference stops rays at
  ``T < t_threshold`` (1e-4) as torch-ngp does; training composites every sample (torch-ngp
  also stops training rays there: the difference is below 1e-4 of a pixel).

Depth is reported at interval midpoints (``fastfields.composite_packed``'s convention);
torch-ngp reports it at the interval start.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

import fastfields as ff
from fastfields.rendering import OccupancyGrid, rays_from_cameras

SQRT3 = math.sqrt(3.0)


def new_grid(bound: float, grid_size: int, device=None) -> OccupancyGrid:
    """An empty occupancy grid over ``[-bound, bound]^3`` (every cell starts unoccupied, as
    the official bitfield does; run :func:`update_grid` before rendering)."""
    grid = OccupancyGrid((-bound, -bound, -bound, bound, bound, bound), resolution=grid_size).to(device)
    grid.occupied.zero_()
    return grid


def cell_points(grid_size: int, bound: float, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """One jittered point per cell, ``[G^3, 3]`` in ``(ix, iy, iz)`` order (official ``update_extra_state``)."""
    idx = torch.arange(grid_size, device=device)
    coords = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), dim=-1).reshape(-1, 3).float()
    xyz = (coords - (grid_size - 1) / 2) * (2 * bound / grid_size)
    half = bound / grid_size
    return xyz + torch.rand(xyz.shape, generator=generator, device=device) * (2 * half) - half


@torch.no_grad()
def update_grid(grid: OccupancyGrid, density_fn: Callable[[torch.Tensor], torch.Tensor], *, bound: float,
                density_thresh: float, decay: float = 0.9, generator: Optional[torch.Generator] = None) -> None:
    """The official full occupancy update (``BaseNeRF.update_extra_state`` with ``iter_density < 16``,
    which is how every official call runs it). ``density_fn`` maps ``[N, 3]`` points to densities ``[N]``."""
    g = grid.resolution[0]
    points = cell_points(g, bound, generator, grid.densities.device)
    fresh = density_fn(points).reshape(-1).float()
    stored = grid.densities[0].view(-1)
    stored.copy_(torch.maximum(stored * decay, fresh))
    thresh = min(float(stored.clamp(min=0).mean()), density_thresh)
    grid.occupied[0].view(-1).copy_(stored > thresh)


def near_far_from_aabb(rays_o: torch.Tensor, rays_d: torch.Tensor, bound: float, min_near: float):
    """torch-ngp's ``near_far_from_aabb`` for rays ``[R, 3]``: ``(near [R], far [R])``; a ray that
    misses the box gets ``near = far = inf``."""
    inv = 1.0 / rays_d
    t1 = (-bound - rays_o) * inv
    t2 = (bound - rays_o) * inv
    near = torch.minimum(t1, t2).amax(dim=-1)
    far = torch.maximum(t1, t2).amin(dim=-1)
    miss = near > far
    near = near.clamp(min=min_near)
    inf = torch.full_like(near, math.inf)
    return torch.where(miss, inf, near), torch.where(miss, inf, far)


@torch.no_grad()
def march_rays(grid: OccupancyGrid, rays_o: torch.Tensor, rays_d: torch.Tensor, near: torch.Tensor, far: torch.Tensor, *,
               bound: float, dt_gamma: float, max_steps: int, noise: Optional[torch.Tensor] = None):
    """torch-ngp's ``march_rays_train`` (see the module doc) for rays ``[R, 3]``.

    Returns packed samples: ``ray_indices [M]`` (ascending), points ``xyz [M, 3]``, ``t [M]``
    and interval lengths ``dt [M]``.
    """
    g = grid.resolution[0]
    dt_min, dt_max = 2 * SQRT3 / max_steps, 2 * SQRT3 / g

    def step(t):
        return torch.clamp(t * dt_gamma, dt_min, dt_max)

    t = near.clone()
    if noise is not None:
        t = t + step(t) * noise
    ts = []
    while True:
        alive = t < far
        if not bool(alive.any()):
            break
        ts.append(torch.where(alive, t, far))
        t = t + step(t)
    if not ts:
        empty = rays_o.new_zeros(0)
        return torch.zeros(0, dtype=torch.long, device=rays_o.device), rays_o.new_zeros(0, 3), empty, empty
    ts = torch.stack(ts, dim=1)  # [R, K]
    valid = ts < far[:, None]
    xyz = (rays_o[:, None] + ts[..., None] * rays_d[:, None]).clamp(-bound, bound)
    mip = min(1.0, bound)  # torch-ngp's cascade-0 extent
    cell = (0.5 * (xyz / mip + 1) * g).clamp(0, g - 1).long()
    index = (cell[..., 0] * g + cell[..., 1]) * g + cell[..., 2]
    keep = valid & grid.occupied[0].view(-1)[index]
    keep &= torch.cumsum(keep, dim=1) <= max_steps
    ray_idx, k = keep.nonzero(as_tuple=True)
    t_kept = ts[ray_idx, k]
    return ray_idx, xyz[ray_idx, k], t_kept, step(t_kept)


def render_rays(decoder, code: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, grids: Sequence[OccupancyGrid], *,
                dt_gamma, max_steps: int, min_near: float = 0.2, bg_color: float = 1.0, perturb: bool = False,
                generator: Optional[torch.Generator] = None, t_threshold: float = 0.0, backend: str = "auto"):
    """Render rays of ``S`` scenes: codes ``[S, 3, C, H, W]``, unit rays ``[S, R, 3]``, one grid
    per scene, ``dt_gamma`` a float or one per scene.

    Returns ``image [S, R, 3]`` (on ``bg_color``), ``depth [S, R]``, ``weights_sum [S, R]``
    and the number of samples. Differentiable to ``code`` and the decoder's parameters;
    ``t_threshold > 0`` is inference only.
    """
    S, R = rays_o.shape[:2]
    bound = decoder.bound
    if isinstance(dt_gamma, torch.Tensor):
        dt_gamma = dt_gamma.reshape(-1).tolist()
    if not isinstance(dt_gamma, (list, tuple)):
        dt_gamma = [float(dt_gamma)] * S
    feats, dirs, t_starts, t_ends, rays = [], [], [], [], []
    for s in range(S):
        near, far = near_far_from_aabb(rays_o[s], rays_d[s], bound, min_near)
        noise = torch.rand(R, generator=generator, device=rays_o.device) if perturb else None
        ray_idx, xyz, t, dt = march_rays(grids[s], rays_o[s], rays_d[s], near, far, bound=bound,
                                         dt_gamma=float(dt_gamma[s]), max_steps=max_steps, noise=noise)
        feats.append(decoder.features(code[s : s + 1], xyz[None], backend)[0])
        dirs.append(rays_d[s][ray_idx])
        t_starts.append(t)
        t_ends.append(t + dt)
        rays.append(ray_idx + s * R)
    feats, dirs = torch.cat(feats), torch.cat(dirs)
    sigma, rgb = decoder.decode(feats, dirs)
    image, depth, opacity, _ = ff.composite_packed(
        sigma, rgb, torch.cat(t_starts), torch.cat(t_ends), torch.cat(rays), S * R, background=bg_color,
        density_activation="trunc_exp", t_threshold=t_threshold, backend=backend,
    )
    return image.view(S, R, 3), depth.view(S, R), opacity.view(S, R), sigma.numel()


def grid_density_fn(decoder, code_single: torch.Tensor, backend: str = "auto"):
    """``points [N, 3] -> density [N]`` of one scene code ``[3, C, H, W]`` (for :func:`update_grid`)."""
    return lambda p: decoder.density(code_single[None], p[None], backend)[0]


def dt_gamma_of(intrinsics: torch.Tensor, dt_gamma_scale: float) -> torch.Tensor:
    """``dt_gamma = dt_gamma_scale / mean(fx, fy)`` per scene for intrinsics ``[S, V, 4]``."""
    return dt_gamma_scale / intrinsics[..., :2].mean(dim=(-2, -1))


def camera_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rays of SRN cameras (OpenCV ``c2w [S, V, 4, 4]``, ``intrinsics [S, V, 4]`` fx, fy, cx, cy in
    pixels; pixel centres, unit directions): ``[S, V*H*W, 3]`` each (official ``get_cam_rays``)."""
    S, V = c2w.shape[:2]
    o, d = rays_from_cameras(c2w.reshape(S * V, *c2w.shape[2:]).float(), intrinsics.reshape(S * V, 4).float(),
                             height, width, convention="opencv")
    return o.reshape(S, V * height * width, 3), d.reshape(S, V * height * width, 3)


@torch.no_grad()
def render_views(decoder, code: torch.Tensor, grids: List[OccupancyGrid], c2w: torch.Tensor, intrinsics: torch.Tensor,
                 height: int, width: int, *, dt_gamma_scale: float, max_steps: int, min_near: float = 0.2,
                 bg_color: float = 1.0, t_threshold: float = 1e-4, chunk: int = 1 << 14, backend: str = "auto"):
    """Render ``[S, V, H, W, 3]`` images and ``[S, V, H, W]`` depth (official ``BaseNeRF.render``)."""
    S, V = c2w.shape[:2]
    rays_o, rays_d = camera_rays(c2w, intrinsics, height, width)
    dt_gamma = dt_gamma_of(intrinsics.float(), dt_gamma_scale)
    images, depths = [], []
    for o, d in zip(rays_o.split(chunk, dim=1), rays_d.split(chunk, dim=1)):
        img, dep, _, _ = render_rays(decoder, code, o, d, grids, dt_gamma=dt_gamma, max_steps=max_steps, min_near=min_near,
                                     bg_color=bg_color, t_threshold=t_threshold, backend=backend)
        images.append(img)
        depths.append(dep)
    return torch.cat(images, 1).view(S, V, height, width, 3), torch.cat(depths, 1).view(S, V, height, width)
