"""Shared test setup.

Without a GPU the Triton kernels run on CPU tensors under the interpreter, which must be
switched on before triton is first imported; hence here, before anything else.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastfields import _backend, _build  # noqa: E402

COMPILED = ("triton", "cpu", "cuda")


def backend_params():
    """(backend, device) pairs to test against the reference: every compiled backend that
    belongs on this machine. A backend whose toolchain is present but whose build fails is
    NOT skipped: its tests fail, so a broken build cannot hide."""
    params = []
    for backend in COMPILED:
        for device in ("cpu", "cuda"):
            if backend in ("cpu", "cuda") and backend != device:
                continue
            marks = [pytest.mark.cuda] if device == "cuda" else []
            if device == "cuda" and not torch.cuda.is_available():
                marks.append(pytest.mark.skip(reason="no CUDA device"))
            elif backend == "triton" and _backend.why_unusable("triton", device, build=False) is not None:
                marks.append(pytest.mark.skip(reason=_backend.why_unusable("triton", device, build=False)))
            elif backend in ("cpu", "cuda"):
                reason = _build.why_unbuildable(backend)
                if reason is not None:
                    marks.append(pytest.mark.skip(reason=reason))
            params.append(pytest.param(backend, device, id=f"{backend}-{device}", marks=marks))
    return params
