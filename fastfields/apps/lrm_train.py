"""``fastfields lrm-train``: a minimal LRM training loop on posed multi-view scenes, data
parallel through ``torchrun`` when there are several GPUs.

    fastfields lrm-train --data scene.npz --preset tiny --steps 200 --out runs/tiny
    torchrun --nproc_per_node 8 -m fastfields.apps.lrm_train --data a.npz --data b/ --preset openlrm-small

Each step, every process draws a scene and ``1 + --views`` of its views: the first is the
input image, and all of them are rendering targets (OpenLRM's recipe). The poses are
re-expressed so the input view is LRM's canonical camera (``normalize_cameras``); the loss
is the pixel MSE on ``--rays`` random rays. Scenes: the fastfields npz layout
(:func:`fastfields.data.load_npz`) or a Blender / NeRF-synthetic folder
(:func:`fastfields.data.load_blender`), rescaled by ``--scene-scale`` so the object fits
the ``[-1, 1]^3`` box. The result is written with ``save_pretrained`` (OpenLRM's v1.1 layout).

Under ``torchrun`` (``WORLD_SIZE`` set) the processes join one group (NCCL on GPUs, gloo on
CPUs) and ``DistributedDataParallel`` averages the gradients.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from ._common import check_float, check_input_file, check_int, check_out_dir, resolve_device, run_job
from .lrm import PRESET_NAMES


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("lrm-train", help="minimal LRM training on posed multi-view scenes (torchrun for DDP)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, help="scene: .npz or Blender folder (repeatable)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="tiny", help="model size when not --init")
    parser.add_argument("--init", help="start from this OpenLRM checkpoint instead of random weights")
    parser.add_argument("--out", default="lrm-train-out", help="where the trained model is saved")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--views", type=int, default=3, help="target views besides the input view, per step")
    parser.add_argument("--rays", type=int, default=4096, help="random rays rendered per step and process")
    parser.add_argument("--render-size", type=int, default=None, help="target image side (default: the data's)")
    parser.add_argument("--scene-scale", type=float, default=0.5,
                        help="world scale so the object fits [-1, 1]^3 (NeRF-synthetic: 0.5 puts cameras at ~2)")
    parser.add_argument("--lr", type=float, default=4e-4, help="AdamW learning rate (OpenLRM: 4e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--backend", default="auto", help="auto (fused kernels) or torch (unfused reference)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)


def _load_scene(path: str):
    from fastfields.data import load_blender, load_npz

    return load_npz(path) if Path(path).suffix == ".npz" else load_blender(path)


def sample_batch(scenes, config, n_views: int, scene_scale: float, render_size, generator):
    """One training example: input image, its canonical camera and ``1 + n_views`` targets."""
    import torch

    from fastfields.models.lrm import camera_feature, normalize_cameras, resize_source_image

    scene = scenes[int(torch.randint(len(scenes), (1,), generator=generator))]
    if len(scene) < 1 + n_views:
        raise ValueError(f"lrm-train: a scene has {len(scene)} views; --views {n_views} needs at least {1 + n_views}")
    index = torch.randperm(len(scene), generator=generator)[: 1 + n_views]
    images = scene.images[index].permute(0, 3, 1, 2)  # [M, 3, H, W]
    c2w = scene.c2w[index].clone()
    c2w[:, :3, 3] *= scene_scale
    c2w = normalize_cameras(c2w, source=0)
    H, W = images.shape[-2:]
    # The focal length is a fraction of the image size, so it survives the resize.
    intrinsics = torch.tensor([[scene.focal / W, scene.focal / H, 0.5, 0.5]]).expand(len(index), 4)
    size = render_size or H
    # OpenLRM's dataset resizes the source and the target views alike: bicubic, align_corners=True, clamp.
    targets = resize_source_image(images, size)
    source = resize_source_image(images[:1], config.image_size)
    return {
        "image": source,
        "source_camera": camera_feature(c2w[:1], intrinsics[:1], config.camera_feature),
        "c2w": c2w[None],
        "intrinsics": intrinsics[None],
        "target": targets.permute(0, 2, 3, 1)[None],
        "background": float(scene.background.mean()) if scene.background is not None else 1.0,
    }


def run(args) -> int:
    import torch
    import torch.distributed as dist

    for flag in ("--steps", "--views", "--rays", "--log-every"):
        check_int(flag, getattr(args, flag[2:].replace("-", "_")), minimum=1)
    check_int("--render-size", args.render_size, minimum=1)
    for flag in ("--scene-scale", "--lr"):
        check_float(flag, getattr(args, flag[2:].replace("-", "_")), positive=True)
    check_float("--weight-decay", args.weight_decay, minimum=0.0)
    check_float("--grad-clip", args.grad_clip)
    for path in args.data:
        check_input_file("--data", path)
    if args.init:
        check_input_file("--init", args.init)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "RANK" in os.environ
    rank, world, local_rank = 0, 1, 0
    if distributed:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device:
        device = resolve_device(args.device)
    else:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if rank == 0:
        check_out_dir(Path(args.out).parent if Path(args.out).suffix == ".safetensors" else args.out)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(args, rank, world, device, distributed)
    finally:
        if distributed:
            dist.destroy_process_group()


def _train(args, rank: int, world: int, device, distributed: bool) -> int:
    import torch
    from torch.nn.parallel import DistributedDataParallel

    from fastfields.models.lrm import LRM, save_pretrained

    class TrainStep(torch.nn.Module):
        """``forward = model.training_step``: DDP synchronises the gradients of what runs
        inside its wrapped module's ``forward``."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, batch, generator):
            return self.model.training_step(batch, n_rays=args.rays, generator=generator)

    # With one image per process the register tokens' gradient is a strided slice of the
    # token gradient; DDP copies it into its bucket correctly but warns on every step.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    torch.manual_seed(args.seed)  # the same initial weights on every process
    model = LRM.from_pretrained(args.init, backend=args.backend) if args.init else LRM.from_preset(args.preset, backend=args.backend)
    model.to(device).train()
    step_module = TrainStep(model)
    if distributed:
        step_module = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    scenes = [_load_scene(path) for path in args.data]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed * 1000 + rank)  # different views on every process
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"lrm-train: {n_params / 1e6:.1f}M parameters, {world} process(es) on {device}, {len(scenes)} scene(s)")
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = sample_batch(scenes, model.config, args.views, args.scene_scale, args.render_size, generator)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out = step_module(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        if rank == 0 and (step % args.log_every == 0 or step == 1 or step == args.steps):
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}  loss {out['loss'].item():.5f}  psnr {out['psnr'].item():6.2f} dB  "
                  f"{elapsed / step * 1000:.0f} ms/step", flush=True)
    if rank == 0:
        folder = save_pretrained(model, args.out)
        print(f"saved {folder}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.apps.lrm_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_job("fastfields lrm-train", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
