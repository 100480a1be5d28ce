"""composite / composite_packed against the eager compositing code (TensoRF, OpenLRM, nerfacc)."""

import pytest

from conftest import benchmark_case, runs


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", runs("composite"))
def test_composite(benchmark, case, backend, backward):
    benchmark_case(benchmark, case, backend, backward)
