"""Multi-view datasets: the Blender / NeRF-synthetic format and the npz layout fastfields ships.

Camera convention. Every loader returns camera-to-world matrices ``c2w [V, 4, 4]`` in the
**Blender / OpenGL** convention, as NeRF-synthetic's ``transforms_*.json`` stores them: in
camera coordinates x points right, y up and the camera looks along **-z**; the last column
is the camera centre in world units. Intrinsics are a pinhole with one focal length in
pixels and the principal point at the image centre, ``focal = 0.5 * W / tan(0.5 *
camera_angle_x)``. Pass ``convention="opengl"`` to :func:`fastfields.rendering.rays_from_cameras`
(``c2w_opencv = c2w_opengl @ diag(1, -1, -1, 1)`` converts to OpenCV).

Images. RGBA images are stored with straight (not premultiplied) alpha; the loaders return
``images`` composited on a background colour, ``rgb * alpha + (1 - alpha) * background``,
float32 in ``[0, 1]``, and the ``alpha`` itself. Downscaling averages in premultiplied space
(area filter), so edges blend with the background exactly as a lower-resolution render would.

    >>> from fastfields.data import load_npz, select_views
    >>> scene = load_npz("data/mic/mic_train_100.npz")          # doctest: +SKIP
    >>> inputs = scene.subset(select_views(4, len(scene)))      # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

PathLike = Union[str, Path]
Background = Union[float, Sequence[float], torch.Tensor]

#: The npz layout of the shipped data (see data/mic/README.md): key -> meaning.
NPZ_KEYS = {
    "images_train": "[V, H, W, 4] uint8 RGBA, straight alpha",
    "poses_train": "[V, 4, 4] float32 camera-to-world, Blender/OpenGL convention",
    "focal": "focal length in pixels at this resolution",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class MultiViewData:
    """Posed images of one scene.

    Attributes:
        images: ``[V, H, W, 3]`` float32 in ``[0, 1]``, composited on ``background``.
        alpha: ``[V, H, W]`` float32 in ``[0, 1]`` (all ones for RGB-only sources).
        c2w: ``[V, 4, 4]`` float32 camera-to-world, Blender/OpenGL convention (see the module
            docstring).
        focal: focal length in pixels (square pixels, principal point at the image centre).
        near, far: the scene's depth range along the rays when the source gives one, else None.
        background: the ``[3]`` colour the images were composited on.
        names: one name per view (file stem or index), for reports.
    """

    images: torch.Tensor
    alpha: torch.Tensor
    c2w: torch.Tensor
    focal: float
    near: Optional[float] = None
    far: Optional[float] = None
    background: Optional[torch.Tensor] = None
    names: Optional[Sequence[str]] = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def intrinsics(self) -> torch.Tensor:
        """``[V, 4]`` rows ``(fx, fy, cx, cy)`` in pixels, for ``rays_from_cameras``."""
        row = torch.tensor([self.focal, self.focal, self.width / 2, self.height / 2], dtype=torch.float32)
        return row.expand(len(self), 4).clone()

    def subset(self, indices: Sequence[int]) -> "MultiViewData":
        """The views ``indices`` (in that order)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        if index.numel() and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise IndexError(f"MultiViewData.subset: indices must lie in [0, {len(self)}), got {list(indices)}")
        names = None if self.names is None else [self.names[int(i)] for i in index]
        return replace(self, images=self.images[index], alpha=self.alpha[index], c2w=self.c2w[index], names=names)

    def complement(self, indices: Sequence[int]) -> "MultiViewData":
        """Every view not in ``indices`` (the held-out views of a sparse-view split)."""
        chosen = {int(i) % len(self) for i in indices}
        return self.subset([i for i in range(len(self)) if i not in chosen])


def _background(op: str, background: Background) -> torch.Tensor:
    if isinstance(background, torch.Tensor):
        value = background.detach().float().cpu().reshape(-1)
    elif isinstance(background, Real) and not isinstance(background, bool):
        value = torch.full((3,), float(background))
    else:
        try:
            value = torch.tensor([float(c) for c in background])
        except (TypeError, ValueError):
            value = torch.zeros(0)
    if value.numel() == 1:
        value = value.expand(3).clone()
    if value.shape != (3,) or not bool(((value >= 0) & (value <= 1)).all()):
        raise ValueError(f"{op}: background must be a number or 3 numbers in [0, 1] (RGB), got {background!r}")
    return value


