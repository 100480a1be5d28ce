"""render_triplane (fused lookup + MLP + compositing) against the unfused eager pipeline."""

import pytest

from conftest import benchmark_case, runs


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", runs("render_triplane"))
def test_render_triplane(benchmark, case, backend, backward):
    benchmark_case(benchmark, case, backend, backward)
