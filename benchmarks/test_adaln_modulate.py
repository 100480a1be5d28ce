"""adaln_modulate against OpenLRM's eager ModLN (LayerNorm, then modulate), forward and forward+backward."""

import pytest
import torch

from fastfields import bench
from fastfields.bench import adaln_modulate as adaln_cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = adaln_cases.cases(DEVICE)
RUNS = [
    pytest.param(case, backend, id=f"{case.name}-{backend}")
    for case in CASES
    for backend in ["eager"] + [b for b in bench.fused_backends(DEVICE) if b in case.backends]
]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", RUNS)
def test_adaln_modulate(benchmark, case, backend, backward):
    inputs = {k: v.requires_grad_(backward and k in case.grad_inputs) for k, v in case.make_inputs(DEVICE).items()}
    call = (lambda: case.baseline(inputs)) if backend == "eager" else (lambda: case.fused(inputs, backend))
    fn = bench.pass_fn(call, inputs, case, backward)
    benchmark.group = f"adaln_modulate {case.name} {'fwd+bwd' if backward else 'fwd'}"

    def timed():
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)
