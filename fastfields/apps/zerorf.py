"""``fastfields zerorf``: sparse-view reconstruction with ZeroRF (or the TensoRF-VM baseline).

Fits the model to ``--views`` input views of a scene, reports PSNR / SSIM on the held-out
views, and writes into ``--out``: ``metrics.json``, ``renders/`` (prediction next to ground
truth for a few held-out views), ``turntable.gif``, ``mesh.ply`` (marching cubes of the
density, vertex colours seen from outside) and ``model.safetensors`` (``ZeroRF.from_pretrained``
reads it back). As ZeroRF: RGBA inputs (alpha supervises the opacity), NeRF-synthetic objects
scaled by the official ``model_scale`` (``--bound`` overrides; other scenes: the masks' visual hull).

    fastfields zerorf --views 4 --iters 2000 --out zerorf-mic            # CPU preset, shipped mic
    fastfields zerorf --res 200 --device cuda --config paper --out gpu   # GPU timing (fused ops)
    fastfields zerorf --res 200 --device cuda --config paper --backend torch --out gpu-eager
    fastfields zerorf --baseline tensorf --out tensorf-mic                # the TensoRF-VM baseline
"""

from __future__ import annotations

from pathlib import Path

from ._common import (CLIError, check_float, check_input_file, check_int, check_out_dir, load_error, require,
                      resolve_device, set_threads, warn_nonfinite_images)

