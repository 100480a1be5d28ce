"""Scaling sweeps: median time against work per op and implementation, small to large.

The points feed the report's log-log plot (:func:`fastfields.bench.report.plot_scaling`),
which shows where fixed overheads (launches, thread start-up, Python dispatch) stop
mattering and how close each implementation runs to the bandwidth floor. Each op sweeps
one shape family of its benchmark cases over its work measure: points (the samplers),
rays x samples (composite), tokens (adaln_modulate, attention), rays (render_triplane).

``torch.compile`` is left out by default (``compile=False``): it recompiles for every
shape, a minute or more per point on a small CPU machine; pass ``compile=True`` to include it.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .harness import BASELINE, COMPILED, MEMORY_BOUND_OPS, Case, _measure, compile_baseline, fused_backends, pass_fn


def sweeps(device: torch.device) -> List[Tuple[str, str, List[Tuple[int, Callable[[], Case]]]]]:
    """``(family label, unit, [(work, make_case), ...])`` per op, sized for ``device``."""
    from .adaln_modulate import adaln_case
    from .attention import attention_case
    from .composite import dense_case
    from .render_triplane import render_case
    from .tensorf_vm_sample import vm_case
    from .triplane_sample import triplane_case
    from .voxel_sample import voxel_case

    gpu = device.type == "cuda"
    f32 = torch.float32
    points = (14, 16, 18, 20, 22) if gpu else (12, 14, 16, 18)
    found = [
        ("triplane_sample 3x32x128x128 mean", "points",
         [(2**n, lambda n=n: triplane_case(1, 32, 128, 128, n, f32)) for n in points]),
        ("tensorf_vm_sample 3x48x300x300 concat", "points",
         [(2**n, lambda n=n: vm_case(48, 300, n, f32, "concat")) for n in ((14, 16, 18, 20) if gpu else (11, 13, 15, 17))]),
        ("voxel_sample 4x64^3", "points", [(2**n, lambda n=n: voxel_case(1, 4, 64, n, f32)) for n in points]),
        ("composite dense S=128 C=3", "rays x samples",
         [(2**n * 128, lambda n=n: dense_case(n, 128, 3, f32)) for n in ((10, 12, 14, 16, 18) if gpu else (8, 10, 12, 14))]),
        ("adaln_modulate D=1024", "tokens",
         [(L, lambda L=L: adaln_case(1, L, 1024, f32)) for L in ((256, 1024, 4096, 12288, 49152) if gpu else (256, 1024, 4096, 12288))]),
        ("render_triplane 3x80x64x64, 48+48 samples", "rays",
         [(s * s, lambda s=s: render_case(s, 80, 64, 48, 48)) for s in ((32, 64, 128, 256, 512) if gpu else (16, 32, 64))]),
    ]
    if gpu:
        found.append(("attention self H=16 Dh=64 bf16", "tokens",
                      [(L, lambda L=L: attention_case(1, 16, L, L, 64, torch.bfloat16)) for L in (256, 1024, 4096, 16384)]))
    return found


def run_scaling(
    device: Optional[torch.device] = None,
    ops: Optional[Sequence[str]] = None,
    backends: Optional[Sequence[str]] = None,
    compile: bool = False,
    backward: bool = True,
    log: Callable[[str], None] = print,
) -> List[Dict[str, object]]:
    """Measure every sweep point: eager baseline, (``compile``) torch.compile of it, and every
    fused backend available (on the case's fast layout when it has one), forward and (with
    ``backward``) forward+backward. Returns one dict per point and implementation."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = backends or fused_backends(device)
    out: List[Dict[str, object]] = []
    for family, unit, points in sweeps(device):
        for work, make_case in points:
            case = make_case()
            if ops and case.op not in ops:
                break
            base_inputs = case.make_inputs(device)
            fast = next(iter(case.layouts.values()))(base_inputs) if case.layouts else base_inputs
            impls = [(BASELINE, lambda x: case.baseline(x), base_inputs)]
            if compile:
                compiled = compile_baseline(case)
                impls.append((COMPILED, lambda x, compiled=compiled: compiled(x), base_inputs))
            impls += [(b, lambda x, b=b: case.fused(x, b), fast) for b in chosen if b in case.backends]
            for backward_pass in (False, True) if backward else (False,):
                for name, call, source in impls:
                    inputs = {k: v.detach().requires_grad_(backward_pass and k in case.grad_inputs) for k, v in source.items()}
                    fn = pass_fn(lambda: call(inputs), inputs, case, backward_pass)
                    try:
                        seconds = _measure(fn, device)[0]
                        note = None if seconds is not None else "OOM"
                    except Exception as error:  # a failed compile at one size must not end the sweep
                        seconds, note = None, f"failed: {type(error).__name__}"
                    point = {
                        "op": case.op, "case_family": family, "case": case.name, "work": int(work), "unit": unit,
                        "backend": name, "pass": "fwd+bwd" if backward_pass else "fwd",
                        "ms": None if seconds is None else seconds * 1e3, "note": note,
                        "bytes_forward": int(case.bytes_forward(inputs)), "memory_bound": case.op in MEMORY_BOUND_OPS,
                    }
                    out.append(point)
                    log(f"scaling {case.op} {work} {unit} {name} {point['pass']}: "
                        + ("-" if seconds is None else f"{seconds * 1e3:.3f} ms"))
            del base_inputs, fast, impls
    return out
