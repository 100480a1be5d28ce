"""adaln_modulate against OpenLRM's eager ModLN (LayerNorm, then modulate)."""

import pytest

from conftest import benchmark_case, runs


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case,backend", runs("adaln_modulate"))
def test_adaln_modulate(benchmark, case, backend, backward):
    benchmark_case(benchmark, case, backend, backward)
