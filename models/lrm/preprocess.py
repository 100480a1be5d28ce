"""LRM's input image: OpenLRM's own preprocessing by default, alpha recentering on request.

By default :func:`preprocess_image` is ``LRMInferrer.infer_single`` of OpenLRM
(``openlrm/runners/infer/lrm.py``), step for step, so that a file gives OpenLRM's tensor
bit for bit (and with official weights, OpenLRM's planes):

1. ``np.array(Image.open(path))`` as it is: no mode conversion, no EXIF rotation;
2. ``uint8 [H, W, C]`` -> ``[1, C, H, W]`` float32 by ``/ 255.0``;
3. RGBA: ``rgb * alpha + (1 - alpha)`` (composited on white);
4. ``F.interpolate(size=(S, S), mode="bicubic", align_corners=True)`` (no antialiasing: a
   non-square image is stretched to the square, as OpenLRM does);
5. ``clamp(0, 1)``.

OpenLRM runs steps 2-5 on its model's device; ``device=`` does the same.

OpenLRM feeds images that its separate ``Preprocessor`` (background removal, then
``step_recenter``) or the user has already centred. ``recenter=True`` does that centring
here: the bounding box of ``alpha > 0`` is scaled so its longer side is ``S * (1 -
border_ratio)`` and centred on a transparent square (TripoSR's ``resize_foreground`` does
the same). It differs from ``step_recenter`` in two details, both deliberate: the box
includes its last row and column (``step_recenter`` drops them), and the crop is resampled
by an antialiased bilinear filter on premultiplied colour (``cv2.INTER_AREA`` on straight
colour there; OpenCV is not a dependency), so edges do not pick up the colour of invisible
pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _pil_array(pil) -> np.ndarray:
    """What OpenLRM reads from a PIL image: ``np.array(image)`` for RGB / RGBA. Other modes,
    which OpenLRM cannot use (``L`` and ``P`` are 2-D, ``LA`` has two channels, ``CMYK``
    would pass as RGBA), are converted by PIL to RGBA when they carry transparency, else RGB."""
    if pil.mode in ("RGB", "RGBA"):
        return np.array(pil)
    alpha = pil.mode in ("LA", "PA", "La", "RGBa") or "transparency" in pil.info
    return np.array(pil.convert("RGBA" if alpha else "RGB"))


def load_image(image) -> torch.Tensor:
    """Any of a path, a PIL image, an ``[H, W, 3|4]`` array or tensor -> ``[1, C, H, W]``
    float32 in ``[0, 1]`` (C = 3 or 4), as OpenLRM builds it from a file: ``uint8 / 255.0``
    (``uint16 / 65535.0``; floats are taken as ``[0, 1]`` and clamped)."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        if not Path(image).is_file():
            raise FileNotFoundError(f"preprocess_image: no such image file: {str(image)!r}")
        with Image.open(image) as pil:
            image = _pil_array(pil)
    elif type(image).__module__.startswith("PIL."):
        image = _pil_array(image)
    if isinstance(image, np.ndarray):
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
            raise TypeError(f"preprocess_image: image must be a numeric array, got an array of {image.dtype}")
        if image.dtype == np.uint16:  # 16-bit images: full range is 65535
            image = image.astype(np.float32) / np.float32(65535.0)
        image = torch.from_numpy(np.array(image))  # a copy: PIL arrays are read-only
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"preprocess_image: image must be a path, PIL image, array or tensor, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"preprocess_image: image must be [H, W, 3] (RGB) or [H, W, 4] (RGBA), got {tuple(image.shape)}")
    image = image.cpu().permute(2, 0, 1).unsqueeze(0)
    if image.dtype == torch.uint8:
        return image / 255.0  # OpenLRM's step: uint8 tensor / 255.0 -> float32
    if image.dtype == torch.bool:
        return image.float()
    if not image.is_floating_point():
        return image.float() / 255.0
    return image.float().clamp(0, 1)


