"""The SRN / ShapeNet layout on disk (Sitzmann et al. 2019; what SSDNeRF and pixelNeRF read).

One folder per object::

    <root>/<object_id>/rgb/000000.png      RGBA with straight alpha (ours) or RGB on white (SRN's)
    <root>/<object_id>/pose/000000.txt     4x4 camera-to-world, OpenCV convention, row-major,
                                           16 whitespace-separated numbers (one line or four)
    <root>/<object_id>/intrinsics.txt      line 1 "f cx cy 0.", line 2 "0. 0. 0.",
                                           line 3 "1.", line 4 "H W"

Cameras follow SRN: OpenCV convention (x right, y down the image, looking along +z), one
focal length ``f`` in pixels and the principal point ``(cx, cy)`` for an ``H x W`` image;
SRN's world is z up. The reader pairs ``rgb/<name>.png`` with ``pose/<name>.txt`` and sorts
views by name, as SSDNeRF's ``ShapeNetSRN`` does; a real SRN cars/chairs folder
(``cars_train/``, ``chairs_test/`` ...) loads unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _as_array(value, name: str, op: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as error:
        raise TypeError(f"{op}: {name} must be an array or tensor, got {type(value).__name__}") from error


def _check_object_id(object_id, op: str) -> str:
    if not isinstance(object_id, str) or not object_id or "/" in object_id or "\\" in object_id or object_id in (".", ".."):
        raise ValueError(f"{op}: object_id must be a non-empty folder name without path separators, got {object_id!r}")
    return object_id


def write_srn_object(root: PathLike, object_id: str, rgba, c2w, intrinsics) -> Path:
    """Write one object's views in the SRN layout under ``<root>/<object_id>/``.

    Args:
        root: the split folder (created if missing).
        object_id: the object's folder name.
        rgba: ``[V, H, W, 4]`` straight-alpha RGBA (float in [0, 1] or uint8), or
            ``[V, H, W, 3]`` RGB.
        c2w: ``[V, 4, 4]`` camera-to-world, OpenCV convention.
        intrinsics: ``[V, 4]`` or ``[4]`` ``(fx, fy, cx, cy)`` in pixels; SRN's format has one
            focal length and one camera per object, so ``fx == fy`` and every view equal.
    Returns:
        the object folder.
    """
    from PIL import Image

    op = "write_srn_object"
    object_id = _check_object_id(object_id, op)
    rgba = _as_array(rgba, "rgba", op)
    c2w = _as_array(c2w, "c2w", op).astype(np.float64)
    intrinsics = _as_array(intrinsics, "intrinsics", op).astype(np.float64)
    if rgba.ndim != 4 or rgba.shape[-1] not in (3, 4) or rgba.shape[0] < 1:
        raise ValueError(f"{op}: rgba must have shape [V, H, W, 4] (or [V, H, W, 3]), got shape {rgba.shape}")
    views, height, width = rgba.shape[:3]
    if c2w.shape != (views, 4, 4):
        raise ValueError(f"{op}: c2w must have shape [V, 4, 4] with V = {views} (the views in rgba), got shape {c2w.shape}")
    if intrinsics.shape == (4,):
        intrinsics = np.broadcast_to(intrinsics, (views, 4))
    if intrinsics.shape != (views, 4):
        raise ValueError(f"{op}: intrinsics must have shape [V, 4] or [4] (fx, fy, cx, cy), got shape {intrinsics.shape}")
    if not np.allclose(intrinsics, intrinsics[:1], rtol=1e-6, atol=1e-9):
        raise ValueError(f"{op}: intrinsics must be equal for every view (SRN's intrinsics.txt holds one camera)")
    fx, fy, cx, cy = intrinsics[0].tolist()
    if not np.isclose(fx, fy, rtol=1e-6) or fx <= 0:
        raise ValueError(f"{op}: intrinsics need fx == fy > 0 (SRN's format has one focal length), got fx={fx}, fy={fy}")
    if not np.all(np.isfinite(c2w)):
        raise ValueError(f"{op}: c2w must be finite")
    if rgba.dtype != np.uint8:
        rgba = np.clip(np.nan_to_num(rgba.astype(np.float64)), 0.0, 1.0)
        rgba = np.round(rgba * 255.0).astype(np.uint8)

    folder = Path(root) / object_id
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    (folder / "pose").mkdir(parents=True, exist_ok=True)
    with open(folder / "intrinsics.txt", "w") as f:
        f.write(f"{fx:.6f} {cx:.6f} {cy:.6f} 0.\n0. 0. 0.\n1.\n{height} {width}\n")
    for k in range(views):
        Image.fromarray(rgba[k]).save(folder / "rgb" / f"{k:06d}.png")
        np.savetxt(folder / "pose" / f"{k:06d}.txt", c2w[k], fmt="%.9g")
    return folder


def read_intrinsics(path: PathLike) -> Tuple[float, float, float, int, int]:
    """``(f, cx, cy, H, W)`` from an SRN ``intrinsics.txt``; ValueError naming the file if malformed."""
    path = Path(path)
    try:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        f, cx, cy = (float(x) for x in lines[0][:3])
        height, width = (int(float(x)) for x in lines[-1][:2])
    except FileNotFoundError:
        raise FileNotFoundError(f"SRNDataset: missing camera file {path}") from None
    except (ValueError, IndexError) as error:
        raise ValueError(f"SRNDataset: {path} is not an SRN intrinsics file (line 1 'f cx cy 0.', line 4 'H W'): {error}") from None
    if len(lines) < 4 or f <= 0 or height < 1 or width < 1:
        raise ValueError(f"SRNDataset: {path} is not an SRN intrinsics file (need 4 lines, f > 0, H W >= 1)")
    return f, cx, cy, height, width


def read_pose(path: PathLike) -> np.ndarray:
    """A ``[4, 4]`` camera-to-world from an SRN pose file; ValueError naming the file if malformed."""
    path = Path(path)
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except FileNotFoundError:
        raise FileNotFoundError(f"SRNDataset: missing pose file {path}") from None
    except ValueError as error:
        raise ValueError(f"SRNDataset: {path} is not a pose file (16 numbers): {error}") from None
    if values.size != 16 or not np.all(np.isfinite(values)):
        raise ValueError(f"SRNDataset: {path} must hold 16 finite numbers (a 4x4 camera-to-world), got {values.size}")
    return values.reshape(4, 4)


def _read_image(path: Path) -> np.ndarray:
    """``[H, W, 4]`` float32 straight-alpha RGBA (alpha 1 for RGB files)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
                array = np.asarray(image.convert("RGBA"))
            else:
                array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"SRNDataset: cannot read image {path}: {error}") from None
    array = array.astype(np.float32) / 255.0
    if array.shape[-1] == 3:
        array = np.concatenate([array, np.ones_like(array[..., :1])], -1)
    return array


