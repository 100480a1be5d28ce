"""``fastfields diffrf ...``: DiffRF jobs (train, sample, complete, from-image, make-data).

    fastfields diffrf make-data --out data/diffrf --objects 8            # procedural chairs/cars -> fitted fields
    fastfields diffrf train --data data/diffrf --preset tiny --steps 200 --out runs/diffrf
    torchrun --nproc_per_node 8 -m fastfields.apps.diffrf train --data DIR --preset paper
    fastfields diffrf sample --model runs/diffrf/ema --n 4 --steps 50 --out samples
    fastfields diffrf complete --model runs/diffrf/ema --field f.safetensors --mask m.npy --out done
    fastfields diffrf from-image view.png --pose pose.json --model runs/diffrf/ema --out single

``--data`` is a folder of fitted fields (``*.safetensors`` written by ``FieldCache``, e.g. by
``make-data``) or a posed-view dataset with a ``dataset.json`` (``fastfields.datasets``'s
SRN layout; its fields are fitted once, initialised from the mesh where one is named, and
cached under ``DIR/diffrf_fields``). Every job writes ``fields.safetensors``, per field a PNG
of four views, a turntable GIF and a PLY mesh (marching cubes of the density), and a
``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("diffrf", help="DiffRF: voxel radiance-field diffusion (train, sample, complete, from-image)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def _common(p, model_required: bool = False):
    p.add_argument("--model", required=model_required, help="a DiffRF checkpoint (save_pretrained file or folder)")
    p.add_argument("--preset", default="tiny", help="preset for a random model when no --model (default tiny)")
    p.add_argument("--out", default="diffrf-out", help="output folder")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default="auto", help="fastfields ops backend for rendering (torch: eager)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render-size", type=int, default=64, help="side of the exported renders (default 64)")
    p.add_argument("--turntable", type=int, default=24, help="turntable frames (default 24; 0: none)")
    p.add_argument("--no-progress", action="store_true")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    jobs = parser.add_subparsers(dest="job", required=True)
    p = jobs.add_parser("train", help="train on fitted fields with L_RF + alpha_bar^2 L_RGB")
    p.add_argument("--data", required=True, help="folder of fitted fields or a dataset with dataset.json")
    _common(p)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (ADM: 1e-4)")
    p.add_argument("--ema", type=float, default=0.9999, help="EMA decay (ADM: 0.9999)")
    p.add_argument("--rgb-weight", type=float, help="rendering-loss weight lambda (default: the preset's, 1; 0 = ablation)")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="mixed precision (auto: on for CUDA)")
    p.add_argument("--fit-iters", type=int, default=300, help="field-fitting steps for a dataset with views")
    p.add_argument("--samples", type=int, default=2, help="DDIM samples exported after training (default 2)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p = jobs.add_parser("sample", help="unconditional samples")
    _common(p)
    p.add_argument("--n", type=int, default=2)
    p.add_argument("--steps", type=int, help="DDIM steps (default: ancestral, all T steps)")
    p = jobs.add_parser("complete", help="masked completion (RePaint-style)")
    _common(p)
    p.add_argument("--field", required=True, help="a field [4, R, R, R] (.safetensors / .npz / .npy; key 'field')")
    p.add_argument("--mask", required=True, help="known voxels [R, R, R] (.npy / .npz / .safetensors; key 'mask'), "
                   "or 'x<0' / 'x>0' / 'z<0' / 'z>0' for half the box")
    p.add_argument("--steps", type=int, help="DDIM steps (default: ancestral)")
    p.add_argument("--jump-length", type=int, default=10)
    p.add_argument("--jump-n-sample", type=int, default=1, help="resampling jumps: > 1 enables them (RePaint: 10)")
    p = jobs.add_parser("from-image", help="single-image 3D synthesis guided by the rendering loss")
    p.add_argument("image", help="an RGB(A) image; alpha is composited on white")
    p.add_argument("--pose", required=True, help="JSON with 'c2w' (4x4, OpenCV) and 'intrinsics' (fx, fy, cx, cy pixels), "
                   "or 'azimuth,elevation,radius,fov_degrees' of an orbit camera looking at the origin (z up)")
    _common(p)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scale", type=float, default=1.0, help="guidance strength (default 1)")
    p = jobs.add_parser("make-data", help="procedural chairs and cars -> posed views -> fitted fields (a FieldCache)")
    p.add_argument("--out", required=True)
    p.add_argument("--objects", type=int, default=8, help="objects per category (default 8)")
    p.add_argument("--views", type=int, default=12)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--fit-iters", type=int, default=200)
    p.add_argument("--resolution", type=int, default=32, help="field grid side (default 32, the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


# ---------------------------------------------------------------------------------------
# Helpers


def _device(args):
    import torch

    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model(args, device):
    from fastfields.models.diffrf import DiffRF

    if getattr(args, "model", None):
        return DiffRF.from_pretrained(args.model, device=device, backend=args.backend).eval()
    import torch

    torch.manual_seed(args.seed)
    print(f"diffrf: no --model, using a randomly initialised {args.preset!r} model", file=sys.stderr)
    return DiffRF.from_preset(args.preset, backend=args.backend).to(device).eval()


def load_array(path: str, key: str):
    """A tensor from ``.safetensors`` / ``.npz`` (entry ``key``, or the only one) / ``.npy``."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"fastfields diffrf: no such file {path!r}")
    if p.suffix == ".safetensors":
        from fastfields.models._pretrained import read_safetensors

        tensors, _ = read_safetensors(p)
    elif p.suffix == ".npz":
        tensors = {k: torch.from_numpy(v) for k, v in np.load(p).items()}
    elif p.suffix == ".npy":
        return torch.from_numpy(np.load(p))
    else:
        raise SystemExit(f"fastfields diffrf: {path!r}: expected .safetensors, .npz or .npy")
    if key in tensors:
        return tensors[key]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise SystemExit(f"fastfields diffrf: {path!r} has no {key!r} entry (has {sorted(tensors)})")


