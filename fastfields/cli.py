"""The ``fastfields`` command line: ``fastfields bench``, ``fastfields info`` and the model jobs
(``fastfields lrm``, ``fastfields zerorf``; see :mod:`fastfields.apps`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .apps._common import EXIT_INTERRUPTED, CLIError, run_job


def _default_results_dir() -> Path:
    repo_results = Path("benchmarks") / "results"
    return repo_results if repo_results.parent.is_dir() else Path("fastfields-results")


BENCH_BACKENDS = ("triton", "cuda", "cpu")


def _bench(args) -> int:
    from . import bench
    from ._backend import why_unusable
    from .apps._common import check_choices, check_out_dir, resolve_device, set_threads

    check_choices("--op", args.op, bench.OP_MODULES)
    check_choices("--backend", args.backend, BENCH_BACKENDS)
    set_threads(args.threads)
    device = resolve_device(args.device)
    for backend in args.backend or ():
        reason = why_unusable(backend, device.type)
        if reason is not None:
            raise CLIError(f"--backend {backend} cannot run on {device.type} here: {reason}")
    out = None if args.no_write else check_out_dir(args.out or _default_results_dir())
    rows = bench.run(device=device, full=args.full, ops=args.op, backends=args.backend, log=lambda line: print(line, flush=True))
    print()
    print(bench.markdown_table(rows))
    if out is not None:
        for path in bench.write_report(rows, out, device, args.full):
            print(f"wrote {path}")
    return 0


def _info(args) -> int:
    import torch

    import fastfields

    print(f"fastfields {fastfields.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    for name, entry in fastfields.backends(build=not args.no_build).items():
        status = "available on " + ", ".join(entry["devices"]) if entry["available"] else f"unavailable: {entry['reason']}"
        print(f"  {name:7s} {status}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastfields", description="Fused kernels for 3D neural fields.")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="benchmark every op against its PyTorch baseline and write a report")
    bench.add_argument("--full", action="store_true", help="all cases (larger sizes, half precision); default: quick")
    bench.add_argument("--op", action="append", help="only this op (repeatable), e.g. triplane_sample")
    bench.add_argument("--backend", action="append", help="only this fused backend (repeatable): triton, cuda, cpu")
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--threads", type=int, help="CPU threads for torch and the cpu backend")
    bench.add_argument("--out", help="report folder (default: benchmarks/results in a checkout)")
    bench.add_argument("--no-write", action="store_true", help="print the table only")
    bench.set_defaults(run=_bench)

    info = commands.add_parser("info", help="which backends work here, and why not")
    info.add_argument("--no-build", action="store_true", help="do not build the compiled backends to find out")
    info.set_defaults(run=_info)

    from .apps import register

    register(commands)

    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("\nfastfields: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run_job(f"fastfields {args.command}", args.run, args)


if __name__ == "__main__":
    sys.exit(main())
