"""Backend selection: auto, the FASTFIELDS_BACKEND override, and clear errors."""

import pytest
import torch

import fastfields as ff
from fastfields import _backend, _build


def small_inputs():
    return torch.randn(1, 3, 4, 5, 6), torch.rand(1, 8, 3) * 2 - 1


def test_backends_report_is_complete():
    report = ff.backends(build=False)
    assert set(report) == set(ff.BACKENDS)
    assert report["torch"]["available"] and "cpu" in report["torch"]["devices"]
    for name, entry in report.items():
        assert entry["available"] == bool(entry["devices"])
        assert entry["available"] or entry["reason"], f"{name} unavailable without a reason"
    if not torch.cuda.is_available():
        assert "no CUDA device" in report["cuda"]["reason"]


def test_auto_on_cpu_prefers_the_compiled_cpu_backend():
    expected = "cpu" if _build.why_unbuildable("cpu") is None else "torch"
    assert _backend.resolve("triplane_sample", "auto", torch.device("cpu"), ("torch", "cpu")) == expected


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv("FASTFIELDS_BACKEND", "torch")
    assert _backend.resolve("triplane_sample", "auto", torch.device("cpu"), ("torch", "cpu")) == "torch"
    # An explicit argument still wins over the environment.
    if _build.why_unbuildable("cpu") is None:
        assert _backend.resolve("triplane_sample", "cpu", torch.device("cpu"), ("torch", "cpu")) == "cpu"


def test_env_var_with_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTFIELDS_BACKEND", "metal")
    with pytest.raises(ValueError, match="FASTFIELDS_BACKEND must be 'auto' or one of"):
        ff.triplane_sample(*small_inputs())


def test_explicit_unavailable_backend_says_why():
    with pytest.raises(ff.BackendUnavailable, match="the cuda backend runs CUDA tensors"):
        ff.triplane_sample(*small_inputs(), backend="cuda")


def test_backend_not_implemented_by_op():
    with pytest.raises(ff.BackendUnavailable, match="not implemented for this op"):
        _backend.resolve("some_op", "triton", torch.device("cpu"), ("torch", "cpu"))


def test_failed_build_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_backend, "_build_reasons", {"cpu": "building fastfields_cpu failed (build log: /x.log)"})
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.setattr(_build, "why_unbuildable", lambda kind: None)
    with pytest.warns(RuntimeWarning, match="cpu backend is unavailable, falling back.*build log"):
        assert _backend.resolve("triplane_sample", "auto", torch.device("cpu"), ("torch", "cpu")) == "torch"
    with pytest.raises(ff.BackendUnavailable, match="build log: /x.log"):
        _backend.resolve("triplane_sample", "cpu", torch.device("cpu"), ("torch", "cpu"))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = _backend.why_unusable("triton", "cpu")
    assert reason is not None and "TRITON_INTERPRET=1" in reason or "not installed" in reason


def test_import_is_light():
    """Importing fastfields must not import triton or build anything."""
    import subprocess
    import sys

    code = "import sys, fastfields; assert 'triton' not in sys.modules, 'triton imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_env_var_applies_only_where_it_can(monkeypatch):
    """A process-wide override does not break ops or devices that lack that backend."""
    monkeypatch.setenv("FASTFIELDS_BACKEND", "cuda")
    expected = "cpu" if _build.why_unbuildable("cpu") is None else "torch"
    assert _backend.resolve("triplane_sample", "auto", torch.device("cpu"), ("torch", "cpu", "cuda")) == expected
    monkeypatch.setenv("FASTFIELDS_BACKEND", "triton")
    assert _backend.resolve("some_op", "auto", torch.device("cpu"), ("torch", "cpu")) == expected
