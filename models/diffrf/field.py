"""DiffRF's radiance field: an explicit ``[4, R, R, R]`` voxel grid (pre-activation density and
RGB) in the box ``[-bound, bound]^3``, read by trilinear interpolation (``ff.voxel_sample``)
and volume rendered (``ff.composite``), plus the pipeline that makes the training data:
fitting a field to posed views (initialised from a mesh where there is one) and a disk cache.

Layout: ``field[c, k, j, i]`` is voxel ``(x_i, y_j, z_k)`` with ``x_i = -bound + 2 bound i /
(R - 1)`` (``voxel_sample``'s ``[B, C, D, H, W]``: x along W, y along H, z along D, with
``align_corners=True``), channel 0 the density, 1..3 the colour. Values live in ``[-1, 1]``:
``sigma = sigma_max * relu((f_0 + 1) / 2)`` and ``rgb = clamp((f_rgb + 1) / 2, 0, 1)`` (see
:class:`~fastfields.models.diffrf.config.DiffRFConfig` for why).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from ... import composite, voxel_sample, volume_channels_last
from ...rendering import ray_aabb_intersect, rays_from_cameras, stratified_samples
from .._pretrained import as_tensor, read_safetensors, write_safetensors

PathLike = Union[str, Path]


def check_fields(fields, name: str = "fields", resolution: Optional[int] = None) -> torch.Tensor:
    """``fields`` as a float tensor ``[B, 4, R, R, R]`` (a single ``[4, R, R, R]`` gets B = 1)."""
    fields = as_tensor(fields, name, dtype=None, ndim=(4, 5))
    if not fields.is_floating_point():
        fields = fields.float()
    if fields.dim() == 4:
        fields = fields[None]
    r = fields.shape[-1]
    if fields.shape[1] != 4 or fields.shape[2:] != (r, r, r) or (resolution is not None and r != resolution):
        want = f"[B, 4, {resolution or 'R'}, {resolution or 'R'}, {resolution or 'R'}]"
        raise ValueError(f"{name}: expected shape {want} (or without B), got {list(fields.shape)}")
    return fields


def activate(values: torch.Tensor, sigma_max: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Field values ``[..., 4]`` -> ``(sigma [...] before the relu, rgb [..., 3])``."""
    return (values[..., 0] + 1.0) * (0.5 * sigma_max), ((values[..., 1:] + 1.0) * 0.5).clamp(0.0, 1.0)


def render_rays(fields: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, *, bound: float = 1.0,
                sigma_max: float = 120.0, n_samples: int = 96, background: float = 1.0, perturb: bool = False,
                generator: Optional[torch.Generator] = None, backend: str = "auto"):
    """Volume-render ``fields [B, 4, R, R, R]`` along rays ``[B, N, 3]`` (one ray set per field).

    ``n_samples`` stratified depths between the ray's entry into and exit from the box
    (``perturb``: jittered by up to one spacing, samples past the exit are empty), each
    sample's interval is the spacing. Trilinear lookup by ``ff.voxel_sample`` (border
    padding, ``align_corners=True``), compositing by ``ff.composite`` with its fused ``relu``
    density activation; ``backend="torch"`` is the eager PyTorch path of both.

    Returns ``rgb [B, N, 3]``, ``depth [B, N]``, ``opacity [B, N]``; rays that miss the box
    see ``background``. Differentiable to ``fields``.
    """
    fields = check_fields(fields)
    b, n = rays_o.shape[:2]
    if rays_o.shape != (b, n, 3) or rays_d.shape != (b, n, 3) or b != fields.shape[0]:
        raise ValueError(f"render_rays: rays_o and rays_d must be [B, N, 3] with B = {fields.shape[0]}, got "
                         f"{list(rays_o.shape)} and {list(rays_d.shape)}")
    t_near, t_far, _ = ray_aabb_intersect(rays_o, rays_d, (-bound,) * 3 + (bound,) * 3)
    t = stratified_samples(t_near, t_far, n_samples, perturb=perturb, generator=generator)  # [B, N, S]
    spacing = (t_far - t_near) / (n_samples - 1)
    xyz = (rays_o[..., None, :] + t[..., None] * rays_d[..., None, :]) / bound  # [B, N, S, 3]
    values = voxel_sample(volume_channels_last(fields), xyz.reshape(b, n * n_samples, 3).to(fields.dtype),
                          align_corners=True, padding="border", backend=backend)
    sigma, rgb = activate(values.reshape(b * n, n_samples, 4), sigma_max)
    sigma = sigma.masked_fill((t > t_far[..., None]).reshape(b * n, n_samples), float("-inf"))
    deltas = spacing[..., None].expand(b, n, n_samples).reshape(b * n, n_samples).to(sigma.dtype)
    color, depth, opacity, _ = composite(sigma, rgb, deltas, t=t.reshape(b * n, n_samples).to(sigma.dtype),
                                         background=background, density_activation="relu", backend=backend)
    return color.view(b, n, 3), depth.view(b, n), opacity.view(b, n)


