"""``fastfields eg3d sample`` / ``fastfields eg3d train``: EG3D images, turntables, depth maps
and meshes from a checkpoint; training at the tiny preset on posed renders.

    fastfields eg3d sample --checkpoint ffhq512-128.safetensors --seeds 0-7 --psi 0.7 --out out/
    fastfields eg3d sample --seeds 0-3 --out out/          # no checkpoint: untrained tiny preset (plumbing only)
    fastfields eg3d train --out runs/tiny --steps 200      # tiny preset on procedurally rendered shapes
    fastfields eg3d train --data data-out --out runs/chairs  # on a `fastfields dataset build` folder

Checkpoints are our safetensors (``python -m fastfields.models.eg3d.convert IN.pkl OUT.safetensors``
turns an official pickle into one); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List

MESH_FORMATS = ("ply", "obj", "glb")


def parse_seeds(text: str) -> List[int]:
    """``"0-7"``, ``"1,4,9"`` or a mix (``"0-3,10"``) -> the seeds, in order."""
    seeds: List[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must look like 0-7 or 1,4,9, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds must name non-negative seeds, got {text!r}")
    return seeds


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("eg3d", help="EG3D 3D GAN: sample images / turntables / meshes, or train (tiny)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = parser.add_subparsers(dest="eg3d_job", required=True)
    sample = jobs.add_parser("sample", help="images, turntable GIF/MP4, depth maps and a mesh per seed")
    add_sample_arguments(sample)
    sample.set_defaults(run=run_sample)
    train = jobs.add_parser("train", help="train the tiny preset on posed renders (CPU-sized)")
    from fastfields.models.eg3d.train import add_train_arguments, run_train

    add_train_arguments(train)
    train.set_defaults(run=run_train)
    return parser


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="EG3D safetensors file or folder (default: untrained tiny preset)")
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-3"), help="e.g. 0-7 or 1,4,9")
    parser.add_argument("--psi", type=float, default=0.7, help="truncation psi")
    parser.add_argument("--truncation-cutoff", type=int, default=14, help="truncate the first N ws (gen_samples: 14)")
    parser.add_argument("--out", default="eg3d-out", help="output folder")
    parser.add_argument("--frames", type=int, default=24, help="turntable frames per seed (0: none)")
    parser.add_argument("--yaw-range", type=float, default=0.35, help="turntable yaw amplitude (radians)")
    parser.add_argument("--pitch-range", type=float, default=0.15, help="turntable pitch amplitude (radians)")
    parser.add_argument("--mesh-resolution", type=int, default=None, help="density grid side (default 256; tiny: 64; 0: none)")
    parser.add_argument("--mesh-threshold", type=float, default=10.0, help="raw sigma iso-level (gen_samples: 10)")
    parser.add_argument("--mesh-format", choices=MESH_FORMATS, default="ply")
    parser.add_argument("--neural-rendering-resolution", type=int, default=None)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--backend", default="auto", help="renderer backend: auto (fused), torch (unfused), cpu, triton")
    parser.add_argument("--no-progress", action="store_true")


def _to_unit(image):
    """EG3D images are in [-1, 1]: [N, 3, H, W] -> [N, H, W, 3] in [0, 1]."""
    return ((image.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def _depth_to_unit(depth):
    d = depth[:, 0].float()
    lo, hi = d.amin(dim=(1, 2), keepdim=True), d.amax(dim=(1, 2), keepdim=True)
    d = 1 - (d - lo) / (hi - lo).clamp_min(1e-8)  # near = bright
    return d.unsqueeze(-1).expand(*d.shape, 3).cpu()


def run_sample(args) -> int:
    if args.frames < 0 or (args.mesh_resolution is not None and args.mesh_resolution < 0):
        print("fastfields eg3d sample: --frames and --mesh-resolution must be >= 0", file=sys.stderr)
        return 2
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from fastfields import export
    from fastfields.models.eg3d import EG3D
    from fastfields.models.eg3d.renderer import run_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.checkpoint:
        G = EG3D.from_pretrained(args.checkpoint, device=device, render_backend=args.backend)
        source = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        G = EG3D.from_preset("tiny", device=device, render_backend=args.backend)
        source = "the tiny preset"
        print("fastfields eg3d sample: WARNING: no --checkpoint: UNTRAINED tiny-preset weights; the images, "
              "turntables and meshes are noise (a plumbing check). Convert an official pickle with "
              "`python -m fastfields.models.eg3d.convert IN.pkl OUT.safetensors` and pass --checkpoint.")
    G.eval().requires_grad_(False)
    cfg = G.config
    mesh_res = args.mesh_resolution if args.mesh_resolution is not None else (256 if args.checkpoint else 64)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"fastfields eg3d sample: {source} on {device}, {cfg.img_resolution}^2 images "
          f"({G.neural_rendering_resolution}^2 neural rendering), seeds {args.seeds}, psi {args.psi}")

    cutoff = args.truncation_cutoff if args.truncation_cutoff > 0 else None
    front = G.camera()
    images = []
    for seed in tqdm(args.seeds, desc="seeds", disable=args.no_progress):
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            ws = G.mapping(z, front, truncation_psi=args.psi, truncation_cutoff=cutoff)
            result = G.synthesis(ws, front, neural_rendering_resolution=args.neural_rendering_resolution,
                                 noise_mode="const", generator=gen, return_planes=True)
        name = f"seed{seed:04d}"
        image = _to_unit(result["image"])[0]
        images.append(image)
        export.save_image(out / f"{name}.png", image)
        export.save_image(out / f"{name}_raw.png", _to_unit(result["image_raw"])[0])
        export.save_image(out / f"{name}_depth.png", _depth_to_unit(result["image_depth"])[0])
        np.save(out / f"{name}_depth.npy", result["image_depth"][0, 0].cpu().numpy())

        if args.frames:
            frames = []
            for k in tqdm(range(args.frames), desc=f"{name} turntable", leave=False, disable=args.no_progress):
                t = 2 * math.pi * k / args.frames
                c = G.camera(yaw=args.yaw_range * math.sin(t), pitch=args.pitch_range * math.cos(t))
                with torch.no_grad():
                    frame = G.synthesis(ws, c, noise_mode="const", use_cached_backbone=k > 0, cache_backbone=k == 0,
                                        generator=gen)["image"]
                frames.append(_to_unit(frame)[0])
            export.save_video(out / f"{name}.gif", frames, fps=args.fps)
            try:
                import imageio_ffmpeg  # noqa: F401
            except ImportError:
                if seed == args.seeds[0]:
                    print("fastfields eg3d sample: imageio-ffmpeg is not installed: GIF only (pip install imageio-ffmpeg)")
            else:
                export.save_video(out / f"{name}.mp4", frames, fps=args.fps)

        if mesh_res:
            planes, half = result["planes"], cfg.box_warp / 2

            def density(points):
                with torch.no_grad():
                    return run_model(planes, G.decoder, points[None], cfg.box_warp)["sigma"][0, :, 0]

            grid = export.density_grid(density, mesh_res, half, chunk=1 << 18, device=device)
            level = args.mesh_threshold
            if not (grid.min() < level < grid.max()):
                level = float(grid.quantile(0.9)) if grid.numel() <= 1 << 24 else float(grid.mean())
                print(f"  {name}: no surface at sigma = {args.mesh_threshold} (sigma in [{grid.min():.3g}, "
                      f"{grid.max():.3g}]); meshing at the 90th percentile {level:.3g} instead")
            vertices, faces = export.marching_cubes(grid, level, half)
            if len(faces):
                export.save_mesh(out / f"{name}.{args.mesh_format}", vertices, faces)
            else:
                print(f"  {name}: empty mesh; none written")

    columns = min(len(images), 4)
    rows = math.ceil(len(images) / columns)
    H, W, _ = images[0].shape
    grid_image = torch.ones(rows * H, columns * W, 3)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid_image[r * H:(r + 1) * H, c * W:(c + 1) * W] = image
    export.save_image(out / "grid.png", grid_image)
    print(f"fastfields eg3d sample: wrote {out}/grid.png and per-seed images, depth maps"
          f"{', turntables' if args.frames else ''}{', meshes' if mesh_res else ''}")
    return 0
