"""One source for option codes: fastfields/_enums.py, its generated C++ header, and every reader."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastfields import _enums
from fastfields._enums import (
    ColorActivation,
    DensityActivation,
    Geometry,
    HiddenActivation,
    Padding,
    Reduce,
    RenderMode,
)

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / _enums.HEADER


def test_header_is_generated_from_the_python_values():
    assert HEADER.read_text() == _enums.render_header(), "run: python -m fastfields._enums --write"


def test_header_declares_every_member_with_its_value():
    # Parsed back from the header, independently of render_header's formatting.
    text = HEADER.read_text()
    found = {name: int(value) for name, value in re.findall(r"\b(k[A-Za-z0-9]+) = (-?\d+)", text)}
    expected = {_enums.cpp_name(m): int(m) for cls in _enums.CPP_PREFIXES for m in cls}
    assert found == expected


def test_check_flag_reports_a_stale_header(tmp_path, monkeypatch):
    assert _enums.main(["--check"]) == 0
    stale = tmp_path / "csrc" / "include" / "fastfields"
    stale.mkdir(parents=True)
    (stale / "enums.h").write_text(_enums.render_header().replace("kReduceSum = 1", "kReduceSum = 7"))
    monkeypatch.setattr(_enums, "_repo_root", lambda: tmp_path)
    assert _enums.main(["--check"]) == 1


def test_no_other_option_enums_in_csrc():
    # Every option code lives in enums.h; a second definition could drift (as render_triplane's
    # reduce 0 = concat once did against triplane_sample's 0 = none).
    pattern = re.compile(r"\benum\s+\w+\s*:\s*int\s*\{([^}]*)\}")
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path.suffix not in (".h", ".cpp", ".cu", ".cuh") or path == HEADER:
            continue
        for body in pattern.findall(path.read_text()):
            names = re.findall(r"\b(k\w+)\s*=", body)
            assert not any(n.startswith(tuple(_enums.CPP_PREFIXES.values())) for n in names), (path, names)


def _op_module(name):
    # fastfields.ops.<name> is the public function; the module holds the code tables.
    return importlib.import_module(f"fastfields.ops.{name}")


def test_one_reduce_code_per_name_across_ops():
    for name in ("triplane_sample", "tensorf_vm_sample", "render_triplane"):
        module = _op_module(name)
        for name, code in module.REDUCE_CODES.items():
            assert Reduce(code).label == name, module.__name__


def test_op_code_tables_follow_the_enums():
    composite, render_triplane, voxel_sample = map(_op_module, ("composite", "render_triplane", "voxel_sample"))
    assert composite.ACTIVATION_CODES == {m.label: int(m) for m in DensityActivation}
    assert render_triplane.DENSITY_CODES == composite.ACTIVATION_CODES
    assert render_triplane.HIDDEN_CODES == {m.label: int(m) for m in HiddenActivation}
    assert render_triplane.COLOR_CODES == {m.label: int(m) for m in ColorActivation}
    assert render_triplane.MODE_CODES == {m.label: int(m) for m in RenderMode}
    assert voxel_sample.PADDING_CODES == {m.label: int(m) for m in Padding}
    assert (composite.GEOM_DELTAS, composite.GEOM_INTERVALS, composite.GEOM_MIDPOINTS) == tuple(Geometry)


def test_triton_kernels_read_the_python_values():
    pytest.importorskip("triton")
    from fastfields.kernels import composite, render_triplane, tensorf_vm_sample, triplane_sample

    value = lambda c: getattr(c, "value", c)  # noqa: E731  (tl.constexpr wraps the int)
    assert value(triplane_sample.REDUCE_NONE) == Reduce.NONE and value(triplane_sample.REDUCE_CONCAT) == Reduce.CONCAT
    assert value(tensorf_vm_sample.REDUCE_SUM) == Reduce.SUM
    assert value(render_triplane.REDUCE_MEAN) == Reduce.MEAN and value(render_triplane.MODE_EG3D) == RenderMode.EG3D
    assert value(render_triplane.COL_NONE) == ColorActivation.NONE
    assert value(composite.GEOM_MIDPOINTS) == Geometry.MIDPOINTS
    # _activate's branches are written with these literal values.
    assert all(code == int(member) for code, member in composite.ACTIVATION_BRANCHES.items())
    assert DensityActivation.NONE == 0  # the kernels' fall-through branch


def test_names_and_lookup():
    assert Reduce.names() == ("concat", "sum", "mean", "prod", "none")
    assert Reduce.of("mean") is Reduce.MEAN and DensityActivation.of("trunc_exp") == 4
    with pytest.raises(ValueError, match="unknown option 'max'"):
        Reduce.of("max")
    assert _enums.cpp_name(ColorActivation.SIGMOID_CLAMPED) == "kColSigmoidClamped"


def test_module_prints_the_header():
    out = subprocess.run([sys.executable, "-m", "fastfields._enums"], capture_output=True, text=True, check=True)
    assert out.stdout == _enums.render_header()
