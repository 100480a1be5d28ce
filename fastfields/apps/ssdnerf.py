"""``fastfields ssdnerf train|sample|reconstruct``: SSDNeRF's three jobs.

    fastfields ssdnerf train --preset tiny --scenes 12 --iters 200 --out runs/tiny     # procedural cars/chairs
    fastfields ssdnerf sample --checkpoint runs/tiny/model.safetensors --n 4 --out samples
    fastfields ssdnerf reconstruct --checkpoint runs/tiny/model.safetensors --image car.png --out rec

``train`` writes ``model.safetensors`` (our format; official weights come through
``python -m fastfields.models.ssdnerf.convert``), ``codes.pt`` (the trained scene codes),
``metrics.json`` and renders of a few training scenes. ``sample`` and ``reconstruct`` write,
per scene, renders, a turntable GIF and MP4, and a marching-cubes mesh (PLY).
``reconstruct`` takes one image (on white, or RGBA) with its camera (``--pose`` a 4x4 OpenCV
camera-to-world in a .npy/.txt, ``--focal`` in pixels) or SRN's default camera (distance 1.3,
elevation 20 degrees, focal 131.25 px at 128^2).
"""

from __future__ import annotations

BACKENDS = ("auto", "torch", "triton", "cuda", "cpu")


def add_parser(commands) -> None:
    parser = commands.add_parser("ssdnerf", help="SSDNeRF: train a triplane diffusion prior, sample, reconstruct from one view",
                                 description=__doc__.split("\n\n")[0])
    jobs = parser.add_subparsers(dest="job", required=True)
    common = dict(device=None, backend="auto")
    for name, helptext in (("train", "single-stage training on posed views"), ("sample", "unconditional DDIM samples"),
                           ("reconstruct", "single-view reconstruction (guided DDIM + fine-tuning)")):
        p = jobs.add_parser(name, help=helptext)
        p.add_argument("--preset", default="tiny", help="preset for a new model (default tiny)")
        p.add_argument("--checkpoint", help="our safetensors file or folder (train: resume from it)")
        p.add_argument("--out", default=f"ssdnerf-{name}", help="output folder")
        p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
        p.add_argument("--backend", choices=BACKENDS, default="auto", help="fastfields ops backend (torch = eager)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--res", type=int, help="render size (default: the preset's test_img_size)")
        p.add_argument("--turntable", type=int, default=24, help="turntable frames (0: none)")
        p.add_argument("--mesh-res", type=int, default=64, help="marching-cubes resolution (0: no mesh)")
        p.add_argument("--mesh-threshold", type=float, default=10.0, help="density iso-level (official default 10)")
        p.add_argument("--no-progress", action="store_true")
        if name == "train":
            p.add_argument("--data", help="an SRN-layout folder (read with fastfields.datasets.SRNDataset); default: procedural scenes")
            p.add_argument("--scenes", type=int, default=8, help="procedural scenes (default 8)")
            p.add_argument("--views", type=int, default=8, help="views per procedural scene (default 8)")
            p.add_argument("--iters", type=int, default=100)
            p.add_argument("--batch", type=int, default=4)
        if name == "sample":
            p.add_argument("--n", type=int, default=2, help="number of samples")
        if name == "reconstruct":
            p.add_argument("--image", required=True, help="input view (PNG/JPEG; RGBA is composited on white)")
            p.add_argument("--pose", help="4x4 OpenCV camera-to-world (.npy or whitespace text); default: SRN camera")
            p.add_argument("--focal", type=float, help="focal length in pixels (default: SRN's, scaled to the image)")
            p.add_argument("--no-guidance", action="store_true", help="fine-tune a fresh code without the diffusion prior")
        p.set_defaults(run=run, **common)


def _load_model(args):
    from ..models.ssdnerf import SSDNeRF

    if args.checkpoint:
        return SSDNeRF.from_pretrained(args.checkpoint)
    return SSDNeRF.from_preset(args.preset)


