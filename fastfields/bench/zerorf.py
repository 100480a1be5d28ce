"""Sparse-view evaluation of ZeroRF against the TensoRF-VM baseline on the shipped mic scene:
PSNR / SSIM on the held-out views and fitting time, per number of input views.

    python -m fastfields.bench.zerorf                                   # CPU preset, 4/6/8 views at 100^2
    python -m fastfields.bench.zerorf --device cuda --config paper --res 200 --views 4 \\
        --backend auto --backend torch --model zerorf                  # GPU: fused vs eager fit time

ZeroRF follows the official ``--rep=tensorf`` run (alpha supervision, mic scaled by its
``model_scale``, torch-ngp occupancy grid, occlusion culling, dt_gamma steps); the baseline is
TensoRF's own TensorVMSplit and training schedule (``fastfields.models.tensorf``), on the same
input views and box. Input
views are the farthest-spread camera centres (as ZeroRF's k-means pick); every other view of
the 100 is held out. Writes ``zerorf-<device>.json`` and ``.md`` under ``--out``. Not part of
``fastfields bench`` (that one is per op): this is a model job, like ``fastfields zerorf``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .harness import device_label, device_slug

MODELS = ("zerorf", "tensorf")


def _model(name: str):
    if name == "zerorf":
        from ..models.zerorf import ZeroRF

        return ZeroRF
    from ..models.tensorf import TensoRF

    return TensoRF


def evaluate(model_name: str, n_views: int, *, res: int, config: str, iters, device, backend: str, eval_views: int,
             seed: int, progress: bool, pictures: Optional[Path] = None, n_pictures: int = 3) -> Dict[str, object]:
    from ..data import farthest_views, load_npz, select_views, shipped_data
    from ..metrics import psnr, ssim
    from ..models.scene import nerf_synthetic_bound

    scene = load_npz(shipped_data(f"mic/mic_train_{res}.npz"))
    chosen = farthest_views(scene.c2w, n_views)
    inputs, held_out = scene.subset(chosen), scene.complement(chosen)
    if eval_views > 0:
        held_out = held_out.subset(select_views(min(eval_views, len(held_out)), len(held_out)))
    Model = _model(model_name)
    # As ZeroRF: RGBA inputs (alpha supervises the opacity), mic scaled by its model_scale (bound 1.25).
    model = Model.fit(inputs.images, inputs.c2w, inputs.focal, alpha=inputs.alpha, config=config, iters=iters,
                      bound=nerf_synthetic_bound("mic"), progress=progress, device=device, backend=backend, seed=seed)
    start = time.perf_counter()
    predictions = model.render(held_out.c2w, scene.height, scene.width, scene.focal, backend=backend)
    render_s = time.perf_counter() - start
    picture_paths = []
    if pictures is not None and n_pictures > 0:
        from .. import export

        for k in select_views(min(n_pictures, len(held_out)), len(held_out)):
            path = pictures / f"{model_name}-{n_views}views-{res}-view{held_out.names[k]}.png"
            export.save_image(path, torch.cat([predictions[k], held_out.images[k]], dim=1))
            picture_paths.append(str(path))
    return {
        "model": model_name, "views": n_views, "res": res, "config": config, "backend": backend,
        "iters": model.history["iters"], "fit_s": round(model.history["time_s"], 2),
        "fit_cpu_s": round(model.history["cpu_time_s"], 2), "threads": torch.get_num_threads(),
        "psnr": round(psnr(predictions, held_out.images), 3), "ssim": round(ssim(predictions, held_out.images), 4),
        "held_out": len(held_out), "render_s_per_view": round(render_s / max(len(held_out), 1), 3),
        "samples_per_ray": round(model.history["samples_per_ray"], 1), "input_views": chosen,
        "bound": model.config.bound if hasattr(model.config, "bound") else None, "pictures": picture_paths,
    }


def markdown(rows: List[Dict[str, object]]) -> str:
    lines = ["| model | views | res | preset | backend | iters | PSNR (dB) | SSIM | fit wall (s) | fit CPU (s) | render (s/view) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['views']} | {r['res']} | {r['config']} | {r['backend']} | {r['iters']} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} | {r['fit_s']:.1f} | {r['fit_cpu_s']:.1f} | {r['render_s_per_view']:.2f} |")
    by_key = {(r["views"], r["res"], r["config"], r["backend"], r["model"]): r for r in rows}
    gaps = []
    for (views, res, config, backend, model), r in sorted(by_key.items()):
        other = by_key.get((views, res, config, backend, "tensorf"))
        if model == "zerorf" and other is not None:
            gaps.append(f"{views} views: ZeroRF - TensoRF = {r['psnr'] - other['psnr']:+.2f} dB PSNR, "
                        f"{r['ssim'] - other['ssim']:+.3f} SSIM")
    return "\n".join(lines + ([""] + ["- " + g for g in gaps] if gaps else []))


def write_report(rows, out_dir: Path, device: torch.device, settings: Dict[str, object]) -> List[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"zerorf-{device_slug(device)}"
    meta = {"device": device_label(device), "torch": torch.__version__, **settings}
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md_path = stem.with_suffix(".md")
    load = f"; load average at start {settings['load_average']}" if settings.get("load_average") else ""
    header = (f"# ZeroRF vs TensoRF-VM, sparse views of mic, on {meta['device']}\n\n"
              f"Inputs: the farthest-spread camera centres among the 100 training views; metrics on the "
              f"held-out views (white background){load}. Fit CPU time is the process's CPU time while fitting "
              f"(with one thread, the wall time on an idle core; the wall time includes waiting for other jobs "
              f"on a shared machine).\n\n")
    md_path.write_text(header + markdown(rows) + "\n")
    return [json_path, md_path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.bench.zerorf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, action="append", help="input views (repeatable; default 4, 6, 8)")
    parser.add_argument("--model", action="append", choices=MODELS, help="repeatable; default both")
    parser.add_argument("--res", type=int, choices=(100, 200), default=100)
    parser.add_argument("--config", help="preset (default: paper on CUDA, cpu otherwise)")
    parser.add_argument("--iters", type=int, help="iterations (default: the preset's)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--backend", action="append", help="ops backend (repeatable; default auto; torch = eager)")
    parser.add_argument("--eval-views", type=int, default=0, help="held-out views to evaluate, evenly picked (0: all)")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results", help="report folder")
    parser.add_argument("--pictures", type=int, default=3, help="held-out views written as PNGs per run (default 3)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = args.config or ("paper" if device.type == "cuda" else "cpu")
    load_average = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else None
    rows = []
    for n_views in args.views or [4, 6, 8]:
        for backend in args.backend or ["auto"]:
            for model in args.model or list(MODELS):
                row = evaluate(model, n_views, res=args.res, config=config, iters=args.iters, device=device,
                               backend=backend, eval_views=args.eval_views, seed=args.seed,
                               progress=not args.no_progress,
                               pictures=None if args.no_write else Path(args.out) / "zerorf-pictures",
                               n_pictures=args.pictures)
                print(json.dumps(row), flush=True)
                rows.append(row)
    print()
    print(markdown(rows))
    if not args.no_write:
        settings = {"res": args.res, "config": config, "eval_views": args.eval_views, "seed": args.seed,
                    "threads": torch.get_num_threads(), "load_average": load_average}
        for path in write_report(rows, Path(args.out), device, settings):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
