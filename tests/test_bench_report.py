"""The benchmark harness's torch.compile column, bandwidth measurement, scaling sweep and report."""

import json

import pytest
import torch

from fastfields import bench
from fastfields.bench import backward, harness, report, scaling
from fastfields.bench.harness import BASELINE, COMPILED, Case
from fastfields.cli import main


def tiny_case(op="composite"):
    def make_inputs(device):
        return {"x": torch.linspace(-1, 1, 4096, device=device)}

    return Case(
        op=op, name="tiny", make_inputs=make_inputs,
        fused=lambda x, backend: torch.sigmoid(x["x"]) * 2,
        baseline=lambda x: (1 / (1 + torch.exp(-x["x"]))) * 2,
        bytes_forward=lambda x: 2 * x["x"].numel() * 4, bytes_backward=lambda x: 3 * x["x"].numel() * 4,
        grad_inputs=("x",), backends=("cpu",),
    )


@pytest.fixture
def fake_cases(monkeypatch):
    """Only two tiny cases, every fused call under the 'cpu' name, and an instant 'compile' that counts its calls."""
    calls = []

    def compile_baseline(case):
        calls.append(case.op)
        if case.op == "adaln_modulate":  # a compile that fails on its first call
            def broken(x):
                raise RuntimeError("inductor says no")
            return broken
        return case.baseline

    monkeypatch.setattr(bench, "cases", lambda device, full=False: [tiny_case("composite"), tiny_case("adaln_modulate"), tiny_case("attention")])
    monkeypatch.setattr(harness, "compile_baseline", compile_baseline)
    monkeypatch.setattr(harness, "fused_backends", lambda device, op_backends=("cpu",): ["cpu"])
    monkeypatch.setattr(harness, "median_time", lambda fn, device, **kw: (fn(), 0.002)[1])
    return calls


def test_run_reports_eager_compile_and_fused_with_bandwidth(fake_cases, monkeypatch):
    monkeypatch.setattr(harness, "measure_bandwidth", lambda device: {"copy_gbps": 8.0, "triad_gbps": 10.0, "gbps": 10.0, "array_mb": 1.0})
    rows = harness.run(torch.device("cpu"), log=lambda line: None)
    assert fake_cases == ["composite", "adaln_modulate", "attention"]  # compiled once per case, both passes reuse it
    assert rows.meta["bandwidth"]["gbps"] == 10.0
    by = {(r["op"], r["backend"], r["pass"]): r for r in rows}
    for op in ("composite", "attention"):
        for pass_name in ("fwd", "fwd+bwd"):
            assert {(op, b, pass_name) for b in (BASELINE, COMPILED, "cpu")} <= set(by)
    fused = by[("composite", "cpu", "fwd+bwd")]
    assert fused["ms"] == pytest.approx(2.0) and fused["speedup"] == pytest.approx(1.0) and fused["vs_compile"] == pytest.approx(1.0)
    # GB/s: forward + backward compulsory bytes over the median time, against the measured 10 GB/s
    assert fused["gbps"] == pytest.approx(5 * 4096 * 4 / 0.002 / 1e9)
    assert fused["pct_measured_bw"] == pytest.approx(fused["gbps"] * 10)
    assert by[("composite", COMPILED, "fwd")]["compile_s"] >= 0
    assert by[("attention", "cpu", "fwd")]["gbps"] is None  # compute-bound: no bandwidth claim
    failed = by[("adaln_modulate", COMPILED, "fwd")]
    assert failed["ms"] is None and failed["note"] == "compile failed: RuntimeError"
    assert by[("adaln_modulate", "cpu", "fwd")]["vs_compile"] is None
    table = report.markdown_table(rows)
    assert "compile failed: RuntimeError" in table
    assert "| composite | tiny | fwd | 2.000 | 2.000 | 2.000 (cpu, standard) | 1.00x | 1.00x |" in report.summary_table(rows)


