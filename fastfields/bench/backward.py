"""Backward vs forward time of every op's fused backend, at the ``fastfields bench`` shapes.

Usage (CPU; on a GPU host ``--device cuda --backend triton`` or ``--backend cuda``, which
``fastfields bench --gpu-report`` runs for every GPU backend)::

    OMP_NUM_THREADS=2 python -m fastfields.bench.backward --backend cpu --repeats 5

For each benchmark case (quick mode) and layout it times, in one process:

* ``fwd``: the fused call with the gradient inputs requiring grad (what training runs,
  so the forward saves what its backward needs);
* ``bwd``: ``torch.autograd.grad`` of that output (retained graph) with a fixed random
  output gradient, i.e. the op's backward alone.

``--clock cpu`` times the process's CPU time instead of wall time: with one thread
(OMP_NUM_THREADS=1) it is the kernel's cost even when other processes share the cores.
Each is the minimum over ``--repeats`` rounds (alternating forward and backward) of the
median of ``--reps`` calls: the machine may be shared, the minimum is the least disturbed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import cases, fused_backends
from .harness import _recycle_freed_memory, _synchronize


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _median(fn, reps: int, clock=time.perf_counter, device=torch.device("cpu")) -> float:
    fn()
    _synchronize(device)
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        _synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


def profile(backend: str, ops, repeats: int, reps: int, clock: str = "wall", log=print, device=None):
    """One row per (case, layout): the forward's and the backward's time and their ratio."""
    device = torch.device(device or "cpu")
    _recycle_freed_memory()  # as the benchmark: no page faults for the gradients' fresh blocks
    rows = []
    for case in cases(device, False):
        if ops and case.op not in ops:
            continue
        if backend not in case.backends or backend not in fused_backends(device):
            continue
        base = case.make_inputs(device)
        layouts = {"standard": base, **{k: fn(base) for k, fn in case.layouts.items()}}
        for layout, layout_inputs in layouts.items():
            inputs = {k: v.detach().requires_grad_(k in case.grad_inputs) for k, v in layout_inputs.items()}
            leaves = [inputs[k] for k in case.grad_inputs]
            out = case.fused(inputs, backend)
            grad = torch.randn_like(out)

            def fwd():
                return case.fused(inputs, backend)

            def bwd():
                return torch.autograd.grad(out, leaves, grad, retain_graph=True)

            # Rounds alternate forward and backward, so both see the same machine load.
            t_fwd = t_bwd = float("inf")
            for _ in range(repeats):
                t_fwd = min(t_fwd, _median(fwd, reps, CLOCKS[clock], device))
                t_bwd = min(t_bwd, _median(bwd, reps, CLOCKS[clock], device))
            row = dict(op=case.op, case=case.name, layout=layout, backend=backend, fwd_ms=t_fwd * 1e3, bwd_ms=t_bwd * 1e3,
                       ratio=t_bwd / t_fwd)
            rows.append(row)
            log(format_row(row))
            del out
    return rows


HEADER = "| op | case | layout | backend | fwd ms | bwd ms | bwd/fwd |\n|---|---|---|---|---|---|---|"


def format_row(row) -> str:
    return (f"| {row['op']} | {row['case']} | {row['layout']} | {row['backend']} | {row['fwd_ms']:.2f} | "
            f"{row['bwd_ms']:.2f} | {row['ratio']:.2f}x |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--op", action="append", default=[], help="only this bench op (repeatable)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the minimum is reported")
    parser.add_argument("--reps", type=int, default=5, help="calls per round; the median is taken")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (robust on a loaded machine with 1 thread)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend}, {args.clock} clock")
    print(HEADER)
    profile(args.backend, args.op, args.repeats, args.reps, args.clock, device=args.device)


if __name__ == "__main__":
    main()