def export_fields(model, fields, out: Path, *, render_size: int = 64, turntable: int = 24, prefix: str = "field"):
    """Write ``fields.safetensors`` and, per field, ``<prefix>_<i>_views.png`` (four views),
    ``<prefix>_<i>.gif`` (turntable) and ``<prefix>_<i>.ply`` (mesh). Returns what it wrote."""
    import torch

    from fastfields import export, voxel_sample
    from fastfields.models._pretrained import write_safetensors
    from fastfields.models.diffrf.synthetic import orbit_views

    out.mkdir(parents=True, exist_ok=True)
    fields = fields.detach().float().cpu()
    written = {"fields": str(write_safetensors(out / "fields.safetensors", {"field": fields}))}
    bound = model.config.bound
    c2w, k = orbit_views(4, render_size, render_size, radius=2.6 * bound, azimuth_start=30.0)
    tc2w, tk = orbit_views(max(turntable, 1), render_size, render_size, radius=2.6 * bound)
    device = model.betas.device
    for i, field in enumerate(fields):
        f = field.to(device)
        views = model.render(f, c2w, k, render_size, render_size)
        written[f"{prefix}_{i}_views"] = str(export.save_image(out / f"{prefix}_{i}_views.png", torch.cat(list(views), dim=1)))
        if turntable > 0:
            frames = model.render(f, tc2w, tk, render_size, render_size)
            written[f"{prefix}_{i}_turntable"] = str(export.save_video(out / f"{prefix}_{i}.gif", frames, fps=12))
        grid = field[0].permute(2, 1, 0)  # [z, y, x] -> [ix, iy, iz], the lattice of export.grid_points
        vertices, faces = export.marching_cubes(grid, 0.0, bound)
        if len(faces):
            xyz = torch.from_numpy(vertices)[None].to(device) / bound
            from fastfields import volume_channels_last

            values = voxel_sample(volume_channels_last(f[None]), xyz, align_corners=True, padding="border")[0]
            colors = ((values[:, 1:] + 1) / 2).clamp(0, 1).cpu().numpy()
            written[f"{prefix}_{i}_mesh"] = str(export.save_mesh(out / f"{prefix}_{i}.ply", vertices, faces, colors))
    return written


def _parse_pose(text: str, height: int, width: int):
    import math

    import torch

    from fastfields.rendering import orbit_cameras

    p = Path(text)
    if p.is_file():
        blob = json.loads(p.read_text())
        return torch.tensor(blob["c2w"], dtype=torch.float32).reshape(4, 4), torch.tensor(blob["intrinsics"], dtype=torch.float32).reshape(4)
    try:
        azimuth, elevation, radius, fov = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"fastfields diffrf from-image: --pose must be a JSON file or 'azimuth,elevation,radius,fov', got {text!r}") from None
    c2w = orbit_cameras(1, radius, elevation=elevation, azimuth_start=azimuth, convention="opencv", up="z")[0]
    focal = 0.5 * height / math.tan(math.radians(fov) / 2)
    return c2w, torch.tensor([focal, focal, width / 2, height / 2])


