"""The C++/CUDA sources: nvcc compiles every .cu, and the JIT build is safe to interrupt and share."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastfields import _build

CSRC = Path(_build.csrc_dir())
CU_FILES = sorted(CSRC.glob("**/*.cu"))


def test_sources_exist():
    assert _build.sources("cpu"), "no C++ sources for the cpu extension"
    assert CU_FILES, "no .cu sources for the cuda extension"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_with_plain_nvcc(cu, tmp_path):
    """Every .cu includes only CUDA headers and ours, so plain nvcc builds it without torch."""
    cmd = ["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(cu), "-I", str(CSRC / "include"), "-o", str(tmp_path / "k.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


TINY_OP = textwrap.dedent(
    """
    #include <torch/library.h>
    #include <ATen/ATen.h>
    at::Tensor plus_one(const at::Tensor& x) { return x + 1; }
    TORCH_LIBRARY(fastfields_buildtest, m) { m.def("plus_one(Tensor x) -> Tensor", &plus_one); }
    """
)

BUILD_SCRIPT = """
import sys, torch
from pathlib import Path
from fastfields import _build
directory = Path(sys.argv[1])
_build.compile_and_load("fastfields_buildtest", [directory.parent / "tiny.cpp"], directory, _build._flags("cpu"))
print(torch.ops.fastfields_buildtest.plus_one(torch.zeros(2)).tolist())
"""


def build_in_subprocess(directory):
    return subprocess.Popen(
        [sys.executable, "-c", BUILD_SCRIPT, str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_jit_build_recovers_from_killed_build_and_serialises_concurrent_builds(tmp_path):
    (tmp_path / "tiny.cpp").write_text(TINY_OP)
    directory = tmp_path / "build"
    # What a killed build leaves behind: torch's baton lock and half the outputs, no BUILD_OK stamp.
    directory.mkdir()
    (directory / "lock").write_text("")
    (directory / "fastfields_buildtest.so").write_text("truncated")
    first, second = build_in_subprocess(directory), build_in_subprocess(directory)
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert out.strip().endswith("[1.0, 1.0]")
    assert (directory / "BUILD_OK").exists()


def test_failed_build_reports_its_log(tmp_path):
    (tmp_path / "tiny.cpp").write_text("this is not C++\n")
    with pytest.raises(_build.BuildError, match="build log") as info:
        _build.compile_and_load("fastfields_broken", [tmp_path / "tiny.cpp"], tmp_path / "build", _build._flags("cpu"))
    assert info.value.log_path.exists() and "error" in info.value.log_path.read_text().lower()
