"""Measurement and report: each op's fused backends against its PyTorch baseline, in the same run.

A :class:`Case` (defined per op in ``fastfields/bench/<op>.py``) builds its inputs, the
fused call (given a backend) and the eager PyTorch baseline people write today; the run
times forward and forward+backward (median) of the baseline, of ``torch.compile`` of the
baseline and of every fused backend, measures peak memory and, for the memory-bound ops,
achieved bandwidth against the machine's bandwidth measured in the same run.
:mod:`.report` writes JSON, Markdown and plots named by device; :mod:`.scaling` sweeps
sizes for the log-log time-vs-work plot.

Peak memory is exact on CUDA (allocator statistics). On CPU it is the sampled rise of
the process's resident memory during the call, with glibc told to map every large block on
its own while the call runs, so that freeing it lowers the resident size and the rise tracks
live tensors to within a few MB. Times are taken with freed memory recycled instead (glibc
keeps blocks up to 1 GB in its heap), as a caching allocator does on a GPU and jemalloc or
tcmalloc do on a CPU: otherwise every call would also pay the operating system's page faults
and zeroing for each fresh block (about 12 ms for 48 MB here), a cost that says nothing about
the kernels and that inflates the many-intermediate eager baselines most.
"""

from __future__ import annotations

import ctypes
import gc
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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks below this come from glibc's heap and are reused once freed (see the module doc).
_RECYCLED_BELOW = 2**30


def _mallopt(mmap_threshold: int, trim_threshold: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)  # fixed: no dynamic raise after frees
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        except OSError:
            pass


_allocator = {"recycling": False}


def _recycle_freed_memory():
    """Keep freed blocks (up to 1 GB) in glibc's heap for reuse, so a timed call pays no page
    faults for memory the previous call released, as with a caching allocator."""
    _mallopt(_RECYCLED_BELOW, 2**31 - 1)  # trim threshold: mallopt takes a C int; the largest
    _allocator["recycling"] = True


def _return_freed_memory_at_once():
    """Make glibc map large blocks on their own, so freeing them lowers the resident size, and
    hand back the free heap memory the timed calls left (else the measured call could reuse
    it without raising the resident size)."""
    _mallopt(128 * 1024, 128 * 1024)
    _allocator["recycling"] = False
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
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
    recycling = _allocator["recycling"]
    _return_freed_memory_at_once()
    # One call in this mode first: what the timed calls left alive (gradients, outputs) sits in
    # the heap and would not be returned when the measured call frees it; this call's blocks are
    # mapped on their own and are.
    fn()
    gc.collect()
    _return_freed_memory_at_once()
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
        if recycling:
            _recycle_freed_memory()
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


#: Interleaved timing rounds per (case, pass) and the least time each round spends per call.
ROUNDS, ROUND_SECONDS = 3, 0.2

BASELINE = "eager (baseline)"
COMPILED = "torch.compile (baseline)"
#: Ops whose cost is moving bytes: their rows get achieved GB/s and the fraction of the
#: bandwidth measured in the same run. (attention, the LRM block and render_triplane are
#: compute-bound; their compulsory bytes would say nothing about the limit.)
MEMORY_BOUND_OPS = ("triplane_sample", "tensorf_vm_sample", "voxel_sample", "composite", "adaln_modulate")


class Rows(list):
    """The report's rows (a list of dicts) with ``meta``: the bandwidth measurement, compile
    settings and anything else the report header states."""

    def __init__(self, rows=(), meta=None):
        super().__init__(rows)
        self.meta = dict(meta or {})


def measure_bandwidth(device: torch.device, megabytes: Optional[int] = None, min_seconds: float = 0.3) -> Dict[str, float]:
    """The machine's memory bandwidth, measured now: STREAM-style copy (``b = a``: read + write)
    and triad (``a = b + s * c``: two reads + a write) on float32 arrays far larger than the
    caches (default 128 MB each on CPU, 1 GB on GPU), median time, GB/s = bytes moved / s.

    Returns ``{"copy_gbps", "triad_gbps", "gbps" (the larger: the reference), "array_mb"}``."""
    megabytes = megabytes or (1024 if device.type == "cuda" else 128)
    n = megabytes * 2**20 // 4
    a = torch.rand(n, device=device)
    b = torch.empty_like(a)
    c = torch.rand(n, device=device)
    copy_s = median_time(lambda: b.copy_(a), device, min_seconds=min_seconds, max_reps=50)
    triad_s = median_time(lambda: torch.add(b, c, alpha=1.5, out=a), device, min_seconds=min_seconds, max_reps=50)
    nbytes = n * 4
    del a, b, c
    copy_gbps, triad_gbps = 2 * nbytes / copy_s / 1e9, 3 * nbytes / triad_s / 1e9
    return {"copy_gbps": copy_gbps, "triad_gbps": triad_gbps, "gbps": max(copy_gbps, triad_gbps), "array_mb": float(megabytes)}


