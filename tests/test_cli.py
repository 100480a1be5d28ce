"""The fastfields command line and the benchmark report writer."""

import json
import subprocess
import sys

import torch

from fastfields import bench
from fastfields.cli import main


def test_info_lists_every_backend(capsys):
    assert main(["info", "--no-build"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "triton", "cuda", "cpu"):
        assert f"  {name}" in out
    assert "available on cpu" in out  # torch at least


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "fastfields.cli", "bench", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--full" in result.stdout


def test_every_op_has_benchmark_cases_on_cpu():
    ops = {case.op for case in bench.cases(torch.device("cpu"))}
    assert {"triplane_sample", "tensorf_vm_sample", "voxel_sample", "composite", "adaln_modulate"} <= ops


def test_report_files(tmp_path):
    rows = [
        {"op": "op", "case": "case", "layout": "standard", "backend": "eager (baseline)", "pass": "fwd", "ms": 2.0,
         "speedup": 1.0, "peak_mb": 8.0, "memory_ratio": 1.0, "gbps": None, "pct_peak_bw": None},
        {"op": "op", "case": "case", "layout": "standard", "backend": "cpu", "pass": "fwd", "ms": 1.0,
         "speedup": 2.0, "peak_mb": 4.0, "memory_ratio": 2.0, "gbps": None, "pct_peak_bw": None},
    ]
    written = bench.write_report(rows, tmp_path, torch.device("cpu"), full=False)
    names = {p.suffix for p in written}
    assert {".json", ".md"} <= names
    data = json.loads((tmp_path / f"{bench.device_slug(torch.device('cpu'))}.json").read_text())
    assert data["rows"][1]["speedup"] == 2.0 and data["meta"]["mode"] == "quick"
    table = (tmp_path / f"{bench.device_slug(torch.device('cpu'))}.md").read_text()
    assert "| op | case | standard | cpu | fwd | 1.000 | 2.00x | - | 4 | 2.00x | - | - | - |" in table
