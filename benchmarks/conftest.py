"""pytest-benchmark suites: ``pytest benchmarks/ --benchmark-only``; the same cases as ``fastfields bench``.

Each ``test_<op>.py`` parametrises :func:`runs` over its op's cases and calls
:func:`benchmark_case`: the eager baseline, ``torch.compile`` of it (``compile``; compiled
in the warm-up round, which pytest-benchmark leaves out of the statistics) and every fused
backend available here, forward and forward+backward. Fused backends get the op's fast layout (its first alternative
layout, e.g. channels-last planes) when it has one.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "0")  # never time the Triton interpreter

from fastfields import bench  # noqa: E402
from fastfields.bench import harness  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Time as `fastfields bench` does: freed memory recycled, no page faults for fresh blocks.
harness._recycle_freed_memory()


def runs(op: str):
    """(case, backend) parameters for ``op`` on this machine."""
    cases = [case for case in bench.cases(DEVICE, full=True) if case.op == op]
    return [
        pytest.param(case, backend, id=f"{case.name}-{backend}")
        for case in cases
        for backend in ["eager", "compile"] + [b for b in bench.fused_backends(DEVICE) if b in case.backends]
    ]


def benchmark_case(benchmark, case, backend: str, backward: bool) -> None:
    def prepared(inputs):
        return {k: v.detach().requires_grad_(backward and k in case.grad_inputs) for k, v in inputs.items()}

    inputs = prepared(case.make_inputs(DEVICE))
    if backend != "eager" and case.layouts:
        inputs = prepared(next(iter(case.layouts.values()))(inputs))
    if backend == "eager":
        call = lambda: case.baseline(inputs)  # noqa: E731
    elif backend == "compile":
        compiled = harness.compile_baseline(case)
        call = lambda: compiled(inputs)  # noqa: E731
    else:
        call = lambda: case.fused(inputs, backend)  # noqa: E731
    fn = bench.pass_fn(call, inputs, case, backward)
    benchmark.group = f"{case.op} {case.name} {'fwd+bwd' if backward else 'fwd'}"

    def timed():
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)
