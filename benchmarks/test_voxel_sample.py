"""voxel_sample against EG3D / DiffRF's eager ``sample_from_3dgrid``."""

import pytest

from conftest import benchmark_case, runs


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", runs("voxel_sample"))
def test_voxel_sample(benchmark, case, backend, backward):
    benchmark_case(benchmark, case, backend, backward)