def _resize(rgba: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Area/bilinear resize of ``[V, H, W, 4]`` straight-alpha RGBA in premultiplied space."""
    import torch.nn.functional as F

    premult = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], -1).permute(0, 3, 1, 2)
    down = size[0] <= rgba.shape[1] and size[1] <= rgba.shape[2]
    out = F.interpolate(premult, size=size, mode="area" if down else "bilinear", align_corners=None if down else False)
    out = out.permute(0, 2, 3, 1).clamp(0, 1)
    alpha = out[..., 3:]
    rgb = torch.where(alpha > 0, out[..., :3] / alpha.clamp_min(1e-8), torch.zeros_like(out[..., :3]))
    return torch.cat([rgb.clamp(0, 1), alpha], -1)


class SRNDataset:
    """Posed views of the objects in an SRN-layout folder.

    Args:
        root: the folder holding one sub-folder per object, or (with ``split``) its parent.
        split: None (``root`` is the split folder), or a name looked up as ``<root>/<split>``
            (our builder's layout) and else as ``<root>/*_<split>`` (SRN's ``cars_train``).
        image_size: None (the files' size), an int (square) or ``(H, W)``: images are resized
            (area filter in premultiplied space when shrinking) and intrinsics scaled to match.

    ``dataset[i]`` is a dict: ``id`` (str), ``images`` ``[V, H, W, 3]`` float32 composited on
    white, ``alpha`` ``[V, H, W]`` (ones for RGB files), ``c2w`` ``[V, 4, 4]`` float32 OpenCV
    camera-to-world, ``intrinsics`` ``[V, 4]`` float32 ``(fx, fy, cx, cy)`` in pixels at the
    loaded size (the file's ``f, cx, cy`` are for its ``H W`` line and are rescaled when the
    images differ from it). Views are sorted by file name. Objects are listed at construction
    (sorted ids); images are read on access.
    """

    def __init__(self, root: PathLike, *, split: Optional[str] = None, image_size=None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"SRNDataset: root {root} is not a folder")
        if split is not None:
            if not isinstance(split, str) or not split:
                raise ValueError(f"SRNDataset: split must be a non-empty string or None, got {split!r}")
            candidates = [root / split] if (root / split).is_dir() else sorted(p for p in root.glob(f"*_{split}") if p.is_dir())
            if len(candidates) != 1:
                found = sorted(p.name for p in root.iterdir() if p.is_dir())
                raise FileNotFoundError(f"SRNDataset: split {split!r} not found under {root} "
                                        f"(looked for {split}/ and one *_{split}/; folders there: {found})")
            root = candidates[0]
        if image_size is not None:
            if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
                image_size = (int(image_size), int(image_size))
            elif not (isinstance(image_size, (tuple, list)) and len(image_size) == 2
                      and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in image_size)):
                raise ValueError(f"SRNDataset: image_size must be None, an int or (H, W), got {image_size!r}")
            if min(image_size) < 1:
                raise ValueError(f"SRNDataset: image_size must be positive, got {image_size!r}")
            image_size = (int(image_size[0]), int(image_size[1]))
        self.root = root
        self.image_size = image_size
        self.ids: List[str] = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "rgb").is_dir())
        if not self.ids:
            raise FileNotFoundError(f"SRNDataset: no object folders (<id>/rgb/) under {root}")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"SRNDataset(root={str(self.root)!r}, objects={len(self)}, image_size={self.image_size})"

    def view_names(self, i: int) -> List[str]:
        """The sorted view names (file stems) of object ``i``."""
        folder = self.root / self.ids[i] / "rgb"
        names = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not names:
            raise FileNotFoundError(f"SRNDataset: no images in {folder}")
        return names

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"SRNDataset: index must be an int, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"SRNDataset: index {i} out of range for {len(self)} objects")
        i = int(i) % len(self)
        folder = self.root / self.ids[i]
        f, cx, cy, file_h, file_w = read_intrinsics(folder / "intrinsics.txt")
        images, poses = [], []
        rgb_dir = folder / "rgb"
        files = {p.stem: p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for name in self.view_names(i):
            image = _read_image(files[name])
            if images and image.shape != images[0].shape:
                raise ValueError(f"SRNDataset: {files[name]} has size {image.shape[:2]}, the object's first view {images[0].shape[:2]}")
            images.append(image)
            poses.append(read_pose(folder / "pose" / f"{name}.txt"))
        rgba = torch.from_numpy(np.stack(images))
        height, width = rgba.shape[1:3]
        # The file's intrinsics are for (file_h, file_w); rescale to the images, then to image_size.
        sx, sy = width / file_w, height / file_h
        if self.image_size is not None and self.image_size != (height, width):
            rgba = _resize(rgba, self.image_size)
            sx, sy = sx * self.image_size[1] / width, sy * self.image_size[0] / height
        alpha = rgba[..., 3]
        images = rgba[..., :3] * alpha[..., None] + (1.0 - alpha[..., None])
        views = rgba.shape[0]
        intrinsics = torch.tensor([f * sx, f * sy, cx * sx, cy * sy], dtype=torch.float32).expand(views, 4).clone()
        return dict(id=self.ids[i], images=images.float().contiguous(), alpha=alpha.float().contiguous(),
                    c2w=torch.from_numpy(np.stack(poses)).float(), intrinsics=intrinsics)
