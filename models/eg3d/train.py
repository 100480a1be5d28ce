"""Training EG3D (``training/training_loop.py``'s schedule, small): alternating G / D phases
with lazy regularisation (density reg every ``density_reg_every`` steps, R1 every
``r1_every``; their learning rates and betas rescaled by ``interval / (interval + 1)`` as
EG3D), Adam ``betas=(0, 0.99)``, the EMA generator ``G_ema`` with EG3D's half-life
(``ema_kimg = batch * 10 / 32``, ramp-up 0.05), gradients all-reduced across processes when
launched with ``torchrun`` (``WORLD_SIZE > 1``: one process per device, as EG3D's manual
gradient averaging).

    fastfields eg3d train --out runs/tiny --steps 200 --batch 4
    torchrun --nproc_per_node 2 -m fastfields.models.eg3d.train --out runs/tiny   # multi-device
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .data import procedural_views, srn_views
from .discriminator import DualDiscriminator
from .generator import EG3D
from .loss import EG3DLoss


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _all_reduce_grads(module: torch.nn.Module, world: int) -> None:
    params = [p for p in module.parameters() if p.grad is not None]
    if world > 1 and params:
        import torch.distributed as dist

        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat)
        flat /= world
        torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    else:
        for p in params:
            torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)


def make_discriminator(G: EG3D, channel_base: Optional[int] = None, channel_max: Optional[int] = None,
                       mbstd_group_size: int = 4) -> DualDiscriminator:
    cfg = G.config
    return DualDiscriminator(cfg.c_dim, cfg.img_resolution, 3, channel_base=channel_base or cfg.channel_base,
                             channel_max=channel_max or cfg.channel_max, mbstd_group_size=mbstd_group_size)


def train(out: Optional[Path] = None, *, preset: str = "tiny", steps: int = 100, batch: int = 4, g_lr: float = 0.0025,
          d_lr: float = 0.002, r1_gamma: float = 1.0, r1_every: int = 16, blur_fade_kimg: float = 0.2,
          gpc_reg_fade_kimg: float = 0.2, n_views: int = 256, seed: int = 0, device=None,
          log_every: int = 10, progress: bool = True, render_backend: str = "auto", data=None,
          max_objects: int = 0) -> dict:
    """Train ``preset`` on posed views; returns ``{'G', 'D', 'G_ema', 'log'}`` and, with ``out``,
    writes ``G_ema.safetensors`` (our format), ``D.pt``, ``log.json`` and a sample.

    ``data``: an SRN-layout folder (``fastfields dataset build``; its ``train`` split, objects on
    white): the renderer's depth range and box follow its cameras (``ray_start/ray_end`` = camera
    distance -/+ the objects' radius, ``white_back``). Without it: :func:`procedural_views`."""
    rank, world = _distributed()
    if device is None:
        device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    overrides = {}
    if data is not None:
        from fastfields.datasets import FIT_RADIUS

        resolution = EG3D.presets[preset].img_resolution
        images, labels, distances = srn_views(data, resolution, max_objects=max_objects)
        radius = FIT_RADIUS * 1.1
        overrides = dict(ray_start=max(float(distances.min()) - radius, 0.05), ray_end=float(distances.max()) + radius,
                         box_warp=2 * radius, white_back=True, avg_camera_radius=float(distances.mean()),
                         avg_camera_pivot=(0.0, 0.0, 0.0))
    G = EG3D.from_preset(preset, overrides=overrides, render_backend=render_backend).to(device).train()
    G.requires_grad_(False)
    D = make_discriminator(G, mbstd_group_size=min(4, batch)).to(device).train().requires_grad_(False)
    if world > 1:  # identical starting weights on every process
        import torch.distributed as dist

        for module in (G, D):
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)
    G_ema = copy.deepcopy(G).eval()
    if data is None:
        images, labels = procedural_views(n_views, G.config.img_resolution, seed=seed,
                                          radius=G.config.avg_camera_radius, pivot=G.config.avg_camera_pivot,
                                          fov_deg=G.config.fov_deg)
    images, labels = images.to(device), labels.to(device)
    G.dataset_label_std.copy_(labels.std(0))
    G_ema.dataset_label_std.copy_(labels.std(0))
    cfg = G.config
    loss = EG3DLoss(G, D, r1_gamma=r1_gamma, blur_fade_kimg=blur_fade_kimg, gpc_reg_fade_kimg=gpc_reg_fade_kimg,
                    gpc_reg_prob=None if cfg.c_gen_conditioning_zero else cfg.gpc_reg_prob)
    phases = []
    for name, module, lr, interval in (("G", G, g_lr, cfg.density_reg_every if cfg.density_reg > 0 else None),
                                       ("D", D, d_lr, r1_every if r1_gamma > 0 else None)):
        if interval is None:
            opt = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
            phases.append((name + "both", module, opt, 1))
        else:
            ratio = interval / (interval + 1)
            opt = torch.optim.Adam(module.parameters(), lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)
            phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
    ema_kimg = batch * world * 10 / 32
    log, cur_nimg, start = [], 0, time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="eg3d train")
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), device="cpu")
        real_img, real_c = images[idx], labels[idx]
        entry = {"step": step}
        for name, module, opt, interval in phases:
            if step % interval != 0:
                continue
            gen_z = torch.randn(batch, G.z_dim, device=device)
            gen_c = labels[torch.randint(0, len(labels), (batch,))]
            module.requires_grad_(True)
            opt.zero_grad(set_to_none=True)
            entry.update(loss.accumulate_gradients(name, real_img, real_c, gen_z, gen_c, gain=interval,
                                                   cur_nimg=cur_nimg))
            module.requires_grad_(False)
            _all_reduce_grads(module, world)
            opt.step()
        cur_nimg += batch * world
        with torch.no_grad():  # EMA of G
            ema_nimg = min(ema_kimg * 1000, cur_nimg * 0.05)
            beta = 0.5 ** (batch * world / max(ema_nimg, 1e-8))
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        log.append(entry)
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix({k: f"{v:.3f}" for k, v in entry.items() if k != "step"})
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    if out is not None and rank == 0:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        G_ema.save_pretrained(out / "G_ema.safetensors")
        torch.save(D.state_dict(), out / "D.pt")
        (out / "log.json").write_text(json.dumps({"preset": preset, "data": None if data is None else str(data),
                                                  "steps": steps, "batch": batch, "world": world,
                                                  "seconds": seconds, "log": log}, indent=1))
        from fastfields import export

        with torch.no_grad():
            c = labels[:4] if data is not None else G_ema.camera(batch_size=4)
            img = G_ema(torch.randn(4, G.z_dim, device=device), c, noise_mode="const")["image"]
        row = ((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).reshape(-1, img.shape[-1], 3).cpu()
        export.save_image(out / "samples.png", row)
    return {"G": G, "D": D, "G_ema": G_ema, "log": log, "seconds": seconds}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="eg3d-train", help="output folder (G_ema.safetensors, D.pt, log.json)")
    parser.add_argument("--preset", default="tiny", help="model preset (tiny is the CPU-sized one)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4, help="batch per process")
    parser.add_argument("--glr", type=float, default=0.0025)
    parser.add_argument("--dlr", type=float, default=0.002)
    parser.add_argument("--gamma", type=float, default=1.0, help="R1 weight")
    parser.add_argument("--data", default=None, help="SRN-layout dataset folder (fastfields dataset build); "
                        "default: procedural spheres")
    parser.add_argument("--max-objects", type=int, default=0, help="use the first N objects of --data (0: all)")
    parser.add_argument("--views", type=int, default=256, help="procedural posed training views (without --data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default="auto", help="renderer backend")
    parser.add_argument("--no-progress", action="store_true")


def run_train(args) -> int:
    if args.steps < 1 or args.batch < 1:
        print("fastfields eg3d train: --steps and --batch must be >= 1", file=sys.stderr)
        return 2
    result = train(Path(args.out), preset=args.preset, steps=args.steps, batch=args.batch, g_lr=args.glr,
                   d_lr=args.dlr, r1_gamma=args.gamma, n_views=args.views, seed=args.seed, device=args.device,
                   progress=not args.no_progress, render_backend=args.backend, data=args.data,
                   max_objects=args.max_objects)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    last = {k: v for k, v in result["log"][-1].items() if k != "step"}
    print(f"fastfields eg3d train: {args.steps} steps in {result['seconds']:.1f} s; last losses {last}; wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.models.eg3d.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
