"""What every ``fastfields`` job shares: argument checks that name the flag and what was
expected, the device and thread settings, optional dependencies, output folders, and the
one place that turns a user error or Ctrl-C into one line and an exit status.

A job raises :class:`CLIError` for anything the user can fix (a bad flag, an unreadable
input, a missing extra); :func:`run_job` prints ``fastfields <job>: <message>`` on stderr and
returns 2, and on Ctrl-C prints ``fastfields <job>: interrupted`` and returns 130, with no
traceback either way. Outputs are written through :func:`fastfields.export.atomic_path`, so an
interrupted job never leaves a partial file behind.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

#: Exit status of a user error (as argparse) and of Ctrl-C (128 + SIGINT, as shells).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(Exception):
    """A user error of a ``fastfields`` job: reported as one line, exit status 2."""


def run_job(prog: str, job: Callable, args) -> int:
    """``job(args)``, with :class:`CLIError` and Ctrl-C reported as one line on stderr."""
    try:
        return job(args)
    except CLIError as error:
        print(f"{prog}: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except ImportError as error:  # fastfields.export.MissingDependency and the like name their extra
        if "pip install 'fastfields[" not in str(error):
            raise
        print(f"{prog}: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except BrokenPipeError:  # `fastfields bench | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1


# --------------------------------------------------------------------------- numbers


def check_int(flag: str, value: Optional[int], *, minimum: int, allow_zero: bool = False, zero_means: str = "") -> None:
    """``value`` is None (the default), ``>= minimum``, or 0 when ``allow_zero`` (``zero_means`` says what 0 does)."""
    if value is None or value >= minimum or (allow_zero and value == 0):
        return
    zero = f" or 0 ({zero_means})" if allow_zero else ""
    raise CLIError(f"{flag} must be an integer >= {minimum}{zero}, got {value}")


def check_float(flag: str, value: Optional[float], *, minimum: Optional[float] = None, positive: bool = False) -> None:
    """``value`` is None, or finite (and ``> 0`` when ``positive``, ``>= minimum`` when given)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise CLIError(f"{flag} must be a finite number, got {value}")
    if positive and not value > 0:
        raise CLIError(f"{flag} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise CLIError(f"{flag} must be >= {minimum}, got {value}")


def check_choices(flag: str, values: Optional[Sequence[str]], choices: Sequence[str]) -> None:
    for value in values or ():
        if value not in choices:
            raise CLIError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")


# --------------------------------------------------------------------------- machine


def resolve_device(value: Optional[str], flag: str = "--device"):
    """``torch.device`` for ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available),
    refusing what this machine cannot run."""
    import torch

    if value is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise CLIError(f"{flag} must be cpu, cuda or cuda:N, got {value!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"{flag} must be cpu, cuda or cuda:N, got {value!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise CLIError(f"{flag} {value}: CUDA is not available here ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"{flag} {value}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


def set_threads(threads: Optional[int], flag: str = "--threads") -> None:
    """``torch.set_num_threads`` (the cpu backend follows it); None keeps torch's default."""
    if threads is None:
        return
    check_int(flag, threads, minimum=1)
    import torch

    torch.set_num_threads(threads)


def require(module: str, *, extra: str = "models", purpose: str = "") -> object:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"mcubes": "PyMCubes", "PIL": "pillow", "imageio_ffmpeg": "imageio-ffmpeg"}.get(module, module)
        need = f" for {purpose}" if purpose else ""
        raise CLIError(f"needs the optional package {package!r}{need}: pip install 'fastfields[{extra}]'") from None


# --------------------------------------------------------------------------- files


def check_out_dir(path, flag: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) and make sure files can be written in it."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == path else f"is under {str(parent)!r}, which is"
            raise CLIError(f"{flag} {str(path)!r} {where} a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CLIError(f"{flag} {str(path)!r}: cannot write there ({error.strerror or error})") from None
    return path


def check_input_file(flag: str, path) -> Path:
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{flag} {str(path)!r}: no such file or folder")
    return path


def check_image(flag: str, path) -> None:
    """Fail early (before any model loads) on a missing, empty, truncated or non-image file."""
    Image = require("PIL.Image", purpose="reading images")
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{flag} {str(path)!r}: no such file")
    try:
        with Image.open(path) as image:
            image.load()  # decodes everything: truncated files fail here
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError...
        raise CLIError(f"{flag} {str(path)!r}: not a readable image (PNG, JPEG, ...): {error}") from None


def warn_nonfinite_parameters(prog: str, module, what: str) -> int:
    """Warn (one line on stderr) when ``module`` holds NaN or inf parameters; returns how many tensors do."""
    import torch

    bad = [name for name, p in module.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        print(f"{prog}: WARNING: {what} has non-finite (NaN / inf) values in {len(bad)} parameter tensor(s), "
              f"e.g. {bad[0]}; the output will be meaningless", file=sys.stderr, flush=True)
    return len(bad)


def warn_nonfinite_images(prog: str, images, what: str) -> None:
    """Warn when rendered images hold NaN / inf (they would be written as black pixels)."""
    import torch

    images = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    bad = int((~torch.isfinite(images)).any(dim=-1).sum()) if images.numel() else 0
    if bad:
        print(f"{prog}: WARNING: {bad} pixel(s) of the {what} are NaN / inf (written as black)", file=sys.stderr,
              flush=True)


def load_error(flag: str, path, error: BaseException, expected: str) -> CLIError:
    """A :class:`CLIError` for an input that failed to load: the flag, the path, what was expected,
    and the first lines of the loader's own message (state-dict errors list every key)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = "; ".join(lines[:2])
    if len(detail) > 400:
        detail = detail[:400] + "..."
    more = f" (and {len(lines) - 2} more lines)" if len(lines) > 2 else ""
    return CLIError(f"{flag} {str(path)!r}: cannot load it as {expected}: {type(error).__name__}: {detail}{more}")


def check_json_files(flag: str, folder, names: Sequence[str]) -> None:
    """Each of ``names`` present in ``folder`` must parse as a JSON object (a config file)."""
    import json

    folder = Path(folder)
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        try:
            value = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CLIError(f"{flag}: {str(path)!r} is not valid JSON ({error})") from None
        if not isinstance(value, dict):
            raise CLIError(f"{flag}: {str(path)!r} must hold a JSON object of settings, got {type(value).__name__}")


def check_safetensors_floats(flag: str, path) -> None:
    """A ``.safetensors`` file (or a folder's ``model.safetensors``) must hold floating-point weights;
    reads the header only. Unreadable files are left to the loader, which says why."""
    path = Path(path)
    path = path / "model.safetensors" if path.is_dir() else path
    if path.suffix != ".safetensors" or not path.is_file():
        return
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    except Exception:  # corrupt header: reported by the loader
        return
    integer = [key for key, dtype in dtypes.items() if not dtype.startswith(("F", "BF"))]
    if integer:
        raise CLIError(f"{flag} {str(path)!r}: weights must be floating point (F32, F16, BF16), but {len(integer)} of "
                       f"{len(dtypes)} tensors are not, e.g. {integer[0]} ({dtypes[integer[0]]})")
