"""The TensorVMSplit field, its shader, training schedule, rendering and checkpoints."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fastfields as ff
from fastfields.data import MultiViewData, to_float_images
from fastfields.rendering import rays_from_cameras

from .._pretrained import CheckpointError, PretrainedModel, load_pickle_restricted, load_state_dict_strict
from ..scene import _check_cameras, _intrinsics, load_views, nerf_synthetic_bound

from .config import MAT_MODE, PRESETS, VEC_MODE, TensoRFConfig, config_from_official_kwargs, n_to_reso, positional_encoding
class MLPRenderFea(nn.Module):
    """TensoRF's ``MLPRender_Fea`` (``mode="MLP_Fea"``) or ``MLPRender`` (``"MLP"``: no feature
    PE); the layers are ``mlp.{0,2,4}`` as official."""

    def __init__(self, in_channels: int, view_pe: int, fea_pe: int, pos_pe: int, hidden: int, mode: str) -> None:
        super().__init__()
        self.mode, self.view_pe, self.fea_pe, self.pos_pe = mode, view_pe, fea_pe, pos_pe
        width = 3 + 2 * view_pe * 3 + in_channels + (2 * fea_pe * in_channels if mode == "MLP_Fea" else 0)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, 3))
        nn.init.constant_(self.mlp[-1].bias, 0)

    def forward(self, pts: torch.Tensor, viewdirs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        parts = [features, viewdirs]
        if self.mode == "MLP_Fea" and self.fea_pe > 0:
            parts.append(positional_encoding(features, self.fea_pe))
        if self.view_pe > 0:
            parts.append(positional_encoding(viewdirs, self.view_pe))
        return torch.sigmoid(self.mlp(torch.cat(parts, dim=-1)))


class TensoRF(PretrainedModel, nn.Module):
    """``TensorVMSplit``: ``density_plane``, ``density_line``, ``app_plane``, ``app_line``
    (ParameterLists of three), ``basis_mat`` and ``renderModule.mlp``, the official names;
    ``alpha_volume`` (buffer ``[Z, Y, X]``) once an alpha mask exists."""

    config_class = TensoRFConfig
    presets = PRESETS

    def __init__(self, config=None, **overrides) -> None:
        super().__init__()
        from ..field_vm import resolve_config

        self.config = resolve_config(type(self), config, **overrides)
        c = self.config
        box = c.box()
        if c.grid_size is None:
            self.config = c = c.replace(grid_size=tuple(n_to_reso(c.n_voxel_init, box)))
        self.density_plane, self.density_line = self._init_vm(c.density_n_comp, c.grid_size)
        self.app_plane, self.app_line = self._init_vm(c.appearance_n_comp, c.grid_size)
        self.basis_mat = nn.Linear(sum(c.appearance_n_comp), c.app_dim, bias=False)
        self.renderModule = MLPRenderFea(c.app_dim, c.view_pe, c.fea_pe, c.pos_pe, c.feature_c, c.shading_mode)
        if c.alpha_mask_shape is not None:
            self.register_buffer("alpha_volume", torch.zeros(tuple(c.alpha_mask_shape)))
        else:
            self.alpha_volume = None
        self.history: Dict[str, object] = {}

    @staticmethod
    def _init_vm(n_comp, grid_size):
        planes, lines = [], []
        for k, (vec, (m0, m1)) in enumerate(zip(VEC_MODE, MAT_MODE)):
            planes.append(nn.Parameter(0.1 * torch.randn(1, n_comp[k], grid_size[m1], grid_size[m0])))
            lines.append(nn.Parameter(0.1 * torch.randn(1, n_comp[k], grid_size[vec], 1)))
        return nn.ParameterList(planes), nn.ParameterList(lines)

    # -- geometry -----------------------------------------------------------------------

    @property
    def aabb(self) -> torch.Tensor:
        return self.config.box().to(self.basis_mat.weight.device)

    @property
    def step_size(self) -> float:
        box = self.config.box()
        units = (box[1] - box[0]) / (torch.tensor(self.config.grid_size, dtype=torch.float32) - 1)
        return float(units.mean()) * self.config.step_ratio

    @property
    def n_samples(self) -> int:
        box = self.config.box()
        diag = float((box[1] - box[0]).norm())
        return min(self.config.n_samples_max, int(diag / self.step_size) + 1)

    def normalize_coord(self, xyz: torch.Tensor) -> torch.Tensor:
        aabb = self.aabb
        return (xyz - aabb[0]) * (2.0 / (aabb[1] - aabb[0])) - 1

    # -- features -----------------------------------------------------------------------

    def density_feature(self, xyz_normed: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """``compute_densityfeature``: ``[N]`` sum over pairs and components of plane x line."""
        return ff.tensorf_vm_sample(list(self.density_plane), list(self.density_line), xyz_normed, reduce="sum",
                                    align_corners=True, padding="zeros", mat_mode=MAT_MODE, vec_mode=VEC_MODE,
                                    backend=backend)

    def app_feature(self, xyz_normed: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """``compute_appfeature``: ``basis_mat`` of the 144 concatenated products -> ``[N, app_dim]``."""
        products = ff.tensorf_vm_sample(list(self.app_plane), list(self.app_line), xyz_normed, reduce="concat",
                                        align_corners=True, padding="zeros", mat_mode=MAT_MODE, vec_mode=VEC_MODE,
                                        backend=backend)
        return self.basis_mat(products)

    def feature2density(self, feature: torch.Tensor) -> torch.Tensor:
        if self.config.fea2dense_act == "softplus":
            return F.softplus(feature + self.config.density_shift)
        return F.relu(feature)

    def sample_alpha_mask(self, xyz: torch.Tensor) -> torch.Tensor:
        """``AlphaGridMask.sample_alpha``: trilinear lookup of the binary volume (world points)."""
        box = torch.tensor(self.config.alpha_mask_aabb, device=xyz.device).reshape(2, 3)
        normed = (xyz - box[0]) * (2.0 / (box[1] - box[0])) - 1
        return F.grid_sample(self.alpha_volume[None, None], normed.view(1, -1, 1, 1, 3), align_corners=True).view(-1)

    @torch.no_grad()
    def density(self, xyz: torch.Tensor, backend: str = "auto", chunk: int = 1 << 18) -> torch.Tensor:
        """Density ``[N]`` at world points ``[N, 3]`` (zero outside the box and the alpha mask)."""
        out = []
        aabb = self.aabb
        for part in xyz.split(chunk):
            inside = ((part >= aabb[0]) & (part <= aabb[1])).all(-1)
            if self.alpha_volume is not None:
                inside &= self.sample_alpha_mask(part) > 0
            sigma = self.feature2density(self.density_feature(self.normalize_coord(part), backend))
            out.append(torch.where(inside, sigma, torch.zeros_like(sigma)))
        return torch.cat(out) if out else xyz.new_zeros(0)

    @torch.no_grad()
    def color(self, xyz: torch.Tensor, directions: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Colour ``[N, 3]`` at world points seen along unit ``directions``."""
        normed = self.normalize_coord(xyz)
        return self.renderModule(normed, directions, self.app_feature(normed, backend))

    # -- rendering ----------------------------------------------------------------------

    def sample_ray(self, rays_o, rays_d, is_train: bool, generator=None):
        """``sample_ray``: ``[R, S, 3]`` points, ``[R, S]`` depths, ``[R, S]`` inside-the-box mask."""
        near, far = self.config.near_far
        aabb = self.aabb
        vec = torch.where(rays_d == 0, torch.full_like(rays_d, 1e-6), rays_d)
        rate_a, rate_b = (aabb[1] - rays_o) / vec, (aabb[0] - rays_o) / vec
        t_min = torch.minimum(rate_a, rate_b).amax(-1).clamp(min=near, max=far)
        rng = torch.arange(self.n_samples, device=rays_o.device, dtype=rays_o.dtype)[None].repeat(rays_o.shape[0], 1)
        if is_train:
            rng = rng + torch.rand(rays_o.shape[0], 1, generator=generator, device=rays_o.device, dtype=rays_o.dtype)
        z = t_min[:, None] + self.step_size * rng
        pts = rays_o[:, None] + rays_d[:, None] * z[..., None]
        inside = ~((aabb[0] > pts) | (pts > aabb[1])).any(dim=-1)
        return pts, z, inside

    def forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, *, is_train: bool = False, generator=None,
                backend: str = "auto"):
        """TensoRF's ``forward`` on ``[R, 3]`` rays (unit directions), white background:
        ``rgb [R, 3]`` (clamped to [0, 1]), ``depth [R]``, ``opacity [R]``."""
        pts, z, valid = self.sample_ray(rays_o, rays_d, is_train, generator)
        dists = torch.cat([z[:, 1:] - z[:, :-1], torch.zeros_like(z[:, :1])], dim=-1)
        if self.alpha_volume is not None and bool(valid.any()):
            masked = self.sample_alpha_mask(pts[valid]) > 0
            valid = valid.clone()
            valid[valid.clone()] = masked
        sigma = torch.zeros(z.shape, device=z.device, dtype=z.dtype)
        rgb = torch.zeros(*z.shape, 3, device=z.device, dtype=z.dtype)
        normed = self.normalize_coord(pts)
        if bool(valid.any()):
            sigma = sigma.masked_scatter(valid, self.feature2density(self.density_feature(normed[valid], backend)))
        alpha = 1.0 - torch.exp(-sigma * dists * self.config.distance_scale)
        T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], dim=-1), dim=-1)
        weight = alpha * T[:, :-1]
        app = weight > self.config.ray_march_weight_thres
        if bool(app.any()):
            dirs = rays_d[:, None].expand_as(pts)[app]
            colors = self.renderModule(normed[app], dirs, self.app_feature(normed[app], backend))
            rgb = rgb.masked_scatter(app[..., None], colors)
        acc = weight.sum(-1)
        rgb_map = ((weight[..., None] * rgb).sum(-2) + (1.0 - acc[:, None])).clamp(0, 1)
        with torch.no_grad():
            depth = (weight * z).sum(-1) + (1.0 - acc) * z[:, -1]
        return rgb_map, depth, acc

    @torch.no_grad()
    def render(self, c2w, height: int, width: int, focal, *, backend: str = "auto") -> torch.Tensor:
        """``c2w [K, 4, 4]`` (Blender/OpenGL), image size and focal (pixels) or intrinsics
        ``[K, 4]`` -> ``[K, H, W, 3]`` in ``[0, 1]``, white background."""
        op = "TensoRF.render"
        c2w = _check_cameras(op, c2w)
        for name, size in (("height", height), ("width", width)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{op}: {name} must be a positive int, got {size!r}")
        device = self.basis_mat.weight.device
        c2w = c2w.to(device)
        K = _intrinsics(op, focal, c2w.shape[0], height, width, device)
        images = []
        for k in range(c2w.shape[0]):
            rays_o, rays_d = rays_from_cameras(c2w[k : k + 1], K[k : k + 1], height, width, convention="opengl")
            rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
            parts = [self(o, d, backend=backend)[0] for o, d in
                     zip(rays_o.split(self.config.render_chunk), rays_d.split(self.config.render_chunk))]
            images.append(torch.cat(parts).reshape(height, width, 3))
        return torch.stack(images).cpu()

    # -- the official training schedule ---------------------------------------------------

    def density_l1(self) -> torch.Tensor:
        return sum(p.abs().mean() + l.abs().mean() for p, l in zip(self.density_plane, self.density_line))

    @staticmethod
    def _tv(x: torch.Tensor) -> torch.Tensor:
        count_h = x[:, :, 1:, :].numel() / x.shape[0]
        count_w = max(x[:, :, :, 1:].numel() / x.shape[0], 1)
        h = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).sum()
        w = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum()
        return 2 * (h / count_h + w / count_w) / x.shape[0]

    def tv_density(self) -> torch.Tensor:
        return sum(self._tv(p) * 1e-2 for p in self.density_plane)

    def tv_app(self) -> torch.Tensor:
        return sum(self._tv(p) * 1e-2 for p in self.app_plane)

    def vector_comp_diffs(self) -> torch.Tensor:
        total = 0.0
        for line in list(self.density_line) + list(self.app_line):
            n, size = line.shape[1:-1]
            dot = line.view(n, size) @ line.view(n, size).T
            total = total + dot.view(-1)[1:].view(n - 1, n + 1)[..., :-1].abs().mean()
        return total

    def param_groups(self, lr_spatial: float, lr_network: float) -> List[Dict]:
        return [{"params": list(self.density_line), "lr": lr_spatial}, {"params": list(self.density_plane), "lr": lr_spatial},
                {"params": list(self.app_line), "lr": lr_spatial}, {"params": list(self.app_plane), "lr": lr_spatial},
                {"params": list(self.basis_mat.parameters()), "lr": lr_network},
                {"params": list(self.renderModule.parameters()), "lr": lr_network}]

    @torch.no_grad()
    def upsample_volume_grid(self, reso: Sequence[int]) -> None:
        """``up_sampling_VM``: bilinear (align_corners=True) resize of every plane and line."""
        for planes, lines in ((self.app_plane, self.app_line), (self.density_plane, self.density_line)):
            for k, (vec, (m0, m1)) in enumerate(zip(VEC_MODE, MAT_MODE)):
                planes[k] = nn.Parameter(F.interpolate(planes[k].data, size=(reso[m1], reso[m0]), mode="bilinear",
                                                       align_corners=True))
                lines[k] = nn.Parameter(F.interpolate(lines[k].data, size=(reso[vec], 1), mode="bilinear",
                                                      align_corners=True))
        self.config = self.config.replace(grid_size=tuple(int(r) for r in reso))

    @torch.no_grad()
    def update_alpha_mask(self, grid_size: Sequence[int], backend: str = "auto", chunk: int = 1 << 18) -> torch.Tensor:
        """``updateAlphaMask``: alpha ``1 - exp(-sigma * stepSize)`` on a dense grid over the box,
        dilated by a 3^3 max-pool, thresholded at ``alpha_mask_thres``; returns the mask's bbox ``[2, 3]``."""
        gx, gy, gz = (int(g) for g in grid_size)
        aabb = self.aabb
        axes = [torch.linspace(0, 1, n, device=aabb.device) for n in (gx, gy, gz)]
        samples = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        dense = aabb[0] * (1 - samples) + aabb[1] * samples  # [X, Y, Z, 3]
        flat = dense.reshape(-1, 3)
        sigma = torch.zeros(flat.shape[0], device=aabb.device)
        keep = torch.ones_like(sigma, dtype=torch.bool)
        if self.alpha_volume is not None:
            keep = self.sample_alpha_mask(flat) > 0
        index = torch.nonzero(keep)[:, 0]
        for part in index.split(chunk):
            sigma[part] = self.feature2density(self.density_feature(self.normalize_coord(flat[part]), backend))
        alpha = (1 - torch.exp(-sigma * self.step_size)).reshape(gx, gy, gz)
        alpha = alpha.clamp(0, 1).transpose(0, 2).contiguous()[None, None]  # [1, 1, Z, Y, X]
        alpha = F.max_pool3d(alpha, kernel_size=3, padding=1, stride=1)[0, 0]
        volume = (alpha >= self.config.alpha_mask_thres).float()
        self.config = self.config.replace(alpha_mask_shape=tuple(volume.shape),
                                          alpha_mask_aabb=tuple(aabb.reshape(-1).tolist()))
        if self.alpha_volume is None:
            del self.alpha_volume
        self.register_buffer("alpha_volume", volume)
        valid = dense.transpose(0, 2)[volume > 0.5]
        if valid.shape[0] == 0:
            return aabb.clone()
        return torch.stack([valid.amin(0), valid.amax(0)])

    @torch.no_grad()
    def shrink(self, new_aabb: torch.Tensor) -> None:
        """``shrink``: crop the factors to ``new_aabb`` (snapped to the grid) and adopt it."""
        aabb = self.aabb
        grid = torch.tensor(self.config.grid_size, device=aabb.device)
        units = (aabb[1] - aabb[0]) / (grid - 1)
        tl = torch.round((new_aabb[0] - aabb[0]) / units).long()
        br = torch.minimum(torch.round((new_aabb[1] - aabb[0]) / units).long() + 1, grid)
        for planes, lines in ((self.density_plane, self.density_line), (self.app_plane, self.app_line)):
            for k, (vec, (m0, m1)) in enumerate(zip(VEC_MODE, MAT_MODE)):
                lines[k] = nn.Parameter(lines[k].data[..., tl[vec] : br[vec], :].contiguous())
                planes[k] = nn.Parameter(planes[k].data[..., tl[m1] : br[m1], tl[m0] : br[m0]].contiguous())
        if self.alpha_volume is None or tuple(self.alpha_volume.shape[::-1]) != tuple(self.config.grid_size):
            lo, hi = tl.float() / (grid - 1), (br - 1).float() / (grid - 1)
            new_aabb = torch.stack([(1 - lo) * aabb[0] + lo * aabb[1], (1 - hi) * aabb[0] + hi * aabb[1]])
        size = (br - tl).tolist()
        self.config = self.config.replace(aabb=tuple(new_aabb.reshape(-1).tolist()), grid_size=tuple(size))

    @torch.no_grad()
    def filter_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, bbox_only: bool, chunk: int = 10240) -> torch.Tensor:
        """``filtering_rays``: the rays that cross the box (``bbox_only``) or the alpha mask."""
        keep = []
        aabb = self.aabb
        for o, d in zip(rays_o.split(chunk), rays_d.split(chunk)):
            if bbox_only or self.alpha_volume is None:
                vec = torch.where(d == 0, torch.full_like(d, 1e-6), d)
                a, b = (aabb[1] - o) / vec, (aabb[0] - o) / vec
                keep.append(torch.maximum(a, b).amin(-1) > torch.minimum(a, b).amax(-1))
            else:
                pts = self.sample_ray(o, d, False)[0]
                keep.append((self.sample_alpha_mask(pts.reshape(-1, 3)).view(pts.shape[:-1]) > 0).any(-1))
        return torch.cat(keep)

    @classmethod
    def fit(cls, images, c2w=None, focal=None, *, alpha=None, config=None, bound=None, iters: Optional[int] = None,
            progress: bool = True, device=None, backend: str = "auto", seed: int = 0,
            callback: Optional[Callable[[int, "TensoRF", float], None]] = None) -> "TensoRF":
        """Train as ``train.py`` does on posed images; same inputs as
        :meth:`fastfields.models.zerorf.ZeroRF.fit` (tensors or numpy, RGBA composited on
        white, or a Blender folder). TensoRF trains on RGB only: ``alpha`` is accepted and not
        supervised. ``bound``: the initial box ``[-bound, bound]^3`` (default: the config's,
        else the NeRF-synthetic table for a named folder, else 1.5 as TensoRF's Blender loader).
        ``history``: ``loss``, ``time_s``, ``cpu_time_s``, ``iters``, ``samples_per_ray``, ``stages``."""
        op = "TensoRF.fit"
        if isinstance(images, (str, Path, MultiViewData)):
            if bound is None and not isinstance(images, MultiViewData):
                bound = nerf_synthetic_bound(Path(images).resolve().name)
            scene = load_views(images)
            images, c2w = scene.images, scene.c2w if c2w is None else c2w
            focal = scene.intrinsics() if focal is None else focal
        elif c2w is None or focal is None:
            raise ValueError(f"{op}: c2w and focal are required with image arrays")
        torch.manual_seed(seed)
        images = to_float_images(images, op=op)
        if images.dim() != 4 or images.shape[-1] not in (3, 4):
            raise ValueError(f"{op}: images must be [V, H, W, 3 or 4], got shape {tuple(images.shape)}")
        if images.shape[-1] == 4:
            images = images[..., :3] * images[..., 3:] + (1 - images[..., 3:])
        c2w = _check_cameras(op, c2w)
        if c2w.shape[0] != images.shape[0]:
            raise ValueError(f"{op}: {images.shape[0]} images but {c2w.shape[0]} cameras (c2w)")
        from ..field_vm import resolve_config

        config = resolve_config(cls, config)
        if bound is not None:
            config = config.replace(bound=float(bound), aabb=None, grid_size=None)
        iters = config.iters if iters is None else iters
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise ValueError(f"{op}: iters must be a non-negative int, got {iters!r}")
        device = torch.device(device) if device is not None else images.device
        model = cls(config.replace(iters=max(iters, 1))).to(device)
        V, H, W, _ = images.shape
        K = _intrinsics(op, focal, V, H, W, device)
        rays_o, rays_d = rays_from_cameras(c2w.to(device), K, H, W, convention="opengl")
        model._fit(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3), images.to(device).reshape(-1, 3), iters, progress,
                   backend, seed, callback)
        return model

    def _fit(self, rays_o, rays_d, rgbs, iters, progress, backend, seed, callback) -> None:
        c = self.config
        device = rays_o.device
        generator = torch.Generator(device=device).manual_seed(seed)
        scale = c.schedule_scale if c.schedule_scale is not None else iters / 30000
        upsample_at = sorted({max(1, round(i * scale)) for i in c.upsample_iters})
        mask_at = [max(1, round(i * scale)) for i in c.alpha_mask_iters]
        n_voxels = torch.round(torch.exp(torch.linspace(math.log(c.n_voxel_init), math.log(c.n_voxel_final),
                                                        len(c.upsample_iters) + 1))).long().tolist()[1:]
        lr_factor = c.lr_decay_target_ratio ** (1 / max(iters, 1))
        optimizer = torch.optim.Adam(self.param_groups(c.lr_init, c.lr_basis), betas=(0.9, 0.99))
        keep = self.filter_rays(rays_o, rays_d, bbox_only=True)
        rays_o, rays_d, rgbs = rays_o[keep], rays_d[keep], rgbs[keep]
        order, cursor = None, rays_o.shape[0]
        l1_weight, tv_d, tv_a = c.l1_weight_initial, c.tv_weight_density, c.tv_weight_app
        reso_mask = list(c.grid_size)
        losses, stages = [], []
        self.history = {"loss": losses, "stages": stages, "iters": 0}
        bar = None
        if progress:
            from tqdm.auto import trange

            bar = trange(iters, desc="TensoRF", dynamic_ncols=True)
        self.train()
        start, cpu_start = time.perf_counter(), time.process_time()
        samples = 0
        for it in range(iters):
            cursor += c.batch_size
            if cursor + c.batch_size > rays_o.shape[0]:  # SimpleSampler: a new permutation per epoch
                order = torch.randperm(rays_o.shape[0], generator=generator, device=device)
                cursor = 0
            pick = order[cursor : cursor + c.batch_size]
            rgb, _, _ = self(rays_o[pick], rays_d[pick], is_train=True, generator=generator, backend=backend)
            loss = torch.mean((rgb - rgbs[pick]) ** 2)
            total = loss
            if c.ortho_weight > 0:
                total = total + c.ortho_weight * self.vector_comp_diffs()
            if l1_weight > 0:
                total = total + l1_weight * self.density_l1()
            if tv_d > 0:
                tv_d *= lr_factor
                total = total + self.tv_density() * tv_d
            if tv_a > 0:
                tv_a *= lr_factor
                total = total + self.tv_app() * tv_a
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for group in optimizer.param_groups:
                group["lr"] *= lr_factor
            losses.append(float(loss.detach()))
            samples += pick.numel() * self.n_samples
            if it in mask_at:
                if math.prod(self.config.grid_size) < 256**3:
                    reso_mask = list(self.config.grid_size)
                new_aabb = self.update_alpha_mask(reso_mask, backend)
                stages.append((it, "alpha_mask", list(reso_mask)))
                if it == mask_at[0]:
                    if c.shrink:
                        self.shrink(new_aabb)
                        stages.append((it, "shrink", list(self.config.aabb)))
                    l1_weight = c.l1_weight_rest
                if c.filter_rays and len(mask_at) > 1 and it == mask_at[1]:
                    keep = self.filter_rays(rays_o, rays_d, bbox_only=False)
                    if int(keep.sum()) >= c.batch_size:  # (an empty mask would leave nothing to train on)
                        rays_o, rays_d, rgbs = rays_o[keep], rays_d[keep], rgbs[keep]
                        cursor = rays_o.shape[0]
                    stages.append((it, "filter_rays", int(keep.sum())))
            if it in upsample_at and n_voxels:
                reso = n_to_reso(n_voxels.pop(0), self.aabb.cpu())
                self.upsample_volume_grid(reso)
                stages.append((it, "upsample", list(reso)))
                optimizer = torch.optim.Adam(self.param_groups(c.lr_init, c.lr_basis), betas=(0.9, 0.99))
            if bar is not None:
                bar.update(1)
                if it % 10 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.4g}", psnr=f"{-10 * math.log10(max(losses[-1], 1e-10)):.2f}")
            if callback is not None:
                callback(it, self, losses[-1])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if bar is not None:
            bar.close()
        self.eval()
        self.history.update(time_s=elapsed, cpu_time_s=cpu, iters=iters, samples_per_ray=samples / max(iters * c.batch_size, 1))

    # -- checkpoints ----------------------------------------------------------------------

    def save(self, path: Union[str, Path]) -> Path:
        return self.save_pretrained(path)

    @classmethod
    def load(cls, path: Union[str, Path], device="cpu") -> "TensoRF":
        return cls.from_pretrained(path, device=device).eval()

    @classmethod
    def from_official(cls, path: Union[str, Path], *, device="cpu", overrides: Optional[Dict] = None) -> "TensoRF":
        """Load an official TensoRF checkpoint (``tensorf.save``: ``kwargs``, ``state_dict`` and,
        after ``updateAlphaMask``, ``alphaMask.shape`` / ``.mask`` (packed bits) / ``.aabb``),
        read with the restricted unpickler (no pickled code runs) and loaded strictly: every
        missing, unexpected or mis-shaped entry is listed in one :class:`CheckpointError`."""
        blob = load_pickle_restricted(path)
        return cls.from_official_dict(blob, what=f"checkpoint {str(path)!r}", device=device, overrides=overrides)

    @classmethod
    def from_official_dict(cls, blob, *, what: str = "checkpoint", device="cpu", overrides=None) -> "TensoRF":
        if not isinstance(blob, dict) or "kwargs" not in blob or "state_dict" not in blob:
            keys = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
            raise CheckpointError(f"TensoRF: the {what} is not an official TensoRF checkpoint "
                                  f"(needs 'kwargs' and 'state_dict', got {keys})")
        config = config_from_official_kwargs(blob["kwargs"], what)
        if "alphaMask.aabb" in blob:
            shape = tuple(int(s) for s in blob["alphaMask.shape"])
            config = config.replace(alpha_mask_shape=shape,
                                    alpha_mask_aabb=tuple(torch.as_tensor(blob["alphaMask.aabb"]).reshape(-1).tolist()))
        if overrides:
            config = config.replace(**overrides)
        with torch.device("meta"):
            model = cls(config)
        state = dict(blob["state_dict"])
        if "alphaMask.aabb" in blob:
            bits = np.unpackbits(np.asarray(blob["alphaMask.mask"], dtype=np.uint8))[: math.prod(config.alpha_mask_shape)]
            state["alpha_volume"] = torch.from_numpy(bits.reshape(config.alpha_mask_shape).astype(np.float32))
        load_state_dict_strict(model, state, what=what, device=device)
        return model.eval()
