"""ZeroRF's VM radiance field and its renderer: decoder, occupancy-grid marching with occlusion
culling, per-scene fitting with alpha supervision, rendering and checkpoints.

A field is three planes ``[R, H, W]`` and three lines ``[R, L]``; where they come from is
the one thing a model defines (:meth:`VMRadianceField.tensors`): ZeroRF decodes them from
frozen noise with an untrained convolutional generator (:mod:`fastfields.models.zerorf`).
Everything else follows ZeroRF's ``--rep=tensorf`` code path (SSDNeRF's
``base_volume_renderer.py`` and torch-ngp's ``raymarching``):

- lookup: ``fastfields.tensorf_vm_sample(planes, lines, xyz, reduce="concat")`` with ZeroRF's
  axes (planes xy, yz, zx; ``fastfields.ZERORF_VM``), border padding, align_corners=False:
  per point ``3R`` channels, each plane times its line, concatenated (``subreduce=2, reduce='cat'``);
- decoder (``CommonDecoder``): ``h = base_net(f)``; density ``trunc_exp(density_net(silu(h)))``;
  colour ``sigmoid(color_net(silu(h + dir_net(SH3(d))))) * 1.002 - 0.001``;
- scene box: the object is scaled into the unit cube ``[-1, 1]^3`` (ZeroRF multiplies the
  camera positions by ``world_scale = 2 / model_scale``): ``config.bound`` is the half-size of
  the box in world units (mic: ``model_scale`` 2.5, bound 1.25). All marching quantities below
  are in the unit box, as in the official code;
- occupancy grid (:func:`update_occupancy`): every ``grid_every`` iterations (official: every
  one) all 64^3 cells get the density at a jittered point, ``grid = max(decay * grid, new)``
  (decay 0.9), and a cell is occupied when ``grid >= min(mean(grid), density_threshold)``
  (0.05), torch-ngp's ``update_extra_state`` with ``iter_density = 0`` as ZeroRF calls it;
- marching: steps ``dt = max(2 sqrt(3) / max_steps, dt_gamma * t)`` from ``near`` (0.2) with
  ``dt_gamma = dt_gamma_scale / focal`` (0.5 / focal in pixels), occupied cells only;
- training: occlusion culling (density-only decode without gradients, composite, keep the
  samples whose weight exceeds ``culling_threshold`` 1e-4, decode those with gradients,
  composite again), composited on the white background and supervised with the views'
  alpha: ``MSE([rgb, opacity], [rgb_target, alpha])``, weighted as the official loss;
- inference: a ray stops once its transmittance falls below ``t_threshold`` (torch-ngp's
  ``composite_rays`` default 1e-2).

Not transcribed: torch-ngp's step clamp ``dt <= 2 sqrt(3) / grid_resolution`` (for cameras
within 15 units of the box centre it never binds), its per-ray cap of ``max_steps`` samples
(``dt >= 2 sqrt(3) / max_steps`` already bounds it across the box) and its sample position
(interval start; here the midpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import fastfields as ff
from fastfields.data import MultiViewData, to_float_images
from fastfields.reference.composite import activate
from fastfields.rendering import OccupancyGrid, rays_from_cameras
from fastfields.rendering.sh import sh_encode

from ._pretrained import CheckpointError, ModelConfig, PretrainedModel
from .scene import DEFAULT_BOUND, _check_cameras, _intrinsics, bound_from_masks, load_views, nerf_synthetic_bound

Tensors = Tuple[List[torch.Tensor], List[torch.Tensor]]
#: ZeroRF's sigmoid saturation: colours span [-0.001, 1.001] so that 0 and 1 are reachable.
SIGMOID_SATURATION = 0.001
@dataclass
class VMFieldConfig(ModelConfig):
    """ZeroRF's field, renderer and schedule (defaults: the official ``--rep=tensorf`` run).

    Attributes:
        channels: components ``R`` per plane and per line (the decoder sees ``3R`` features).
        hidden: decoder width.
        sh_degree: SH bands for the view direction (3 = 9 values).
        mat_mode, vec_mode: plane and line axes for ``tensorf_vm_sample`` (``ff.ZERORF_VM``).
        bound: half-size of the scene box in world units; None: chosen per scene by ``fit``.
        near: rays start no closer than this to the camera (unit box; torch-ngp ``min_near``).
        max_steps: the smallest step is ``2 sqrt(3) / max_steps`` (unit box; ZeroRF 1024).
        dt_gamma_scale: steps grow as ``dt_gamma * t``, ``dt_gamma = dt_gamma_scale / focal``.
        grid_resolution, grid_every, grid_decay, density_threshold: occupancy grid cells per
            axis, update period in iterations, per-update decay and threshold (64, 1, 0.9, 0.05).
        culling_threshold: training decodes colour only where the density-only pass gives a
            weight above this (0 disables culling).
        t_threshold: inference: a ray stops once its transmittance falls below this.
        alpha_loss: supervise the opacity with the views' alpha when they have one.
        loss_weight: ZeroRF's ``pixel_loss`` weight (the loss is scaled as the official one).
        n_rays, n_rays_init: rays per iteration; the first 50 iterations use ``n_rays_init``,
            the next 50 their geometric mean (ZeroRF: 4096 -> 65536).
        iters: default number of iterations.
        lr, weight_decay, betas, grad_clip: AdamW and the max grad norm (0 for none).
        lr_final_ratio: cosine decay to ``lr * lr_final_ratio`` (ZeroRF: 1, constant).
        render_chunk: rays per batch when rendering images.
    """

    channels: int = 16
    hidden: int = 64
    sh_degree: int = 3
    mat_mode: Tuple[Tuple[int, int], ...] = ff.ZERORF_VM["mat_mode"]
    vec_mode: Tuple[int, ...] = ff.ZERORF_VM["vec_mode"]
    bound: Optional[float] = None
    near: float = 0.2
    max_steps: int = 1024
    dt_gamma_scale: float = 0.5
    grid_resolution: int = 64
    grid_every: int = 1
    grid_decay: float = 0.9
    density_threshold: float = 0.05
    culling_threshold: float = 1e-4
    t_threshold: float = 1e-2
    alpha_loss: bool = True
    loss_weight: float = 3.2
    n_rays: int = 65536
    n_rays_init: int = 4096
    iters: int = 10000
    lr: float = 2e-3
    weight_decay: float = 0.2
    betas: Tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    lr_final_ratio: float = 1.0
    render_chunk: int = 1 << 15

    #: int fields that may be 0 (all others must be positive).
    zero_allowed = ()

    @property
    def min_step(self) -> float:
        """The smallest marching step in the unit box."""
        return 2 * math.sqrt(3) / self.max_steps

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        for f in self.__dataclass_fields__.values():
            value = getattr(self, f.name)
            low = 0 if f.name in self.zero_allowed else 1
            if isinstance(f.default, int) and not isinstance(f.default, bool) and value < low:
                raise ValueError(f"{name}: {f.name} must be an int >= {low}, got {value!r}")
        if self.bound is not None and not (isinstance(self.bound, (int, float)) and not isinstance(self.bound, bool)
                                           and math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"{name}: bound must be None or a positive number (world units), got {self.bound!r}")
        for key in ("lr", "near", "dt_gamma_scale", "loss_weight"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or (value <= 0 if key == "lr" else value < 0):
                raise ValueError(f"{name}: {key} must be {'> 0' if key == 'lr' else '>= 0'}, got {value!r}")
        for key in ("grid_decay", "culling_threshold", "t_threshold", "density_threshold"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}: {key} must be in [0, 1], got {value!r}")
        if self.sh_degree not in (1, 2, 3, 4):
            raise ValueError(f"{name}: sh_degree must be 1..4, got {self.sh_degree!r}")


def resolve_config(cls, config, **overrides):
    """``config`` as an instance of ``cls.config_class``: a preset name, a dict of fields, an
    instance, or None (the ``"paper"`` preset); ``overrides`` replace fields."""
    config_cls = cls.config_class
    if config is None:
        config = "paper"
    if isinstance(config, str):
        return cls.preset_config(config, **overrides)
    if isinstance(config, dict):
        return config_cls.from_dict(config, **overrides)
    if not isinstance(config, config_cls):
        raise TypeError(f"config must be a preset name, a dict or a {config_cls.__name__}, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


class CommonDecoder(nn.Module):
    """ZeroRF's point decoder (``lib/models/zerorf/decoders.py``, parameter names kept).

    ``forward(features [N, C], directions [N, 3] or None) -> (raw density [N], rgb [N, 3] or None)``;
    the density is pre-activation (``trunc_exp`` makes it a density).
    """

    def __init__(self, in_channels: int, hidden: int = 64, sh_degree: int = 3) -> None:
        super().__init__()
        self.sh_degree = sh_degree
        self.base_net = nn.Linear(in_channels, hidden)
        self.density_net = nn.Sequential(nn.Linear(hidden, 1))
        self.dir_net = nn.Linear(sh_degree**2, hidden)
        self.color_net = nn.Sequential(nn.Linear(hidden, 3))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.dir_net.weight)  # the view direction starts with no effect

    def density(self, base: torch.Tensor) -> torch.Tensor:
        return self.density_net(F.silu(base)).squeeze(-1)

    def color(self, base: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        encoded = sh_encode(directions, self.sh_degree).to(base.dtype)
        rgb = torch.sigmoid(self.color_net(F.silu(base + self.dir_net(encoded))))
        return rgb * (1 + 2 * SIGMOID_SATURATION) - SIGMOID_SATURATION

    def forward(self, features: torch.Tensor, directions: Optional[torch.Tensor] = None):
        base = self.base_net(features)
        return self.density(base), (None if directions is None else self.color(base, directions))


@torch.no_grad()
def update_occupancy(grid: OccupancyGrid, density_fn: Callable[[torch.Tensor], torch.Tensor], *, decay: float,
                     threshold: float, generator: Optional[torch.Generator] = None) -> None:
    """torch-ngp's full occupancy update as ZeroRF runs it (``update_extra_state`` with
    ``iter_density = 0``): every cell's density at one uniform point inside it, ``grid =
    max(decay * grid, new)``, occupied where ``grid >= min(mean(grid), threshold)`` (the mean
    over every cell, empty ones included). ``density_fn`` maps points ``[N, 3]`` in the grid's
    box to post-activation densities ``[N]``."""
    rx, ry, rz = grid.resolution
    device, dtype = grid.densities.device, grid.densities.dtype
    axes = [torch.arange(n, device=device, dtype=dtype) for n in (rx, ry, rz)]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    jitter = torch.rand(ijk.shape, generator=generator, device=device, dtype=dtype)
    res = torch.tensor(grid.resolution, device=device, dtype=dtype)
    lo, hi = grid.aabbs[0, :3], grid.aabbs[0, 3:]
    sigma = density_fn(lo + (ijk + jitter) / res * (hi - lo)).detach().reshape(rx, ry, rz).to(dtype)
    sigma = torch.nan_to_num(sigma, nan=0.0, posinf=torch.finfo(dtype).max).clamp_min(0)
    grid.densities[0] = torch.maximum(grid.densities[0] * decay, sigma)
    cut = torch.clamp(grid.densities[0].clamp_min(0).mean(), max=threshold)
    grid.occupied[0] = grid.densities[0] >= cut


def _packed_transmittance(sigmas: torch.Tensor, dt: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Transmittance before each packed sample ``[M]`` (exclusive, per ray)."""
    depth = (sigmas.double() * dt.double())
    before = torch.cumsum(depth, 0) - depth
    counts = torch.bincount(ray_indices, minlength=n_rays)
    starts = torch.cumsum(counts, 0) - counts
    return torch.exp(-(before - before[starts[ray_indices]])).to(sigmas.dtype)


