"""composite / composite_packed against the eager compositing code (TensoRF, OpenLRM, nerfacc), forward and forward+backward."""

import pytest
import torch

from fastfields import bench
from fastfields.bench import composite as composite_cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = composite_cases.cases(DEVICE)
BACKENDS = ["eager"] + bench.fused_backends(DEVICE)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_composite(benchmark, case, backend, backward):
    inputs = {k: v.requires_grad_(backward and k in case.grad_inputs) for k, v in case.make_inputs(DEVICE).items()}
    call = (lambda: case.baseline(inputs)) if backend == "eager" else (lambda: case.fused(inputs, backend))
    fn = bench.pass_fn(call, inputs, case, backward)
    benchmark.group = f"composite {case.name} {'fwd+bwd' if backward else 'fwd'}"

    def timed():
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)
