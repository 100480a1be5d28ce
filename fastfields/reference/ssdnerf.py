"""A literal plain-PyTorch transcription of SSDNeRF's decoder and renderer (Lakonik/SSDNeRF
@b9d195d: ``TriPlaneDecoder.point_decode``, ``BaseNeRF.update_extra_state`` and the torch-ngp
kernels ``near_far_from_aabb``, ``packbits``, ``march_rays_train``,
``composite_rays_train``), written loop for loop, with the morton-ordered bitfield.

Slow and exact: the ground truth ``fastfields.models.ssdnerf`` is tested against. Float32
arithmetic on numpy scalars mirrors the CUDA kernels' float math.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

SQRT3 = np.float32(1.7320508075688772)


def _expand_bits(v: int) -> int:
    v = (v * 0x00010001) & 0xFF0000FF
    v = (v * 0x00000101) & 0x0F00F00F
    v = (v * 0x00000011) & 0xC30C30C3
    v = (v * 0x00000005) & 0x49249249
    return v


def morton3d(x: int, y: int, z: int) -> int:
    return _expand_bits(x) | (_expand_bits(y) << 1) | (_expand_bits(z) << 2)


def point_decode_reference(params: Dict[str, torch.Tensor], xyzs: torch.Tensor, dirs: Optional[torch.Tensor],
                           code: torch.Tensor, sigmoid_saturation: float = 0.001):
    """``TriPlaneDecoder.point_decode`` for ``xyzs [S, N, 3]``, ``dirs`` the same or None, code
    ``[S, 3, C, H, W]``; ``params`` holds the official state-dict names (``base_net.0.weight`` ...).
    Returns density ``[S*N]`` (exp) and rgb ``[S*N, 3]`` or None."""
    num_scenes, _, n_channels, h, w = code.size()
    num_points = xyzs.size(-2)
    xy, xz, yz = xyzs[..., :2], xyzs[..., ::2], xyzs[..., 1:]
    grid = torch.stack([xy, xz, yz], dim=1).reshape(num_scenes * 3, 1, num_points, 2)
    point_code = F.grid_sample(code.reshape(num_scenes * 3, -1, h, w), grid, mode="bilinear", padding_mode="border",
                               align_corners=False).reshape(num_scenes, 3, -1, num_points)
    point_code = point_code.permute(0, 3, 2, 1).reshape(num_scenes * num_points, -1)
    base_x = F.linear(point_code, params["base_net.0.weight"], params["base_net.0.bias"])
    base_x_act = F.silu(base_x)
    sigmas = torch.exp(F.linear(base_x_act, params["density_net.0.weight"], params["density_net.0.bias"])).squeeze(-1)
    if dirs is None:
        return sigmas, None
    d = dirs.reshape(-1, 3)
    sh_enc = sh4_reference(d)
    color_in = F.silu(base_x + F.linear(sh_enc, params["dir_net.0.weight"], params["dir_net.0.bias"]))
    rgbs = torch.sigmoid(F.linear(color_in, params["color_net.0.weight"], params["color_net.0.bias"]))
    rgbs = rgbs * (1 + sigmoid_saturation * 2) - sigmoid_saturation
    return sigmas, rgbs


def sh4_reference(d: torch.Tensor) -> torch.Tensor:
    """torch-ngp ``shencoder`` degree 4 (16 values), from its CUDA source."""
    x, y, z = d.unbind(-1)
    xy, xz, yz, x2, y2, z2 = x * y, x * z, y * z, x * x, y * y, z * z
    out = [
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * z2 - 0.31539156525251999,
        -1.0925484305920792 * xz, 0.54627421529603959 * x2 - 0.54627421529603959 * y2,
        0.59004358992664352 * y * (-3.0 * x2 + y2), 2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * z2), 0.3731763325901154 * z * (5.0 * z2 - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * z2), 1.4453057213202769 * z * (x2 - y2),
        0.59004358992664352 * x * (-x2 + 3.0 * y2),
    ]
    return torch.stack(out, dim=-1)


def update_extra_state_reference(params, code: torch.Tensor, density_grid: torch.Tensor, jitter: torch.Tensor,
                                 grid_size: int, bound: float, density_thresh: float, decay: float = 0.9):
    """The full update of ``BaseNeRF.update_extra_state`` for one scene: ``density_grid [G^3]``
    indexed by morton code (updated in place), ``jitter [G^3, 3]`` the ``rand_like`` draw in
    meshgrid order. Returns the packed ``bitfield [G^3 / 8]`` (uint8)."""
    idx = torch.arange(grid_size, dtype=torch.int32)
    xx, yy, zz = torch.meshgrid(idx, idx, idx, indexing="ij")
    coords = torch.cat([xx.reshape(-1, 1), yy.reshape(-1, 1), zz.reshape(-1, 1)], dim=-1)
    indices = torch.tensor([morton3d(int(a), int(b), int(c)) for a, b, c in coords.tolist()], dtype=torch.long)
    xyzs = (coords.float() - (grid_size - 1) / 2) * (2 * bound / grid_size)
    half_voxel_width = bound / grid_size
    xyzs = xyzs + jitter * (2 * half_voxel_width) - half_voxel_width
    sigmas = point_decode_reference(params, xyzs[None], None, code[None])[0]
    tmp_grid = torch.full_like(density_grid, -1)
    tmp_grid[indices] = sigmas
    valid_mask = (density_grid >= 0) & (tmp_grid >= 0)
    density_grid[:] = torch.where(valid_mask, torch.maximum(density_grid * decay, tmp_grid), density_grid)
    mean_density = torch.mean(density_grid.clamp(min=0))
    thresh = min(float(mean_density), density_thresh)
    bits = (density_grid > thresh).reshape(-1, 8).to(torch.uint8)
    return (bits << torch.arange(8, dtype=torch.uint8)).sum(dim=1).to(torch.uint8)


def near_far_reference(o, d, bound: float, min_near: float):
    """``kernel_near_far_from_aabb`` for one ray (numpy float32 scalars)."""
    f32 = np.float32
    ox, oy, oz = (f32(v) for v in o)
    dx, dy, dz = (f32(v) for v in d)
    with np.errstate(divide="ignore"):  # 1/0 = inf, as in CUDA
        rdx, rdy, rdz = f32(1) / dx, f32(1) / dy, f32(1) / dz
    b = f32(bound)
    near, far = (-b - ox) * rdx, (b - ox) * rdx
    if near > far:
        near, far = far, near
    near_y, far_y = (-b - oy) * rdy, (b - oy) * rdy
    if near_y > far_y:
        near_y, far_y = far_y, near_y
    if near > far_y or near_y > far:
        return math.inf, math.inf
    near, far = max(near, near_y), min(far, far_y)
    near_z, far_z = (-b - oz) * rdz, (b - oz) * rdz
    if near_z > far_z:
        near_z, far_z = far_z, near_z
    if near > far_z or near_z > far:
        return math.inf, math.inf
    near, far = max(near, near_z), min(far, far_z)
    return max(near, f32(min_near)), far


def march_rays_train_reference(o, d, bitfield: torch.Tensor, grid_size: int, bound: float, near, far, noise: float,
                               dt_gamma: float, max_steps: int):
    """``kernel_march_rays_train`` for one ray (cascade 1): lists of points, dirs, (dt, t)."""
    f32 = np.float32
    H = grid_size
    bits = bitfield.tolist()
    dt_min, dt_max = f32(2) * SQRT3 / f32(max_steps), f32(2) * SQRT3 / f32(H)
    g, b = f32(dt_gamma), f32(bound)
    ox, oy, oz = (f32(v) for v in o)
    dx, dy, dz = (f32(v) for v in d)
    with np.errstate(divide="ignore"):  # 1/0 = inf, as in CUDA
        rdx, rdy, rdz = f32(1) / dx, f32(1) / dy, f32(1) / dz

    def clampf(v, lo, hi):
        return f32(min(hi, max(lo, v)))

    out = []
    if not math.isfinite(near):
        return out
    t = f32(near)
    t = f32(t + clampf(t * g, dt_min, dt_max) * f32(noise))
    mip_bound = min(f32(1), b)
    while t < far and len(out) < max_steps:
        x, y, z = clampf(ox + t * dx, -b, b), clampf(oy + t * dy, -b, b), clampf(oz + t * dz, -b, b)
        dt = clampf(t * g, dt_min, dt_max)
        nx = int(clampf(0.5 * (x / mip_bound + 1) * H, 0, H - 1))
        ny = int(clampf(0.5 * (y / mip_bound + 1) * H, 0, H - 1))
        nz = int(clampf(0.5 * (z / mip_bound + 1) * H, 0, H - 1))
        index = morton3d(nx, ny, nz)
        if bits[index // 8] & (1 << (index % 8)):
            out.append(((x, y, z), (dx, dy, dz), (dt, t)))
            t = f32(t + dt)
        else:
            tx = (((nx + 0.5 + 0.5 * np.sign(dx)) / H * 2 - 1) * mip_bound - x) * rdx
            ty = (((ny + 0.5 + 0.5 * np.sign(dy)) / H * 2 - 1) * mip_bound - y) * rdy
            tz = (((nz + 0.5 + 0.5 * np.sign(dz)) / H * 2 - 1) * mip_bound - z) * rdz
            tt = t + max(f32(0), min(tx, ty, tz))
            while True:
                t = f32(t + clampf(t * g, dt_min, dt_max))
                if not t < tt:
                    break
    return out


def render_reference(params, code: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, bitfield: torch.Tensor,
                     grid_size: int, *, bound: float = 1.0, min_near: float = 0.2, dt_gamma: float = 0.0,
                     max_steps: int = 256, noises: Optional[torch.Tensor] = None, T_thresh: float = 1e-4,
                     bg_color: float = 1.0):
    """``VolumeRenderer.forward`` (training branch) + ``BaseNeRF.loss``'s background for one scene:
    code ``[3, C, H, W]``, rays ``[R, 3]``, bitfield ``[G^3/8]``. Returns ``(rgb [R, 3],
    weights_sum [R])``, differentiable to ``code`` (autograd through the composite loop)."""
    samples = []
    for r in range(rays_o.shape[0]):
        near, far = near_far_reference(rays_o[r].tolist(), rays_d[r].tolist(), bound, min_near)
        noise = 0.0 if noises is None else float(noises[r])
        samples.append(march_rays_train_reference(rays_o[r].tolist(), rays_d[r].tolist(), bitfield, grid_size, bound,
                                                  near, far, noise, dt_gamma, max_steps))
    counts = [len(s) for s in samples]
    flat = [p for s in samples for p in s]
    if flat:
        xyz = torch.tensor([p[0] for p in flat], dtype=torch.float32)
        dirs = torch.tensor([p[1] for p in flat], dtype=torch.float32)
        deltas = torch.tensor([p[2][0] for p in flat], dtype=torch.float32)
        sigmas, rgbs = point_decode_reference(params, xyz[None], dirs[None], code[None])
    images, weights = [], []
    offset = 0
    for n in counts:
        T = torch.ones((), dtype=torch.float32)
        rgb = torch.zeros(3)
        ws = torch.zeros(())
        for i in range(offset, offset + n):
            alpha = 1.0 - torch.exp(-sigmas[i] * deltas[i])
            weight = alpha * T
            rgb = rgb + weight * rgbs[i]
            ws = ws + weight
            T = T * (1.0 - alpha)
            if T_thresh > 0 and float(T) < T_thresh:
                break
        offset += n
        images.append(rgb + bg_color * (1 - ws))
        weights.append(ws)
    return torch.stack(images), torch.stack(weights)