class VMRadianceField(PretrainedModel, nn.Module):
    """Base of :class:`~fastfields.models.zerorf.ZeroRF`: subclasses define ``config_class``,
    ``presets``, :meth:`tensors` and :meth:`param_groups`. Submodules: ``decoder``
    (:class:`CommonDecoder`) and ``grid`` (the occupancy grid over the unit box; its buffers
    travel with the state dict). ``config.bound`` maps world units to that box."""

    config_class = VMFieldConfig
    presets: Dict[str, VMFieldConfig] = {}

    def __init__(self, config=None, **overrides) -> None:
        super().__init__()
        self.config = resolve_config(type(self), config, **overrides)
        self.decoder = CommonDecoder(3 * self.config.channels, self.config.hidden, self.config.sh_degree)
        with torch.device("cpu"):  # (also under from_pretrained's meta device: its buffers are loaded as they are)
            self.grid = OccupancyGrid((-1.0, -1.0, -1.0, 1.0, 1.0, 1.0), resolution=self.config.grid_resolution)
        self.history: Dict[str, object] = {}

    @property
    def bound(self) -> float:
        return DEFAULT_BOUND if self.config.bound is None else float(self.config.bound)

    # -- what subclasses define ---------------------------------------------------------

    def tensors(self) -> Tensors:
        """The field: three planes ``[R, H, W]`` and three lines ``[R, L]`` (differentiable)."""
        raise NotImplementedError(f"{type(self).__name__} must define tensors()")

    def param_groups(self) -> List[Dict]:
        raise NotImplementedError(f"{type(self).__name__} must define param_groups()")

    # -- the field (world coordinates) --------------------------------------------------

    def _features(self, tensors: Tensors, unit_xyz: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        c = self.config
        return ff.tensorf_vm_sample(tensors[0], tensors[1], unit_xyz, reduce="concat", mat_mode=c.mat_mode,
                                    vec_mode=c.vec_mode, padding="border", align_corners=False, backend=backend)

    def features(self, tensors: Tensors, xyz: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """``[N, 3R]`` VM features of world points ``xyz [N, 3]``."""
        return self._features(tensors, xyz / self.bound, backend)

    def query(self, tensors: Tensors, xyz: torch.Tensor, directions: Optional[torch.Tensor] = None,
              backend: str = "auto"):
        """Raw density ``[N]`` (before ``trunc_exp``) and colour ``[N, 3]`` (None without
        directions) at world points ``xyz [N, 3]``."""
        return self.decoder(self.features(tensors, xyz, backend), directions)

    @torch.no_grad()
    def density(self, xyz: torch.Tensor, tensors: Optional[Tensors] = None, backend: str = "auto",
                chunk: int = 1 << 18) -> torch.Tensor:
        """Density ``[N]`` (after ``trunc_exp``) at world points ``xyz [N, 3]``; zero outside the box."""
        return self._density_unit(xyz / self.bound, tensors, backend, chunk)

    @torch.no_grad()
    def _density_unit(self, unit_xyz, tensors=None, backend="auto", chunk=1 << 18) -> torch.Tensor:
        tensors = self.tensors() if tensors is None else tensors
        out = []
        for part in unit_xyz.split(chunk):
            sigma = self.decoder.density(self.decoder.base_net(self._features(tensors, part, backend)))
            inside = (part.abs() <= 1).all(dim=-1)
            out.append(torch.where(inside, activate(sigma, "trunc_exp"), torch.zeros_like(sigma)))
        return torch.cat(out) if out else unit_xyz.new_zeros(0)

    # -- rendering ----------------------------------------------------------------------

    def render_rays(self, tensors: Tensors, rays_o: torch.Tensor, rays_d: torch.Tensor, *, dt_gamma: float = 0.0,
                    stratified: bool = False, generator: Optional[torch.Generator] = None, backend: str = "auto"):
        """Render world rays ``[R, 3]`` (unit directions) on a white background: ``rgb [R, 3]``,
        ``depth [R]`` (world units), ``opacity [R]`` and the number of samples decoded.

        With gradients enabled (training) the samples are occlusion-culled as ZeroRF does;
        without (inference) each ray stops when its transmittance drops below
        ``config.t_threshold``. ``dt_gamma``: step growth per unit of distance (ZeroRF:
        ``0.5 / focal``)."""
        c = self.config
        origins = rays_o / self.bound
        ray_indices, t_starts, t_ends = self.grid.sample(
            origins, rays_d, near=c.near, far=math.inf, step_size=c.min_step, cone_angle=float(dt_gamma),
            stratified=stratified, generator=generator,
        )
        n_rays = rays_o.shape[0]
        xyz = origins[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends)[:, None] / 2)
        dirs = rays_d[ray_indices]
        if torch.is_grad_enabled():
            if c.culling_threshold > 0 and ray_indices.numel():
                with torch.no_grad():
                    detached = ([p.detach() for p in tensors[0]], [l.detach() for l in tensors[1]])
                    sigma = self.decoder.density(self.decoder.base_net(self._features(detached, xyz, backend)))
                    weights = ff.composite_packed(
                        sigma, sigma.new_zeros(sigma.shape[0], 3), t_starts, t_ends, ray_indices, n_rays,
                        density_activation="trunc_exp", return_weights=True, backend=backend,
                    )[3]
                    keep = weights > c.culling_threshold
                ray_indices, t_starts, t_ends, xyz, dirs = (x[keep] for x in (ray_indices, t_starts, t_ends, xyz, dirs))
            sigma, rgb = self.decoder(self._features(tensors, xyz, backend), dirs)
        else:
            base = self.decoder.base_net(self._features(tensors, xyz, backend))
            sigma = self.decoder.density(base)
            if c.t_threshold > 0 and ray_indices.numel():
                T = _packed_transmittance(activate(sigma, "trunc_exp"), t_ends - t_starts, ray_indices, n_rays)
                keep = T >= c.t_threshold
                ray_indices, t_starts, t_ends, dirs, base, sigma = (
                    x[keep] for x in (ray_indices, t_starts, t_ends, dirs, base, sigma))
            rgb = self.decoder.color(base, dirs)
        color, depth, opacity, _ = ff.composite_packed(
            sigma, rgb, t_starts, t_ends, ray_indices, n_rays, background=1.0, density_activation="trunc_exp",
            backend=backend,
        )
        return color, depth * self.bound, opacity, ray_indices.numel()

    @torch.no_grad()
    def render(self, c2w, height: int, width: int, focal, *, backend: str = "auto", return_alpha: bool = False):
        """Render views: ``c2w [K, 4, 4]`` (Blender/OpenGL camera-to-world; tensor or numpy),
        image size, and a focal length in pixels (number, ``[K]``) or intrinsics ``[K, 4]``
        (fx, fy, cx, cy) -> ``[K, H, W, 3]`` float in ``[0, 1]`` on a white background (and the
        opacity ``[K, H, W]`` with ``return_alpha``)."""
        op = f"{type(self).__name__}.render"
        c2w = _check_cameras(op, c2w)
        for name, size in (("height", height), ("width", width)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{op}: {name} must be a positive int, got {size!r}")
        device = self.decoder.base_net.weight.device
        c2w = c2w.to(device)
        K = _intrinsics(op, focal, c2w.shape[0], height, width, device)
        dt_gamma = self.config.dt_gamma_scale / float(K[:, :2].mean())
        tensors = self.tensors()
        images, alphas = [], []
        for k in range(c2w.shape[0]):
            rays_o, rays_d = rays_from_cameras(c2w[k : k + 1], K[k : k + 1], height, width, convention="opengl")
            parts = [self.render_rays(tensors, o, d, dt_gamma=dt_gamma, backend=backend)
                     for o, d in zip(rays_o.reshape(-1, 3).split(self.config.render_chunk),
                                     rays_d.reshape(-1, 3).split(self.config.render_chunk))]
            images.append(torch.cat([p[0] for p in parts]).clamp(0, 1).reshape(height, width, 3))
            alphas.append(torch.cat([p[2] for p in parts]).clamp(0, 1).reshape(height, width))
        images = torch.stack(images).cpu()
        return (images, torch.stack(alphas).cpu()) if return_alpha else images

    # -- fitting --------------------------------------------------------------------------

    def _rays_at(self, iteration: int) -> int:
        c = self.config
        if iteration < 50:
            return c.n_rays_init
        if iteration < 100:
            return int(round(math.sqrt(c.n_rays_init * c.n_rays)))
        return c.n_rays

    @classmethod
    def fit(cls, images, c2w=None, focal=None, *, alpha=None, config=None, bound=None, iters: Optional[int] = None,
            progress: bool = True, device=None, backend: str = "auto", seed: int = 0,
            callback: Optional[Callable[[int, "VMRadianceField", float], None]] = None) -> "VMRadianceField":
        """Fit the field to posed images of one scene and return the fitted model.

        Args:
            images: ``[V, H, W, 3 or 4]`` uint8 or float in ``[0, 1]`` (tensor or numpy; RGBA
                is straight alpha, composited on white and its alpha supervises the opacity);
                or a Blender scene folder / ``transforms_*.json`` / shipped npz / MultiViewData
                (then ``c2w`` and ``focal`` come from it).
            c2w: ``[V, 4, 4]`` camera-to-world, Blender/OpenGL convention (tensor or numpy).
            focal: focal length in pixels (a number, ``[V]``) or intrinsics ``[V, 4]``
                (fx, fy, cx, cy); without intrinsics the principal point is the image centre.
            alpha: ``[V, H, W]`` masks in ``[0, 1]`` for RGB images (optional).
            config: a preset name (``cls.presets``), a dict of fields or a config instance.
            bound: the scene's half-size in world units; default ``config.bound``, else the
                NeRF-synthetic table for a named scene, else the visual hull of the masks
                (:func:`bound_from_masks`), else 1.5. Stored in the fitted model's config.
            iters: iterations (default ``config.iters``).
            progress: show a tqdm progress bar.
            device: where to fit (default: the images' device).
            backend: passed to every fastfields op (``"torch"`` gives the eager baseline).
            seed: seeds the initialisation (noise, weights), ray picks and jitter.
            callback: called as ``callback(iteration, model, loss)`` after every iteration.

        ``model.history``: ``loss`` (the RGB MSE per iteration), ``samples`` (decoded samples
        per ray), ``time_s`` (wall time of the iterations), ``cpu_time_s`` (process CPU time
        over the same span), ``iters``, ``samples_per_ray`` and ``bound_source``.
        """
        op = f"{cls.__name__}.fit"
        bound_source = "argument" if bound is not None else None
        if isinstance(images, (str, Path, MultiViewData)):
            scene = load_views(images)
            if bound is None and not isinstance(images, MultiViewData):
                bound = nerf_synthetic_bound(Path(images).resolve().name if Path(images).is_dir() else Path(images).stem)
                bound_source = "nerf_synthetic" if bound is not None else None
            images, alpha = scene.images, scene.alpha
            c2w = scene.c2w if c2w is None else c2w
            focal = scene.intrinsics() if focal is None else focal
        elif c2w is None or focal is None:
            raise ValueError(f"{op}: c2w and focal are required with image arrays")
        torch.manual_seed(seed)
        images = to_float_images(images, op=op)
        if images.dim() != 4 or images.shape[-1] not in (3, 4):
            raise ValueError(f"{op}: images must be [V, H, W, 3 or 4], got shape {tuple(images.shape)}")
        if images.shape[-1] == 4:
            if alpha is not None:
                raise ValueError(f"{op}: pass alpha either as the images' 4th channel or as alpha=, not both")
            images, alpha = images[..., :3] * images[..., 3:] + (1 - images[..., 3:]), images[..., 3]
        if alpha is not None:
            alpha = to_float_images(alpha, name="alpha", op=op)
            if tuple(alpha.shape) != tuple(images.shape[:3]):
                raise ValueError(f"{op}: alpha must be [V, H, W] = {list(images.shape[:3])}, got {list(alpha.shape)}")
        c2w = _check_cameras(op, c2w)
        if c2w.shape[0] != images.shape[0]:
            raise ValueError(f"{op}: {images.shape[0]} images but {c2w.shape[0]} cameras (c2w)")
        device = torch.device(device) if device is not None else images.device
        V, H, W, _ = images.shape
        K = _intrinsics(op, focal, V, H, W, device)
        config = resolve_config(cls, config)
        if bound is None and config.bound is not None:
            bound, bound_source = config.bound, "config"
        if bound is None and alpha is not None and float(alpha.min()) < 0.5:
            bound, bound_source = bound_from_masks(c2w.to(device), K, alpha.to(device)), "masks"
        if bound is None:
            bound, bound_source = DEFAULT_BOUND, "default"
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound <= 0:
            raise ValueError(f"{op}: bound must be a positive number of world units, got {bound!r}")
        model = cls(config.replace(bound=float(bound))).to(device)
        iters = model.config.iters if iters is None else iters
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise ValueError(f"{op}: iters must be a non-negative int, got {iters!r}")
        alpha = alpha.to(device) if (alpha is not None and model.config.alpha_loss) else None
        model._fit(images.to(device), alpha, c2w.to(device), K, iters, progress, backend, seed, callback)
        model.history["bound_source"] = bound_source
        return model

    def _fit(self, images, alpha, c2w, K, iters, progress, backend, seed, callback) -> None:
        c = self.config
        V, H, W, _ = images.shape
        device = images.device
        rays_o, rays_d = rays_from_cameras(c2w, K, H, W, convention="opengl")
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        target = images.reshape(-1, 3) if alpha is None else torch.cat([images, alpha[..., None]], dim=-1).reshape(-1, 4)
        dt_gamma = c.dt_gamma_scale / float(K[:, :2].mean())
        # ZeroRF: MSELoss(weight 3.2) * 3 * (1 - exp(-loss_coef * V H W)), loss_coef = 0.1 / (H W).
        scale = c.loss_weight * 3 * (1 - math.exp(-0.1 * V))
        generator = torch.Generator(device=device).manual_seed(seed)

        optimizer = torch.optim.AdamW(self.param_groups(), lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, foreach=True)

        def cosine(i: int) -> float:
            return c.lr_final_ratio + (1 - c.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * min(i, iters) / max(iters, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        bar = None
        if progress:
            from tqdm.auto import trange

            bar = trange(iters, desc=type(self).__name__, dynamic_ncols=True)
        losses, samples = [], []
        self.history = {"loss": losses, "samples": samples, "iters": 0}
        self.train()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        for it in range(iters):
            tensors = self.tensors()
            if it % c.grid_every == 0:
                detached = ([p.detach() for p in tensors[0]], [l.detach() for l in tensors[1]])
                update_occupancy(self.grid, lambda p: self._density_unit(p, detached, backend),
                                 decay=c.grid_decay, threshold=c.density_threshold, generator=generator)
            n = self._rays_at(it)
            pick = torch.randint(rays_o.shape[0], (n,), generator=generator, device=device)
            color, _, opacity, n_samples = self.render_rays(
                tensors, rays_o[pick], rays_d[pick], dt_gamma=dt_gamma, stratified=True, generator=generator,
                backend=backend,
            )
            truth = target[pick]
            rgb_mse = F.mse_loss(color, truth[:, :3])
            mse = rgb_mse if alpha is None else F.mse_loss(torch.cat([color, opacity[:, None]], dim=-1), truth)
            optimizer.zero_grad(set_to_none=True)
            if mse.requires_grad:  # False only when no ray met an occupied cell
                (scale * mse).backward()
                if c.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.parameters(), c.grad_clip)
                optimizer.step()
            schedule.step()
            value = float(rgb_mse.detach())
            losses.append(value)
            samples.append(n_samples / n)
            if bar is not None:
                bar.update(1)
                if it % 10 == 0 or it == iters - 1:
                    bar.set_postfix(loss=f"{value:.4g}", psnr=f"{-10 * math.log10(max(value, 1e-10)):.2f}",
                                    spr=f"{n_samples / n:.0f}")
            if callback is not None:
                callback(it, self, value)
        sync()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if bar is not None:
            bar.close()
        self.eval()
        self.history.update(time_s=elapsed, cpu_time_s=cpu, iters=iters, samples_per_ray=sum(samples) / max(len(samples), 1))

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, path: Union[str, Path]) -> Path:
        """``save_pretrained``: our safetensors format (config, weights, occupancy grid)."""
        return self.save_pretrained(path)

    @classmethod
    def load(cls, path: Union[str, Path], device="cpu") -> "VMRadianceField":
        """``from_pretrained`` onto ``device``, in eval mode. (The ``torch.save`` files of
        earlier versions, ``fastfields.vm_field/1``, are not read: their field lived in a
        different box; refit.)"""
        path = Path(path)
        if path.is_file() and path.suffix in (".pt", ".pth"):
            raise CheckpointError(f"{cls.__name__}.load: {str(path)!r} is a torch.save checkpoint of an earlier "
                                  f"version (fastfields.vm_field/1), which is no longer read; refit the scene")
        return cls.from_pretrained(path, device=device).eval()
