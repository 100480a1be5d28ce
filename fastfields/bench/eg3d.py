"""EG3D benchmark: the fused renderer against the eager EG3D renderer, and whole images.

    python -m fastfields.bench.eg3d                                 # CPU: renders at 64^2 / 128^2, tiny images
    python -m fastfields.bench.eg3d --render-size 128 --image-preset ffhq512   # GPU: 128^2 rendering, 512^2 images

Rows (time: median after a warm-up; peak memory: the rise during one call):

- ``render R^2``: one neural rendering with the ffhq512 rendering settings (32-channel
  256^2 triplanes, 48 + 48 samples, EG3D's decoder) from random planes: ``eager`` is the
  official renderer transcribed literally (:func:`fastfields.reference.eg3d.importance_renderer`:
  ``grid_sample`` per plane, the decoder on every sample, MipRayMarcher2), ``unfused`` our
  renderer on the ``torch`` backend, ``fused`` :func:`fastfields.render_triplane` (``auto``);
  ``+bwd`` rows add the backward pass (training).
- ``image <preset>``: ``G.synthesis`` end to end (mapping excluded): backbone, rendering,
  super-resolution; eager = the literal transcription, fused = the model.
Weights are random: times do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

from .harness import device_label, device_slug, peak_memory


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(name: str, path: str, fn, device, repeats: int, note: str = "") -> Dict[str, object]:
    row = {"case": name, "path": path, "ms": None, "peak_mb": None, "note": note}
    try:
        row["ms"] = _time(fn, device, repeats) * 1000
        mem = peak_memory(fn, device)
        row["peak_mb"] = None if mem is None else mem / 2 ** 20
    except Exception as error:  # e.g. out of memory: report it, keep going
        row["note"] = f"unavailable: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
    return row


def bench_render(resolution: int, device, repeats: int, backward: bool = False) -> List[Dict[str, object]]:
    from fastfields.models.eg3d import EG3D
    from fastfields.models.eg3d import renderer
    from fastfields.models.eg3d.cameras import camera_labels, fov_to_intrinsics, lookat_pose
    from fastfields.reference import eg3d as ref

    cfg = EG3D.presets["ffhq512"]
    torch.manual_seed(0)
    decoder = renderer.OSGDecoder(32).to(device)
    sd = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    planes = (torch.randn(1, 3, 32, 256, 256, device=device) * 0.5).requires_grad_(backward)
    c = camera_labels(lookat_pose(math.pi / 2, math.pi / 2, cfg.avg_camera_pivot, cfg.avg_camera_radius),
                      fov_to_intrinsics(cfg.fov_deg)).to(device)
    origins, dirs = renderer.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:].view(-1, 3, 3), resolution)
    rk = cfg.rendering_kwargs()
    samples = f"{cfg.depth_resolution}+{cfg.depth_resolution_importance} samples"

    def call(fn):
        if not backward:
            def run():
                with torch.no_grad():
                    fn()
            return run

        def run():
            planes.grad = None
            decoder.zero_grad()
            rgb = fn()
            rgb.square().mean().backward()
        return run

    paths = {
        "eager": lambda: ref.importance_renderer(sd, cfg, planes, origins, dirs)[0],
        "unfused": lambda: renderer.render(planes, decoder, origins, dirs, rk, backend="torch")[0],
        "fused": lambda: renderer.render(planes, decoder, origins, dirs, rk, backend="auto")[0],
    }
    if backward:  # the eager reference reads the state dict: make its decoder weights leaves too
        sd = {k: v.detach().requires_grad_(True) for k, v in sd.items()}
    name = f"render {resolution}^2{' +bwd' if backward else ''}"
    return [_measure(name, path, call(fn), device, repeats, samples) for path, fn in paths.items()]


def bench_image(preset: str, device, repeats: int) -> List[Dict[str, object]]:
    from fastfields.models.eg3d import EG3D
    from fastfields.reference import eg3d as ref

    torch.manual_seed(0)
    G = EG3D.from_preset(preset).to(device).eval()
    cfg = G.config
    ws = G.mapping(torch.randn(1, cfg.z_dim, device=device), G.camera()).detach()
    c = G.camera()
    sd = G.state_dict()
    note = f"{cfg.img_resolution}^2 image, {cfg.neural_rendering_resolution}^2 rendering"

    def eager():
        with torch.no_grad():
            ref.synthesis(sd, cfg, ws, c, noise_mode="const")

    def fused():
        with torch.no_grad():
            G.synthesis(ws, c, noise_mode="const")

    name = f"image {preset}"
    return [_measure(name, "eager", eager, device, repeats, note), _measure(name, "fused", fused, device, repeats, note)]


def markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["| case | eager ms | unfused ms | fused ms | fused vs eager | eager peak MB | fused peak MB | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for case in dict.fromkeys(r["case"] for r in rows):
        cell = {r["path"]: r for r in rows if r["case"] == case}
        e, u, f = cell.get("eager", {}), cell.get("unfused", {}), cell.get("fused", {})
        speedup = e["ms"] / f["ms"] if e.get("ms") and f.get("ms") else None
        note = "; ".join(dict.fromkeys(r.get("note") for r in (e, u, f) if r.get("note")))
        lines.append(f"| {case} | {fmt(e.get('ms'), '.1f')} | {fmt(u.get('ms'), '.1f')} | {fmt(f.get('ms'), '.1f')} | "
                     f"{fmt(speedup, '.2f')}{'x' if speedup else ''} | {fmt(e.get('peak_mb'), '.0f')} | "
                     f"{fmt(f.get('peak_mb'), '.0f')} | {note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.bench.eg3d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--render-size", type=int, action="append", help="neural rendering side (repeatable; "
                        "default: 64 and 128)")
    parser.add_argument("--backward", action="store_true", help="also time forward + backward renders")
    parser.add_argument("--image-preset", action="append", help="end-to-end image rows (default: tiny on CPU, "
                        "ffhq512 on GPU)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows: List[Dict[str, object]] = []
    for res in args.render_size or [64, 128]:
        rows += bench_render(res, device, args.repeats)
        if args.backward:
            rows += bench_render(res, device, args.repeats, backward=True)
    for preset in args.image_preset or (["ffhq512"] if device.type == "cuda" else ["tiny"]):
        rows += bench_image(preset, device, args.repeats)
    for r in rows:
        print(f"{r['case']:22s} {r['path']:8s} {'-' if r['ms'] is None else format(r['ms'], '10.1f')} ms  {r['note']}")
    table = markdown(rows)
    print()
    print(table)
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"eg3d-{device_slug(device)}"
        meta = {"device": device_label(device), "torch": torch.__version__, "repeats": args.repeats}
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        stem.with_suffix(".md").write_text(
            f"# EG3D on {meta['device']}\n\nRandom weights, ffhq512 rendering settings; median of {args.repeats} runs "
            f"after a warm-up; peak memory is the rise during one call (CUDA allocator, or resident memory on CPU). "
            f"Command: `python -m fastfields.bench.eg3d {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            + table + "\n")
        print(f"wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