def _half_mask(spec: str, r: int):
    import torch

    axis = {"x": 2, "y": 1, "z": 0}[spec[0]]
    coord = torch.linspace(-1, 1, r)
    side = coord < 0 if spec[1] == "<" else coord > 0
    shape = [1, 1, 1]
    shape[axis] = r
    return side.view(shape).expand(r, r, r).float()


#: Half-side of the field box for ``fastfields.datasets`` objects (normalised into
#: ``[-0.5, 0.5]^3``): a 10 % margin, so no surface sits on the grid's outer voxels.
DATASET_BOUND = 0.55


def _dataset_mesh(record):
    """The mesh behind a ``dataset.json`` record (procedural seed or shipped mesh), or None."""
    from fastfields.datasets import CATEGORIES, load_mesh, make_shape

    category = record.get("category", "")
    if category in CATEGORIES and record.get("seed") is not None:
        return make_shape(category, int(record["seed"]))
    if category.startswith("mesh:"):
        return load_mesh(category[len("mesh:"):])
    return None


def load_entries(data: str, args, device):
    """``(entries, bound)``: training entries from a folder of fitted fields, or from a dataset
    with dataset.json (its ``train`` split; fitted once, mesh-initialised, cached)."""
    from fastfields.models.diffrf.field import FieldCache

    root = Path(data)
    if (root / "dataset.json").is_file():
        try:
            from fastfields.datasets import SRNDataset
        except ImportError:
            raise SystemExit("fastfields diffrf: reading a dataset.json needs fastfields.datasets; "
                             "pass a folder of fitted fields (fastfields diffrf make-data)") from None
        info = json.loads((root / "dataset.json").read_text())
        records = {r["id"]: r for r in info.get("objects", [])}
        split = "train" if (root / "train").is_dir() else None
        dataset = SRNDataset(root, split=split)
        cache = FieldCache(root / "diffrf_fields")
        entries = []
        for i in range(len(dataset)):
            item = dataset[i]
            mesh = _dataset_mesh(records[item["id"]]) if item["id"] in records else None
            entries.append(cache.get(item, mesh=mesh, iters=args.fit_iters, bound=DATASET_BOUND,
                                     progress=not args.no_progress))
            print(f"diffrf: field of {item['id']} ready ({'mesh init' if mesh is not None else 'no mesh'})", flush=True)
        return entries, DATASET_BOUND
    cache = FieldCache(root)
    ids = cache.ids()
    if not ids:
        raise SystemExit(f"fastfields diffrf: {data!r} holds no fitted fields (*.safetensors) and no dataset.json")
    bounds = set()
    for i in ids:
        _, metadata = read_safetensors_meta(cache.path(i))
        bounds.add(float(json.loads(metadata.get("fit_options", "{}")).get("bound", 1.0)))
    if len(bounds) > 1:
        raise SystemExit(f"fastfields diffrf: {data!r} mixes fields fitted in different boxes {sorted(bounds)}")
    return [cache.load(i) for i in ids], bounds.pop()


def read_safetensors_meta(path):
    from fastfields.models._pretrained import read_safetensors

    return read_safetensors(path)


# ---------------------------------------------------------------------------------------
# Jobs