def _outputs(model, code, grids, out, args, prefix="scene"):
    """Turntable GIF + MP4, a few renders and a mesh per scene."""
    import torch

    from ..export import density_grid, marching_cubes, save_image, save_mesh, save_video
    from ..models.ssdnerf.reconstruct import render
    from ..models.ssdnerf.scenes import SRN_FOCAL_128
    from ..rendering import orbit_cameras

    res = args.res or model.config.test_img_size
    f = SRN_FOCAL_128 * res / 128
    n = max(args.turntable, 4)
    c2w = orbit_cameras(n, 1.3, elevation=20.0, convention="opencv", up="z")[None].expand(code.shape[0], -1, -1, -1)
    K = torch.tensor([f, f, res / 2, res / 2]).expand(code.shape[0], n, 4)
    frames = render(model, code, grids, c2w, K, res, res, backend=args.backend)
    for s in range(code.shape[0]):
        for k in range(0, n, max(n // 4, 1)):
            save_image(out / f"{prefix}{s:02d}_view{k:02d}.png", frames[s, k])
        if args.turntable:
            save_video(out / f"{prefix}{s:02d}_turntable.gif", frames[s], fps=12)
            try:
                save_video(out / f"{prefix}{s:02d}_turntable.mp4", frames[s], fps=12)
            except Exception as e:  # MP4 needs imageio-ffmpeg; the GIF is always written
                print(f"no MP4 ({type(e).__name__}: {e})")
        if args.mesh_res:
            dec = model.decoder_ema
            grid = density_grid(lambda p: dec.density(code[s : s + 1], p[None].to(code.device), args.backend)[0],
                                args.mesh_res, model.config.bound)
            v, fcs = marching_cubes(grid, args.mesh_threshold, model.config.bound)
            if len(fcs):
                save_mesh(out / f"{prefix}{s:02d}.ply", v, fcs)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = _load_model(args).to(device)
    g = torch.Generator(device=device).manual_seed(args.seed)
    if args.job == "train":
        from ..models.ssdnerf.scenes import make_scenes
        from ..models.ssdnerf.train import Trainer

        if args.data:
            from ..datasets import SRNDataset  # the shared SRN reader

            data = SRNDataset(args.data, image_size=args.res)
            scenes = [data[i] for i in range(len(data))]
        else:
            res = args.res or model.config.test_img_size
            scenes = make_scenes(args.scenes, views=args.views, resolution=res, seed=args.seed)
        trainer = Trainer(model, scenes, batch_size=args.batch, device=device, backend=args.backend, seed=args.seed)
        history = trainer.train(args.iters, progress=not args.no_progress)
        model.save_pretrained(out / "model.safetensors")
        torch.save({"codes": model.activate(trainer.cache.stacked()).cpu(), "ids": [s["id"] for s in scenes]}, out / "codes.pt")
        (out / "metrics.json").write_text(json.dumps({k: v for k, v in history.items()}, indent=1))
        code = model.activate(trainer.cache.stacked()[:2])
        from ..models.ssdnerf.reconstruct import occupancy_of

        _outputs(model, code, occupancy_of(model, code, generator=g, backend=args.backend), out, args, prefix="train")
    elif args.job == "sample":
        from ..models.ssdnerf.reconstruct import sample

        code, grids = sample(model, args.n, generator=g, progress=not args.no_progress, backend=args.backend)
        _outputs(model, code, grids, out, args, prefix="sample")
    else:
        import imageio

        from ..models.ssdnerf.reconstruct import reconstruct
        from ..models.ssdnerf.scenes import SRN_FOCAL_128
        from ..rendering import orbit_cameras

        img = np.asarray(imageio.imread(args.image)).astype(np.float32) / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.shape[-1] == 4:
            img = img[..., :3] * img[..., 3:] + (1 - img[..., 3:])
        H, W = img.shape[:2]
        if args.pose:
            pose = np.load(args.pose) if args.pose.endswith(".npy") else np.loadtxt(args.pose)
            c2w = torch.as_tensor(pose, dtype=torch.float32).reshape(4, 4)
        else:
            c2w = orbit_cameras(1, 1.3, elevation=20.0, convention="opencv", up="z")[0]
        f = args.focal or SRN_FOCAL_128 * W / 128
        K = torch.tensor([f, f, W / 2, H / 2])
        code, grids = reconstruct(model, torch.from_numpy(img)[None, None], c2w[None, None], K[None, None],
                                  guided=not args.no_guidance, use_prior=not args.no_guidance, generator=g,
                                  progress=not args.no_progress, backend=args.backend)
        _outputs(model, code, grids, out, args, prefix="recon")
    print(f"wrote {out}")
    return 0
