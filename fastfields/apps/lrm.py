"""``fastfields lrm IMAGE``: one image -> triplane -> turntable views (PNG, GIF, MP4) and a
coloured mesh (PLY / OBJ / GLB), with a timing breakdown of every stage.

    fastfields lrm owl.png --checkpoint openlrm-mix-base-1.1/ --out out/
    fastfields lrm examples/images/triposr_chair.png --random-init --preset tiny --out out/   # plumbing only

Weights are read from a local OpenLRM checkpoint (a v1.1 folder with model.safetensors +
config.json, or a v1.0 model.pth); nothing is downloaded. Without one the job refuses,
unless ``--random-init`` asks for a random model (whose output is meaningless).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._common import (CLIError, check_choices, check_float, check_image, check_input_file, check_int, check_json_files,
                      check_out_dir, check_safetensors_floats, load_error, require, resolve_device, run_job, warn_nonfinite_images,
                      warn_nonfinite_parameters)

PRESET_NAMES = ("openlrm-small", "openlrm-base", "openlrm-large", "paper", "tiny")
BACKENDS = ("auto", "torch", "triton", "cuda", "cpu")
MESH_FORMATS = ("ply", "obj", "glb")


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "lrm", help="single image -> triplane NeRF (LRM / OpenLRM) -> turntable views and a mesh",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="input image(s): RGBA (composited on white) or RGB on white, object centred (see --recenter)")
    parser.add_argument("--checkpoint", help="OpenLRM checkpoint: v1.1 folder (model.safetensors + config.json) or v1.0 model.pth")
    parser.add_argument("--random-init", action="store_true", help="run without weights (random model: the output is meaningless)")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None,
                        help="model size: with --random-init (default openlrm-small), or for a checkpoint without config.json")
    parser.add_argument("--out", default="lrm-out", help="output folder (one sub-folder per image)")
    parser.add_argument("--views", type=int, default=16, help="turntable views to render (0: none)")
    parser.add_argument("--render-size", type=int, default=None, help="rendered image side (default: the model's)")
    parser.add_argument("--mesh-resolution", type=int, default=None, help="marching-cubes grid side (default: the model's, 384; 0: no mesh)")
    parser.add_argument("--mesh-threshold", type=float, default=None, help="density iso-level (default: the model's, 3.0)")
    parser.add_argument("--mesh-format", choices=MESH_FORMATS, default="ply")
    parser.add_argument("--recenter", action="store_true",
                        help="crop RGBA inputs to their alpha's bounding box and centre them with a --border-ratio margin "
                             "(OpenLRM's Preprocessor, TripoSR); default: OpenLRM's inference preprocessing as it is "
                             "(composite on white, bicubic resize)")
    parser.add_argument("--border-ratio", type=float, default=0.2, help="margin around the object with --recenter")
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--backend", default="auto", help="auto (fused kernels) or torch (unfused reference), triton, cpu, cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model (--random-init)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class Stopwatch:
    """Wall time of named stages, synchronising the GPU so each stage is charged its own kernels."""

    def __init__(self, device):
        self.device = device
        self.times = {}

    def __call__(self, name: str):
        watch = self

        class _Stage:
            def __enter__(self):
                watch._sync()
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                watch._sync()
                watch.times[name] = watch.times.get(name, 0.0) + time.perf_counter() - self.start

        return _Stage()

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def table(self) -> str:
        total = sum(self.times.values())
        lines = [f"  {name:<22s} {seconds * 1000:10.1f} ms" for name, seconds in self.times.items()]
        return "\n".join(lines + [f"  {'total':<22s} {total * 1000:10.1f} ms"])


def _load_model(args, device):
    import torch

    from fastfields.models.lrm import LRM

    if args.checkpoint:
        if args.random_init:
            raise CLIError("give --checkpoint or --random-init, not both")
        folder = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
        check_json_files("--checkpoint", folder, ("config.json", "fastfields_config.json"))
        check_safetensors_floats("--checkpoint", args.checkpoint)
        try:
            model = LRM.from_pretrained(args.checkpoint, preset=args.preset, backend=args.backend, device=device)
        except Exception as error:  # corrupt / truncated files, bad config values, integer weights, wrong shapes
            raise load_error("--checkpoint", args.checkpoint, error, "an OpenLRM checkpoint (a v1.1 folder with "
                             "model.safetensors + config.json, or a v1.0 model.pth)") from None
        return model, f"checkpoint {args.checkpoint}"
    torch.manual_seed(args.seed)
    preset = args.preset or "openlrm-small"
    with torch.device(device):
        model = LRM.from_preset(preset, backend=args.backend)
    return model, f"random weights ({preset} preset, seed {args.seed})"


def run(args) -> int:
    if not args.checkpoint and not args.random_init:
        print("fastfields lrm: no weights. Pass --checkpoint PATH (an OpenLRM v1.1 folder with model.safetensors and "
              "config.json, or a v1.0 model.pth; nothing is downloaded), or --random-init to run a random model "
              "(its output is meaningless).", file=sys.stderr)
        return 2
    check_int("--views", args.views, minimum=0)
    check_int("--render-size", args.render_size, minimum=1)
    check_int("--mesh-resolution", args.mesh_resolution, minimum=2, allow_zero=True, zero_means="no mesh")
    check_int("--fps", args.fps, minimum=1)
    check_float("--mesh-threshold", args.mesh_threshold)
    check_float("--border-ratio", args.border_ratio, minimum=0.0)
    check_choices("--backend", [args.backend], BACKENDS)
    if args.checkpoint:
        check_input_file("--checkpoint", args.checkpoint)
    for module in ("tqdm", "imageio", "mcubes", "trimesh"):
        require(module, purpose="fastfields lrm")
    for path in args.images:
        check_image("IMAGE", path)
    check_out_dir(args.out)

    import torch
    from tqdm.auto import tqdm

    from fastfields import export
    from fastfields.models.lrm import preprocess_image

    device = resolve_device(args.device)
    watch = Stopwatch(device)
    with watch("load model"):
        model, source = _load_model(args, device)
        model.eval()
    warn_nonfinite_parameters("fastfields lrm", model, source)
    config = model.config
    if args.random_init:
        print("fastfields lrm: WARNING: random weights: the views and the mesh are meaningless (a plumbing check).")
    render_size = config.render_size if args.render_size is None else args.render_size
    mesh_resolution = config.mesh_resolution if args.mesh_resolution is None else args.mesh_resolution
    threshold = config.mesh_threshold if args.mesh_threshold is None else args.mesh_threshold
    fused = model.render_fused(device=device)
    print(f"fastfields lrm: {source} on {device}; backend {args.backend} "
          f"({'fused' if fused else 'unfused'} renderer); input {config.image_size} px, "
          f"{config.rendering_samples_per_ray} samples per ray")

    out_root = Path(args.out)
    for image_path in args.images:
        out = out_root / Path(image_path).stem
        out.mkdir(parents=True, exist_ok=True)
        watch.times = {k: v for k, v in watch.times.items() if k == "load model"}
        with torch.no_grad():
            with watch("preprocess"):
                image = preprocess_image(image_path, config.image_size, args.border_ratio, recenter=args.recenter,
                                         device=device)[None]
            export.save_image(out / "input.png", image[0].permute(1, 2, 0))
            with watch("encode image"):
                tokens = model.encode_image(image)
                mod = model.embed_camera(None, 1)
            with watch("transformer"):
                x = model.forward_transformer(tokens, mod)
            with watch("triplane (upsampler)"):
                planes = model.upsample(x)

            frames = []
            if args.views:
                c2w, intrinsics = model.turntable(args.views)
                bar = tqdm(range(args.views), desc=f"render {render_size}x{render_size}", disable=args.no_progress,
                           leave=False)
                with watch(f"render {args.views} x {render_size}^2"):
                    for k in bar:
                        rgb, _, _ = model.render(planes, c2w[k : k + 1], intrinsics[k : k + 1], render_size, render_size)
                        frames.append(rgb[0, 0].cpu())
                warn_nonfinite_images("fastfields lrm", frames, "rendered views")
                for k, frame in enumerate(frames):
                    export.save_image(out / f"view_{k:03d}.png", frame)
                export.save_video(out / "turntable.gif", frames, fps=args.fps)
                try:
                    import imageio_ffmpeg  # noqa: F401
                except ImportError:
                    pass
                else:
                    export.save_video(out / "turntable.mp4", frames, fps=args.fps)

            if mesh_resolution:
                with watch(f"mesh {mesh_resolution}^3"):
                    vertices, faces, colors = model.extract_mesh(planes, mesh_resolution, threshold)
                mesh_path = out / f"mesh.{args.mesh_format}"
                if len(faces):
                    export.save_mesh(mesh_path, vertices, faces, colors)
                    print(f"  mesh: {len(vertices)} vertices, {len(faces)} faces -> {mesh_path}")
                else:
                    sigma = model.query_points(planes, torch.rand(1, 4096, 3, device=device) * 2 - 1)[0]
                    print(f"  mesh: empty at threshold {threshold} (density in [{sigma.min().item():.3g}, "
                          f"{sigma.max().item():.3g}] at random points); no mesh written")
        print(f"{image_path} -> {out}")
        print(watch.table())
        export.write_text(out / "timings.json", json.dumps({
            "device": str(device), "backend": args.backend, "fused_renderer": fused, "source": source,
            "render_size": render_size, "views": args.views, "mesh_resolution": mesh_resolution,
            "seconds": watch.times,
        }, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.apps.lrm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_job("fastfields lrm", run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
