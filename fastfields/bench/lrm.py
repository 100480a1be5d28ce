"""End-to-end LRM benchmark: image -> triplane -> one rendered view -> mesh, stage by stage,
the fused ops (``backend="auto"``) against the unfused PyTorch reference (``"torch"``) on the
same weights, with time (median) and peak memory per stage.

    python -m fastfields.bench.lrm --preset tiny --preset openlrm-small --render-size 128 --mesh-resolution 128
    python -m fastfields.bench.lrm --preset paper          # on a GPU: 512^2 view + 256^3 mesh

Stages: ``encode`` (ViT + camera embedding), ``transformer`` (the modulated decoder stack),
``triplane`` (the deconvolution), ``render`` (one ``R x R`` view, OpenLRM's samples per ray),
``mesh`` (density on an ``M^3`` grid, marching cubes, vertex colours). Weights are random:
times do not depend on them, except marching cubes and vertex colouring, which scale with the
size of the surface (reported as ``faces``). A stage a backend cannot run here is reported
with the reason instead of a time. Not part of ``fastfields bench`` (that one is per op):
this is a model job, like ``fastfields lrm``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from .harness import device_label, device_slug, peak_memory

STAGES = ("encode", "transformer", "triplane", "render", "mesh")
#: The unfused reference and the fused ops: what the report compares.
BACKENDS = {"unfused": "torch", "fused": "auto"}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset: str, device: torch.device, render_size: int, mesh_resolution: int, repeats: int = 2,
                 backends: Optional[Dict[str, str]] = None, log: Callable[[str], None] = print) -> List[Dict[str, object]]:
    """Rows ``{preset, path, backend, stage, ms, peak_mb, note}`` for each path and stage."""
    from fastfields.models.lrm import LRM

    backends = backends or BACKENDS
    torch.manual_seed(0)
    with torch.device(device):
        model = LRM.from_preset(preset).eval()
    config = model.config
    image = torch.rand(1, 3, config.image_size, config.image_size, device=device)
    c2w, intrinsics = model.turntable(1)
    rows = []
    for path, backend in backends.items():
        model.set_backend(backend)
        state: Dict[str, torch.Tensor] = {}

        def encode():
            state["tokens"] = model.encode_image(image)
            state["mod"] = model.embed_camera(None, 1)

        def transformer():
            state["x"] = model.forward_transformer(state["tokens"], state["mod"])

        def triplane():
            state["planes"] = model.upsample(state["x"])

        def render():
            model.render(state["planes"], c2w, intrinsics, render_size, render_size)

        def mesh():
            state["faces"] = len(model.extract_mesh(state["planes"], mesh_resolution)[1])

        for stage, fn in zip(STAGES, (encode, transformer, triplane, render, mesh)):
            row = {"preset": preset, "path": path, "backend": backend, "stage": stage, "ms": None, "peak_mb": None,
                   "note": ""}
            try:
                with torch.no_grad():
                    row["ms"] = _time(fn, device, repeats) * 1000
                    mem = peak_memory(fn, device)
                row["peak_mb"] = None if mem is None else mem / 2**20
                if stage == "render":
                    row["note"] = f"{render_size}x{render_size}, {config.rendering_samples_per_ray} samples/ray"
                    row["note"] += ", fused" if model.render_fused(backend, device) else ", unfused"
                elif stage == "mesh":
                    row["note"] = f"{mesh_resolution}^3, {state['faces']} faces"
            except Exception as error:  # a backend missing here: report why, keep measuring the rest
                row["note"] = f"unavailable: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
                if stage in ("encode", "transformer", "triplane"):  # later stages need this one's output
                    with torch.no_grad():
                        model.set_backend("torch")
                        fn()
                        model.set_backend(backend)
            rows.append(row)
            ms = "-" if row["ms"] is None else f"{row['ms']:.1f} ms"
            log(f"{preset:14s} {path:8s} {stage:12s} {ms:>12s}  {row['note']}")
    return rows


def markdown(rows: List[Dict[str, object]]) -> str:
    """One line per preset and stage: unfused vs fused time and peak memory."""
    lines = ["| preset | stage | unfused ms | fused ms | speedup | unfused peak MB | fused peak MB | note |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for preset in presets:
        totals = {"unfused": 0.0, "fused": 0.0}
        complete = {"unfused": True, "fused": True}
        for stage in STAGES:
            cell = {r["path"]: r for r in rows if r["preset"] == preset and r["stage"] == stage}
            u, f = cell.get("unfused", {}), cell.get("fused", {})
            for path, r in (("unfused", u), ("fused", f)):
                if r.get("ms") is None:
                    complete[path] = False
                else:
                    totals[path] += r["ms"]
            speedup = u["ms"] / f["ms"] if u.get("ms") and f.get("ms") else None
            note = "; ".join(dict.fromkeys(n for n in (u.get("note"), f.get("note")) if n))
            lines.append(f"| {preset} | {stage} | {fmt(u.get('ms'), '.1f')} | {fmt(f.get('ms'), '.1f')} | "
                         f"{fmt(speedup, '.2f')}{'x' if speedup else ''} | {fmt(u.get('peak_mb'), '.0f')} | "
                         f"{fmt(f.get('peak_mb'), '.0f')} | {note} |")
        u_total = totals["unfused"] if complete["unfused"] else None
        f_total = totals["fused"] if complete["fused"] else None
        speedup = u_total / f_total if u_total and f_total else None
        lines.append(f"| {preset} | **total** | {fmt(u_total, '.1f')} | {fmt(f_total, '.1f')} | "
                     f"{fmt(speedup, '.2f')}{'x' if speedup else ''} | | | |")
    return "\n".join(lines)


def write_report(rows, out_dir: Path, device: torch.device, settings: Dict[str, object]) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"lrm-e2e-{device_slug(device)}"
    meta = {"device": device_label(device), "torch": torch.__version__, **settings}
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md_path = stem.with_suffix(".md")
    header = (f"# LRM end to end on {meta['device']}\n\nRandom weights; render {settings['render_size']}^2, "
              f"mesh {settings['mesh_resolution']}^3; median of {settings['repeats']} runs after a warm-up; "
              f"peak memory is the rise during one call (CUDA allocator, or resident memory on CPU).\n\n")
    md_path.write_text(header + markdown(rows) + "\n")
    return [json_path, md_path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.bench.lrm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="model preset (repeatable; default: tiny and openlrm-small)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--render-size", type=int, default=None, help="default: 512 on GPU, 128 on CPU")
    parser.add_argument("--mesh-resolution", type=int, default=None, help="default: 256 on GPU, 128 on CPU")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per stage after a warm-up")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--out", default="benchmarks/results", help="report folder")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    render_size = args.render_size or (512 if gpu else 128)
    mesh_resolution = args.mesh_resolution or (256 if gpu else 128)
    presets = args.preset or ["tiny", "openlrm-small"]
    rows = []
    for preset in presets:
        rows += bench_preset(preset, device, render_size, mesh_resolution, args.repeats)
    print()
    print(markdown(rows))
    if not args.no_write:
        settings = {"render_size": render_size, "mesh_resolution": mesh_resolution, "repeats": args.repeats,
                    "presets": presets}
        for path in write_report(rows, Path(args.out), device, settings):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
