"""The benchmark report: Markdown tables, JSON and plots of :func:`fastfields.bench.run` rows.

``write_report`` writes ``<device>.json`` (meta + rows + scaling points), ``<device>.md``
(the bandwidth measured in the run, a summary per case — eager, ``torch.compile`` and the
best fused backend, forward and forward+backward — then every row), ``<device>.png``
(speedups over eager and over ``torch.compile``) and, given scaling points,
``<device>-scaling.png`` (log-log time vs work per op and backend).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..export import write_text  # atomic: an interrupted run never leaves half a report
from .harness import BASELINE, COMPILED, device_label, device_slug

COLUMNS = ("op", "case", "layout", "backend", "pass", "ms", "speedup", "vs_compile", "peak_mb", "memory_ratio",
           "gbps", "pct_measured_bw", "compile_s")
HEADERS = ("op", "case", "layout", "backend", "pass", "median ms", "vs eager", "vs compile", "peak MB", "memory saved",
           "GB/s", "% meas. BW", "compile s")


def _cell(key, value, row=None) -> str:
    if value is None:
        if key == "ms":
            return (row or {}).get("note") or "OOM"
        return "-"
    if key in ("speedup", "memory_ratio", "vs_compile"):
        return f"{value:.2f}x"
    if key == "compile_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3g}" if key != "ms" else f"{value:.3f}"
    return str(value)


def _format_row(row) -> str:
    return "  ".join(f"{h}={_cell(k, row.get(k), row)}" for k, h in zip(COLUMNS, HEADERS) if row.get(k) is not None)


def markdown_table(rows: List[Dict[str, object]]) -> str:
    """Every row, one line each (missing keys of older rows print as '-')."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cell(k, row.get(k), row) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def summary(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Per (op, case, pass): eager, torch.compile and the fastest fused row (any layout/backend)."""
    groups: Dict[tuple, Dict[str, object]] = {}
    for row in rows:
        key = (row["op"], row["case"], row["pass"])
        group = groups.setdefault(key, {"op": row["op"], "case": row["case"], "pass": row["pass"],
                                        "eager": None, "compile": None, "fused": None})
        if row["backend"] == BASELINE:
            group["eager"] = row
        elif row["backend"] == COMPILED:
            group["compile"] = row
        elif row.get("ms") is not None and (group["fused"] is None or row["ms"] < group["fused"]["ms"]):
            group["fused"] = row
    return list(groups.values())


