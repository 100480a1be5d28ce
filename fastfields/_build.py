"""Build and load the C++ (``cpu``) and CUDA (``cuda``) extensions of csrc/.

An ahead-of-time build (``FASTFIELDS_BUILD_EXT=1 pip install .``) is used when present;
otherwise the sources are compiled just-in-time with ninja on first use and cached under
``$FASTFIELDS_CACHE_DIR`` (default ``~/.cache/fastfields``), in a folder keyed on the
sources, the flags, and the torch/CUDA/Python versions.

Two processes building at once serialise on a file lock that the OS releases when its
holder dies, so a killed build never blocks the next one; a build that did not finish
(no ``BUILD_OK`` stamp) is wiped and redone. The stamp records the size and SHA-256 of the
library it vouches for, checked before every load: a truncated, empty or replaced library
(which would kill the process with SIGBUS when mapped) is rebuilt instead. The compiler runs
in a child process in its own process group: an interrupted build (Ctrl-C, SIGTERM, or the
parent killed outright) takes ninja and every compiler it started with it. A failed build
raises :class:`BuildError` naming its log file, and the failure is remembered for the rest
of the process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
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


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _elf_complete(path: Path, size: int) -> bool:
    """An ELF file whose section header table (written last by the linker) lies inside the file."""
    with open(path, "rb") as f:
        header = f.read(64)
    if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF
        return False
    order = "<" if header[5] == 1 else ">"
    (shoff,) = struct.unpack_from(order + "Q", header, 0x28)
    shentsize, shnum = struct.unpack_from(order + "HH", header, 0x3A)
    return 0 < shoff and shoff + shentsize * shnum <= size


def _write_stamp(stamp: Path, library: Path) -> None:
    record = {"torch": torch.__version__, "library": library.name, "size": library.stat().st_size, "sha256": _digest(library)}
    tmp = stamp.with_name(stamp.name + ".partial")
    tmp.write_text(json.dumps(record))
    tmp.replace(stamp)


def stamp_mismatch(stamp: Path, library: Path) -> Optional[str]:
    """Why the built ``library`` is not the one ``stamp`` recorded (size, checksum), or None.

    A stamp of the earlier format (the torch version only) is accepted for a complete ELF
    library and upgraded in place; anything else it vouches for is rebuilt."""
    size = library.stat().st_size
    if size == 0:
        return "the library is empty (0 bytes)"
    text = stamp.read_text(errors="replace")
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "size" not in record or "sha256" not in record:
        if sys.platform.startswith("linux") and _elf_complete(library, size):
            _write_stamp(stamp, library)
            return None
        return "the build record has no size or checksum and the library looks incomplete"
    if record["size"] != size:
        return f"the library has {size} bytes, the build recorded {record['size']}"
    if record["sha256"] != _digest(library):
        return "the library's SHA-256 differs from the one the build recorded"
    return None


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_build_worker(request: Dict) -> int:
    """Run the JIT build in a child process heading its own process group; whatever
    interrupts the wait here (KeyboardInterrupt, SystemExit from a signal handler) kills the
    whole group (ninja and its compilers) before it propagates."""
    command = [sys.executable, "-c", "import sys; from fastfields._build import _worker_main; sys.exit(_worker_main())"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, start_new_session=True, text=True)
    try:
        proc.communicate(json.dumps(request))
        return proc.returncode
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    if not hasattr(os, "killpg"):  # Windows: no process groups to signal
        proc.kill()
        proc.wait()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _worker_main() -> int:
    """The build child: read the request on stdin, compile with torch's JIT loader, write the log on failure."""

    def stop(signum, frame):  # take ninja and the compilers (our process group) down with us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.killpg(0, signal.SIGTERM)
        os._exit(128 + signum)

    if hasattr(os, "killpg"):
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    _die_with_parent()
    request = json.loads(sys.stdin.read())
    if request["parent"] != os.getppid():  # the parent died before PR_SET_PDEATHSIG was set
        return 1
    from torch.utils.cpp_extension import load

    try:
        load(
            name=request["name"],
            sources=request["sources"],
            extra_include_paths=[str(csrc_dir() / "include")],
            extra_cflags=request["flags"]["cflags"],
            extra_cuda_cflags=request["flags"]["cuda_cflags"] or None,
            extra_ldflags=request["flags"]["ldflags"],
            build_directory=request["directory"],
            is_python_module=False,
            verbose=os.environ.get("FASTFIELDS_VERBOSE_BUILD", "0") == "1",
        )
    except Exception as error:  # compiler errors arrive as RuntimeError/CalledProcessError
        output = getattr(error, "output", None)
        text = output.decode(errors="replace") if isinstance(output, bytes) else str(output or "")
        Path(request["log"]).write_text(f"{error}\n{text}")
        return 1
    return 0


def compile_and_load(name: str, source_files: List[Path], directory: Path, flags: Dict[str, List[str]]) -> None:
    """JIT-build ``source_files`` into ``directory`` (once; later calls check the library
    against its build record and load it) and load the library."""
    from filelock import FileLock  # a torch dependency; the OS drops the lock if its holder dies

    directory.parent.mkdir(parents=True, exist_ok=True)
    library = directory / f"{name}.so"
    stamp = directory / "BUILD_OK"
    log = directory.parent / f"{directory.name}.log"
    with FileLock(str(directory) + ".lock"):
        if stamp.exists() and library.exists():
            problem = stamp_mismatch(stamp, library)
            if problem is None:
                torch.ops.load_library(str(library))
                return
            print(f"fastfields: rebuilding {name} in {directory}: {problem}", file=sys.stderr, flush=True)
        # Whatever is here is from a build that never finished (killed, out of disk) or does not
        # match its record: start over. That includes torch's own "lock" baton, which would
        # otherwise make the build wait forever.
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        log.unlink(missing_ok=True)
        print(f"fastfields: building {name} (first use; about a minute) in {directory}", file=sys.stderr, flush=True)
        request = {
            "name": name, "sources": [str(p) for p in source_files], "flags": flags, "directory": str(directory),
            "log": str(log), "parent": os.getpid(),
        }
        code = _run_build_worker(request)
        if code != 0 or not library.exists():
            if not log.exists():
                log.write_text(f"the build process exited with status {code} and no compiler output\n")
            first = log.read_text(errors="replace").strip().splitlines()
            raise BuildError(f"building {name} failed: {(first[0] if first else '')[:300]}", log)
        _write_stamp(stamp, library)
        torch.ops.load_library(str(library))
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
