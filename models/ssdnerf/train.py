"""Single-stage SSDNeRF training (the official ``DiffusionNeRF.train_step`` with
``freeze_decoder=False``): scene codes, decoder and denoiser optimised together.

Per iteration, for a batch of scenes:

1. load each scene's code ``code_``, its Adam state and occupancy grid from the cache;
2. diffusion loss on ``tanh(code_) * 2`` (v-prediction, SNR weighted, divided by the EMA of
   ``mean(x^2)``: lambda_diff = c / EMA(||x||^2)); backward; denoiser step. The codes'
   gradient from it is the *prior gradient*, cached;
3. ``extra_scene_step`` inner steps with the decoder frozen: rendering loss
   ``MSE * pixel_loss_weight * 3 (1 - exp(-loss_coef * N_v))`` (lambda_rend; ``N_v`` the
   scene's pixels) + ``reg_loss_weight * mean(code^2)``; the code's gradient is the cached
   prior gradient plus the rendering one; code Adam step;
4. a last rendering step that also updates the decoder (prior gradient again);
5. codes and their optimiser states go back to the cache; EMA of decoder and denoiser.

Under ``torchrun`` with more than one process, each rank trains its own share of the scenes
and the gradients of the shared networks (denoiser, decoder) are averaged across ranks
before each step (what DistributedDataParallel does; codes are per scene and never shared).
"""

from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .model import SSDNeRF
from .renderer import camera_rays, dt_gamma_of, grid_density_fn, new_grid, render_rays, update_grid


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed() -> bool:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; returns whether distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and _dist() is None:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return _dist() is not None


def average_gradients(modules) -> None:
    dist = _dist()
    if dist is None:
        return
    world = dist.get_world_size()
    for module in modules:
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


def pixel_loss(model: SSDNeRF, rgb: torch.Tensor, target: torch.Tensor, code: torch.Tensor, n_pixels: int) -> Dict[str, torch.Tensor]:
    """The official ``BaseNeRF.loss``: scaled MSE + code L2."""
    c = model.config
    scale = 1 - math.exp(-c.loss_coef * n_pixels)
    pixel = F.mse_loss(rgb, target) * c.pixel_loss_weight * (scale * 3)
    reg = code.square().mean() * c.reg_loss_weight
    return {"loss": pixel + reg, "pixel_loss": pixel, "reg_loss": reg}


class SceneCache:
    """Per-scene state kept across iterations (the official code cache): the pre-activation
    code ``code_ [3, C, H, W]``, its Adam state and its occupancy grid."""

    def __init__(self, model: SSDNeRF, n_scenes: int, device, generator: Optional[torch.Generator] = None) -> None:
        c = model.config
        self.codes = list(model.init_code_(n_scenes, generator=generator).to(device).unbind(0))
        self.optim_states: List[Optional[dict]] = [None] * n_scenes
        self.grids = [new_grid(c.bound, c.grid_size, device) for _ in range(n_scenes)]
        self.lr = c.code_lr

    def load(self, ids: Sequence[int]):
        codes = [self.codes[i].clone().requires_grad_(True) for i in ids]
        optims = []
        for i, code in zip(ids, codes):
            opt = torch.optim.Adam([code], lr=self.lr, weight_decay=0.0)
            if self.optim_states[i] is not None:
                opt.load_state_dict(self.optim_states[i])
            optims.append(opt)
        return codes, optims, [self.grids[i] for i in ids]

    def save(self, ids: Sequence[int], codes, optims) -> None:
        for i, code, opt in zip(ids, codes, optims):
            self.codes[i] = code.detach().clone()
            self.optim_states[i] = opt.state_dict()

    def stacked(self) -> torch.Tensor:
        return torch.stack(self.codes)


