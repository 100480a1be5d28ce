"""pytest-benchmark suites: ``pytest benchmarks/`` (add ``--benchmark-only``); the same cases as ``fastfields bench``."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "0")  # never time the Triton interpreter
