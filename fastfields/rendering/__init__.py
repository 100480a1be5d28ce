"""Rays and samples: cameras to rays, ray-box intersection, stratified and importance
sampling, and an occupancy grid that skips empty space and emits packed samples.

Plain PyTorch (none of it is a hot spot); every function documents its shapes.

    >>> from fastfields import rendering as R
    >>> rays_o, rays_d = R.rays_from_cameras(c2w, K, 128, 128)              # [B, H*W, 3]
    >>> t_near, t_far, hit = R.ray_aabb_intersect(rays_o, rays_d, (-1, -1, -1, 1, 1, 1))
    >>> t = R.stratified_samples(t_near, t_far, 48, perturb=True)           # [B, H*W, 48]
    >>> grid = R.OccupancyGrid((-1, -1, -1, 1, 1, 1), resolution=64)
    >>> grid.update(density_fn, step)
    >>> ray_indices, t_starts, t_ends = grid.sample(rays_o[0], rays_d[0], near=0.2, far=4.0, step_size=1 / 128)
"""

from .cameras import CONVENTIONS, orbit_cameras, ray_aabb_intersect, rays_from_cameras
from .occupancy import OccupancyGrid, packed_info
from .sh import sh_encode
from .samplers import merge_samples, sample_pdf, smooth_weights, stratified_samples
from .triplane import eg3d_render_options, render_triplane

__all__ = [
    "CONVENTIONS",
    "OccupancyGrid",
    "eg3d_render_options",
    "merge_samples",
    "orbit_cameras",
    "packed_info",
    "ray_aabb_intersect",
    "rays_from_cameras",
    "render_triplane",
    "sample_pdf",
    "sh_encode",
    "smooth_weights",
    "stratified_samples",
]