def summary_table(rows: List[Dict[str, object]]) -> str:
    def ms(row):
        return "-" if row is None else _cell("ms", row.get("ms"), row)

    def mb(row):
        return "-" if row is None or row.get("peak_mb") is None else f"{row['peak_mb']:.3g}"

    lines = ["| op | case | pass | eager ms | compile ms | fused ms (backend, layout) | vs eager | vs compile "
             "| peak MB eager / compile / fused | fused GB/s (% meas. BW) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for g in summary(rows):
        fused = g["fused"]
        where = "-" if fused is None else f"{ms(fused)} ({fused['backend']}, {fused['layout']})"
        bw = "-"
        if fused is not None and fused.get("gbps") is not None:
            pct = fused.get("pct_measured_bw")
            bw = f"{fused['gbps']:.3g}" + ("" if pct is None else f" ({pct:.0f}%)")
        lines.append(f"| {g['op']} | {g['case']} | {g['pass']} | {ms(g['eager'])} | {ms(g['compile'])} | {where} | "
                     f"{_cell('speedup', None if fused is None else fused.get('speedup'))} | "
                     f"{_cell('vs_compile', None if fused is None else fused.get('vs_compile'))} | "
                     f"{mb(g['eager'])} / {mb(g['compile'])} / {mb(fused)} | {bw} |")
    return "\n".join(lines)


def write_report(rows: List[Dict[str, object]], out_dir: Path, device: torch.device, full: bool,
                 scaling: Optional[List[Dict[str, object]]] = None, note: str = "", sections: str = "") -> List[Path]:
    """Write ``<device>.json``, ``<device>.md`` and (with matplotlib) the plots; returns the paths.
    ``sections``: more Markdown for the end of the report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / device_slug(device)
    run_meta = dict(getattr(rows, "meta", {}))
    meta = {
        "device": device_label(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "mode": "full" if full else "quick",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **run_meta,
    }
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    write_text(written[0], json.dumps({"meta": meta, "rows": list(rows), "scaling": scaling or []}, indent=2))
    bw = meta.get("bandwidth")
    bw_line = ("Memory bandwidth measured in this run (STREAM-style, float32 arrays of "
               f"{bw['array_mb']:.0f} MB): copy {bw['copy_gbps']:.1f} GB/s, triad {bw['triad_gbps']:.1f} GB/s; "
               f"'% meas. BW' is against the larger, {bw['gbps']:.1f} GB/s."
               if bw else "Memory bandwidth was not measured in this run.")
    if meta.get("spec_peak_gbps"):
        bw_line += f" The device's spec-sheet peak is {meta['spec_peak_gbps']} GB/s."
    header = (
        f"# fastfields benchmark: {meta['device']}\n\n"
        f"torch {meta['torch']}, CUDA {meta['cuda']}, {meta['threads']} CPU threads, {meta['mode']} mode, {meta['date']}.\n"
        + (f"{note}\n" if note else "")
        + "\nEvery ratio is against a baseline measured in the same run: 'vs eager' against the eager "
        "PyTorch code the methods ship, 'vs compile' against `torch.compile` of that same code "
        "(inductor, default mode, static shapes, compiled once per case and pass; the compile "
        "time, 'compile s' = first call minus the timed call, is excluded from the times). "
        + (f"Times: {meta['timing']}, with the implementations of a case timed in turn, and freed "
           "memory recycled (as a caching allocator; fresh pages would add the operating system's "
           "page faults to every call). " if meta.get("timing") else "")
        + "Peak memory is the extra memory at the peak of one call ('memory saved' is '-' below 1 MB, "
        "what the CPU measurement resolves). GB/s counts the op's compulsory traffic (every input "
        "read once, every output written once; the backward's gradients likewise) over the "
        "time, for the memory-bound ops only; on CPU, inputs that fit in the caches can exceed "
        "the DRAM figure.\n\n"
        f"{bw_line}\n\n"
    )
    body = "## Summary\n\n" + summary_table(rows) + "\n\n## Every row\n\n" + markdown_table(rows) + "\n"
    if scaling:
        body += (f"\n## Scaling\n\n![time vs work]({stem.name}-scaling.png)\n\n"
                 "Forward time against work (points, rays x samples, tokens, rays) per op and "
                 "implementation; the dotted line is the compulsory traffic at the measured bandwidth.\n\n"
                 + scaling_table(scaling) + "\n")
    write_text(written[1], header + body + (f"\n{sections.strip()}\n" if sections else ""))
    plot = _plot(rows, stem.with_suffix(".png"), meta["device"])
    written += [plot] if plot else []
    if scaling:
        plot = plot_scaling(scaling, out_dir / f"{stem.name}-scaling.png", meta["device"], bw["gbps"] if bw else None)
        written += [plot] if plot else []
    return written


def scaling_table(points: List[Dict[str, object]]) -> str:
    lines = ["| op | work | backend | pass | median ms | time per unit of work (ns) |", "|---|---|---|---|---|---|"]
    for p in points:
        per = "-" if p["ms"] is None else f"{p['ms'] * 1e6 / p['work']:.3g}"
        lines.append(f"| {p['op']} | {p['work']} {p['unit']} | {p['backend']} | {p['pass']} | "
                     f"{_cell('ms', p['ms'], p)} | {per} |")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plot(rows, path: Path, title: str) -> Optional[Path]:
    plt = _pyplot()
    fused = [r for r in rows if r["backend"] not in (BASELINE, COMPILED) and r.get("speedup") is not None]
    if plt is None or not fused:
        return None
    labels = [f"{r['op']} {r['case']}\n{r['backend']} {r['layout']} {r['pass']}" for r in fused]
    panels = [("speedup", "speedup over eager PyTorch (same run)")]
    if any(r.get("vs_compile") is not None for r in fused):
        panels.append(("vs_compile", "speedup over torch.compile of it (same run)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 0.45 * len(fused) + 1.5), squeeze=False, sharey=True)
    for ax, (key, xlabel) in zip(axes[0], panels):
        ax.barh(range(len(fused)), [r.get(key) or 0.0 for r in fused], color=["C0" if r["pass"] == "fwd" else "C1" for r in fused])
        ax.axvline(1.0, color="k", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
    axes[0][0].set_yticks(range(len(fused)), labels, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"fastfields on {title} (blue: forward, orange: forward+backward)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(points: List[Dict[str, object]], path: Path, title: str, measured_gbps: Optional[float]) -> Optional[Path]:
    """One log-log panel per op: median time vs work, a line per (backend, pass), and the
    bandwidth floor (compulsory forward bytes / measured bandwidth) for memory-bound ops."""
    plt = _pyplot()
    if plt is None or not points:
        return None
    ops = list(dict.fromkeys(p["op"] for p in points))
    cols = min(3, len(ops))
    rows_n = (len(ops) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.8 * rows_n), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        mine = [p for p in points if p["op"] == op and p["ms"] is not None]
        colors = {b: f"C{i}" for i, b in enumerate(dict.fromkeys(p["backend"] for p in mine))}
        for key in dict.fromkeys((p["backend"], p["pass"]) for p in mine):
            line = sorted((p for p in mine if (p["backend"], p["pass"]) == key), key=lambda p: p["work"])
            ax.plot([p["work"] for p in line], [p["ms"] for p in line], marker="o", markersize=3, color=colors[key[0]],
                    linestyle="-" if key[1] == "fwd" else "--", label=f"{key[0]} {key[1]}")
        floor = sorted({(p["work"], p["bytes_forward"]) for p in mine if p.get("memory_bound") and p.get("bytes_forward")})
        if floor and measured_gbps:
            ax.plot([w for w, _ in floor], [b / (measured_gbps * 1e9) * 1e3 for _, b in floor], "k:", label="bytes / measured BW")
        unit = mine[0]["unit"] if mine else ""
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(unit)
        ax.set_ylabel("median ms")
        ax.set_title(mine[0]["case_family"] if mine else op, fontsize=8)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    fig.suptitle(f"fastfields scaling on {title} (solid: forward, dashed: forward+backward)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
