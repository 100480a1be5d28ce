"""SSDNeRF inference (``DiffusionNeRF.val_uncond / val_guide / val_optim``), with the EMA
denoiser and decoder:

- :func:`sample`: unconditional DDIM (``ddim_steps``, x0 clipped to ``[-clip, clip]``), then
  the scene's occupancy grid (8 full updates without decay, as ``get_density``).
- :func:`reconstruct`: single- or sparse-view reconstruction. ``guided=True`` first runs DDIM
  with rendering-loss guidance (each step: refresh the grid on the predicted x0, render a
  batch of the input pixels, push x0 down the loss's gradient scaled by ``guidance_gain``);
  then test-time fine-tuning of the code (Adam ``finetune_lr`` with ExponentialLR
  ``finetune_gamma``; ``n_inverse_steps`` outer steps, each the diffusion loss's gradient
  (the prior, weight ``test_weight_scale``) reused over ``test_extra_scene_step + 1``
  rendering steps), denoiser and decoder frozen. ``use_prior=False, guided=False`` is the
  baseline: the same fine-tuning of a fresh code from the rendering loss alone.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from fastfields.rendering import OccupancyGrid

from .model import SSDNeRF
from .renderer import camera_rays, dt_gamma_of, grid_density_fn, new_grid, render_rays, render_views, update_grid
from .train import pixel_loss


def _frozen(model: SSDNeRF):
    for m in (model.decoder_ema, model.diffusion_ema):
        m.requires_grad_(False)


def occupancy_of(model: SSDNeRF, code: torch.Tensor, *, steps: int = 8, generator=None, backend: str = "auto") -> List[OccupancyGrid]:
    """Official ``get_density``: ``steps`` full grid updates with decay 1 at ``test_density_thresh``."""
    c = model.config
    grids = [new_grid(c.bound, c.grid_size, code.device) for _ in range(code.shape[0])]
    for grid, single in zip(grids, code):
        for _ in range(steps):
            update_grid(grid, grid_density_fn(model.decoder_ema, single, backend), bound=c.bound,
                        density_thresh=c.test_density_thresh, decay=1.0, generator=generator)
    return grids


@torch.no_grad()
def sample(model: SSDNeRF, n: int, *, steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
           progress: bool = False, backend: str = "auto") -> Tuple[torch.Tensor, List[OccupancyGrid]]:
    """``n`` unconditional scenes: codes ``[n, 3, C, H, W]`` and their occupancy grids."""
    model.eval()
    c = model.config
    device = model.decoder_ema.aabb.device
    noise = torch.randn((n, c.code_channels, *c.code_size[2:]), generator=generator,
                        device=device if generator is None else generator.device).to(device)
    x = model.diffusion_ema.ddim_sample(noise, steps or c.ddim_steps, clip_range=c.clip_range, progress=progress)
    code = model.from_diffusion(x)
    return code, occupancy_of(model, code, generator=generator, backend=backend)


class _Views:
    """Rays and colours of the input views of ``S`` scenes."""

    def __init__(self, model, images, c2w, intrinsics):
        S, V, H, W, _ = images.shape
        self.rays_o, self.rays_d = camera_rays(c2w, intrinsics, H, W)
        self.target = images.reshape(S, V * H * W, 3)
        self.n_pixels = V * H * W
        self.dt_gamma = dt_gamma_of(intrinsics, model.config.test_dt_gamma_scale).tolist()

    def batches(self, n_rays: int, generator) -> List[torch.Tensor]:
        """The official ``get_raybatch_inds``: one permutation per scene, split into batches."""
        if self.n_pixels <= n_rays:
            return [None]
        perms = torch.stack([torch.randperm(self.n_pixels, generator=generator, device=self.target.device)
                             for _ in range(self.target.shape[0])])
        return list(perms.split(n_rays, dim=1))

    def pick(self, inds):
        if inds is None:
            return self.rays_o, self.rays_d, self.target
        ar = torch.arange(self.target.shape[0], device=self.target.device)[:, None]
        return self.rays_o[ar, inds], self.rays_d[ar, inds], self.target[ar, inds]


def _render_loss(model, views, code, grids, inds, n_pixels, generator, backend):
    o, d, target = views.pick(inds)
    rgb, _, _, _ = render_rays(model.decoder_ema, code, o, d, grids, dt_gamma=views.dt_gamma, max_steps=model.config.max_steps,
                               min_near=model.config.min_near, bg_color=model.config.bg_color, perturb=True,
                               generator=generator, backend=backend)
    return pixel_loss(model, rgb, target, code, n_pixels)["loss"]


def _refresh(model, code, grids, generator, backend):
    c = model.config
    for grid, single in zip(grids, code.detach()):
        update_grid(grid, grid_density_fn(model.decoder_ema, single, backend), bound=c.bound,
                    density_thresh=c.test_density_thresh, decay=0.9, generator=generator)


def reconstruct(model: SSDNeRF, images, c2w, intrinsics, *, guided: bool = True, use_prior: bool = True,
                finetune_steps: Optional[int] = None, generator: Optional[torch.Generator] = None, progress: bool = False,
                backend: str = "auto") -> Tuple[torch.Tensor, List[OccupancyGrid]]:
    """Reconstruct ``S`` scenes from ``V`` posed views each.

    Args:
        images: ``[S, V, H, W, 3]`` float in ``[0, 1]`` on a white background.
        c2w: ``[S, V, 4, 4]`` OpenCV camera-to-world (SRN).
        intrinsics: ``[S, V, 4]`` ``fx, fy, cx, cy`` in pixels.
        guided: start from guided DDIM (else from a fresh code, ``U(-1e-4, 1e-4)``).
        use_prior: add the diffusion loss's gradient during fine-tuning.
        finetune_steps: outer fine-tuning steps (default ``n_inverse_steps``; 0: none).

    Returns codes ``[S, 3, C, H, W]`` and their occupancy grids.
    """
    from .._pretrained import as_tensor

    model.eval()
    _frozen(model)
    c = model.config
    device = model.decoder_ema.aabb.device
    images = as_tensor(images, "images", device=device, ndim=5)
    c2w = as_tensor(c2w, "c2w", device=device, ndim=4)
    intrinsics = as_tensor(intrinsics, "intrinsics", device=device, ndim=3)
    if images.shape[:2] != c2w.shape[:2] or images.shape[:2] != intrinsics.shape[:2]:
        raise ValueError(f"reconstruct: images {tuple(images.shape)}, c2w {tuple(c2w.shape)} and intrinsics "
                         f"{tuple(intrinsics.shape)} must agree on [S, V]")
    S = images.shape[0]
    views = _Views(model, images, c2w, intrinsics)
    gen = generator
    grids = [new_grid(c.bound, c.grid_size, device) for _ in range(S)]

    if guided:
        batches = views.batches(c.test_n_inverse_rays, gen)
        counter = [0]

        def guide(x0):
            code = model.from_diffusion(x0)
            _refresh(model, code, grids, gen, backend)
            inds = batches[counter[0] % len(batches)]
            n = c.test_n_inverse_rays if inds is not None else views.n_pixels
            counter[0] += 1
            return _render_loss(model, views, code, grids, inds, n, gen, backend) * S

        noise = torch.randn((S, c.code_channels, *c.code_size[2:]), generator=gen,
                            device=device if gen is None else gen.device).to(device)
        x = model.diffusion_ema.ddim_sample(noise, c.ddim_steps, clip_range=c.clip_range, grad_guide_fn=guide,
                                            guidance_gain=c.guidance_gain, progress=progress)
        code_ = model.inverse(model.from_diffusion(x))
    else:
        code_ = model.init_code_(S, generator=gen, device=gen.device if gen is not None else device).to(device)

    steps = c.n_inverse_steps if finetune_steps is None else finetune_steps
    code_ = code_.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([code_], lr=c.finetune_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=c.finetune_gamma)
    it = range(steps)
    if progress and steps:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="fine-tune", dynamic_ncols=True)
    with torch.enable_grad():
        for _ in it:
            opt.zero_grad(set_to_none=False)
            if code_.grad is None:
                code_.grad = torch.zeros_like(code_)
            if use_prior:
                loss, _ = model.diffusion_ema.loss(model.to_diffusion(model.activate(code_)), generator=None)
                loss.backward()
            prior = code_.grad.detach().clone()
            batches = views.batches(c.test_n_inverse_rays, gen)
            for k in range(c.test_extra_scene_step + 1):
                code = model.activate(code_)
                if k % c.update_extra_interval == 0:
                    _refresh(model, code, grids, gen, backend)
                loss = _render_loss(model, views, code, grids, batches[k % len(batches)], views.n_pixels, gen, backend)
                code_.grad.copy_(prior)
                loss.backward()
                opt.step()
                sched.step()
    code = model.activate(code_.detach())
    if steps == 0:
        with torch.no_grad():
            _refresh(model, code, grids, gen, backend)
    return code, grids


@torch.no_grad()
def render(model: SSDNeRF, code: torch.Tensor, grids, c2w, intrinsics, height: int, width: int, *,
           backend: str = "auto") -> torch.Tensor:
    """Novel views ``[S, V, H, W, 3]`` in ``[0, 1]`` with the EMA decoder (test settings)."""
    c = model.config
    images, _ = render_views(model.decoder_ema, code, grids, torch.as_tensor(c2w).float().to(code.device),
                             torch.as_tensor(intrinsics).float().to(code.device), height, width,
                             dt_gamma_scale=c.test_dt_gamma_scale, max_steps=c.max_steps, min_near=c.min_near,
                             bg_color=c.bg_color, t_threshold=c.t_threshold, backend=backend)
    return images.clamp(0, 1)
