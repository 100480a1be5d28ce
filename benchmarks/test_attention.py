"""attention against F.scaled_dot_product_attention, and an LRM-large block against OpenLRM's eager
block, forward and forward+backward (GPU only: there are no CPU cases)."""

import pytest
import torch

from fastfields import bench
from fastfields.bench import attention as attention_cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = attention_cases.cases(DEVICE)
RUNS = [
    pytest.param(case, backend, id=f"{case.name}-{backend}")
    for case in CASES
    for backend in ["eager"] + [b for b in bench.fused_backends(DEVICE) if b in case.backends]
]


@pytest.mark.cuda
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", RUNS)
def test_attention(benchmark, case, backend, backward):
    inputs = {k: v.requires_grad_(backward and k in case.grad_inputs) for k, v in case.make_inputs(DEVICE).items()}
    call = (lambda: case.baseline(inputs)) if backend == "eager" else (lambda: case.fused(inputs, backend))
    fn = bench.pass_fn(call, inputs, case, backward)
    benchmark.group = f"{case.op} {case.name} {'fwd+bwd' if backward else 'fwd'}"

    def timed():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)
