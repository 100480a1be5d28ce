"""attention against F.scaled_dot_product_attention, and an LRM-large block against its eager twin (GPU cases only)."""

import pytest

from conftest import benchmark_case, runs


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", runs("attention"))
def test_attention(benchmark, case, backend, backward):
    benchmark_case(benchmark, case, backend, backward)
