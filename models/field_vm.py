"""The VM radiance field that ZeroRF and the TensoRF baseline share: decoder, packed renderer,
per-scene fitting loop, rendering and checkpoints.

A field is three planes ``[R, H, W]`` and three lines ``[R, L]``; where they come from is
the one thing a model defines (:meth:`VMRadianceField.tensors`): ZeroRF decodes them from
frozen noise with an untrained convolutional generator (:mod:`fastfields.models.zerorf`), the
baseline stores them as parameters (:mod:`fastfields.models.tensorf`). Everything else is here:

- lookup: ``fastfields.tensorf_vm_sample(planes, lines, xyz / bound, reduce="concat")`` with
  ZeroRF's axes (planes xy, yz, zx; see ``fastfields.ZERORF_VM`` for the lines), border
  padding and align_corners=False: per point ``3R`` channels, the product of each plane with
  its line, concatenated (ZeroRF ``--rep=tensorf``, ``subreduce=2, reduce='cat'``);
- decoder (ZeroRF's ``CommonDecoder``): ``h = base_net(f)``; density ``density_net(silu(h))``
  with ``trunc_exp`` (applied inside the compositing op); colour
  ``sigmoid(color_net(silu(h + dir_net(SH3(d))))) * 1.002 - 0.001``; no positional encoding;
- rendering: rays marched through an occupancy grid (:class:`fastfields.rendering.OccupancyGrid`,
  empty-space skipping as torch-ngp's bitfield does for ZeroRF) into packed samples,
  composited by ``fastfields.composite_packed`` on a white background.

Scene box. World coordinates are the cameras' (Blender units); the field covers the cube
``[-bound, bound]^3`` (``config.bound``; NeRF-synthetic objects lie within 1.5 of the origin,
ZeroRF rescales mic so that 1.25 maps to its unit box). Rays are clipped to that cube.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

import fastfields as ff
from fastfields.data import to_float_images
from fastfields.reference.composite import activate
from fastfields.rendering import OccupancyGrid, rays_from_cameras
from fastfields.rendering.sh import sh_encode

Tensors = Tuple[List[torch.Tensor], List[torch.Tensor]]
#: ZeroRF's sigmoid saturation: colours span [-0.001, 1.001] so that 0 and 1 are reachable.
SIGMOID_SATURATION = 0.001
CHECKPOINT_FORMAT = "fastfields.vm_field/1"


@dataclass
class VMFieldConfig:
    """What ZeroRF and the TensoRF baseline share: field layout, renderer and training schedule.

    Attributes:
        channels: components ``R`` per plane and per line (the decoder sees ``3R`` features).
        hidden: decoder width.
        sh_degree: SH bands for the view direction (3 = 9 values, ZeroRF).
        mat_mode, vec_mode: plane and line axes for ``tensorf_vm_sample`` (``ff.ZERORF_VM``).
        bound: the field covers ``[-bound, bound]^3`` in world units.
        near: rays start no closer than this to the camera (torch-ngp's ``min_near`` 0.2, in
            ZeroRF's unit box).
        max_steps: marching steps across the box diagonal; the step is ``2 sqrt(3) bound / max_steps``
            (ZeroRF: 1024).
        grid_resolution, grid_every, grid_warmup, grid_decay, density_threshold: occupancy grid
            cells per axis, refresh period in iterations, iterations during which every cell is
            refreshed, the per-refresh decay of a cell's remembered density, and the occupancy
            threshold on density (ZeroRF / torch-ngp: 64, 16, 256, 0.95, 0.05). A cell empties
            ``log(threshold / density) / log(decay)`` refreshes after its density drops, so short
            schedules need a smaller decay.
        render_threshold: the threshold of the grid used after fitting (ZeroRF tests with 0.01).
        n_rays, n_rays_init: rays per iteration; the first 50 iterations use ``n_rays_init``,
            the next 50 their geometric mean (ZeroRF: 4096 -> 65536).
        iters: default number of iterations.
        lr, weight_decay, betas, grad_clip: optimiser (AdamW; ``grad_clip`` is a max grad norm,
            0 for none).
        lr_final_ratio: the learning rate decays (cosine) to ``lr * lr_final_ratio``.
        t_threshold: inference only: a ray stops once its transmittance falls below this.
        render_chunk: rays per batch when rendering images.
    """

    channels: int = 16
    hidden: int = 64
    sh_degree: int = 3
    mat_mode: Tuple[Tuple[int, int], ...] = ff.ZERORF_VM["mat_mode"]
    vec_mode: Tuple[int, ...] = ff.ZERORF_VM["vec_mode"]
    bound: float = 1.5
    near: float = 0.2
    max_steps: int = 1024
    grid_resolution: int = 64
    grid_every: int = 16
    grid_warmup: int = 256
    grid_decay: float = 0.95
    density_threshold: float = 0.05
    render_threshold: float = 0.01
    n_rays: int = 65536
    n_rays_init: int = 4096
    iters: int = 10000
    lr: float = 2e-3
    weight_decay: float = 0.2
    betas: Tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    lr_final_ratio: float = 1.0
    t_threshold: float = 1e-4
    render_chunk: int = 1 << 15

    #: int fields that may be 0 (all others must be positive).
    zero_allowed = ()

    @property
    def step_size(self) -> float:
        return 2 * math.sqrt(3) * self.bound / self.max_steps

    def validate(self) -> None:
        name = type(self).__name__
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name in self.zero_allowed else 1
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"{name}: {f.name} must be an int >= {low}, got {value!r}")
        for key in ("bound", "lr"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{name}: {key} must be > 0, got {getattr(self, key)!r}")
        if self.sh_degree not in (1, 2, 3, 4):
            raise ValueError(f"{name}: sh_degree must be 1..4, got {self.sh_degree!r}")

    @classmethod
    def from_dict(cls, values: Dict) -> "VMFieldConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}")
        tuples = {"mat_mode", "vec_mode", "betas"}
        return cls(**{k: _as_tuple(v) if k in tuples else v for k, v in values.items()})


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def resolve_config(config_cls, presets: Dict[str, Dict], config, **overrides):
    """``config`` as an instance of ``config_cls``: a preset name, a dict of fields, an
    instance, or None (the ``"paper"`` preset); ``overrides`` replace fields."""
    if config is None:
        config = "paper"
    if isinstance(config, str):
        if config not in presets:
            raise ValueError(f"{config_cls.__name__}: unknown preset {config!r}; presets are {sorted(presets)}")
        config = config_cls.from_dict(dict(presets[config]))
    elif isinstance(config, dict):
        config = config_cls.from_dict(config)
    elif not isinstance(config, config_cls):
        raise TypeError(f"config must be a preset name, a dict or a {config_cls.__name__}, got {type(config).__name__}")
    if overrides:
        config = config_cls.from_dict({**asdict(config), **overrides})
    config.validate()
    return config


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
        # The view direction starts with no effect: colour is first explained by position.
        nn.init.zeros_(self.dir_net.weight)

    def forward(self, features: torch.Tensor, directions: Optional[torch.Tensor] = None):
        base = self.base_net(features)
        sigma = self.density_net(F.silu(base)).squeeze(-1)
        if directions is None:
            return sigma, None
        encoded = sh_encode(directions, self.sh_degree).to(base.dtype)
        rgb = torch.sigmoid(self.color_net(F.silu(base + self.dir_net(encoded))))
        return sigma, rgb * (1 + 2 * SIGMOID_SATURATION) - SIGMOID_SATURATION


def _intrinsics(focal, n: int, height: int, width: int, device) -> torch.Tensor:
    if isinstance(focal, torch.Tensor):
        focal = focal.detach().float().reshape(-1).to(device)
        if focal.numel() not in (1, n):
            raise ValueError(f"focal must be a number or one per camera ({n}), got {focal.numel()} values")
        focal = focal.expand(n)
    else:
        if isinstance(focal, bool) or not isinstance(focal, (int, float)) or not focal > 0:
            raise ValueError(f"focal must be a positive number of pixels, got {focal!r}")
        focal = torch.full((n,), float(focal), device=device)
    centre = torch.tensor([width / 2, height / 2], device=device).expand(n, 2)
    return torch.cat([focal[:, None], focal[:, None], centre], dim=-1)


def _check_cameras(op: str, c2w) -> torch.Tensor:
    if not isinstance(c2w, torch.Tensor) or not c2w.is_floating_point():
        raise TypeError(f"{op}: c2w must be a float tensor [V, 4, 4] (Blender/OpenGL camera-to-world), got {type(c2w).__name__}")
    if c2w.dim() != 3 or tuple(c2w.shape[1:]) not in ((4, 4), (3, 4)):
        raise ValueError(f"{op}: c2w must have shape [V, 4, 4] or [V, 3, 4], got shape {tuple(c2w.shape)}")
    if not bool(torch.isfinite(c2w).all()):
        raise ValueError(f"{op}: c2w contains NaN or inf")
    return c2w.float()


class VMRadianceField(nn.Module):
    """Base of :class:`~fastfields.models.zerorf.ZeroRF` and :class:`~fastfields.models.tensorf.TensoRF`.

    Subclasses define ``config_class``, ``presets``, :meth:`tensors` and :meth:`param_groups`.
    Submodules: ``decoder`` (:class:`CommonDecoder`) and ``grid`` (the occupancy grid, whose
    buffers travel with the state dict).
    """

    config_class = VMFieldConfig
    presets: Dict[str, Dict] = {}

    def __init__(self, config=None, **overrides) -> None:
        super().__init__()
        self.config = resolve_config(self.config_class, self.presets, config, **overrides)
        b = self.config.bound
        self.decoder = CommonDecoder(3 * self.config.channels, self.config.hidden, self.config.sh_degree)
        self.grid = OccupancyGrid((-b, -b, -b, b, b, b), resolution=self.config.grid_resolution)
        self.history: Dict[str, object] = {}

    # -- what subclasses define ---------------------------------------------------------

    def tensors(self) -> Tensors:
        """The field: three planes ``[R, H, W]`` and three lines ``[R, L]`` (differentiable)."""
        raise NotImplementedError(f"{type(self).__name__} must define tensors()")

    def param_groups(self) -> List[Dict]:
        """Optimiser parameter groups (each may set its own ``lr``)."""
        raise NotImplementedError(f"{type(self).__name__} must define param_groups()")

    # -- the field ----------------------------------------------------------------------

    def features(self, tensors: Tensors, xyz: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """``[N, 3R]`` VM features of world points ``xyz [N, 3]``."""
        planes, lines = tensors
        c = self.config
        return ff.tensorf_vm_sample(
            planes, lines, xyz / c.bound, reduce="concat", mat_mode=c.mat_mode, vec_mode=c.vec_mode,
            padding="border", align_corners=False, backend=backend,
        )

    def query(self, tensors: Tensors, xyz: torch.Tensor, directions: Optional[torch.Tensor] = None,
              backend: str = "auto"):
        """Raw density ``[N]`` (before ``trunc_exp``) and colour ``[N, 3]`` (None without directions)."""
        return self.decoder(self.features(tensors, xyz, backend), directions)

    @torch.no_grad()
    def density(self, xyz: torch.Tensor, tensors: Optional[Tensors] = None, backend: str = "auto",
                chunk: int = 1 << 18) -> torch.Tensor:
        """Density ``[N]`` (after ``trunc_exp``) at world points ``xyz [N, 3]``; zero outside the box."""
        tensors = self.tensors() if tensors is None else tensors
        out = []
        for part in xyz.split(chunk):
            sigma, _ = self.query(tensors, part, None, backend)
            inside = (part.abs() <= self.config.bound).all(dim=-1)
            out.append(torch.where(inside, activate(sigma, "trunc_exp"), torch.zeros_like(sigma)))
        return torch.cat(out) if out else xyz.new_zeros(0)

    def render_rays(self, tensors: Tensors, rays_o: torch.Tensor, rays_d: torch.Tensor, *, stratified: bool = False,
                    generator: Optional[torch.Generator] = None, backend: str = "auto", t_threshold: float = 0.0):
        """Render rays ``[R, 3]`` (unit directions): ``rgb [R, 3]`` on white, ``depth [R]``,
        ``opacity [R]`` and the number of samples marched."""
        c = self.config
        ray_indices, t_starts, t_ends = self.grid.sample(
            rays_o, rays_d, near=c.near, far=math.inf, step_size=c.step_size, stratified=stratified, generator=generator,
        )
        t_mid = (t_starts + t_ends)[:, None] / 2
        xyz = rays_o[ray_indices] + rays_d[ray_indices] * t_mid
        sigma, rgb = self.query(tensors, xyz, rays_d[ray_indices], backend)
        color, depth, opacity, _ = ff.composite_packed(
            sigma, rgb, t_starts, t_ends, ray_indices, rays_o.shape[0], background=1.0,
            density_activation="trunc_exp", t_threshold=t_threshold, backend=backend,
        )
        return color, depth, opacity, ray_indices.numel()

    @torch.no_grad()
    def render(self, c2w: torch.Tensor, height: int, width: int, focal, *, backend: str = "auto") -> torch.Tensor:
        """Render views: ``c2w [K, 4, 4]`` (Blender/OpenGL camera-to-world), image size and focal
        length in pixels (principal point at the centre) -> ``[K, H, W, 3]`` float in ``[0, 1]``
        on a white background."""
        op = f"{type(self).__name__}.render"
        c2w = _check_cameras(op, c2w)
        for name, size in (("height", height), ("width", width)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{op}: {name} must be a positive int, got {size!r}")
        device = self.decoder.base_net.weight.device
        c2w = c2w.to(device)
        K = _intrinsics(focal, c2w.shape[0], height, width, device)
        tensors = self.tensors()
        images = []
        for k in range(c2w.shape[0]):
            rays_o, rays_d = rays_from_cameras(c2w[k : k + 1], K[k : k + 1], height, width, convention="opengl")
            rays_o, rays_d = rays_o[0], rays_d[0]
            pixels = [
                self.render_rays(tensors, o, d, backend=backend, t_threshold=self.config.t_threshold)[0]
                for o, d in zip(rays_o.split(self.config.render_chunk), rays_d.split(self.config.render_chunk))
            ]
            images.append(torch.cat(pixels).clamp(0, 1).reshape(height, width, 3))
        return torch.stack(images).cpu()

    # -- fitting --------------------------------------------------------------------------

    def _rays_at(self, iteration: int) -> int:
        c = self.config
        if iteration < 50:
            return c.n_rays_init
        if iteration < 100:
            return int(round(math.sqrt(c.n_rays_init * c.n_rays)))
        return c.n_rays

    def _update_grid(self, tensors: Tensors, step: int, backend: str, threshold: float, generator) -> None:
        detached = ([p.detach() for p in tensors[0]], [l.detach() for l in tensors[1]])
        self.grid.update(
            lambda p: self.density(p, detached, backend), step, decay=self.config.grid_decay, threshold=threshold,
            warmup_steps=self.config.grid_warmup, generator=generator,
        )

    @classmethod
    def fit(cls, images, c2w, focal, *, config=None, iters: Optional[int] = None, progress: bool = True,
            device=None, backend: str = "auto", seed: int = 0,
            callback: Optional[Callable[[int, "VMRadianceField", float], None]] = None) -> "VMRadianceField":
        """Fit the field to posed images of one scene and return the fitted model.

        Args:
            images: ``[V, H, W, 3 or 4]`` uint8 or float in ``[0, 1]`` (RGBA is composited on
                white, the renderer's background).
            c2w: ``[V, 4, 4]`` camera-to-world, Blender/OpenGL convention (x right, y up,
                looking along -z).
            focal: focal length in pixels (a number, or one per view); the principal point is
                the image centre.
            config: a preset name (``cls.presets``), a dict of fields or a config instance.
            iters: iterations (default ``config.iters``).
            progress: show a tqdm progress bar with the loss.
            device: where to fit (default: the images' device).
            backend: passed to every fastfields op (``"torch"`` gives the eager baseline).
            seed: seeds the model's initialisation (noise, weights) and the ray sampling.
            callback: called as ``callback(iteration, model, loss)`` after every iteration.

        ``model.history`` holds ``loss`` and ``samples`` (per ray, per iteration), ``time_s``
        (wall time of the iterations, synchronised on CUDA), ``cpu_time_s`` (this process's CPU
        time over the same span: on a shared machine, with one thread, the wall time it would
        take alone), ``iters`` and ``samples_per_ray`` (mean).
        """
        op = f"{cls.__name__}.fit"
        torch.manual_seed(seed)
        images = to_float_images(images, op=op)
        if images.dim() != 4 or images.shape[-1] not in (3, 4):
            raise ValueError(f"{op}: images must be [V, H, W, 3 or 4], got shape {tuple(images.shape)}")
        if images.shape[-1] == 4:
            images = images[..., :3] * images[..., 3:] + (1 - images[..., 3:])
        c2w = _check_cameras(op, c2w)
        if c2w.shape[0] != images.shape[0]:
            raise ValueError(f"{op}: {images.shape[0]} images but {c2w.shape[0]} cameras (c2w)")
        device = torch.device(device) if device is not None else images.device
        model = cls(config).to(device)
        iters = model.config.iters if iters is None else iters
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise ValueError(f"{op}: iters must be a non-negative int, got {iters!r}")
        model._fit(images.to(device), c2w.to(device), focal, iters, progress, backend, seed, callback)
        return model

    def _fit(self, images, c2w, focal, iters, progress, backend, seed, callback) -> None:
        c = self.config
        V, H, W, _ = images.shape
        device = images.device
        K = _intrinsics(focal, V, H, W, device)
        rays_o, rays_d = rays_from_cameras(c2w, K, H, W, convention="opengl")
        rays_o, rays_d, target = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), images.reshape(-1, 3)
        generator = torch.Generator(device=device).manual_seed(seed)

        optimizer = torch.optim.AdamW(self.param_groups(), lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, foreach=True)
        def cosine(i: int) -> float:  # lr * factor: cosine from 1 to lr_final_ratio over the iterations
            return c.lr_final_ratio + (1 - c.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * min(i, iters) / max(iters, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        bar = None
        if progress:
            from tqdm.auto import trange

            bar = trange(iters, desc=type(self).__name__, dynamic_ncols=True)
        losses, samples = [], []
        self.history = {"loss": losses, "samples": samples, "iters": 0}  # filled in as it goes (callbacks may read it)
        self.train()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        for it in range(iters):
            tensors = self.tensors()
            if it % c.grid_every == 0:
                self._update_grid(tensors, it, backend, c.density_threshold, generator)
            n = self._rays_at(it)
            pick = torch.randint(rays_o.shape[0], (n,), generator=generator, device=device)
            color, _, _, n_samples = self.render_rays(
                tensors, rays_o[pick], rays_d[pick], stratified=True, generator=generator, backend=backend
            )
            loss = F.mse_loss(color, target[pick])
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:  # False only when no ray met an occupied cell
                loss.backward()
                if c.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.parameters(), c.grad_clip)
                optimizer.step()
            schedule.step()
            value = float(loss.detach())
            losses.append(value)
            samples.append(n_samples / n)
            if bar is not None:
                bar.update(1)
                if it % 10 == 0 or it == iters - 1:
                    bar.set_postfix(loss=f"{value:.4g}", psnr=f"{-10 * math.log10(max(value, 1e-10)):.2f}",
                                    spr=f"{n_samples / n:.0f}")
            if callback is not None:
                callback(it, self, value)
        # The grid used for rendering: every cell refreshed, at the lower test threshold.
        with torch.no_grad():
            self.grid.densities.zero_()
            self._update_grid(self.tensors(), 0, backend, c.render_threshold, generator)
        sync()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if bar is not None:
            bar.close()
        self.eval()
        self.history.update(time_s=elapsed, cpu_time_s=cpu, iters=iters, samples_per_ray=sum(samples) / max(len(samples), 1))

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, path: Union[str, Path]) -> Path:
        """Write config, weights, the occupancy grid and the fit history (``torch.save``; loads
        with ``weights_only=True``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        history = {k: v for k, v in self.history.items() if k not in ("loss", "samples")}
        torch.save({"format": CHECKPOINT_FORMAT, "model": type(self).__name__, "config": asdict(self.config),
                    "state_dict": state, "history": history}, path)
        return path

    @classmethod
    def load(cls, path: Union[str, Path], device="cpu") -> "VMRadianceField":
        """Read a checkpoint written by :meth:`save` (of this model class) onto ``device``."""
        op = f"{cls.__name__}.load"
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{op}: no such file: {str(path)!r}")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{op}: {str(path)!r} is not a fastfields VM-field checkpoint")
        if blob["model"] != cls.__name__:
            raise ValueError(f"{op}: {str(path)!r} holds a {blob['model']}, not a {cls.__name__}")
        model = cls(blob["config"])
        model.load_state_dict(blob["state_dict"])
        model.history = dict(blob.get("history", {}))
        return model.to(device).eval()