class Trainer:
    """Train ``model`` on ``scenes`` (dicts with ``images [V, H, W, 3]`` on white, ``c2w [V, 4, 4]``
    OpenCV and ``intrinsics [V, 4]``; e.g. ``fastfields.datasets.SRNDataset`` items).

    ``history`` collects per-iteration ``loss_diffusion``, ``pixel_loss``, ``psnr`` (of the
    decoder step's rays) and the wall time.
    """

    def __init__(self, model: SSDNeRF, scenes: Sequence[Dict], *, batch_size: int = 4, device=None, backend: str = "auto",
                 seed: int = 0) -> None:
        self.distributed = init_distributed()
        dist = _dist()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.device, self.backend = model.to(device), device, backend
        if dist is not None:  # every rank starts from rank 0's networks, as DistributedDataParallel does
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    dist.broadcast(tensor, 0)
        c = model.config
        # this rank's scenes
        self.scene_ids = list(range(self.rank, len(scenes), self.world))
        self.rays, self.targets, self.dt_gamma, self.n_pixels = {}, {}, {}, {}
        for i in self.scene_ids:
            s = scenes[i]
            images = torch.as_tensor(s["images"]).float()
            V, H, W, _ = images.shape
            o, d = camera_rays(torch.as_tensor(s["c2w"])[None].float(), torch.as_tensor(s["intrinsics"])[None].float(), H, W)
            self.rays[i] = (o[0].to(device), d[0].to(device))
            self.targets[i] = images.reshape(-1, 3).to(device)
            self.dt_gamma[i] = float(dt_gamma_of(torch.as_tensor(s["intrinsics"])[None].float(), c.dt_gamma_scale))
            self.n_pixels[i] = V * H * W
        self.generator = torch.Generator(device=device).manual_seed(seed + self.rank)
        self.cpu_generator = torch.Generator().manual_seed(seed + 1000 + self.rank)
        self.cache = SceneCache(model, len(scenes), device, torch.Generator(device=device).manual_seed(seed))
        self.batch_size = min(batch_size, len(self.scene_ids))
        self.opt_diffusion = torch.optim.Adam(model.diffusion.parameters(), lr=c.diffusion_lr, weight_decay=0.0)
        self.opt_decoder = torch.optim.Adam(model.decoder.parameters(), lr=c.decoder_lr, weight_decay=0.0)
        self.iteration = 0
        self.history: Dict[str, list] = {"loss_diffusion": [], "pixel_loss": [], "psnr": [], "time_s": []}

    def _warmup(self) -> None:
        """mmcv linear warmup of the shared networks' learning rates (ratio 1e-3)."""
        c = self.model.config
        factor = 1.0
        if self.iteration < c.warmup_iters:
            factor = 1 - (1 - self.iteration / c.warmup_iters) * (1 - 1e-3)
        for opt, lr in ((self.opt_diffusion, c.diffusion_lr), (self.opt_decoder, c.decoder_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * factor

    def _render_loss(self, ids, code, grids, n_rays: int, batches=None, step: int = 0):
        o_list, d_list, t_list = [], [], []
        for j, i in enumerate(ids):
            o, d = self.rays[i]
            if batches is not None:
                pick = batches[j][step % len(batches[j])]
            else:
                pick = torch.randperm(o.shape[0], generator=self.generator, device=self.device)[:n_rays]
            o_list.append(o[pick])
            d_list.append(d[pick])
            t_list.append(self.targets[i][pick])
        rgb, _, _, _ = render_rays(self.model.decoder, code, torch.stack(o_list), torch.stack(d_list), grids,
                                   dt_gamma=[self.dt_gamma[i] for i in ids], max_steps=self.model.config.max_steps,
                                   min_near=self.model.config.min_near, bg_color=self.model.config.bg_color, perturb=True,
                                   generator=self.generator, backend=self.backend)
        target = torch.stack(t_list)
        losses = pixel_loss(self.model, rgb, target, code, self.n_pixels[ids[0]])
        losses["mse"] = F.mse_loss(rgb.detach(), target)
        return losses

    def _update_grids(self, code, grids) -> None:
        c = self.model.config
        for s, grid in enumerate(grids):
            update_grid(grid, grid_density_fn(self.model.decoder, code[s].detach(), self.backend), bound=c.bound,
                        density_thresh=c.density_thresh, decay=0.9, generator=self.generator)

    def step(self) -> Dict[str, float]:
        model, c = self.model, self.model.config
        start = time.perf_counter()
        model.train()
        self._warmup()
        pick = torch.randperm(len(self.scene_ids), generator=self.cpu_generator)[: self.batch_size].tolist()
        ids = [self.scene_ids[k] for k in pick]
        codes_, code_opts, grids = self.cache.load(ids)
        self.opt_diffusion.zero_grad(set_to_none=False)
        self.opt_decoder.zero_grad(set_to_none=False)
        code = model.activate(torch.stack(codes_))
        loss_diff, _ = model.diffusion.loss(model.to_diffusion(code), generator=self.cpu_generator)
        loss_diff.backward()
        average_gradients([model.diffusion])
        self.opt_diffusion.step()
        prior_grad = [x.grad.detach().clone() for x in codes_]

        # inner steps: codes only, decoder frozen, the cached prior gradient added each time
        if c.extra_scene_step > 0:
            batches = [torch.randperm(self.rays[i][0].shape[0], generator=self.generator, device=self.device).split(c.n_inverse_rays)
                       for i in ids]
            model.decoder.requires_grad_(False)
            for k in range(c.extra_scene_step):
                code = model.activate(torch.stack(codes_))
                if k % c.update_extra_interval == 0:
                    self._update_grids(code, grids)
                losses = self._render_loss(ids, code, grids, c.n_inverse_rays, batches, k)
                for x, g in zip(codes_, prior_grad):
                    x.grad.copy_(g)
                losses["loss"].backward()
                for opt in code_opts:
                    opt.step()
            model.decoder.requires_grad_(True)

        code = model.activate(torch.stack(codes_))
        self._update_grids(code, grids)
        losses = self._render_loss(ids, code, grids, c.n_decoder_rays)
        for x, g in zip(codes_, prior_grad):
            x.grad.copy_(g)
        losses["loss"].backward()
        average_gradients([model.decoder])
        self.opt_decoder.step()
        for opt in code_opts:
            opt.step()
        self.cache.save(ids, codes_, code_opts)
        model.update_ema(self.iteration)
        self.iteration += 1
        log = {"loss_diffusion": float(loss_diff.detach()), "pixel_loss": float(losses["pixel_loss"].detach()),
               "psnr": -10 * math.log10(max(float(losses["mse"]), 1e-10)), "time_s": time.perf_counter() - start}
        for k, v in log.items():
            self.history[k].append(v)
        return log

    def train(self, iters: int, progress: bool = True, callback=None) -> Dict[str, list]:
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import trange

            bar = trange(iters, desc="SSDNeRF train", dynamic_ncols=True)
        for it in range(iters):
            log = self.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(diff=f"{log['loss_diffusion']:.3g}", pix=f"{log['pixel_loss']:.3g}", psnr=f"{log['psnr']:.1f}")
            if callback is not None:
                callback(it, self, log)
        if bar is not None:
            bar.close()
        self.model.eval()
        return self.history
