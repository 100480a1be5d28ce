"""DiffRF training: ``L = L_RF + lambda * alpha_bar_t^2 * L_RGB`` with EMA, mixed precision
and torch DDP.

``L_RF`` is DDPM's eps-prediction MSE at a uniform timestep; ``L_RGB`` renders the one-step
x0 estimate ``(f_t - sqrt(1 - ab_t) eps_theta) / sqrt(ab_t)`` through ``ff.voxel_sample`` +
``ff.composite`` along random rays of one training view of each field and compares it with
the ground-truth pixels; ``alpha_bar_t^2`` keeps it to the low-noise steps where the
estimate is meaningful (the paper's ``w_t``); ``lambda`` is ``config.rgb_loss_weight`` (1:
the paper's plain sum; 0: the "without rendering loss" ablation).

Training data are entries ``{"field" [4, R, R, R], "images" [V, H, W, 3], "c2w" [V, 4, 4],
"intrinsics" [V, 4]}``, what :class:`~fastfields.models.diffrf.field.FieldCache` returns.
"""

from __future__ import annotations

import copy
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .field import camera_rays, check_fields


class RaySource:
    """Per-entry rays and pixels, precomputed once: ``sample(n_rays)`` draws, for every field of
    a batch, ``n_rays`` random pixels of one random view."""

    def __init__(self, entries: Sequence[Dict[str, torch.Tensor]], device=None):
        if not entries:
            raise ValueError("RaySource: no training entries")
        self.fields, self.rays_o, self.rays_d, self.pixels = [], [], [], []
        for i, e in enumerate(entries):
            images = torch.as_tensor(e["images"]).float()
            if images.dim() != 4 or images.shape[-1] != 3:
                raise ValueError(f"RaySource: entry {i}: images must be [V, H, W, 3], got {list(images.shape)}")
            v, h, w, _ = images.shape
            o, d = camera_rays(e["c2w"], e["intrinsics"], h, w)
            self.fields.append(check_fields(e["field"], f"entry {i} field")[0].to(device))
            self.rays_o.append(o.to(device))
            self.rays_d.append(d.to(device))
            self.pixels.append(images.reshape(v, h * w, 3).to(device))
        self.device = device

    def __len__(self) -> int:
        return len(self.fields)

    def batch(self, index: torch.Tensor, n_rays: int, generator: Optional[torch.Generator] = None):
        """``fields [B, 4, R, R, R]``, ``rays_o, rays_d, target [B, n_rays, 3]`` for entries ``index [B]``."""
        fields, rays_o, rays_d, target = [], [], [], []
        for i in index.tolist():
            v = int(torch.randint(0, self.rays_o[i].shape[0], (1,), generator=generator))
            pick = torch.randint(0, self.rays_o[i].shape[1], (n_rays,), generator=generator).to(self.rays_o[i].device)
            fields.append(self.fields[i])
            rays_o.append(self.rays_o[i][v, pick])
            rays_d.append(self.rays_d[i][v, pick])
            target.append(self.pixels[i][v, pick])
        return torch.stack(fields), torch.stack(rays_o), torch.stack(rays_d), torch.stack(target)


def diffrf_loss(model, fields: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, target: torch.Tensor, *,
                t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, rgb_loss_weight: Optional[float] = None) -> Dict[str, torch.Tensor]:
    """The DiffRF loss of a batch (see the module docstring). ``t`` and ``noise`` default to a
    uniform draw and N(0, I). Returns ``loss``, ``loss_rf``, ``loss_rgb`` (the weighted mean
    over the batch, before ``lambda``) and ``t``."""
    schedule = model.schedule
    b = fields.shape[0]
    if t is None:
        t = torch.randint(0, schedule.timesteps, (b,), generator=generator).to(fields.device)
    if noise is None:
        noise = torch.randn(fields.shape, generator=generator).to(fields.device, fields.dtype)
    f_t = schedule.q_sample(fields, t, noise)
    eps = model.denoiser(f_t, t)
    loss_rf = F.mse_loss(eps.float(), noise.float())
    weight = model.config.rgb_loss_weight if rgb_loss_weight is None else rgb_loss_weight
    if weight > 0:
        x0 = schedule.predict_x0(f_t, t, eps.float())
        rgb, _, _ = model.render_rays(x0, rays_o, rays_d)
        w_t = schedule.alphas_cumprod[t] ** 2
        loss_rgb = (w_t * ((rgb - target) ** 2).mean(dim=(1, 2))).mean()
    else:
        loss_rgb = torch.zeros((), device=fields.device)
    return {"loss": loss_rf + weight * loss_rgb, "loss_rf": loss_rf, "loss_rgb": loss_rgb, "t": t}


