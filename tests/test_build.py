"""The C++/CUDA sources: nvcc compiles every .cu, and the JIT build is safe to interrupt and share."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

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


# --------------------------------------------------------------------------- build faults (issue 20)


def _fake_build(tmp_path, monkeypatch, content=b"\x7fELF built library"):
    """compile_and_load with the compiler and the loader replaced: records what happened."""
    calls = {"built": 0, "loaded": []}

    def build(request):
        calls["built"] += 1
        Path(request["directory"], request["name"] + ".so").write_bytes(content)
        return 0

    monkeypatch.setattr(_build, "_run_build_worker", build)
    monkeypatch.setattr(_build.torch.ops, "load_library", lambda path: calls["loaded"].append(Path(path).read_bytes()))
    directory = tmp_path / "build"
    run = lambda: _build.compile_and_load("fastfields_fake", [tmp_path / "x.cpp"], directory, _build._flags("cpu"))  # noqa: E731
    return calls, directory, run


def test_stamp_records_size_and_checksum(tmp_path, monkeypatch):
    calls, directory, run = _fake_build(tmp_path, monkeypatch)
    run()
    record = json.loads((directory / "BUILD_OK").read_text())
    library = directory / "fastfields_fake.so"
    assert record["size"] == library.stat().st_size
    assert record["sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()
    run()  # cached: loaded again, not rebuilt
    assert calls["built"] == 1 and len(calls["loaded"]) == 2


@pytest.mark.parametrize("damage", ["truncated", "empty", "same size, other bytes"])
def test_damaged_cached_library_is_rebuilt_not_loaded(tmp_path, monkeypatch, capsys, damage):
    calls, directory, run = _fake_build(tmp_path, monkeypatch)
    run()
    library = directory / "fastfields_fake.so"
    good = library.read_bytes()
    library.write_bytes({"truncated": good[:5], "empty": b"", "same size, other bytes": good[::-1]}[damage])
    run()
    assert calls["built"] == 2, "a library that does not match its record must be rebuilt"
    assert calls["loaded"] == [good, good], "the damaged library must never be loaded"
    assert "rebuilding fastfields_fake" in capsys.readouterr().err


def test_stamp_of_the_earlier_format(tmp_path):
    """The earlier stamp held the torch version only: accepted for a complete ELF library (and
    upgraded), refused for a truncated one."""
    library = Path(sys.executable).resolve()  # a complete ELF file
    if library.read_bytes()[:4] != b"\x7fELF":
        pytest.skip("not an ELF platform")
    copy, stamp = tmp_path / "lib.so", tmp_path / "BUILD_OK"
    copy.write_bytes(library.read_bytes())
    stamp.write_text("2.13.0")
    assert _build.stamp_mismatch(stamp, copy) is None
    assert json.loads(stamp.read_text())["size"] == copy.stat().st_size
    stamp.write_text("2.13.0")
    copy.write_bytes(library.read_bytes()[:4096])
    assert "incomplete" in _build.stamp_mismatch(stamp, copy)


TRUNCATED_LOAD = """
import sys
from pathlib import Path
from fastfields import _build
directory = Path(sys.argv[1])
_build._run_build_worker = lambda request: 1  # the rebuild "fails": what matters is no SIGBUS
try:
    _build.compile_and_load("fastfields_trunc", [directory.parent / "x.cpp"], directory, _build._flags("cpu"))
except _build.BuildError as error:
    print("BuildError", error)
"""


def test_truncated_library_with_its_stamp_does_not_crash_the_process(tmp_path):
    """What killed `fastfields info` with SIGBUS: a cached library cut short, its stamp intact."""
    library = Path(torch.__file__).parent / "lib" / "libtorch_global_deps.so"
    if not library.is_file():
        library = Path(sys.executable).resolve()
    directory = tmp_path / "build"
    directory.mkdir()
    data = library.read_bytes()
    (directory / "fastfields_trunc.so").write_bytes(data)
    _build._write_stamp(directory / "BUILD_OK", directory / "fastfields_trunc.so")
    (directory / "fastfields_trunc.so").write_bytes(data[: len(data) // 3])
    result = subprocess.run([sys.executable, "-c", TRUNCATED_LOAD, str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "rebuilding fastfields_trunc" in result.stderr and "BuildError" in result.stdout


KILLED_BUILD = """
import sys
from pathlib import Path
from fastfields import _build
directory = Path(sys.argv[1])
_build.compile_and_load("fastfields_killtest", [directory.parent / "tiny.cpp"], directory, _build._flags("cpu"))
"""


def _processes():
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid, pgrp = stat[stat.rindex(")") + 2:].split()[1:3]
            table[int(entry)] = (int(ppid), int(pgrp))
    return table


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_build_takes_its_compilers_with_it(tmp_path):
    """SIGKILL the process that started a JIT build while ninja runs: ninja and the compilers
    (the build child's process group) must go too."""
    (tmp_path / "tiny.cpp").write_text(TINY_OP)
    parent = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(tmp_path / "build")], stderr=subprocess.DEVNULL)
    group, deadline = None, time.time() + 300
    while group is None and time.time() < deadline and parent.poll() is None:
        table = _processes()
        for worker in (pid for pid, (ppid, _) in table.items() if ppid == parent.pid):
            if any(pgrp == worker and pid != worker for pid, (_, pgrp) in table.items()):
                group = worker
        time.sleep(0.2)
    assert group is not None, "the build never started its compiler"
    parent.kill()
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(pgrp == group for _, pgrp in _processes().values()):
        time.sleep(0.2)
    assert not any(pgrp == group for _, pgrp in _processes().values()), "compiler processes outlived the build"


