"""Build and load the C++ (``cpu``) and CUDA (``cuda``) extensions of csrc/.

An ahead-of-time build (``FASTFIELDS_BUILD_EXT=1 pip install .``) is used when present;
otherwise the sources are compiled just-in-time with ninja on first use and cached under
``$FASTFIELDS_CACHE_DIR`` (default ``~/.cache/fastfields``), in a folder keyed on the
sources, the flags, and the torch/CUDA/Python versions.

Two processes building at once serialise on a file lock that the OS releases when its
holder dies, so a killed build never blocks the next one; a build that did not finish
(no ``BUILD_OK`` stamp) is wiped and redone. A failed build raises :class:`BuildError`
naming its log file, and the failure is remembered for the rest of the process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Dict, List, Optional

import torch

KINDS = ("cpu", "cuda")
_loaded: Dict[str, bool] = {}
_failures: Dict[str, "BuildError"] = {}
_lock = threading.Lock()


class BuildError(RuntimeError):
    """A compiled extension could not be built or loaded; ``log_path`` holds the compiler output."""

    def __init__(self, message: str, log_path: Optional[Path] = None):
        super().__init__(message if log_path is None else f"{message} (build log: {log_path})")
        self.log_path = log_path


def csrc_dir() -> Path:
    """csrc/ of a source checkout, or the copy a wheel carries as ``fastfields/csrc``."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "csrc", here / "csrc"):
        if (candidate / "include" / "fastfields").is_dir():
            return candidate
    raise BuildError(f"fastfields C++ sources not found next to {here}; reinstall fastfields")


def sources(kind: str) -> List[Path]:
    root = csrc_dir() / kind
    patterns = ("*.cpp",) if kind == "cpu" else ("*.cpp", "*.cu")
    return sorted(p for pattern in patterns for p in root.glob(pattern))


def _flags(kind: str) -> Dict[str, List[str]]:
    if kind == "cpu":
        openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
        return {"cflags": ["-O3", "-std=c++17", *openmp], "ldflags": openmp, "cuda_cflags": []}
    return {
        "cflags": ["-O3", "-std=c++17"],
        "ldflags": [],
        "cuda_cflags": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"],
    }


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastfields"
    return Path(os.environ.get("FASTFIELDS_CACHE_DIR", default))


def build_dir(kind: str) -> Path:
    digest = hashlib.sha256()
    for path in sorted(csrc_dir().glob("include/fastfields/*.h")) + sources(kind):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(repr(_flags(kind)).encode())
    digest.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    tag = f"torch{torch.__version__}-cuda{torch.version.cuda}-py{sysconfig.get_python_version()}"
    return cache_root() / f"{kind}-{tag}-{digest.hexdigest()[:16]}"


def why_unbuildable(kind: str) -> Optional[str]:
    """A reason this extension cannot be built here, found without compiling anything, or None."""
    if kind == "cuda":
        from torch.utils.cpp_extension import CUDA_HOME

        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        if torch.version.cuda is None:
            return "this torch build has no CUDA support"
        if CUDA_HOME is None:
            return "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    elif shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler found (set CXX or install g++)"
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
        return "ninja is not installed (pip install ninja)"
    return None


def _load_ahead_of_time(kind: str) -> bool:
    spec = importlib.util.find_spec(f"fastfields._C_{kind}")
    if spec is None or spec.origin is None:
        return False
    torch.ops.load_library(spec.origin)
    return True


def compile_and_load(name: str, source_files: List[Path], directory: Path, flags: Dict[str, List[str]]) -> None:
    """JIT-build ``source_files`` into ``directory`` (once; later calls just load) and load the library."""
    from filelock import FileLock  # a torch dependency; the OS drops the lock if its holder dies
    from torch.utils.cpp_extension import load

    directory.parent.mkdir(parents=True, exist_ok=True)
    library = directory / f"{name}.so"
    stamp = directory / "BUILD_OK"
    log = directory.parent / f"{directory.name}.log"
    with FileLock(str(directory) + ".lock"):
        if stamp.exists() and library.exists():
            torch.ops.load_library(str(library))
            return
        # Whatever is here is from a build that never finished (killed, out of disk): start over.
        # That includes torch's own "lock" baton, which would otherwise make the build wait forever.
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        print(f"fastfields: building {name} (first use; about a minute) in {directory}", file=sys.stderr, flush=True)
        try:
            load(
                name=name,
                sources=[str(p) for p in source_files],
                extra_include_paths=[str(csrc_dir() / "include")],
                extra_cflags=flags["cflags"],
                extra_cuda_cflags=flags["cuda_cflags"] or None,
                extra_ldflags=flags["ldflags"],
                build_directory=str(directory),
                is_python_module=False,
                verbose=os.environ.get("FASTFIELDS_VERBOSE_BUILD", "0") == "1",
            )
        except Exception as error:  # compiler errors arrive as RuntimeError/CalledProcessError
            output = getattr(error, "output", None)
            text = output.decode(errors="replace") if isinstance(output, bytes) else str(output or "")
            log.write_text(f"{error}\n{text}")
            raise BuildError(f"building {name} failed: {str(error)[:300]}", log) from error
        stamp.write_text(torch.__version__)
        log.unlink(missing_ok=True)


def load_extension(kind: str) -> None:
    """Make ``torch.ops.fastfields_<kind>`` available, building it first if needed."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if _loaded.get(kind):
        return
    with _lock:
        if _loaded.get(kind):
            return
        if kind in _failures:
            raise _failures[kind]
        reason = why_unbuildable(kind)
        try:
            if reason is not None:
                raise BuildError(f"the fastfields {kind} extension cannot be built here: {reason}")
            if not _load_ahead_of_time(kind):
                compile_and_load(f"fastfields_{kind}", sources(kind), build_dir(kind), _flags(kind))
        except BuildError as error:
            _failures[kind] = error
            raise
        except Exception as error:
            _failures[kind] = BuildError(f"loading the fastfields {kind} extension failed: {error}")
            raise _failures[kind] from error
        _loaded[kind] = True