def to_float_images(images, *, name: str = "images", op: str = "to_float_images") -> torch.Tensor:
    """Images ``[..., H, W, C]`` as float32 in ``[0, 1]``: uint8 is divided by 255, floating
    point is checked to lie in ``[0, 1]``. Accepts numpy arrays and tensors."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor or numpy array [..., H, W, C], got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"{op}: {name} must be uint8 or floating point in [0, 1], got {images.dtype}")
    images = images.float()
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"{op}: {name} contains NaN or inf")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError(
            f"{op}: floating-point {name} must lie in [0, 1], got values in "
            f"[{float(images.min()):.3g}, {float(images.max()):.3g}] (pass uint8 for 0..255)"
        )
    return images


def composite_background(images, background: Background = 1.0):
    """RGBA (straight alpha) or RGB images ``[..., H, W, 3 or 4]``, uint8 or float in ``[0, 1]``,
    to ``(rgb [..., H, W, 3], alpha [..., H, W])`` float32 with ``rgb = c * a + (1 - a) * background``.

    RGB input is returned as is, with alpha all ones."""
    op = "composite_background"
    images = to_float_images(images, op=op)
    if images.dim() < 3 or images.shape[-1] not in (3, 4):
        raise ValueError(f"{op}: images must be [..., H, W, 3] (RGB) or [..., H, W, 4] (RGBA), got shape {tuple(images.shape)}")
    bg = _background(op, background).to(images.device)
    if images.shape[-1] == 3:
        return images.contiguous(), torch.ones(images.shape[:-1], device=images.device)
    rgb, alpha = images[..., :3], images[..., 3:]
    return (rgb * alpha + (1 - alpha) * bg).contiguous(), alpha[..., 0].contiguous()


def _check_c2w(op: str, c2w) -> torch.Tensor:
    if isinstance(c2w, np.ndarray):
        c2w = torch.from_numpy(np.ascontiguousarray(c2w))
    if not isinstance(c2w, torch.Tensor) or not c2w.is_floating_point():
        raise TypeError(f"{op}: c2w must be a float tensor [V, 4, 4], got {type(c2w).__name__}")
    if c2w.dim() != 3 or tuple(c2w.shape[1:]) not in ((4, 4), (3, 4)):
        raise ValueError(f"{op}: c2w must have shape [V, 4, 4] or [V, 3, 4], got shape {tuple(c2w.shape)}")
    if not bool(torch.isfinite(c2w).all()):
        raise ValueError(f"{op}: c2w contains NaN or inf")
    if c2w.shape[1] == 3:
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype).expand(c2w.shape[0], 1, 4)
        c2w = torch.cat([c2w, bottom.to(c2w.device)], dim=1)
    return c2w.float()


def load_npz(path: PathLike, *, background: Background = 1.0, images_key: str = "images_train",
             poses_key: str = "poses_train") -> MultiViewData:
    """Load the npz layout fastfields ships (``data/mic/mic_train_{100,200}.npz``).

    Keys: ``images_train [V, H, W, 4]`` uint8 RGBA (straight alpha) or ``[V, H, W, 3]``;
    ``poses_train [V, 4, 4]`` camera-to-world (Blender/OpenGL); ``focal`` (pixels) or
    ``camera_angle_x`` (radians); optional ``near`` / ``far``.
    """
    op = "load_npz"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{op}: no such file: {str(path)!r}")
    with np.load(path) as archive:
        missing = [k for k in (images_key, poses_key) if k not in archive]
        if missing:
            raise KeyError(f"{op}: {str(path)!r} lacks {missing}; it has {sorted(archive.files)}")
        raw_images = archive[images_key]
        poses = archive[poses_key]
        extra = {k: float(archive[k]) for k in ("focal", "camera_angle_x", "near", "far") if k in archive}
    images, alpha = composite_background(raw_images, background)
    c2w = _check_c2w(op, poses)
    if c2w.shape[0] != images.shape[0]:
        raise ValueError(f"{op}: {images.shape[0]} images but {c2w.shape[0]} poses in {str(path)!r}")
    if "focal" in extra:
        focal = extra["focal"]
    elif "camera_angle_x" in extra:
        focal = 0.5 * images.shape[2] / math.tan(0.5 * extra["camera_angle_x"])
    else:
        raise KeyError(f"{op}: {str(path)!r} has neither 'focal' nor 'camera_angle_x'")
    return MultiViewData(
        images=images, alpha=alpha, c2w=c2w, focal=focal, near=extra.get("near"), far=extra.get("far"),
        background=_background(op, background), names=[str(i) for i in range(images.shape[0])],
    )


def _read_image(path: Path, downscale: int) -> torch.Tensor:
    """One image file as float32 ``[H, W, C]`` straight alpha, area-downscaled by an integer factor."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"))
    image = torch.from_numpy(array.copy()).float() / 255.0
    if downscale == 1:
        return image
    H, W, C = image.shape
    if H % downscale or W % downscale:
        raise ValueError(f"load_blender: downscale {downscale} does not divide the image size {W}x{H} of {str(path)!r}")
    if C == 4:  # average premultiplied colour, then un-premultiply (an area filter on the alpha-weighted colour)
        image = torch.cat([image[..., :3] * image[..., 3:], image[..., 3:]], dim=-1)
    image = image.reshape(H // downscale, downscale, W // downscale, downscale, C).mean(dim=(1, 3))
    if C == 4:
        a = image[..., 3:]
        image = torch.cat([torch.where(a > 0, image[..., :3] / a.clamp_min(1e-12), torch.zeros_like(a)), a], dim=-1)
    return image.clamp(0, 1)


def load_blender(root: PathLike, split: str = "train", *, background: Background = 1.0, downscale: int = 1,
                 max_views: Optional[int] = None) -> MultiViewData:
    """Load a scene in the Blender / NeRF-synthetic format: ``root/transforms_{split}.json``
    with ``camera_angle_x`` and ``frames[i].file_path`` (relative to ``root``, with or without
    the image suffix) and ``frames[i].transform_matrix`` (camera-to-world, OpenGL convention).

    Args:
        root: the scene folder.
        split: the json to read (``"train"``, ``"val"``, ``"test"``, or any ``transforms_<split>.json``).
        background: colour the RGBA images are composited on (NeRF-synthetic uses white, 1.0).
        downscale: integer area-downscaling factor (8 turns 800x800 into 100x100); the focal
            length is scaled with it.
        max_views: read only the first ``max_views`` frames.

    NeRF-synthetic gives no near/far in its json; the customary 2 and 6 are returned.
    """
    op = "load_blender"
    root = Path(root)
    meta_path = root / f"transforms_{split}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{op}: no {meta_path.name} in {str(root)!r}")
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise ValueError(f"{op}: downscale must be a positive int, got {downscale!r}")
    meta = json.loads(meta_path.read_text())
    frames = meta.get("frames")
    if "camera_angle_x" not in meta or not isinstance(frames, list) or not frames:
        raise ValueError(f"{op}: {str(meta_path)!r} must hold 'camera_angle_x' and a non-empty 'frames' list")
    if max_views is not None:
        frames = frames[:max_views]

    images, poses, names = [], [], []
    for frame in frames:
        file = root / frame["file_path"]
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            candidates = [file.with_name(file.name + s) for s in IMAGE_SUFFIXES]
            file = next((c for c in candidates if c.is_file()), candidates[0])
        if not file.is_file():
            raise FileNotFoundError(f"{op}: image {str(file)!r} of {meta_path.name} not found")
        images.append(_read_image(file, downscale))
        poses.append(frame["transform_matrix"])
        names.append(file.stem)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise ValueError(f"{op}: the images of {meta_path.name} differ in size: {sorted(shapes)}")
    rgb, alpha = composite_background(torch.stack(images), background)
    c2w = _check_c2w(op, torch.tensor(poses, dtype=torch.float32))
    focal = 0.5 * rgb.shape[2] / math.tan(0.5 * float(meta["camera_angle_x"]))
    return MultiViewData(images=rgb, alpha=alpha, c2w=c2w, focal=focal, near=2.0, far=6.0,
                         background=_background(op, background), names=names)