def _train(args) -> int:
    import torch
    import torch.distributed as dist

    from fastfields.models.diffrf import DiffRF
    from fastfields.models.diffrf.train import plot_losses, train

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if distributed else (0, 1)
    device = _device(args)
    if distributed and device.type == "cuda":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        out = Path(args.out)
        entries, bound = load_entries(args.data, args, device)
        overrides = {"bound": bound} if args.rgb_weight is None else {"bound": bound, "rgb_loss_weight": args.rgb_weight}
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        if args.model:
            model = DiffRF.from_pretrained(args.model, overrides=overrides, backend=args.backend)
        else:
            res = int(entries[0]["field"].shape[-1])
            model = DiffRF.from_preset(args.preset, overrides={"resolution": res, **overrides}, backend=args.backend)
        model.to(device)
        if rank == 0:
            n = sum(p.numel() for p in model.denoiser.parameters())
            print(f"diffrf train: {len(entries)} fields, {n / 1e6:.2f} M parameters, {world} process(es) on {device}", flush=True)
        amp = None if args.amp == "auto" else args.amp == "on"
        history = train(model, entries, steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema,
                        amp=amp, seed=args.seed, log_every=args.log_every, progress=not args.no_progress, rank=rank, world=world)
        if rank != 0:
            return 0
        ema = history.pop("ema")
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out / "model")
        ema.save_pretrained(out / "ema")
        summary = {"steps": args.steps, "time_s": history["time_s"], "history": history, "fields": len(entries)}
        plot = plot_losses(history, out / "loss.png")
        summary["loss_plot"] = None if plot is None else str(plot)
        if args.samples > 0:
            g = torch.Generator(device=device).manual_seed(args.seed)
            samples = ema.sample(args.samples, steps=args.sample_steps, generator=g, progress=not args.no_progress)
            summary["exports"] = export_fields(ema, samples, out / "samples", render_size=args.render_size,
                                               turntable=args.turntable, prefix="sample")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"diffrf train: loss {history['loss'][0]:.4f} -> {history['loss'][-1]:.4f} in {history['time_s']:.1f} s; "
              f"wrote {out}/ (model/, ema/, loss.png, samples/)", flush=True)
        return 0
    finally:
        if distributed:
            dist.destroy_process_group()


def _make_data(args) -> int:

    from fastfields.models.diffrf.field import FieldCache, render_views
    from fastfields.models.diffrf.synthetic import orbit_views, synthetic_object

    cache = FieldCache(args.out)
    s = args.image_size
    for kind in ("chair", "car"):
        for i in range(args.objects):
            seed = args.seed * 10000 + i
            gt = synthetic_object(kind, seed, 64)
            c2w, k = orbit_views(args.views, s, s, elevation=20.0 + 10.0 * (i % 2), azimuth_start=7.0 * i)
            images = render_views(gt, c2w, k, s, s, n_samples=192)
            item = {"id": f"{kind}_{seed:05d}", "images": images, "c2w": c2w, "intrinsics": k}
            cache.get(item, iters=args.fit_iters, resolution=args.resolution, progress=not args.no_progress)
            print(f"make-data: {item['id']}", flush=True)
    print(f"make-data: wrote {len(cache.ids())} fitted fields to {args.out}", flush=True)
    return 0


def run(args) -> int:
    import time

    import torch

    if args.job == "train":
        return _train(args)
    if args.job == "make-data":
        return _make_data(args)
    device = _device(args)
    model = load_model(args, device)
    out = Path(args.out)
    g = torch.Generator(device=device).manual_seed(args.seed)
    progress = not args.no_progress
    start = time.perf_counter()
    summary = {"job": args.job}
    if args.job == "sample":
        fields = model.sample(args.n, steps=args.steps, generator=g, progress=progress)
        summary["steps"] = args.steps or model.config.timesteps
    elif args.job == "complete":
        field = load_array(args.field, "field")
        r = model.config.resolution
        mask = _half_mask(args.mask, r) if args.mask in ("x<0", "x>0", "y<0", "y>0", "z<0", "z>0") else load_array(args.mask, "mask")
        fields = model.complete(field, mask.float(), steps=args.steps, generator=g, jump_length=args.jump_length,
                                jump_n_sample=args.jump_n_sample, progress=progress)
        summary["known_fraction"] = float(mask.float().mean())
    else:  # from-image
        import imageio.v3 as iio

        from fastfields.models._pretrained import as_tensor

        image = as_tensor(iio.imread(args.image), "image", dtype=torch.float32) / 255.0
        if image.shape[-1] == 4:
            image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])
        h, w = image.shape[:2]
        c2w, k = _parse_pose(args.pose, h, w)
        fields = model.from_image(image[..., :3], c2w, k, n=args.n, steps=args.steps, scale=args.scale, generator=g,
                                  progress=progress)
        rendered = model.render(fields[0], c2w[None], k[None], h, w)[0]
        from fastfields.metrics import psnr

        summary["input_view_psnr"] = psnr(rendered, image[..., :3])
    summary["time_s"] = time.perf_counter() - start
    summary["exports"] = export_fields(model, fields, out, render_size=args.render_size, turntable=args.turntable)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"diffrf {args.job}: {fields.shape[0]} field(s) in {summary['time_s']:.1f} s; wrote {out}/", flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.apps.diffrf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
