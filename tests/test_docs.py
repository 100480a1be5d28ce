"""The documentation runs: docstring examples of the public ops and the README's Python blocks."""

import doctest
import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
DOCUMENTED_MODULES = [
    "fastfields.ops.triplane_sample",
    "fastfields.ops.tensorf_vm_sample",
    "fastfields.ops.voxel_sample",
    "fastfields.ops.composite",
    "fastfields.ops.adaln_modulate",
    "fastfields.ops.attention",
    "fastfields.ops.render_triplane",
    "fastfields.rendering.triplane",
    "fastfields.export",
    "fastfields.models.lrm",
]


@pytest.mark.parametrize("name", DOCUMENTED_MODULES)
def test_docstring_examples(name, monkeypatch):
    monkeypatch.setenv("FASTFIELDS_BACKEND", "torch")  # the examples document the contract, not a backend
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


@pytest.mark.parametrize("index", range(len(re.findall(r"```python\n", README.read_text()))))
def test_readme_python_blocks(index, monkeypatch):
    monkeypatch.setenv("FASTFIELDS_BACKEND", "torch")
    block = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[index]
    exec(compile(block, f"README.md python block {index}", "exec"), {})