def shipped_data(name: str) -> Path:
    """Path of a data file fastfields ships, e.g. ``shipped_data("mic/mic_train_100.npz")``.

    Looked up in the installed package data (``fastfields._data``, the repository's ``data/``
    folder) and then in the ``data/`` folder of the checkout this module runs from."""
    import importlib.util

    candidates = []
    spec = importlib.util.find_spec("fastfields._data")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / name for p in spec.submodule_search_locations]
    candidates.append(Path(__file__).resolve().parents[1] / "data" / name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"shipped_data: {name!r} not found (looked in {[str(p) for p in candidates]})")


def select_views(n: int, total: int) -> list:
    """``n`` view indices evenly spread over ``0 .. total - 1`` (``round(k * total / n)``),
    deterministic; the held-out views are the others."""
    op = "select_views"
    for name, value in (("n", n), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    if n > total:
        raise ValueError(f"{op}: cannot pick n = {n} views out of total = {total}")
    return [int(math.floor(k * total / n + 0.5)) % total for k in range(n)]


def farthest_views(c2w, n: int, *, first: int = 0) -> list:
    """``n`` views whose camera centres are spread over the capture sphere: greedy
    farthest-point sampling on the centres starting from view ``first``, deterministic.
    Blender scenes place their training cameras at random on a sphere, so consecutive
    indices are not spatially even; ZeroRF picks its input views by k-means on the
    centres for the same reason."""
    op = "farthest_views"
    c2w = _check_c2w(op, c2w)
    total = c2w.shape[0]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
        raise ValueError(f"{op}: n must be an int in [1, {total}], got {n!r}")
    if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < total:
        raise ValueError(f"{op}: first must be a view index in [0, {total}), got {first!r}")
    centres = c2w[:, :3, 3].double()
    chosen = [first]
    distance = (centres - centres[first]).norm(dim=-1)
    for _ in range(n - 1):
        pick = int(torch.argmax(distance))
        chosen.append(pick)
        distance = torch.minimum(distance, (centres - centres[pick]).norm(dim=-1))
    return chosen