def compile_baseline(case: Case) -> Callable[[Dict[str, torch.Tensor]], torch.Tensor]:
    """``torch.compile`` of the case's eager baseline (inductor, default mode, static shapes):
    the peer a user would reach for instead of fused kernels. Compiled once per case; the
    forward+backward pass compiles its own (autograd) graph on its first call."""
    return torch.compile(case.baseline, dynamic=False)


def run(
    device: Optional[torch.device] = None,
    full: bool = False,
    ops: Optional[Sequence[str]] = None,
    backends: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = print,
    compile: bool = True,
    bandwidth: bool = True,
) -> Rows:
    """Measure every case on ``device``: one row per (case, layout, implementation, pass).

    Implementations: the eager baseline, ``torch.compile`` of it (``compile``; its first
    call's extra time is reported as ``compile_s`` and excluded from ``ms``) and every fused
    backend. Memory-bound ops (:data:`MEMORY_BOUND_OPS`) get GB/s of their compulsory traffic
    and its fraction of the bandwidth measured at the start of the run (``bandwidth``; on
    GPU also of the spec-sheet peak). Returns :class:`Rows` (a list) whose ``meta`` holds the
    bandwidth measurement.

    Two phases: first every call's first-call time and peak memory (on CPU with every large
    block mapped on its own, so the resident size tracks live tensors), then every median
    time with freed memory recycled (see the module doc). Once the heap holds recycled
    blocks the resident size no longer follows what a call allocates, hence the order.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _return_freed_memory_at_once()
    peak_bw = next((bw for key, bw in PEAK_BANDWIDTH.items() if device.type == "cuda" and key in device_label(device)), None)
    rows = Rows(meta={"compile": bool(compile), "spec_peak_gbps": peak_bw})
    chosen = backends or fused_backends(device)
    from . import cases

    jobs = []
    for case in cases(device, full):
        if ops and case.op not in ops:
            continue
        base_inputs = case.make_inputs(device)
        layouts = {"standard": base_inputs, **{k: fn(base_inputs) for k, fn in case.layouts.items()}}
        compiled = compile_baseline(case) if compile else None
        for backward in (False, True):
            implementations = [("standard", BASELINE, base_inputs, case.baseline)]
            if compiled is not None:
                implementations.append(("standard", COMPILED, base_inputs, compiled))
            for layout, layout_inputs in layouts.items():
                for backend in (b for b in chosen if b in case.backends):
                    implementations.append((layout, backend, layout_inputs, lambda x, backend=backend, fused=case.fused: fused(x, backend)))
            for layout, label, source, call in implementations:
                inputs = {k: v.detach().requires_grad_(backward and k in case.grad_inputs) for k, v in source.items()}
                fn = pass_fn(lambda call=call, inputs=inputs: call(inputs), inputs, case, backward)
                jobs.append(dict(case=case, layout=layout, label=label, backward=backward, inputs=inputs, fn=fn))

    # Phase 1: first call (compilation included) and peak memory.
    for job in jobs:
        try:
            job["first"], job["mem"] = _first_call_and_peak(job["fn"], device)
            job["note"] = None
        except torch.OutOfMemoryError:
            job["first"] = job["mem"] = None
            job["note"] = "out of memory"
        except Exception as error:  # inductor failures are many types; the report says which
            if job["label"] != COMPILED:
                raise
            job["first"] = job["mem"] = None
            job["note"] = f"compile failed: {type(error).__name__}"
        _release(device, job)

    # Phase 2: times, with freed memory recycled. The implementations of one (case, pass) are
    # timed in turn, ROUNDS times over, and each keeps its fastest round's median: a machine
    # whose speed drifts over minutes (shared hosts) then slows the baseline and the fused call
    # alike instead of skewing their ratio.
    _recycle_freed_memory()
    if bandwidth:
        measured = measure_bandwidth(device)
        rows.meta["bandwidth"] = measured
        log(f"memory bandwidth: copy {measured['copy_gbps']:.1f} GB/s, triad {measured['triad_gbps']:.1f} GB/s "
            f"({measured['array_mb']:.0f} MB arrays)")
    measured_bw = rows.meta.get("bandwidth", {}).get("gbps")
    rows.meta["timing"] = f"fastest of {ROUNDS} interleaved rounds, each the median of >= 3 calls over >= {ROUND_SECONDS} s"
    groups: Dict[tuple, list] = {}
    for job in jobs:
        groups.setdefault((id(job["case"]), job["backward"]), []).append(job)
    for group in groups.values():
        for _ in range(ROUNDS):
            for job in group:
                if job["note"] is not None:
                    continue
                try:
                    t = median_time(job["fn"], device, min_seconds=ROUND_SECONDS)
                    job["time"] = min(job.get("time", t), t)
                except torch.OutOfMemoryError:
                    job["note"] = "out of memory"
                _release(device, job)
        baseline = next(j for j in group if j["label"] == BASELINE)
        compiled = next((j for j in group if j["label"] == COMPILED), None)
        base_t, compiled_t = baseline.get("time"), compiled.get("time") if compiled else None
        for job in group:
            case, backward, t = job["case"], job["backward"], job.get("time")
            gbps = None
            if case.op in MEMORY_BOUND_OPS and t is not None:
                moved = case.bytes_forward(job["inputs"]) + (case.bytes_backward(job["inputs"]) if backward else 0)
                gbps = moved / t / 1e9
            compile_s = None
            if job["label"] == COMPILED and t is not None and job["first"] is not None:
                compile_s = max(job["first"] - t, 0.0)
            rows.append(_row(case, job["layout"], job["label"], "fwd+bwd" if backward else "fwd", t, job["mem"], base_t,
                             baseline["mem"], gbps, peak_bw, compiled_seconds=compiled_t, measured_bw=measured_bw,
                             compile_s=compile_s, note=job["note"]))
            log(_format_row(rows[-1]))
    return rows


def _first_call_and_peak(fn, device):
    """(seconds of the first call, which includes any compilation; peak bytes of a later call)."""
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start, peak_memory(fn, device)


def _release(device, job):
    """Drop a job's gradients between measurements, so they do not pile up across jobs."""
    for value in job["inputs"].values():
        value.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _measure(fn, device):
    """(median seconds, peak bytes, seconds of the first call), or Nones when the call runs
    out of memory: the eager baselines of the largest cases do on smaller GPUs, and the
    report says so. The first call includes any compilation (torch.compile, Triton JIT)."""
    try:
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        first = time.perf_counter() - start
        return median_time(fn, device), peak_memory(fn, device), first
    except torch.OutOfMemoryError:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None, None, None