def test_run_without_compile_has_no_compile_rows(fake_cases):
    rows = harness.run(torch.device("cpu"), log=lambda line: None, compile=False, bandwidth=False)
    assert fake_cases == [] and not any(r["backend"] == COMPILED for r in rows)
    assert all(r["vs_compile"] is None and r["pct_measured_bw"] is None for r in rows)


def test_measure_bandwidth_is_positive_and_plausible():
    bw = harness.measure_bandwidth(torch.device("cpu"), megabytes=8, min_seconds=0.01)
    assert bw["gbps"] == max(bw["copy_gbps"], bw["triad_gbps"]) > 0.05
    assert bw["gbps"] < 10_000  # no machine copies 10 TB/s: the byte count is not off by orders


def test_scaling_sweep_and_report(monkeypatch, tmp_path):
    monkeypatch.setattr(scaling, "sweeps", lambda device: [("tiny family", "points", [(4096, tiny_case), (8192, tiny_case)])])
    monkeypatch.setattr(scaling, "fused_backends", lambda device: ["cpu"])
    points = scaling.run_scaling(torch.device("cpu"), log=lambda line: None)
    assert {(p["work"], p["backend"], p["pass"]) for p in points} == {
        (w, b, s) for w in (4096, 8192) for b in (BASELINE, "cpu") for s in ("fwd", "fwd+bwd")}
    assert all(p["ms"] > 0 and p["memory_bound"] and p["bytes_forward"] == 2 * 4096 * 4 for p in points)
    rows = harness.Rows([harness._row(tiny_case(), "standard", "cpu", "fwd", 0.001, 2**21, 0.002, 2**22, 4.0, None,
                                      compiled_seconds=0.003, measured_bw=8.0)],
                        meta={"bandwidth": {"copy_gbps": 7.0, "triad_gbps": 8.0, "gbps": 8.0, "array_mb": 4.0}})
    written = report.write_report(rows, tmp_path, torch.device("cpu"), False, scaling=points, note="a shared machine",
                                  sections="## Backward vs forward\n\nrows")
    md = next(p for p in written if p.suffix == ".md").read_text()
    assert "copy 7.0 GB/s, triad 8.0 GB/s" in md and "a shared machine" in md and "## Scaling" in md
    assert md.rstrip().endswith("## Backward vs forward\n\nrows")
    assert "| composite | 4096 points | cpu | fwd |" in md
    data = json.loads(next(p for p in written if p.suffix == ".json").read_text())
    assert data["meta"]["bandwidth"]["gbps"] == 8.0 and len(data["scaling"]) == 8
    assert data["rows"][0]["vs_compile"] == pytest.approx(3.0) and data["rows"][0]["pct_measured_bw"] == pytest.approx(50.0)
    pytest.importorskip("matplotlib")
    assert {p.name for p in written if p.suffix == ".png"} == {f"{bench.device_slug(torch.device('cpu'))}.png",
                                                              f"{bench.device_slug(torch.device('cpu'))}-scaling.png"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_gpu_report_refuses_without_a_gpu(tmp_path, capsys):
    assert main(["bench", "--gpu-report", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_backward_profile_times_each_pass(monkeypatch):
    """The bwd/fwd table (`python -m fastfields.bench.backward`, and the GPU report's last section)."""
    monkeypatch.setattr(backward, "cases", lambda device, full=False: [tiny_case("composite")])
    monkeypatch.setattr(backward, "fused_backends", lambda device: ["cpu"])
    lines = []
    rows = backward.profile("cpu", None, repeats=2, reps=2, log=lines.append)
    assert [(r["op"], r["layout"], r["backend"]) for r in rows] == [("composite", "standard", "cpu")]
    assert rows[0]["fwd_ms"] > 0 and rows[0]["bwd_ms"] > 0 and rows[0]["ratio"] == pytest.approx(rows[0]["bwd_ms"] / rows[0]["fwd_ms"])
    assert lines == [backward.format_row(rows[0])] and lines[0].startswith("| composite | tiny | standard | cpu |")
    assert backward.HEADER.count("|---") == backward.format_row(rows[0]).count(" | ") + 1