@pytest.mark.skipif(_build.why_unbuildable("cpu") is not None, reason="the cpu extension cannot be built here")
def test_cpu_baseline_isa():
    """The CPU kernels' baseline (SSE2) loops, which machines with AVX2 + FMA never run:
    FASTFIELDS_CPU_BASELINE=1 forces them, in a fresh process (the choice is made once)."""
    script = textwrap.dedent("""
        import torch
        import fastfields as ff
        from fastfields.reference.adaln_modulate import adaln_modulate_reference
        from fastfields.reference.composite import composite_reference
        g = torch.Generator().manual_seed(0)
        sig = (torch.randn(7, 300, generator=g) + 1).requires_grad_()
        rgb = torch.rand(7, 300, 3, generator=g).requires_grad_()
        dl = torch.rand(7, 300, generator=g) * 0.05
        kw = dict(density_activation="softplus", density_bias=-1.0, t=torch.cumsum(dl, 1))
        got = ff.composite(sig, rgb, dl, backend="cpu", **kw)
        want = composite_reference(sig, rgb, dl, **kw)
        for a, b in zip(got[:3], want[:3]):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        ga = torch.autograd.grad(got[0].sum() + got[2].sum(), (sig, rgb))
        gb = torch.autograd.grad(want[0].sum() + want[2].sum(), (sig, rgb))
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
        x = torch.randn(2, 5, 37, generator=g, requires_grad=True)
        shift, scale = torch.randn(2, 37, generator=g), torch.randn(2, 37, generator=g)
        a = ff.adaln_modulate(x, shift, scale, backend="cpu")
        b = adaln_modulate_reference(x, shift, scale)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        up = torch.randn(a.shape, generator=g)
        torch.testing.assert_close(torch.autograd.grad(a, x, up)[0], torch.autograd.grad(b, x, up)[0], atol=1e-5, rtol=1e-5)
        # The gather ops: many incoherent points, so the spatially ordered loops run.
        from fastfields.reference import (tensorf_vm_sample_reference, triplane_sample_reference,
                                          voxel_sample_reference)
        xyz = (torch.rand(2**14 + 5, 3, generator=g) * 2.1 - 1.05).requires_grad_()
        planes = torch.randn(1, 3, 16, 64, 72, generator=g).requires_grad_()
        vm_planes = [torch.randn(8, 150, 150, generator=g).requires_grad_() for _ in range(3)]
        vm_lines = [torch.randn(8, 150, generator=g).requires_grad_() for _ in range(3)]
        volume = torch.randn(1, 8, 24, 28, 32, generator=g).requires_grad_()  # 688 KB: ordered backward
        cases = [
            ((planes, xyz[None]), lambda p, x: ff.triplane_sample(p, x, backend="cpu"), triplane_sample_reference),
            ((*vm_planes, *vm_lines, xyz), lambda *t: ff.tensorf_vm_sample(t[:3], t[3:6], t[6], backend="cpu"),
             lambda *t: tensorf_vm_sample_reference(t[:3], t[3:6], t[6])),
            ((volume, xyz[None]), lambda v, x: ff.voxel_sample(v, x, backend="cpu"), voxel_sample_reference),
        ]
        for inputs, fused, reference in cases:
            a, b = fused(*inputs), reference(*inputs)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
            up = torch.randn(a.shape, generator=g)
            for da, db in zip(torch.autograd.grad(a, inputs, up), torch.autograd.grad(b, inputs, up)):
                scale = db.abs().max().item()
                torch.testing.assert_close(da, db, atol=1e-5 * scale, rtol=1e-4)
        print("baseline ok")
    """)
    env = dict(os.environ, FASTFIELDS_CPU_BASELINE="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "baseline ok" in done.stdout, done.stdout + done.stderr