BACKENDS = ("auto", "torch", "triton", "cuda", "cpu")


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "zerorf",
        help="sparse-view reconstruction (ZeroRF or the TensoRF baseline): fit, evaluate, render, export a mesh",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--data", help="an npz in the shipped layout or a Blender scene folder "
                        "(transforms_train.json); default: the shipped mic scene at --res")
    parser.add_argument("--res", type=int, choices=(100, 200), default=100, help="resolution of the shipped data (default 100)")
    parser.add_argument("--downscale", type=int, default=1, help="area downscaling of a Blender scene's images (default 1)")
    parser.add_argument("--views", type=int, default=4, help="input views; the others are held out for evaluation (default 4)")
    parser.add_argument("--select", choices=("spread", "even"), default="spread",
                        help="spread: farthest camera centres (as ZeroRF's k-means); even: evenly spaced indices (default spread)")
    parser.add_argument("--model", choices=("zerorf", "tensorf"), default="zerorf", help="default zerorf")
    parser.add_argument("--baseline", choices=("tensorf",), help="run the TensoRF-VM baseline instead (= --model tensorf)")
    parser.add_argument("--config", help="preset (paper, cpu, tiny); default: paper on CUDA, cpu otherwise")
    parser.add_argument("--iters", type=int, help="iterations (default: the preset's)")
    parser.add_argument("--bound", type=float, help="half-size of the scene box in world units (default: ZeroRF's model_scale / 2 for "
                        "NeRF-synthetic objects, else the masks' visual hull)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="fastfields ops backend; torch = eager baseline (default auto)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--eval-views", type=int, default=0, help="evaluate on this many held-out views, evenly picked (default 0: all)")
    parser.add_argument("--renders", type=int, default=4, help="held-out views written as PNGs (default 4)")
    parser.add_argument("--turntable", type=int, default=36, help="turntable GIF frames (default 36; 0: none)")
    parser.add_argument("--mesh-res", type=int, default=128, help="marching-cubes grid resolution (default 128; 0: no mesh)")
    parser.add_argument("--mesh-threshold", type=float, default=10.0, help="density iso-level of the mesh (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--out", default="zerorf-out", help="output folder (default zerorf-out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def load_scene(args):
    from ..data import load_blender, load_npz, shipped_data

    if args.data is None:
        return load_npz(shipped_data(f"mic/mic_train_{args.res}.npz")), f"shipped mic {args.res}^2"
    path = check_input_file("--data", args.data)
    try:
        if path.is_dir():
            return load_blender(path, "train", downscale=args.downscale), str(path)
        return load_npz(path), str(path)
    except Exception as error:  # random bytes, a truncated npz, a folder without transforms_train.json, ...
        raise load_error("--data", path, error, "a scene (an npz in the shipped layout or a Blender folder with "
                         "transforms_train.json)") from None


def turntable_cameras(c2w, n: int):
    """An orbit at the input cameras' mean distance and elevation, z up (Blender scenes)."""
    import math

    import torch

    from ..rendering import orbit_cameras

    centres = c2w[:, :3, 3]
    distance = centres.norm(dim=-1)
    elevation = math.degrees(float(torch.asin((centres[:, 2] / distance).clamp(-1, 1)).mean()))
    return orbit_cameras(n, float(distance.mean()), elevation=elevation, up="z", convention="opengl")


def export_mesh(model, path, resolution: int, threshold: float, backend: str):
    """Marching cubes of the density, coloured by the field seen along each vertex's inward normal."""
    import numpy as np
    import torch

    from .. import export

    zerorf = hasattr(model, "tensors")
    device = model.decoder.base_net.weight.device if zerorf else model.basis_mat.weight.device
    bound = model.bound if zerorf else float(model.aabb.abs().max())
    with torch.no_grad():
        tensors = model.tensors() if zerorf else None
        density = (lambda p: model.density(p, tensors, backend)) if zerorf else (lambda p: model.density(p, backend))
        grid = export.density_grid(density, resolution, bound, device=device)
        vertices, faces = export.marching_cubes(grid, threshold, bound)
        if len(faces) == 0:
            return None, 0
        import trimesh

        normals = trimesh.Trimesh(vertices=vertices, faces=faces, process=False).vertex_normals
        xyz = torch.from_numpy(vertices).float().to(device)
        directions = -torch.from_numpy(np.array(normals, dtype=np.float32)).to(device)
        color = (lambda p, d: model.query(tensors, p, d, backend)[1]) if zerorf else (lambda p, d: model.color(p, d, backend))
        colors = torch.cat([color(p, d) for p, d in zip(xyz.split(1 << 16), directions.split(1 << 16))])
    return export.save_mesh(path, vertices, faces, colors.clamp(0, 1).cpu().numpy()), len(faces)


def run(args) -> int:
    import json
    import time

    import torch

    from .. import export
    from ..data import farthest_views, select_views
    from ..metrics import psnr, ssim
    from ..models.scene import nerf_synthetic_bound

    if args.baseline:
        args.model = args.baseline
    check_int("--downscale", args.downscale, minimum=1)
    check_int("--views", args.views, minimum=1)
    check_int("--iters", args.iters, minimum=1)
    check_int("--eval-views", args.eval_views, minimum=0)
    check_int("--renders", args.renders, minimum=0)
    check_int("--turntable", args.turntable, minimum=0)
    check_int("--mesh-res", args.mesh_res, minimum=2, allow_zero=True, zero_means="no mesh")
    check_float("--mesh-threshold", args.mesh_threshold)
    check_float("--bound", args.bound, positive=True)
    set_threads(args.threads)
    device = resolve_device(args.device)
    for module in ("tqdm", "imageio") + (("mcubes", "trimesh") if args.mesh_res > 0 else ()):
        require(module, purpose="fastfields zerorf")
    if args.model == "zerorf":
        from ..models.zerorf import ZeroRF as Model
    else:
        from ..models.tensorf import TensoRF as Model
    preset = args.config or ("paper" if device.type == "cuda" else "cpu")
    config = Model.preset_config(preset)  # validates the preset before any work
    out = check_out_dir(args.out)

    scene, source = load_scene(args)
    if not 1 <= args.views < len(scene):
        raise CLIError(f"--views must be in [1, {len(scene) - 1}] for {len(scene)} views, got {args.views}")
    chosen = farthest_views(scene.c2w, args.views) if args.select == "spread" else select_views(args.views, len(scene))
    inputs, held_out = scene.subset(chosen), scene.complement(chosen)
    if args.eval_views > 0:
        held_out = held_out.subset(select_views(min(args.eval_views, len(held_out)), len(held_out)))
    print(f"{args.model}: {source}, {scene.width}x{scene.height}, input views {chosen}, "
          f"{len(held_out)} held-out views; preset {preset!r}, device {device}, backend {args.backend}", flush=True)

    bound = args.bound if args.bound is not None else nerf_synthetic_bound("mic" if args.data is None else Path(args.data).name)
    model = Model.fit(inputs.images, inputs.c2w, inputs.focal, alpha=inputs.alpha, config=config, bound=bound,
                      iters=args.iters, progress=not args.no_progress, device=device, backend=args.backend, seed=args.seed)
    fit_s = model.history["time_s"]
    start = time.perf_counter()
    predictions = model.render(held_out.c2w, scene.height, scene.width, scene.focal, backend=args.backend)
    render_s = time.perf_counter() - start
    metrics = {
        "model": args.model, "preset": preset, "data": source, "resolution": scene.width, "views": chosen,
        "held_out": len(held_out), "iters": model.history["iters"], "fit_s": fit_s,
        "render_s_per_view": render_s / max(len(held_out), 1),
        "psnr": psnr(predictions, held_out.images), "ssim": ssim(predictions, held_out.images),
        "psnr_inputs": psnr(model.render(inputs.c2w, scene.height, scene.width, scene.focal, backend=args.backend), inputs.images),
        "samples_per_ray": model.history["samples_per_ray"], "final_loss": model.history["loss"][-1] if model.history["loss"] else None,
        "device": str(device), "backend": args.backend, "torch_threads": torch.get_num_threads(),
        "fit_cpu_s": model.history["cpu_time_s"],
        "bound": model.bound if hasattr(model, "tensors") else list(model.config.aabb or model.config.box().reshape(-1).tolist()),
    }
    print(f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} "
          f"(input views PSNR {metrics['psnr_inputs']:.2f}); fit {fit_s:.1f} s", flush=True)

    warn_nonfinite_images("fastfields zerorf", predictions, "held-out renders")
    written = []
    for k in select_views(min(args.renders, len(held_out)), len(held_out)) if args.renders > 0 else []:
        side_by_side = torch.cat([predictions[k], held_out.images[k]], dim=1)
        export.save_image(out / "renders" / f"view_{held_out.names[k]}.png", side_by_side)
        written += [] if "renders/" in written else ["renders/"]
    if args.turntable > 0:
        frames = model.render(turntable_cameras(scene.c2w, args.turntable), scene.height, scene.width, scene.focal,
                              backend=args.backend)
        metrics["turntable"] = str(export.save_video(out / "turntable.gif", frames, fps=12))
        written.append("turntable.gif")
    if args.mesh_res > 0:
        path, n_faces = export_mesh(model, out / "mesh.ply", args.mesh_res, args.mesh_threshold, args.backend)
        metrics["mesh"] = None if path is None else str(path)
        metrics["mesh_faces"] = n_faces
        if path is None:
            print(f"mesh: empty at --mesh-threshold {args.mesh_threshold}; no mesh written", flush=True)
        else:
            written.append("mesh.ply")
    metrics["checkpoint"] = str(model.save_pretrained(out / "model.safetensors"))
    export.write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    print(f"wrote {out}/ ({', '.join(written + ['model.safetensors', 'metrics.json'])})", flush=True)
    return 0