def camera_rays(c2w, intrinsics, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rays ``[V, H*W, 3]`` of OpenCV cameras ``c2w [V, 4, 4]`` with ``intrinsics [V, 4]`` (fx, fy,
    cx, cy in pixels): the dataset convention."""
    c2w = as_tensor(c2w, "c2w", ndim=3)
    intrinsics = as_tensor(intrinsics, "intrinsics", ndim=2, device=c2w.device)
    return rays_from_cameras(c2w, intrinsics, height, width, convention="opencv")


def render_views(field, c2w, intrinsics, height: int, width: int, *, chunk: int = 1 << 14, **options) -> torch.Tensor:
    """Images ``[V, H, W, 3]`` of one field ``[4, R, R, R]`` (or ``[1, ...]``) at V cameras
    (``options`` go to :func:`render_rays`)."""
    field = check_fields(field)
    if field.shape[0] != 1:
        raise ValueError(f"render_views: one field at a time, got a batch of {field.shape[0]}")
    rays_o, rays_d = camera_rays(c2w, intrinsics, height, width)
    rays_o, rays_d = rays_o.to(field.device).reshape(1, -1, 3), rays_d.to(field.device).reshape(1, -1, 3)
    out = [render_rays(field, o, d, **options)[0] for o, d in zip(rays_o.split(chunk, 1), rays_d.split(chunk, 1))]
    return torch.cat(out, dim=1).view(-1, height, width, 3)


def total_variation(fields: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring voxels along x, y and z, ``fields [B, C, R, R, R]``."""
    return sum((fields.diff(dim=d) ** 2).mean() for d in (2, 3, 4)) / 3


# ---------------------------------------------------------------------------------------
# Fitting


def voxelize_mesh(mesh, resolution: int = 32, bound: float = 1.0) -> torch.Tensor:
    """A ``[4, R, R, R]`` field from a ``trimesh.Trimesh`` in ``[-bound, bound]^3``: density 1
    inside or on the surface (surface voxelisation at the lattice pitch, interiors filled),
    -1 elsewhere; colour everywhere from the nearest vertex's colour (texture or face colours
    are turned into vertex colours first), so empty space carries smooth colours too."""
    import trimesh
    from scipy import ndimage
    from scipy.spatial import cKDTree

    if not isinstance(mesh, trimesh.Trimesh):
        raise TypeError(f"voxelize_mesh: mesh must be a trimesh.Trimesh, got {type(mesh).__name__}")
    pitch = 2.0 * bound / (resolution - 1)
    axis = np.linspace(-bound, bound, resolution)
    # Points on the surface, dense enough that every surface voxel gets one.
    n_points = int(max(20000, 6 * mesh.area / (pitch * pitch * 0.25)))
    points, _ = trimesh.sample.sample_surface(mesh, min(n_points, 400000), seed=0)
    index = np.clip(np.round((points + bound) / pitch).astype(np.int64), 0, resolution - 1)
    occupied = np.zeros((resolution,) * 3, dtype=bool)  # [ix, iy, iz]
    occupied[index[:, 0], index[:, 1], index[:, 2]] = True
    occupied = ndimage.binary_fill_holes(occupied)
    try:
        visual = mesh.visual.to_color() if mesh.visual.kind == "texture" else mesh.visual
        colors = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
    except Exception:  # visuals trimesh cannot convert: a neutral grey
        colors = np.full((len(mesh.vertices), 3), 0.7)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    _, nearest = cKDTree(np.asarray(mesh.vertices)).query(grid)
    rgb = colors[nearest].reshape(resolution, resolution, resolution, 3)
    field = np.concatenate([np.where(occupied, 1.0, -1.0)[..., None], rgb * 2.0 - 1.0], axis=-1)  # [ix, iy, iz, 4]
    return torch.from_numpy(field.transpose(3, 2, 1, 0).astype(np.float32)).contiguous()  # [4, z, y, x]


def fit_field(images, c2w, intrinsics, *, resolution: int = 32, init=None, iters: int = 300, lr: float = 0.05,
              rays_per_step: int = 4096, tv_weight: float = 0.01, sparsity_weight: float = 1e-2, bound: float = 1.0,
              sigma_max: float = 120.0, n_samples: int = 96, background: float = 1.0, seed: int = 0,
              backend: str = "auto", progress: bool = False, history: Optional[dict] = None) -> torch.Tensor:
    """Fit a ``[4, R, R, R]`` field to posed views by gradient descent on the rendering MSE.

    Args:
        images: ``[V, H, W, 3]`` in ``[0, 1]`` composited on ``background``.
        c2w, intrinsics: ``[V, 4, 4]`` OpenCV camera-to-world and ``[V, 4]`` (fx, fy, cx, cy) pixels.
        init: a starting field (e.g. :func:`voxelize_mesh`); default: empty space, grey.
        iters, lr, rays_per_step: Adam steps, learning rate, random rays (over all views) per step.
        tv_weight: weight of :func:`total_variation` (smooth fields are what a 32^3 diffusion
            model can learn); sparsity_weight: weight of the mean activated density over the
            sampled points' voxels (empty space stays empty).
        The field is projected back to ``[-1, 1]`` after every step.

    Returns the field on the images' device; ``history`` (a dict) receives ``loss`` per step.
    """
    images = as_tensor(images, "images", ndim=4)
    if images.shape[-1] != 3:
        raise ValueError(f"fit_field: images must be [V, H, W, 3], got {list(images.shape)}")
    device = images.device
    v, h, w, _ = images.shape
    rays_o, rays_d = camera_rays(as_tensor(c2w, "c2w", device=device), as_tensor(intrinsics, "intrinsics", device=device), h, w)
    rays_o, rays_d, targets = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), images.reshape(-1, 3)
    if init is None:
        field = torch.full((4, resolution, resolution, resolution), -1.0, device=device)
        field[1:] = 0.0
        field[0] = -0.99  # a faint density (sigma_max / 200) everywhere, so every voxel gets a gradient
    else:
        field = check_fields(init, "init", resolution)[0].to(device).clone()
    field = torch.nn.Parameter(field)
    optimizer = torch.optim.Adam([field], lr=lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    steps = range(iters)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="fit field", leave=False)
    for _ in steps:
        pick = torch.randint(0, rays_o.shape[0], (rays_per_step,), generator=generator, device=device)
        rgb, _, _ = render_rays(field[None], rays_o[pick][None], rays_d[pick][None], bound=bound, sigma_max=sigma_max,
                                n_samples=n_samples, background=background, perturb=True, generator=generator, backend=backend)
        loss = ((rgb[0] - targets[pick]) ** 2).mean()
        total = loss + tv_weight * total_variation(field[None]) + sparsity_weight * ((field[0] + 1) * 0.5).mean()
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        with torch.no_grad():
            field.clamp_(-1.0, 1.0)
        if history is not None:
            history.setdefault("loss", []).append(loss.item())
    return field.detach()


