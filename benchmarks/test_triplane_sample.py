"""triplane_sample against EG3D's eager ``sample_from_planes``."""

import pytest

from conftest import benchmark_case, runs


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", runs("triplane_sample"))
def test_triplane_sample(benchmark, case, backend, backward):
    benchmark_case(benchmark, case, backend, backward)
