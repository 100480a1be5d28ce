"""voxel_sample against EG3D / DiffRF's eager ``sample_from_3dgrid``, forward and forward+backward."""

import pytest
import torch

from fastfields import bench
from fastfields.bench.voxel_sample import cases

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = cases(DEVICE)
BACKENDS = ["eager"] + bench.fused_backends(DEVICE)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_voxel_sample(benchmark, case, backend, backward):
    inputs = {k: v.requires_grad_(backward and k in case.grad_inputs) for k, v in case.make_inputs(DEVICE).items()}
    if backend != "eager":
        inputs = case.layouts["channels-last"](inputs)
        inputs = {k: v.detach().requires_grad_(backward and k in case.grad_inputs) for k, v in inputs.items()}
    call = (lambda: case.baseline(inputs)) if backend == "eager" else (lambda: case.fused(inputs, backend))
    fn = bench.pass_fn(call, inputs, case, backward)
    benchmark.group = f"voxel_sample {case.name} {'fwd+bwd' if backward else 'fwd'}"

    def timed():
        fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)