# ---------------------------------------------------------------------------------------
# The ground-truth field cache


class FieldCache:
    """Fitted fields on disk: ``root/<object id>.safetensors`` holding ``field [4, R, R, R]`` and
    the object's views (``images`` uint8 ``[V, H, W, 3]``, ``c2w``, ``intrinsics``) that the
    rendering loss needs; the fitting options are in the metadata and a file fitted with other
    options is refitted."""

    def __init__(self, root: PathLike):
        self.root = Path(root)

    def path(self, object_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(object_id))
        return self.root / f"{safe}.safetensors"

    @staticmethod
    def _key(options: Dict) -> str:
        return hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def load(self, object_id: str) -> Dict[str, torch.Tensor]:
        tensors, _ = read_safetensors(self.path(object_id))
        tensors["images"] = tensors["images"].float() / 255.0
        return tensors

    def ids(self):
        return sorted(p.stem for p in self.root.glob("*.safetensors"))

    def get(self, item: Dict, *, mesh=None, progress: bool = False, **fit_options) -> Dict[str, torch.Tensor]:
        """The cached entry of dataset ``item`` (``id``, ``images``, ``c2w``, ``intrinsics``),
        fitting it first (from :func:`voxelize_mesh` of ``mesh`` when given) if absent or stale."""
        key = self._key({**fit_options, "mesh_init": mesh is not None})
        path = self.path(item["id"])
        if path.is_file():
            _, metadata = read_safetensors(path)
            if metadata.get("fit_key") == key:
                return self.load(item["id"])
        images = as_tensor(item["images"], "images")
        images = images.float() / 255.0 if images.max() > 1.5 else images
        resolution = fit_options.get("resolution", 32)
        init = voxelize_mesh(mesh, resolution, fit_options.get("bound", 1.0)) if mesh is not None else None
        field = fit_field(images, item["c2w"], item["intrinsics"], init=init, progress=progress, **fit_options)
        write_safetensors(path, {
            "field": field.cpu(), "images": (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8),
            "c2w": as_tensor(item["c2w"], "c2w"), "intrinsics": as_tensor(item["intrinsics"], "intrinsics"),
        }, {"fit_key": key, "fit_options": json.dumps(fit_options, default=str)})
        return self.load(item["id"])
