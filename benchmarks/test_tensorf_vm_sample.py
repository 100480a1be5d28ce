"""tensorf_vm_sample against TensoRF's eager TensorVMSplit feature code."""

import pytest

from conftest import benchmark_case, runs


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", runs("tensorf_vm_sample"))
def test_tensorf_vm_sample(benchmark, case, backend, backward):
    benchmark_case(benchmark, case, backend, backward)