def resize_source_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """OpenLRM's resize of the source image (inference and training alike):
    ``clamp(F.interpolate(image, (size, size), mode="bicubic", align_corners=True), 0, 1)``.
    ``image [N, 3, H, W]`` float -> ``[N, 3, size, size]``."""
    image = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=True)
    return torch.clamp(image, 0, 1)


def _recenter(rgba: torch.Tensor, size: int, border_ratio: float) -> torch.Tensor:
    """``[4, H, W]`` straight RGBA -> ``[4, size, size]`` premultiplied RGBA, the alpha
    bounding box scaled to ``size * (1 - border_ratio)`` and centred."""
    premultiplied = torch.cat([rgba[:3] * rgba[3:], rgba[3:]], dim=0)
    mask = rgba[3] > 0
    rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
    i0, i1, j0, j1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = premultiplied[:, i0:i1, j0:j1]
    scale = size * (1 - border_ratio) / max(i1 - i0, j1 - j0)
    h, w = max(1, round((i1 - i0) * scale)), max(1, round((j1 - j0) * scale))
    canvas = torch.zeros(4, size, size)
    top, left = (size - h) // 2, (size - w) // 2
    canvas[:, top : top + h, left : left + w] = F.interpolate(crop[None], size=(h, w), mode="bilinear",
                                                              align_corners=False, antialias=True)[0]
    return canvas.clamp(0, 1)


def preprocess_image(image, size: int, border_ratio: float = 0.2, *, recenter: bool = False,
                     background: float = 1.0, device=None) -> torch.Tensor:
    """An input image as LRM takes it: ``[3, size, size]`` float32 in ``[0, 1]``.

    With the defaults this is OpenLRM's ``infer_single`` exactly (see the module doc):
    RGBA composited on white, bicubic resize with ``align_corners=True``, clamp.

    Args:
        image: a path, a PIL image, an ``[H, W, 3|4]`` uint8 / float array or tensor (float
            values in ``[0, 1]``).
        size: output side (the model's ``config.image_size``).
        border_ratio: with ``recenter``, the empty margin around the object as a fraction
            of ``size``.
        recenter: crop an RGBA image to the bounding box of its alpha and centre it with a
            ``border_ratio`` margin (OpenLRM's ``Preprocessor`` / TripoSR). RGB images have
            nothing to recentre by and take the default path.
        background: grey level the transparent parts become (OpenLRM: 1.0, white).
        device: where the compositing and the resize run and the result lives (default
            the CPU). OpenLRM runs them on its model's device, and a GPU's bicubic kernel
            may round differently from the CPU's in the last bit: pass the model's device
            to reproduce OpenLRM's tensor exactly there too.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"preprocess_image: size must be a positive int, got {size!r}")
    if isinstance(border_ratio, bool) or not isinstance(border_ratio, (int, float)) or not 0 <= border_ratio < 1:
        raise ValueError(f"preprocess_image: border_ratio must be in [0, 1), got {border_ratio!r}")
    if isinstance(background, bool) or not isinstance(background, (int, float)) or not 0 <= background <= 1:
        raise ValueError(f"preprocess_image: background must be a grey level in [0, 1], got {background!r}")
    image = load_image(image)
    if image.shape[1] == 4 and recenter and bool((image[0, 3] > 0).any()):
        canvas = _recenter(image[0], size, border_ratio)
        return (canvas[:3] + (1 - canvas[3:]) * background).clamp(0, 1).contiguous().to(device)
    if device is not None:
        image = image.to(device)
    if image.shape[1] == 4:  # RGBA: OpenLRM's composite on white
        image = image[:, :3, ...] * image[:, 3:, ...] + (1 - image[:, 3:, ...]) * background
    return resize_source_image(image, size)[0].contiguous()


__all__ = ["load_image", "preprocess_image", "resize_source_image"]
