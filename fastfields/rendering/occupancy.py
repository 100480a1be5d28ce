"""Empty-space skipping with an occupancy grid, emitting packed samples.

What SSDNeRF and ZeroRF get from torch-ngp's ray marcher and nerfacc's
``OccGridEstimator`` gives: a coarse grid remembers which cells hold density, and rays
are marched with a fixed step keeping only the steps whose midpoint falls in an
occupied cell. The result is the packed layout nerfacc uses and
``fastfields.composite_packed`` takes: all samples of all rays in flat arrays, ray by
ray, with ``ray_indices`` ascending.

This is vectorised PyTorch (every step of every ray as one batch of candidates,
compacted with masks), not a fused kernel: it runs once per batch of rays, before the
field is evaluated, and the field dominates the cost.
"""

from __future__ import annotations

from numbers import Real
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._checks import check_bool, check_same_device
from .cameras import AABB, Bound, as_aabb, as_bound, check_rays, ray_aabb_intersect

#: Candidate steps marched at once; bounds the temporary memory of ``sample``.
CANDIDATES_PER_CHUNK = 1 << 22


def packed_info(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Per-ray ``(start, count)`` of a packed sample list (nerfacc's ``pack_info``).

    Args:
        ray_indices: ``[M]`` integer ray index of each sample, ascending.
        n_rays: number of rays ``R`` (rays without samples get count 0).

    Returns:
        ``[R, 2]`` int64: ray ``r``'s samples are ``start[r] : start[r] + count[r]``.
    """
    op = "packed_info"
    if not isinstance(ray_indices, torch.Tensor):
        raise TypeError(f"{op}: ray_indices must be a torch.Tensor [M], got {type(ray_indices).__name__}")
    if ray_indices.dim() != 1:
        raise ValueError(f"{op}: ray_indices must be a 1-D tensor [M], got shape {tuple(ray_indices.shape)}")
    if ray_indices.dtype.is_floating_point or ray_indices.dtype.is_complex or ray_indices.dtype == torch.bool:
        raise TypeError(f"{op}: ray_indices must be an integer tensor, got {ray_indices.dtype}")
    if isinstance(n_rays, bool) or not isinstance(n_rays, int) or n_rays < 0:
        raise ValueError(f"{op}: n_rays must be a non-negative int, got {n_rays!r}")
    ray_indices = ray_indices.long()
    if ray_indices.numel() > 0:
        if int(ray_indices.min()) < 0 or int(ray_indices.max()) >= n_rays:
            raise ValueError(f"{op}: ray_indices must lie in [0, n_rays) = [0, {n_rays})")
        if not bool((ray_indices[1:] >= ray_indices[:-1]).all()):
            raise ValueError(f"{op}: ray_indices must be sorted ascending")
    counts = torch.zeros(n_rays, dtype=torch.long, device=ray_indices.device)
    counts.index_add_(0, ray_indices, torch.ones_like(ray_indices))
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)


def _check_positive(op: str, name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (value >= 0 if allow_zero else value > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{op}: {name} must be a float {bound}, got {value!r}")
    return float(value)


def _steps_per_ray(t0: torch.Tensor, t_end: torch.Tensor, step_size: float, cone_angle: float):
    """How many steps of ``dt = max(step_size, cone_angle * t)`` start before ``t_end``
    (an upper bound, exact up to rounding), and where the geometric part begins."""
    linear_steps = torch.ceil((t_end - t0) / step_size).clamp_min(0)
    if cone_angle == 0:
        return linear_steps, None, None
    # Steps are constant until t reaches step_size / cone_angle, then grow geometrically.
    n_linear = torch.ceil((step_size / cone_angle - t0) / step_size).clamp_min(0)
    t_switch = t0 + n_linear * step_size
    growth = torch.log(t_end / t_switch).clamp_min(0) / torch.log1p(torch.tensor(cone_angle, dtype=t0.dtype))
    geometric_steps = torch.where(t_end > t_switch, torch.ceil(growth) + 1, torch.zeros_like(growth))
    return torch.minimum(linear_steps, n_linear) + geometric_steps, n_linear, t_switch


def _step_starts(t0, k, step_size: float, cone_angle: float, n_linear, t_switch):
    """Start of step ``k`` of each candidate (``t0`` etc. already gathered per candidate)."""
    t = t0 + k * step_size
    if cone_angle == 0:
        return t
    geometric = t_switch * torch.exp((k - n_linear) * torch.log1p(torch.tensor(cone_angle, dtype=t.dtype)))
    return torch.where(k < n_linear, t, geometric)


class OccupancyGrid(nn.Module):
    """Occupancy grid over an axis-aligned box, for empty-space skipping.

    Level ``l`` covers the box scaled by ``2**l`` about its centre (nerfacc's
    multi-level grid, for scenes that extend past the box); a point uses the finest
    level that contains it, and points outside every level are never sampled. Each
    level has ``resolution`` cells, indexed ``[level, ix, iy, iz]``.

    Until the first :meth:`update` every cell counts as occupied, so :meth:`sample`
    marches the whole box. Buffers: ``aabbs [L, 6]``, ``densities [L, rx, ry, rz]``
    (the running maximum-with-decay of each cell's density) and ``occupied`` (bool,
    same shape); they follow ``.to(device)`` and ``state_dict``.

    Args:
        aabb: the box, ``(x_min, y_min, z_min, x_max, y_max, z_max)`` or ``(min, max)``.
        resolution: cells per axis, an int or three ints ``(rx, ry, rz)``.
        n_levels: number of levels.
    """

    def __init__(self, aabb: AABB, resolution: Union[int, Sequence[int]] = 64, n_levels: int = 1) -> None:
        super().__init__()
        op = "OccupancyGrid"
        box = as_aabb(op, aabb, torch.float32, "cpu")
        if isinstance(resolution, int) and not isinstance(resolution, bool):
            resolution = (resolution,) * 3
        if (
            not isinstance(resolution, (tuple, list))
            or len(resolution) != 3
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in resolution)
        ):
            raise ValueError(f"{op}: resolution must be a positive int or three positive ints (rx, ry, rz), got {resolution!r}")
        if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 1:
            raise ValueError(f"{op}: n_levels must be a positive int, got {n_levels!r}")
        self.resolution = tuple(resolution)
        self.n_levels = n_levels
        center, half = (box[:3] + box[3:]) / 2, (box[3:] - box[:3]) / 2
        aabbs = torch.stack([torch.cat([center - half * 2**level, center + half * 2**level]) for level in range(n_levels)])
        self.register_buffer("aabbs", aabbs)
        self.register_buffer("densities", torch.zeros(n_levels, *self.resolution))
        self.register_buffer("occupied", torch.ones(n_levels, *self.resolution, dtype=torch.bool))

    @property
    def n_cells(self) -> int:
        rx, ry, rz = self.resolution
        return rx * ry * rz

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, n_levels={self.n_levels}, aabb={self.aabbs[0].tolist()}"

    def _cell_centers_jittered(self, level: int, cells: torch.Tensor, n_per_cell: int, generator) -> torch.Tensor:
        """World points uniformly inside the given cells: ``[len(cells), n_per_cell, 3]``."""
        rx, ry, rz = self.resolution
        ijk = torch.stack([cells // (ry * rz), (cells // rz) % ry, cells % rz], dim=-1).to(self.densities.dtype)
        jitter = torch.rand(len(cells), n_per_cell, 3, generator=generator, device=cells.device, dtype=ijk.dtype)
        res = torch.tensor(self.resolution, dtype=ijk.dtype, device=cells.device)
        lo, hi = self.aabbs[level, :3], self.aabbs[level, 3:]
        return lo + (ijk[:, None] + jitter) / res * (hi - lo)

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[torch.Tensor], torch.Tensor],
        step: int,
        *,
        decay: float = 0.95,
        threshold: float = 0.01,
        warmup_steps: int = 256,
        n_samples_per_cell: int = 1,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        """Refresh the cells' densities and occupancy (nerfacc's ``_update``).

        Each visited cell evaluates ``density_fn`` at ``n_samples_per_cell`` uniform
        points inside it and keeps ``max(decay * old, max over the points)``. Before
        ``warmup_steps`` every cell is visited; afterwards a quarter of the cells drawn
        uniformly plus as many occupied cells (all of them if fewer). A cell is occupied
        when its density exceeds ``min(threshold, mean of the positive densities)``.
        Non-finite densities count as 0 (NaN) or as occupied (+inf).

        Args:
            density_fn: maps points ``[N, 3]`` (world coordinates) to densities ``[N]``
                or ``[N, 1]``. nerfacc's examples pass density times the step size, so
                that ``threshold`` is an opacity; either works.
            step: the training step (compared with ``warmup_steps``).
            decay: per-update decay of the stored densities.
            threshold: occupancy threshold, see above.
            warmup_steps: steps during which every cell is visited.
            n_samples_per_cell: points per visited cell (more is more conservative).
            generator: for the cell subset and the jitter.
        """
        op = "OccupancyGrid.update"
        if not callable(density_fn):
            raise TypeError(f"{op}: density_fn must be callable (points [N, 3] -> densities [N]), got {type(density_fn).__name__}")
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"{op}: step must be an int, got {step!r}")
        if isinstance(decay, bool) or not isinstance(decay, Real) or not 0 <= decay <= 1:
            raise ValueError(f"{op}: decay must be a float in [0, 1], got {decay!r}")
        _check_positive(op, "threshold", threshold, allow_zero=True)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int):
            raise TypeError(f"{op}: warmup_steps must be an int, got {warmup_steps!r}")
        if isinstance(n_samples_per_cell, bool) or not isinstance(n_samples_per_cell, int) or n_samples_per_cell < 1:
            raise ValueError(f"{op}: n_samples_per_cell must be a positive int, got {n_samples_per_cell!r}")

        device = self.densities.device
        n_cells = self.n_cells
        for level in range(self.n_levels):
            if step < warmup_steps:
                cells = torch.arange(n_cells, device=device)
            else:
                n_pick = max(n_cells // 4, 1)
                uniform = torch.randint(n_cells, (n_pick,), generator=generator, device=device)
                occupied = torch.nonzero(self.occupied[level].flatten())[:, 0]
                if len(occupied) > n_pick:
                    occupied = occupied[torch.randint(len(occupied), (n_pick,), generator=generator, device=device)]
                cells = torch.cat([uniform, occupied])
            points = self._cell_centers_jittered(level, cells, n_samples_per_cell, generator)
            density = density_fn(points.reshape(-1, 3))
            if not isinstance(density, torch.Tensor) or density.numel() != points.shape[0] * n_samples_per_cell:
                got = tuple(density.shape) if isinstance(density, torch.Tensor) else type(density).__name__
                n_points = points.shape[0] * n_samples_per_cell
                raise ValueError(f"{op}: density_fn must return one density per point, [N] or [N, 1] for N = {n_points}, got {got}")
            density = density.detach().to(device=device, dtype=self.densities.dtype).reshape(len(cells), n_samples_per_cell)
            density = torch.nan_to_num(density, nan=0.0).amax(dim=-1)
            # The uniform and occupied picks may repeat a cell: keep its largest new value.
            fresh = torch.zeros(n_cells, dtype=density.dtype, device=device).scatter_reduce(
                0, cells, density, reduce="amax", include_self=False
            )
            visited = torch.zeros(n_cells, dtype=torch.bool, device=device).index_fill_(0, cells, True)
            stored = self.densities[level].view(-1)
            stored.copy_(torch.where(visited, torch.maximum(stored * decay, fresh), stored))

        positive = self.densities > 0
        mean_positive = (self.densities * positive).sum() / positive.sum().clamp_min(1)
        self.occupied.copy_(self.densities > torch.clamp(mean_positive, max=threshold))

    def _is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        """Whether each point ``[N, 3]`` lies in an occupied cell of the finest level holding it."""
        res = torch.tensor(self.resolution, device=points.device)
        rx, ry, rz = self.resolution
        occupied = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
        placed = torch.zeros_like(occupied)
        for level in range(self.n_levels):
            lo, hi = self.aabbs[level, :3].to(points.dtype), self.aabbs[level, 3:].to(points.dtype)
            inside = ((points >= lo) & (points <= hi)).all(dim=-1) & ~placed
            ijk = torch.floor((points - lo) / (hi - lo) * res).nan_to_num(0).long()
            ijk = torch.minimum(ijk.clamp_min(0), res - 1)  # a point on the far faces belongs to the last cell
            cell = (ijk[:, 0] * ry + ijk[:, 1]) * rz + ijk[:, 2]
            occupied |= inside & self.occupied[level].view(-1)[cell]
            placed |= inside
        return occupied

    @torch.no_grad()
    def sample(
        self,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        *,
        near: Bound,
        far: Bound,
        step_size: float,
        alpha_threshold: float = 0.0,
        early_stop_eps: float = 1e-4,
        sigma_fn: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        cone_angle: float = 0.0,
        stratified: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """March rays through the grid and keep the steps in occupied cells.

        Each ray is marched from ``t_start`` (the later of ``near`` and its entry into
        the outermost level's box; plus ``U[0, 1) * step_size`` when ``stratified``) to
        ``t_end`` (the earlier of ``far`` and its exit) with steps ``[t, t + dt]``,
        ``dt = max(step_size, cone_angle * t)``, the last one cut at ``t_end``. A step
        is a sample when its midpoint lies in an occupied cell.

        With ``sigma_fn`` the samples are then culled as nerfacc does: samples after
        the transmittance falls below ``early_stop_eps`` are dropped, and, if
        ``alpha_threshold > 0``, samples whose opacity ``1 - exp(-sigma * dt)`` is below
        it.

        Not differentiable (samples are positions, not functions of the inputs).

        Args:
            rays_o, rays_d: ``[R, 3]``; ``t`` is in units of ``|rays_d|``, so unit
                directions make ``step_size`` a world distance.
            near, far: floats or ``[R]`` tensors.
            step_size: the base step (> 0).
            alpha_threshold: opacity below which samples are dropped (needs sigma_fn).
            early_stop_eps: transmittance below which a ray stops (with sigma_fn).
            sigma_fn: ``(t_starts [M], t_ends [M], ray_indices [M]) -> sigmas [M]``,
                the post-activation density at the samples (nerfacc's signature).
            cone_angle: step growth with distance (0: constant steps; Instant-NGP
                uses 1/256 for large scenes).
            stratified: jitter the first step of each ray.
            generator: for the jitter.

        Returns:
            ``ray_indices [M]`` (int64, ascending), ``t_starts [M]`` and ``t_ends [M]``
            (float32, float64 for float64 rays): the packed layout of nerfacc and
            ``fastfields.composite_packed``; see :func:`packed_info`.
        """
        op = "OccupancyGrid.sample"
        check_rays(op, rays_o, rays_d, layout="[R, 3]")
        check_same_device(op, [("rays_o", rays_o), ("grid", self.densities)])
        step_size = _check_positive(op, "step_size", step_size)
        alpha_threshold = _check_positive(op, "alpha_threshold", alpha_threshold, allow_zero=True)
        early_stop_eps = _check_positive(op, "early_stop_eps", early_stop_eps, allow_zero=True)
        cone_angle = _check_positive(op, "cone_angle", cone_angle, allow_zero=True)
        check_bool(op, "stratified", stratified)
        if sigma_fn is not None and not callable(sigma_fn):
            raise TypeError(f"{op}: sigma_fn must be callable or None, got {type(sigma_fn).__name__}")
        if alpha_threshold > 0 and sigma_fn is None:
            raise ValueError(f"{op}: alpha_threshold > 0 needs sigma_fn to evaluate the samples' opacity")

        dtype = torch.float64 if rays_o.dtype == torch.float64 else torch.float32
        origins, directions = rays_o.detach().to(dtype), rays_d.detach().to(dtype)
        n_rays = origins.shape[0]
        near_t = as_bound(op, "near", near, origins[:, 0]).expand(n_rays)
        far_t = as_bound(op, "far", far, origins[:, 0]).expand(n_rays)
        t_start, t_end, hit = ray_aabb_intersect(origins, directions, self.aabbs[-1].to(dtype), near_t, far_t)
        hit &= directions.abs().amax(dim=-1) > 0
        if stratified:
            t_start = t_start + torch.rand(n_rays, generator=generator, dtype=dtype, device=origins.device) * step_size
        n_steps, n_linear, t_switch = _steps_per_ray(t_start, t_end, step_size, cone_angle)
        n_steps = torch.where(hit, n_steps, torch.zeros_like(n_steps)).long()

        pieces = [(torch.zeros(0, dtype=torch.long, device=origins.device), origins.new_zeros(0), origins.new_zeros(0))]
        for rays in _chunks(n_steps):
            pieces.append(self._march(origins, directions, t_start, t_end, n_steps, n_linear, t_switch, step_size, cone_angle, rays))
        ray_indices, t_starts, t_ends = (torch.cat(parts) for parts in zip(*pieces))

        if sigma_fn is not None and (alpha_threshold > 0 or early_stop_eps > 0):
            sigmas = sigma_fn(t_starts, t_ends, ray_indices)
            if not isinstance(sigmas, torch.Tensor) or sigmas.numel() != ray_indices.numel():
                got = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
                n_samples = ray_indices.numel()
                raise ValueError(f"{op}: sigma_fn must return one density per sample, [M] for M = {n_samples}, got {got}")
            keep = _visible(sigmas.detach().reshape(-1), t_starts, t_ends, ray_indices, n_rays, alpha_threshold, early_stop_eps)
            ray_indices, t_starts, t_ends = ray_indices[keep], t_starts[keep], t_ends[keep]
        return ray_indices, t_starts, t_ends

    def _march(self, origins, directions, t_start, t_end, n_steps, n_linear, t_switch, step_size, cone_angle, rays):
        """All candidate steps of rays ``rays = (first, last + 1)``, compacted to the kept ones."""
        first, stop = rays
        counts = n_steps[first:stop]
        ray_indices = torch.repeat_interleave(torch.arange(first, stop, device=origins.device), counts)
        offsets = torch.cumsum(counts, 0) - counts
        k = (torch.arange(ray_indices.numel(), device=origins.device) - offsets[ray_indices - first]).to(origins.dtype)
        gathered = [None if x is None else x[ray_indices] for x in (n_linear, t_switch)]
        t0 = _step_starts(t_start[ray_indices], k, step_size, cone_angle, *gathered)
        t1 = torch.minimum(t0 + torch.clamp_min(cone_angle * t0, step_size), t_end[ray_indices])
        midpoints = origins[ray_indices] + (0.5 * (t0 + t1))[:, None] * directions[ray_indices]
        keep = (t1 > t0) & self._is_occupied(midpoints)
        return ray_indices[keep], t0[keep], t1[keep]


def _chunks(n_steps: torch.Tensor):
    """Split rays into consecutive ranges of about ``CANDIDATES_PER_CHUNK`` steps each."""
    n_rays = n_steps.shape[0]
    if n_rays == 0:
        return []
    ends = torch.cumsum(n_steps, 0)
    total = int(ends[-1])
    if total == 0:
        return []
    marks = torch.arange(1, (total - 1) // CANDIDATES_PER_CHUNK + 1, device=n_steps.device) * CANDIDATES_PER_CHUNK
    bounds = torch.searchsorted(ends, marks, right=True).tolist()
    edges = sorted({0, n_rays, *bounds})
    return list(zip(edges[:-1], edges[1:]))


def _visible(sigmas, t_starts, t_ends, ray_indices, n_rays, alpha_threshold, early_stop_eps) -> torch.Tensor:
    """nerfacc's ``render_visibility_from_density`` on packed samples."""
    optical_depth = sigmas.to(torch.float64) * (t_ends - t_starts).to(torch.float64)
    before = torch.cumsum(optical_depth, 0) - optical_depth  # exclusive, over all rays
    starts = packed_info(ray_indices, n_rays)[:, 0]
    transmittance = torch.exp(-(before - before[starts[ray_indices]]))
    keep = torch.ones_like(ray_indices, dtype=torch.bool)
    if early_stop_eps > 0:
        keep &= transmittance >= early_stop_eps
    if alpha_threshold > 0:
        keep &= (1 - torch.exp(-optical_depth)) >= alpha_threshold
    return keep
