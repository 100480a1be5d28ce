"""Measurement and report: each op's fused backends against its PyTorch baseline, in the same run.

A :class:`Case` (defined per op in ``fastfields/bench/<op>.py``) builds its inputs, the
fused call (given a backend) and the eager PyTorch baseline people write today; the report
times forward and forward+backward (median), measures peak memory, computes achieved
bandwidth on GPU, and writes JSON, Markdown and a PNG plot named by device.

Peak memory is exact on CUDA (allocator statistics). On CPU it is the sampled rise of
the process's resident memory during the call, with glibc told to return large blocks
to the OS at once, so it tracks live tensors to within a few MB.
"""

from __future__ import annotations

import ctypes
import gc
import json
import platform
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import _backend

# Peak HBM bandwidth in GB/s by device-name fragment (vendor spec sheets).
PEAK_BANDWIDTH = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100": 1555, "L40S": 864, "4090": 1008}


@dataclass
class Case:
    """One benchmark configuration of one op."""

    op: str
    name: str
    make_inputs: Callable[[torch.device], Dict[str, torch.Tensor]]
    fused: Callable[[Dict[str, torch.Tensor], str], torch.Tensor]
    baseline: Callable[[Dict[str, torch.Tensor]], torch.Tensor]
    bytes_forward: Callable[[Dict[str, torch.Tensor]], int]
    bytes_backward: Callable[[Dict[str, torch.Tensor]], int]
    grad_inputs: Sequence[str] = ()
    backends: Sequence[str] = ("triton", "cuda", "cpu")
    layouts: Dict[str, Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Measurement


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, min_seconds: float = 0.4, max_reps: int = 100) -> float:
    """Median wall time of ``fn`` in seconds, after one warm-up call."""
    fn()
    _synchronize(device)
    times: List[float] = []
    start_all = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start_all < min_seconds and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _return_freed_memory_at_once():
    """Make glibc map large blocks on their own, so freeing them lowers the resident size."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed: no dynamic raise after frees
            libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
        except OSError:
            pass


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Extra memory at the peak of one call of ``fn`` (its outputs are dropped afterwards)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if not Path("/proc/self/statm").exists():
        return None
    before = _resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
        peak[0] = max(peak[0], _resident_bytes())
    finally:
        done.set()
        sampler.join()
    return max(peak[0] - before, 0)


def pass_fn(call: Callable[[], torch.Tensor], inputs: Dict[str, torch.Tensor], case: Case, backward: bool):
    if not backward:
        return lambda: call()
    leaves = [inputs[name] for name in case.grad_inputs]
    holder = {}

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        out = call()
        if "grad" not in holder or holder["grad"].shape != out.shape:
            holder["grad"] = torch.randn_like(out)
        out.backward(holder["grad"])

    return forward_backward


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    label = device_label(device) if device.type == "cuda" else f"cpu-{torch.get_num_threads()}threads"
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def fused_backends(device: torch.device, op_backends: Sequence[str] = ("triton", "cuda", "cpu")) -> List[str]:
    return [b for b in op_backends if _backend.why_unusable(b, device.type) is None]


def run(
    device: Optional[torch.device] = None,
    full: bool = False,
    ops: Optional[Sequence[str]] = None,
    backends: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
) -> List[Dict[str, object]]:
    """Measure every case on ``device`` and return one row per (case, layout, backend, pass)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _return_freed_memory_at_once()
    peak_bw = next((bw for key, bw in PEAK_BANDWIDTH.items() if device.type == "cuda" and key in device_label(device)), None)
    chosen = backends or fused_backends(device)
    rows: List[Dict[str, object]] = []
    from . import cases

    for case in cases(device, full):
        if ops and case.op not in ops:
            continue
        base_inputs = case.make_inputs(device)
        layouts = {"standard": base_inputs, **{k: fn(base_inputs) for k, fn in case.layouts.items()}}
        for backward in (False, True):
            pass_name = "fwd+bwd" if backward else "fwd"
            inputs = {k: v.detach().requires_grad_(backward and k in case.grad_inputs) for k, v in base_inputs.items()}
            fn = pass_fn(lambda: case.baseline(inputs), inputs, case, backward)
            base_time, base_mem = _measure(fn, device)
            rows.append(_row(case, "standard", "eager (baseline)", pass_name, base_time, base_mem, base_time, base_mem, None, None))
            log(_format_row(rows[-1]))
            for layout, layout_inputs in layouts.items():
                for backend in (b for b in chosen if b in case.backends):
                    inputs = {k: v.detach().requires_grad_(backward and k in case.grad_inputs) for k, v in layout_inputs.items()}
                    fn = pass_fn(lambda: case.fused(inputs, backend), inputs, case, backward)
                    t, mem = _measure(fn, device)
                    moved = case.bytes_forward(inputs) + (case.bytes_backward(inputs) if backward else 0)
                    gbps = moved / t / 1e9 if device.type == "cuda" and t is not None else None
                    rows.append(_row(case, layout, backend, pass_name, t, mem, base_time, base_mem, gbps, peak_bw))
                    log(_format_row(rows[-1]))
    return rows


