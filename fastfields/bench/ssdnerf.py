"""SSDNeRF single-view reconstruction on held-out procedural objects: (a) guided diffusion +
fine-tuning against (b) fine-tuning the code alone (no prior), PSNR / SSIM of novel views,
and the per-image reconstruction time with the fused ops against eager PyTorch in one run.

    python -m fastfields.bench.ssdnerf --iters 300 --train-scenes 16 --test-scenes 6   # tiny preset, CPU (~10 min)
    python -m fastfields.bench.ssdnerf --device cuda --timing-preset cars_recons1v   # + paper-size timing

The prior is trained first (single-stage, :class:`fastfields.models.ssdnerf.train.Trainer`)
on ``--train-scenes`` procedural cars and chairs; the held-out objects come from another seed.
Each held-out object is reconstructed from its first view; the other views are scored.
Writes ``ssdnerf-<device>.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .harness import device_label, device_slug


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args) -> dict:
    from ..metrics import psnr, ssim
    from ..models.ssdnerf import SSDNeRF
    from ..models.ssdnerf.reconstruct import reconstruct, render
    from ..models.ssdnerf.scenes import make_scenes
    from ..models.ssdnerf.train import Trainer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    res = args.res
    if args.scenes == "shared":  # fastfields.datasets: procedural chairs/cars rendered with a z-buffer, SRN layout
        import tempfile

        from ..datasets import SRNDataset, build_dataset

        def load(n, views, seed):
            root = build_dataset(tempfile.mkdtemp(prefix="ssdnerf-bench-"), categories=("chair", "car"),
                                 objects_per_category=(n + 1) // 2, views=views, resolution=res, seed=seed,
                                 include_meshes=False, split={"train": 1.0})
            data = SRNDataset(root, split="train")
            return [data[i] for i in range(n)]

        train, test = load(args.train_scenes, args.views, args.seed), load(args.test_scenes, args.test_views, args.seed + 1)
    else:
        train = make_scenes(args.train_scenes, views=args.views, resolution=res, seed=args.seed)
        test = make_scenes(args.test_scenes, views=args.test_views, resolution=res, seed=args.seed + 12345)
    model = SSDNeRF.from_preset(args.preset)
    trainer = Trainer(model, train, batch_size=args.batch, device=device, seed=args.seed)
    _sync(device)
    start = time.perf_counter()
    history = trainer.train(args.iters, progress=not args.no_progress)
    _sync(device)
    train_time = time.perf_counter() - start
    n_hist = max(1, min(10, args.iters // 5))
    report = {
        "device": device_label(device), "threads": torch.get_num_threads(), "preset": args.preset, "resolution": res,
        "scenes": args.scenes,
        "train": {"scenes": args.train_scenes, "views": args.views, "iters": args.iters, "time_s": train_time,
                  "pixel_loss_first": sum(history["pixel_loss"][:n_hist]) / n_hist,
                  "pixel_loss_last": sum(history["pixel_loss"][-n_hist:]) / n_hist,
                  "psnr_first": sum(history["psnr"][:n_hist]) / n_hist, "psnr_last": sum(history["psnr"][-n_hist:]) / n_hist},
        "methods": {},
    }
    gt = torch.stack([s["images"][1:] for s in test]).to(device)
    views = dict(images=torch.stack([s["images"][:1] for s in test]), c2w=torch.stack([s["c2w"][:1] for s in test]),
                 intrinsics=torch.stack([s["intrinsics"][:1] for s in test]))
    novel_c2w, novel_k = torch.stack([s["c2w"][1:] for s in test]), torch.stack([s["intrinsics"][1:] for s in test])
    for name, guided, prior in (("guided diffusion + fine-tune", True, True), ("fine-tune only (no prior)", False, False)):
        g = torch.Generator(device=device).manual_seed(args.seed)
        _sync(device)
        start = time.perf_counter()
        code, grids = reconstruct(model, views["images"], views["c2w"], views["intrinsics"], guided=guided, use_prior=prior,
                                  generator=g)
        _sync(device)
        elapsed = time.perf_counter() - start
        pred = render(model, code, grids, novel_c2w, novel_k, res, res)
        flat_p, flat_t = pred.reshape(-1, res, res, 3).cpu(), gt.reshape(-1, res, res, 3).cpu()
        report["methods"][name] = {"psnr": float(psnr(flat_p, flat_t)), "ssim": float(ssim(flat_p, flat_t)),
                                   "time_per_image_s": elapsed / len(test)}
    # fused vs eager, same reconstruction (one image), same run
    timing_model = model if args.timing_preset is None else SSDNeRF.from_preset(args.timing_preset).to(device)
    one = {k: v[:1] for k, v in views.items()}
    report["timing"] = {"preset": args.timing_preset or args.preset}
    for backend in ("auto", "torch"):
        g = torch.Generator(device=device).manual_seed(args.seed)
        _sync(device)
        start = time.perf_counter()
        reconstruct(timing_model, one["images"], one["c2w"], one["intrinsics"], guided=True, use_prior=True, generator=g,
                    backend=backend)
        _sync(device)
        report["timing"][backend] = time.perf_counter() - start
    return report


def to_markdown(r: dict) -> str:
    t = r["train"]
    lines = [
        f"# SSDNeRF single-view reconstruction ({r['device']}, {r['threads']} threads)", "",
        f"Preset `{r['preset']}`, procedural cars/chairs ({'fastfields.datasets builder' if r.get('scenes') == 'shared' else 'box-built, models.ssdnerf.scenes'}) at {r['resolution']}^2. Prior trained single-stage on "
        f"{t['scenes']} scenes x {t['views']} views for {t['iters']} iterations ({t['time_s']:.0f} s): rendering loss "
        f"{t['pixel_loss_first']:.3f} -> {t['pixel_loss_last']:.3f}, training-ray PSNR {t['psnr_first']:.1f} -> "
        f"{t['psnr_last']:.1f} dB. Held-out objects reconstructed from one view, scored on the others.", "",
        "| method | PSNR (dB) | SSIM | time / image (s) |", "|---|---:|---:|---:|",
    ]
    for name, m in r["methods"].items():
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['time_per_image_s']:.1f} |")
    tm = r["timing"]
    lines += ["", f"Reconstruction of one image (guided + fine-tune, preset `{tm['preset']}`): fused ops (`auto`) "
              f"{tm['auto']:.1f} s, eager PyTorch (`torch`) {tm['torch']:.1f} s "
              f"({tm['torch'] / tm['auto']:.2f}x).", "",
              "Timings on a shared, loaded machine."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m fastfields.bench.ssdnerf", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--timing-preset", help="also time this preset's reconstruction (e.g. cars_recons1v on a GPU)")
    p.add_argument("--scenes", choices=("boxes", "shared"), default="boxes",
                   help="boxes: models.ssdnerf.scenes (exact box renders); shared: fastfields.datasets' builder")
    p.add_argument("--train-scenes", type=int, default=12)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--iters", type=int, default=120)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--test-scenes", type=int, default=4)
    p.add_argument("--test-views", type=int, default=7)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = device_slug(torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    slug += "-shared-data" if args.scenes == "shared" else ""
    (out / f"ssdnerf-{slug}.json").write_text(json.dumps(report, indent=2))
    (out / f"ssdnerf-{slug}.md").write_text(to_markdown(report))
    sys.stdout.write(to_markdown(report))


if __name__ == "__main__":
    main()
