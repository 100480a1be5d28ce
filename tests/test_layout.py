"""One pattern for every op: an OpSpec per op module, tests and benchmarks named after the op,
and the layering (fastfields.ops sits below fastfields.nn)."""

import ast
import importlib
from pathlib import Path

import pytest

from fastfields._op import OpSpec

ROOT = Path(__file__).resolve().parent.parent
OPS = sorted(p.stem for p in (ROOT / "fastfields" / "ops").glob("*.py") if not p.stem.startswith("_"))


def test_the_ops_are_the_ones_we_know():
    assert OPS == ["adaln_modulate", "attention", "composite", "render_triplane", "tensorf_vm_sample",
                   "triplane_sample", "voxel_sample"]


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_spec_tests_and_a_benchmark(op):
    module = importlib.import_module(f"fastfields.ops.{op}")
    specs = [v for v in vars(module).values() if isinstance(v, OpSpec)]
    forward = [spec for spec in specs if spec.grads is not None]
    assert forward, f"fastfields/ops/{op}.py defines no differentiable OpSpec"
    backward = {spec.backward.name for spec in forward if spec.backward is not None}
    for spec in specs:
        assert spec.impl is not None and spec.fake is not None
        if spec in forward:
            assert spec.backends[0] == "torch", spec.name  # the reference comes first
            assert spec.kernels is not None, spec.name
        else:
            assert spec.name in backward, f"{spec.name} is neither an op with autograd nor a backward op"
    assert (ROOT / "tests" / f"test_{op}.py").is_file()
    assert (ROOT / "benchmarks" / f"test_{op}.py").is_file()


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield "." * node.level + (node.module or ""), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


@pytest.mark.parametrize("op", OPS + ["_common", "__init__"])
def test_ops_do_not_import_nn(op):
    for module, names in _imports(ROOT / "fastfields" / "ops" / f"{op}.py"):
        assert module not in ("..nn", "fastfields.nn") and not (module == ".." and "nn" in names), (op, module)


def test_the_renderer_does_not_import_nn():
    # rendering.triplane finds fused decoders by their fused() method, not by importing nn.
    for module, names in _imports(ROOT / "fastfields" / "rendering" / "triplane.py"):
        assert module not in ("..nn", "fastfields.nn") and not (module == ".." and "nn" in names), module