def _measure(fn, device):
    """(median seconds, peak bytes), or (None, None) when the call runs out of memory: the
    eager baselines of the largest cases do on smaller GPUs, and the report says so."""
    try:
        return median_time(fn, device), peak_memory(fn, device)
    except torch.OutOfMemoryError:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, None


def _row(case, layout, backend, pass_name, seconds, mem, base_seconds, base_mem, gbps, peak_bw):
    """One report row; ``ms`` None means out of memory (speedup and memory ratio then unknown)."""
    both = seconds is not None and base_seconds is not None
    return {
        "op": case.op,
        "case": case.name,
        "layout": layout,
        "backend": backend,
        "pass": pass_name,
        "ms": None if seconds is None else seconds * 1e3,
        "speedup": base_seconds / seconds if both else None,
        "peak_mb": None if mem is None else mem / 2**20,
        # Below 1 MiB the CPU measurement (sampled resident memory) cannot resolve a ratio.
        "memory_ratio": None if not mem or not base_mem or mem < 2**20 else base_mem / mem,
        "gbps": gbps,
        "pct_peak_bw": None if gbps is None or not peak_bw else 100 * gbps / peak_bw,
    }


COLUMNS = ("op", "case", "layout", "backend", "pass", "ms", "speedup", "peak_mb", "memory_ratio", "gbps", "pct_peak_bw")
HEADERS = ("op", "case", "planes layout", "backend", "pass", "median ms", "speedup", "peak MB", "memory saved", "GB/s", "% peak BW")


def _cell(key, value) -> str:
    if value is None:
        return "OOM" if key == "ms" else "-"
    if key == "speedup" or key == "memory_ratio":
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.3g}" if key != "ms" else f"{value:.3f}"
    return str(value)


def _format_row(row) -> str:
    return "  ".join(f"{h}={_cell(k, row[k])}" for k, h in zip(COLUMNS, HEADERS) if row[k] is not None)


def markdown_table(rows: List[Dict[str, object]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cell(k, row[k]) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_report(rows: List[Dict[str, object]], out_dir: Path, device: torch.device, full: bool) -> List[Path]:
    """Write ``<device>.json``, ``<device>.md`` and (with matplotlib) ``<device>.png``."""
    from ..export import write_text  # atomic: an interrupted run never leaves half a report

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / device_slug(device)
    meta = {
        "device": device_label(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "mode": "full" if full else "quick",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    write_text(written[0], json.dumps({"meta": meta, "rows": rows}, indent=2))
    header = (
        f"# fastfields benchmark: {meta['device']}\n\n"
        f"torch {meta['torch']}, CUDA {meta['cuda']}, {meta['threads']} CPU threads, {meta['mode']} mode, {meta['date']}.\n"
        "Speedup and memory saved are against the eager PyTorch baseline measured in the same run "
        "(median of repeated calls; peak memory is the extra memory at the peak of one call; "
        "memory saved is '-' where the fused call's peak is under 1 MB, below what the CPU "
        "measurement resolves).\n\n"
    )
    write_text(written[1], header + markdown_table(rows) + "\n")
    plot = _plot(rows, stem.with_suffix(".png"), meta["device"])
    return written + ([plot] if plot else [])


def _plot(rows, path: Path, title: str) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fused = [r for r in rows if r["backend"] != "eager (baseline)" and r["speedup"] is not None]
    if not fused:
        return None
    labels = [f"{r['op']} {r['case']}\n{r['backend']} {r['layout']} {r['pass']}" for r in fused]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(fused) + 1.5))
    ax.barh(range(len(fused)), [r["speedup"] for r in fused], color=["C0" if r["pass"] == "fwd" else "C1" for r in fused])
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_yticks(range(len(fused)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over the eager PyTorch baseline (same run)")
    ax.set_title(f"fastfields on {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
