"""``fastfields bench --gpu-report``: everything a GPU host should check, in one bounded command.

1. ``fastfields info``: which backends build and run here (builds the CUDA extension).
2. The GPU test subset, ``pytest -m cuda tests`` (every op's Triton and CUDA backends against
   the PyTorch reference on the device), logged to ``<out>/gpu-tests.log``, at most
   ``test_timeout`` seconds.
3. The full benchmark (eager, ``torch.compile`` of it, every fused backend; forward and
   forward+backward; bandwidth measured in the run) and the scaling sweep, written as
   ``<out>/<device>.{json,md,png}`` and ``<out>/<device>-scaling.png``.
4. Every GPU backend's backward against its forward (:mod:`.backward`), appended to the report.

Budget: about 8 minutes on one H100/H200 (the tests ~2-3, the benchmark ~3, scaling and the
backward table ~1);
the exit status is the tests' (the report is written either way). ``.ci/gpu`` runs this
after installing fastfields without dependencies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Optional


def gpu_report(out_dir: Path, threads: Optional[int] = None, test_timeout: int = 240, tests_dir: Optional[Path] = None) -> int:
    import torch

    from . import fused_backends, run, write_report
    from .backward import HEADER, format_row, profile
    from .scaling import run_scaling

    if not torch.cuda.is_available():
        print("fastfields bench --gpu-report: no CUDA device here (torch.cuda.is_available() is False); "
              "run `fastfields bench` for the CPU report", file=sys.stderr)
        return 2
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fastfields.cli", "info"], check=False)

    tests_dir = tests_dir or Path(__file__).resolve().parents[2] / "tests"
    log_path = out_dir / "gpu-tests.log"
    if tests_dir.is_dir():
        print(f"GPU test subset: pytest -m cuda {tests_dir} (log: {log_path}, at most {test_timeout} s)", flush=True)
        with open(log_path, "w") as log:
            try:
                status = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(tests_dir), "-p", "no:cacheprovider"],
                                        stdout=log, stderr=subprocess.STDOUT, timeout=test_timeout).returncode
            except subprocess.TimeoutExpired:
                log.write(f"\nTIMEOUT after {test_timeout} s\n")
                status = 124
        print(log_path.read_text().strip().splitlines()[-1] if log_path.stat().st_size else "(no test output)", flush=True)
    else:
        print(f"no tests/ folder next to the package ({tests_dir}): GPU tests skipped (an installed wheel)", flush=True)
        status = 0
    tests_s = time.perf_counter() - start

    device = torch.device("cuda")
    log_line = lambda line: print(line, flush=True)  # noqa: E731
    rows = run(device=device, full=True, log=log_line, compile=True)
    scaling = run_scaling(device, compile=False, log=log_line)
    backward_rows = []
    for backend in fused_backends(device):
        backward_rows += profile(backend, None, repeats=3, reps=5, log=log_line, device=device)
    note = (f"Written by `fastfields bench --gpu-report` in {time.perf_counter() - start:.0f} s "
            f"(tests {tests_s:.0f} s, status {status}).")
    backward = ("## Backward vs forward (each op alone, fastest of 3 rounds)\n\n" + HEADER + "\n"
                + "\n".join(format_row(r) for r in backward_rows))
    for path in write_report(rows, out_dir, device, True, scaling=scaling, note=note, sections=backward):
        print(f"wrote {path}")
    return status