class EMA:
    """Exponential moving average of a model's parameters (ADM: decay 0.9999), with the
    usual warm-up ``min(decay, (1 + n) / (10 + n))`` so early averages are not the init."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, p in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(p.detach(), 1.0 - d)


class _LossModule(nn.Module):
    """DDP synchronises the gradients of what runs in its wrapped module's ``forward``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return diffrf_loss(self.model, *args, **kwargs)


def train(model, entries: Sequence[Dict[str, torch.Tensor]], *, steps: int, batch_size: int = 4, lr: float = 1e-4,
          ema_decay: float = 0.9999, amp: Optional[bool] = None, grad_clip: float = 1.0, seed: int = 0,
          log_every: int = 10, progress: bool = False, rank: int = 0, world: int = 1,
          callback=None) -> Dict[str, object]:
    """Train ``model`` (a :class:`~fastfields.models.diffrf.DiffRF`, on its device) on ``entries``.

    AdamW (ADM: lr 1e-4, no weight decay). ``amp``: autocast the denoiser (bf16 where the
    GPU supports it, else fp16 with a grad scaler); default on for CUDA, off on CPU (CPU
    autocast is slower than float32 there). Under an initialised ``torch.distributed`` group
    the loss runs inside ``DistributedDataParallel`` and each rank draws its own batches.

    Returns a history dict: per logged step ``step``, ``loss``, ``loss_rf``, ``loss_rgb``;
    ``time_s``; and ``ema`` (the EMA model, a copy of ``model``).
    """
    import torch.distributed as dist

    if steps < 1 or batch_size < 1:
        raise ValueError(f"train: steps and batch_size must be >= 1, got {steps}, {batch_size}")
    device = model.betas.device
    source = RaySource(entries, device=device)
    amp = (device.type == "cuda") if amp is None else amp
    amp_dtype = torch.bfloat16 if (device.type != "cuda" or torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    loss_module = _LossModule(model)
    if dist.is_available() and dist.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(model, ema_decay)
    generator = torch.Generator().manual_seed(seed * 1000 + rank)
    history: Dict[str, List[float]] = {"step": [], "loss": [], "loss_rf": [], "loss_rgb": []}
    model.train()
    iterator = range(1, steps + 1)
    if progress and rank == 0:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="train diffrf")
    start = time.perf_counter()
    running = {k: 0.0 for k in ("loss", "loss_rf", "loss_rgb")}
    count = 0
    for step in iterator:
        index = torch.randint(0, len(source), (batch_size,), generator=generator)
        fields, rays_o, rays_d, target = source.batch(index, model.config.train_rays, generator)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            out = loss_module(fields, rays_o, rays_d, target, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.denoiser.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        ema.update(model)
        for k in running:
            running[k] += float(out[k].detach())
        count += 1
        if step % log_every == 0 or step == steps:
            history["step"].append(step)
            for k in running:
                history[k].append(running[k] / count)
            if progress and rank == 0 and hasattr(iterator, "set_postfix"):
                iterator.set_postfix(loss=f"{running['loss'] / count:.4f}", rgb=f"{running['loss_rgb'] / count:.4f}")
            if callback is not None:
                callback(step, history)
            running = {k: 0.0 for k in running}
            count = 0
    model.eval()
    return {**history, "time_s": time.perf_counter() - start, "ema": ema.model}


def plot_losses(history: Dict[str, object], path) -> Optional[object]:
    """A PNG of the logged losses (log scale), when matplotlib is installed; else None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "total"), ("loss_rf", "L_RF (eps MSE)"), ("loss_rgb", "alpha_bar^2 L_RGB")):
        values = history.get(key) or []
        if values and max(values) > 0:
            ax.plot(history["step"], values, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.set_title("DiffRF training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
