"""DiffRF evidence: sampling timings, fused vs eager rendering for the loss, and a small
end-to-end study on procedural objects (COV / MMD, the "without rendering loss" ablation,
completion and single-image PSNR of novel views).

    python -m fastfields.bench.diffrf                      # CPU scale: a few minutes
    python -m fastfields.bench.diffrf --device cuda --resolution 32 --train-steps 20000 --objects 64

Timing rows: one 1000-step ancestral sample and one DDIM-50 sample of one 32^3 field, per
preset. Where a full loop would take too long here (``--max-loop-s``), the per-step time is
measured over a few steps and the loop time extrapolated; the row says which. Fused vs
eager: the rendering part of the training loss (``ff.voxel_sample`` + ``ff.composite``,
forward + backward to the x0 estimate) with ``backend="auto"`` against ``"torch"``.

Study: ``--objects`` chairs and cars per split (train / held-out, disjoint seeds) are
rendered from fine procedural fields, fitted at ``--resolution`` (the GT-field pipeline),
and a tiny model is trained for ``--train-steps`` with and without the rendering loss on
the same seed and budget. Then: COV / MMD (Chamfer, from density) of DDIM samples against the
held-out fields (and, as the ceiling, the training fields against them); completion of the
held-out fields with the x < 0 half known, and single-image synthesis from one view, both
scored by PSNR on novel views against the ground-truth renders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch

from .harness import device_label, device_slug, median_time


def _loop_time(model, steps, device, max_s: float, probe_steps: int) -> Dict[str, object]:
    """Time of one sample with ``steps`` (None: ancestral T), measured or extrapolated."""
    n_steps = model.config.timesteps if steps is None else steps
    x = torch.randn(1, *model.field_shape, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad():
        model.denoiser(x, t)  # warm-up
        start = time.perf_counter()
        for _ in range(probe_steps):
            model.denoiser(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / probe_steps
    if per_step * n_steps <= max_s:
        start = time.perf_counter()
        model.sample(1, steps=steps, generator=torch.Generator(device=device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - start, "how": "measured"}
    return {"seconds": per_step * n_steps, "how": f"extrapolated from {probe_steps} denoiser calls ({per_step * 1000:.0f} ms/step)"}


def timing_rows(presets: List[str], device, max_s: float) -> List[Dict[str, object]]:
    from fastfields.models.diffrf import DiffRF

    rows = []
    for preset in presets:
        torch.manual_seed(0)
        model = DiffRF.from_preset(preset).to(device).eval()
        params = sum(p.numel() for p in model.denoiser.parameters())
        for name, steps in (("ancestral-1000", None), ("ddim-50", 50)):
            r = _loop_time(model, steps, device, max_s, probe_steps=3 if preset == "paper" else 10)
            rows.append({"preset": preset, "params_M": round(params / 1e6, 2), "loop": name, **r})
            print(f"  {preset:6s} {name:15s} {r['seconds']:9.2f} s  ({r['how']})", flush=True)
        del model
    return rows


def render_loss_rows(device) -> List[Dict[str, object]]:
    """Forward + backward of the rendering loss: 4 fields 32^3, 1024 rays each, 96 samples."""
    from fastfields.models.diffrf.field import render_rays
    from fastfields.models.diffrf.synthetic import orbit_views
    from fastfields.models.diffrf.field import camera_rays

    g = torch.Generator().manual_seed(0)
    fields = (torch.rand(4, 4, 32, 32, 32, generator=g) * 2 - 1).to(device).requires_grad_(True)
    c2w, k = orbit_views(4, 32, 32)
    o, d = camera_rays(c2w, k, 32, 32)
    o, d = o.to(device), d.to(device)
    rows = []
    for label, backend in (("eager (torch)", "torch"), ("fused (auto)", "auto")):
        def step():
            rgb, _, _ = render_rays(fields, o, d, n_samples=96, backend=backend)
            rgb.square().mean().backward()
        seconds = median_time(step, device, min_seconds=1.0, max_reps=20)
        rows.append({"path": label, "backend": backend, "ms": seconds * 1000})
        print(f"  render loss fwd+bwd {label:14s} {seconds * 1000:8.1f} ms", flush=True)
    rows.append({"path": "speed-up", "ms": rows[0]["ms"] / rows[1]["ms"]})
    return rows


def _objects(split: str, n: int, resolution: int, image: int, views: int, fit_iters: int, seed: int):
    from fastfields.models.diffrf.field import fit_field, render_views
    from fastfields.models.diffrf.synthetic import orbit_views, synthetic_object

    base = {"train": 0, "test": 50000}[split] + seed * 100000
    out = []
    for kind in ("chair", "car"):
        for i in range(n):
            gt = synthetic_object(kind, base + i, 64)
            low = orbit_views(views - views // 2, image, image, elevation=5.0, azimuth_start=11.0 * i)
            high = orbit_views(views // 2, image, image, elevation=45.0, azimuth_start=11.0 * i + 30.0)
            c2w, k = torch.cat([low[0], high[0]]), torch.cat([low[1], high[1]])  # two rings, as datasets on a sphere
            images = render_views(gt, c2w, k, image, image, n_samples=160)
            novel_c2w, novel_k = orbit_views(4, image, image, elevation=30.0, azimuth_start=45.0 + 11.0 * i)
            novel = render_views(gt, novel_c2w, novel_k, image, image, n_samples=160)
            field = fit_field(images, c2w, k, resolution=resolution, iters=fit_iters, lr=0.1, rays_per_step=1024,
                              n_samples=2 * resolution)
            out.append({"id": f"{kind}_{i}", "field": field, "images": images, "c2w": c2w, "intrinsics": k,
                        "novel": novel, "novel_c2w": novel_c2w, "novel_k": novel_k})
    return out


def study(args, device) -> Dict[str, object]:
    from fastfields.metrics import psnr
    from fastfields.models.diffrf import DiffRF
    from fastfields.models.diffrf.metrics import coverage_mmd
    from fastfields.models.diffrf.train import train

    r, s = args.resolution, args.image_size
    start = time.perf_counter()
    train_set = _objects("train", args.objects, r, s, args.views, args.fit_iters, args.seed)
    test_set = _objects("test", max(args.objects // 2, 2), r, s, args.views, args.fit_iters, args.seed)
    fit_psnr = sum(psnr(DiffRF.from_preset("tiny", overrides=dict(resolution=r, n_samples=2 * r)).render(
        e["field"], e["novel_c2w"], e["novel_k"], s, s), e["novel"]) for e in test_set) / len(test_set)
    result = {"fields_fitted": len(train_set) + len(test_set), "fit_s": time.perf_counter() - start,
              "fit_novel_psnr": fit_psnr}
    print(f"  fitted {result['fields_fitted']} fields at {r}^3 in {result['fit_s']:.0f} s; held-out GT fields' "
          f"novel-view PSNR {fit_psnr:.2f} dB", flush=True)
    test_fields = torch.stack([e["field"] for e in test_set])
    result["ceiling_train_vs_test"] = coverage_mmd(torch.stack([e["field"] for e in train_set]), test_fields)
    overrides = dict(resolution=r, n_samples=2 * r, train_rays=256)
    for name, weight in (("with_rgb_loss", 1.0), ("without_rgb_loss", 0.0)):
        torch.manual_seed(args.seed)
        model = DiffRF.from_preset("tiny", overrides={**overrides, "rgb_loss_weight": weight}).to(device)
        h = train(model, train_set, steps=args.train_steps, batch_size=4, lr=2e-3, ema_decay=0.995, seed=args.seed,
                  log_every=max(args.train_steps // 10, 1))
        ema = h.pop("ema")
        g = torch.Generator(device=device).manual_seed(args.seed)
        samples = ema.sample(len(test_set), steps=args.sample_steps, generator=g)
        entry = {"train_s": h["time_s"], "loss_first": h["loss"][0], "loss_last": h["loss"][-1],
                 "loss_rf_last": h["loss_rf"][-1], "loss_rgb_last": h["loss_rgb"][-1],
                 "occupied_fraction": float((samples[:, 0] > 0).float().mean()),
                 **{f"uncond_{k}": v for k, v in coverage_mmd(samples, test_fields).items()}}
        # Completion: x < 0 known; single image: the first training-style view of each held-out object.
        mask = torch.zeros(r, r, r)
        mask[..., : r // 2] = 1
        comp, single = [], []
        for i, e in enumerate(test_set):
            done = ema.complete(e["field"], mask, steps=args.sample_steps, generator=g)
            comp.append(psnr(ema.render(done[0], e["novel_c2w"], e["novel_k"], s, s), e["novel"]))
            from_img = ema.from_image(e["images"][0], e["c2w"][0], e["intrinsics"][0], steps=args.sample_steps,
                                      scale=args.guidance, generator=g)
            single.append(psnr(ema.render(from_img[0], e["novel_c2w"], e["novel_k"], s, s), e["novel"]))
        entry["completion_novel_psnr"] = sum(comp) / len(comp)
        entry["single_image_novel_psnr"] = sum(single) / len(single)
        result[name] = entry
        print(f"  {name}: loss {entry['loss_first']:.3f} -> {entry['loss_last']:.3f} in {entry['train_s']:.0f} s; "
              f"COV {entry['uncond_cov']:.2f} MMD {entry['uncond_mmd']:.4f}; completion {entry['completion_novel_psnr']:.2f} dB; "
              f"single image {entry['single_image_novel_psnr']:.2f} dB", flush=True)
    # Reference points for the PSNRs: an empty field (white images), and the known half alone.
    empty = torch.full((4, r, r, r), -1.0)
    tiny = DiffRF.from_preset("tiny", overrides=dict(resolution=r, n_samples=2 * r))
    result["empty_field_novel_psnr"] = sum(psnr(tiny.render(empty, e["novel_c2w"], e["novel_k"], s, s), e["novel"])
                                           for e in test_set) / len(test_set)
    result["known_half_only_novel_psnr"] = sum(
        psnr(tiny.render(torch.where(mask.bool(), e["field"], empty), e["novel_c2w"], e["novel_k"], s, s), e["novel"])
        for e in test_set) / len(test_set)
    return result


def markdown(report: Dict[str, object]) -> str:
    lines = [f"# DiffRF on {report['device']}", "", f"Command: `{report['command']}`", "",
             "Timings on a shared, loaded CPU machine (other jobs running); treat them as upper bounds.", "",
             "## Sampling one 32^3 field", "", "| preset | params (M) | loop | seconds | how |", "|---|---|---|---|---|"]
    for row in report["timing"]:
        lines.append(f"| {row['preset']} | {row['params_M']} | {row['loop']} | {row['seconds']:.2f} | {row['how']} |")
    lines += ["", "## Rendering loss, forward + backward (4 fields 32^3, 1024 rays each, 96 samples)", "",
              "| path | ms |", "|---|---|"]
    for row in report["render_loss"]:
        lines.append(f"| {row['path']} | {row['ms']:.2f} |")
    st = report.get("study")
    if st:
        lines += ["", "## Study (procedural chairs and cars)", "", f"Settings: `{json.dumps(report['study_args'])}`", "",
                  f"- GT-field pipeline: {st['fields_fitted']} fields fitted in {st['fit_s']:.0f} s; held-out fitted fields "
                  f"re-render novel views at {st['fit_novel_psnr']:.2f} dB PSNR.",
                  f"- Ceiling (training fields as 'samples' vs held-out): COV {st['ceiling_train_vs_test']['cov']:.2f}, "
                  f"MMD {st['ceiling_train_vs_test']['mmd']:.4f}.",
                  f"- PSNR reference points on the same novel views: empty field {st['empty_field_novel_psnr']:.2f} dB; "
                  f"the known half alone {st['known_half_only_novel_psnr']:.2f} dB.", "",
                  "| model | train s | loss first -> last | COV | MMD | occupied | completion PSNR | single-image PSNR |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in ("with_rgb_loss", "without_rgb_loss"):
            e = st[name]
            lines.append(f"| {name.replace('_', ' ')} | {e['train_s']:.0f} | {e['loss_first']:.3f} -> {e['loss_last']:.3f} | "
                         f"{e['uncond_cov']:.2f} | {e['uncond_mmd']:.4f} | {e['occupied_fraction']:.3f} | "
                         f"{e['completion_novel_psnr']:.2f} | {e['single_image_novel_psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastfields.bench.diffrf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--max-loop-s", type=float, default=60.0, help="measure a loop in full below this many seconds")
    parser.add_argument("--objects", type=int, default=6, help="training objects per category (held-out: half)")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=24)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--fit-iters", type=int, default=80)
    parser.add_argument("--train-steps", type=int, default=120)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-study", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = {"device": device_label(device), "command": "python -m fastfields.bench.diffrf " + " ".join(argv or sys.argv[1:]),
              "torch_threads": torch.get_num_threads()}
    print("timing:", flush=True)
    report["timing"] = timing_rows(args.presets.split(","), device, args.max_loop_s)
    report["render_loss"] = render_loss_rows(device)
    if not args.no_study:
        print("study:", flush=True)
        report["study_args"] = {k: getattr(args, k) for k in ("objects", "resolution", "image_size", "views", "fit_iters",
                                                               "train_steps", "sample_steps", "guidance", "seed")}
        report["study"] = study(args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"diffrf-{device_slug(device)}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(markdown(report))
    print(f"wrote {out / stem}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