def _row(case, layout, backend, pass_name, seconds, mem, base_seconds, base_mem, gbps, peak_bw,
         compiled_seconds=None, measured_bw=None, compile_s=None, note=None):
    """One report row; ``ms`` None means out of memory or a failed compile (``note`` says which)."""
    both = seconds is not None and base_seconds is not None
    return {
        "op": case.op,
        "case": case.name,
        "layout": layout,
        "backend": backend,
        "pass": pass_name,
        "ms": None if seconds is None else seconds * 1e3,
        "speedup": base_seconds / seconds if both else None,
        "vs_compile": compiled_seconds / seconds if seconds is not None and compiled_seconds is not None else None,
        "peak_mb": None if mem is None else mem / 2**20,
        # Below 1 MiB the CPU measurement (sampled resident memory) cannot resolve a ratio.
        "memory_ratio": None if not mem or not base_mem or mem < 2**20 else base_mem / mem,
        "gbps": gbps,
        "pct_measured_bw": None if gbps is None or not measured_bw else 100 * gbps / measured_bw,
        "pct_peak_bw": None if gbps is None or not peak_bw else 100 * gbps / peak_bw,
        "compile_s": compile_s,
        "note": note,
    }


from .report import _format_row, markdown_table, write_report  # noqa: E402,F401  (kept importable from here)
