"""Export a field: a marching-cubes mesh with vertex colours (PLY / OBJ / GLB) and
turntable videos (GIF / MP4).

Not hot kernels, so they lean on well-kept libraries, imported only when called:
PyMCubes (marching cubes), trimesh (mesh files), imageio (GIF / MP4; MP4 needs
``imageio-ffmpeg``). They come with ``pip install fastfields[models]``; a missing one raises
:class:`MissingDependency` naming the extra.

Every writer goes through :func:`atomic_path`: the file is written under a temporary name
in the destination folder and renamed over ``path`` once complete, so an interrupted
export (Ctrl-C, a full disk, a crash) never leaves a truncated file under the real name.

    >>> import torch, fastfields.export as E
    >>> sphere = lambda p: 1.0 - p.norm(dim=-1)                    # positive inside
    >>> grid = E.density_grid(sphere, 32, bound=1.0)                 # [32, 32, 32]
    >>> vertices, faces = E.marching_cubes(grid, 0.0, bound=1.0)
    >>> bool(abs(vertices).max() <= 1.0), faces.shape[1]
    (True, 3)
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, Path]
MESH_FORMATS = (".ply", ".obj", ".glb")
VIDEO_FORMATS = (".gif", ".mp4")


class MissingDependency(ImportError):
    """An optional package is not installed; the message names the pip extra that brings it."""


_PACKAGES = {"mcubes": "PyMCubes", "imageio_ffmpeg": "imageio-ffmpeg", "PIL": "pillow"}


def _require(module: str, extra: str = "models"):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = _PACKAGES.get(module, module)
        raise MissingDependency(f"fastfields.export needs {package!r}: pip install 'fastfields[{extra}]'") from error


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers pick the same format);
    on success it replaces ``path`` in one rename, on any error (or Ctrl-C) it is removed.

        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: PathLike, text: str) -> Path:
    """Write a text file (JSON reports, ...) atomically, as :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def grid_points(resolution: int, bound: float = 1.0, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The centres of a ``resolution^3`` lattice spanning ``[-bound, bound]^3`` inclusive
    (``linspace`` on each axis, so vertex ``i`` sits at ``-bound + 2 * bound * i / (res - 1)``),
    as ``[res, res, res, 3]`` indexed ``[ix, iy, iz]``."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"grid_points: resolution must be an int >= 2, got {resolution!r}")
    axis = torch.linspace(-bound, bound, resolution, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)


@torch.no_grad()
def density_grid(
    density_fn: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    bound: float = 1.0,
    *,
    chunk: int = 1 << 20,
    device=None,
) -> torch.Tensor:
    """Evaluate ``density_fn`` (points ``[N, 3]`` -> values ``[N]``) on :func:`grid_points`,
    ``chunk`` points at a time (int64 indexing: 512^3 and beyond are fine).

    Returns ``[res, res, res]`` float32 on the CPU, indexed ``[ix, iy, iz]``."""
    points = grid_points(resolution, bound, device=device).reshape(-1, 3)
    out = torch.empty(points.shape[0], dtype=torch.float32)
    for start in range(0, points.shape[0], chunk):
        values = density_fn(points[start : start + chunk])
        out[start : start + chunk] = values.reshape(-1).float().cpu()
    return out.reshape(resolution, resolution, resolution)


def marching_cubes(grid: torch.Tensor, threshold: float, bound: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Iso-surface ``grid == threshold`` of a ``[res, res, res]`` grid from :func:`density_grid`.

    Returns ``vertices [V, 3]`` (float32, in the grid's world coordinates: vertex indices
    map back through the same ``linspace`` that made the grid, so there is no half-voxel
    shift) and ``faces [F, 3]`` (int64), wound so that normals point out of the
    ``> threshold`` region. Empty arrays when the surface is empty."""
    mcubes = _require("mcubes")
    values = grid.detach().float().cpu().numpy() if isinstance(grid, torch.Tensor) else np.asarray(grid, np.float32)
    if values.ndim != 3:
        raise ValueError(f"marching_cubes: grid must be [res, res, res], got shape {values.shape}")
    vertices, faces = mcubes.marching_cubes(values, float(threshold))
    scale = np.array([2 * bound / (n - 1) for n in values.shape], dtype=np.float64)
    vertices = (vertices * scale - bound).astype(np.float32)
    return vertices, faces.astype(np.int64)


def save_mesh(path: PathLike, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray] = None) -> Path:
    """Write a triangle mesh; the format follows the suffix: ``.ply``, ``.obj`` or ``.glb``.

    ``colors`` are per-vertex RGB in ``[0, 1]`` (float) or ``[0, 255]`` (uint8), ``[V, 3]``."""
    trimesh = _require("trimesh")
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise ValueError(f"save_mesh: path must end in one of {MESH_FORMATS}, got {str(path)!r}")
    if colors is not None:
        colors = np.asarray(colors)
        if colors.dtype != np.uint8:
            colors = (np.clip(colors, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=np.asarray(vertices), faces=np.asarray(faces), vertex_colors=colors, process=False)
    with atomic_path(path) as tmp:
        mesh.export(tmp, file_type=path.suffix.lower()[1:])
    return path


def to_uint8(images: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """Images in ``[0, 1]`` (float) or uint8, ``[..., H, W, 3]``, as uint8 numpy."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.is_floating_point():
            images = (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        return images.numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return images


def save_image(path: PathLike, image: Union[torch.Tensor, np.ndarray]) -> Path:
    """Write one ``[H, W, 3]`` image (PNG, JPEG, ... by suffix)."""
    imageio = _require("imageio")
    path = Path(path)
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, to_uint8(image))
    return path


def save_video(path: PathLike, frames: Union[torch.Tensor, np.ndarray, Sequence], fps: int = 24) -> Path:
    """Write frames ``[K, H, W, 3]`` as a looping GIF or an MP4 (by suffix)."""
    imageio = _require("imageio")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"save_video: path must end in one of {VIDEO_FORMATS}, got {str(path)!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
        raise ValueError(f"save_video: fps must be a positive number, got {fps!r}")
    frames = [to_uint8(frame) for frame in frames]
    if not frames:
        raise ValueError(f"save_video: no frames to write to {str(path)!r}")
    if suffix == ".mp4":
        _require("imageio_ffmpeg")
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            imageio.mimsave(tmp, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimsave(tmp, frames, fps=fps)
    return path
