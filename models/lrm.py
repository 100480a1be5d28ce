"""LRM (Hong et al., ICLR 2024): one image -> a triplane NeRF in a single forward pass, with
OpenLRM's (3DTopia/OpenLRM v1.1) parameter names so its checkpoints load as they are.

Pipeline (``ModelLRM`` in ``openlrm/models/modeling_lrm.py``)::

    image [N, 3, S, S] in [0, 1] --encoder (DINOv2 / DINO ViT)--> tokens [N, Lc, Dc]
    camera feature [N, 16 | 20] --camera_embedder (MLP)--------> mod [N, Dm]
    pos_embed [1, 3 h w, D] --transformer (cross-attn to tokens, self-attn, MLP;
                              each norm adaLN-modulated by mod)--> [N, 3 h w, D]
    --upsampler (ConvTranspose2d k2 s2)--> planes [N, 3, C, 2h, 2w]
    --synthesizer.decoder (concat of LRM_AXES planes -> 64 ReLU x3 -> 4) + volume rendering

Rendering is :func:`fastfields.render_triplane` (OpenLRM's defaults: ray-box sampling in
``[-1, 1]^3``, EG3D's MipRayMarcher2, ``softplus(sigma - 1)``, ``n/2`` coarse + ``n/2``
importance samples). ``backend="auto"`` runs the fused kernels (triplane lookup, decoder
MLP and compositing in one pass; fused adaLN and attention in the transformer);
``backend="torch"`` is the unfused eager reference, rendered in ray chunks.

Cameras follow OpenLRM: camera-to-world matrices in the OpenGL / Blender convention
(``orbit_cameras(..., convention="opengl")``; OpenLRM's ray sampler converts them with
``diag(1, -1, -1, 1)``) and intrinsics ``(fx, fy, cx, cy)`` as fractions of the image size.
The canonical source camera sits at ``(0, -2, 0)`` looking at the origin with z up.

    >>> import torch
    >>> from fastfields.models.lrm import LRM, preprocess_image
    >>> model = LRM.from_preset("tiny").eval()           # or LRM.from_pretrained("openlrm-mix-base-1.1/")
    >>> image = preprocess_image(torch.rand(64, 64, 4), model.config.image_size)   # or a path
    >>> with torch.no_grad():
    ...     planes = model.forward_planes(image[None])
    ...     rgb, depth, opacity = model.render(planes, *model.turntable(2), 16, 16)
    >>> planes.shape, rgb.shape
    (torch.Size([1, 3, 8, 16, 16]), torch.Size([1, 2, 16, 16, 3]))
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastfields import _backend
from fastfields.nn import TransformerDecoder, TriplaneDecoder
from fastfields.ops.render_triplane import IMPLEMENTED as RENDER_BACKENDS
from fastfields.ops.render_triplane import render_triplane
from fastfields.ops.triplane_sample import LRM_AXES, triplane_sample
from fastfields.rendering import orbit_cameras, rays_from_cameras

from .vit import DINOv2, HFViT, set_attention_backend

PathLike = Union[str, Path]

#: Side of the box the planes span (OpenLRM's ``box_warp``; the box is ``[-1, 1]^3``).
BOX_WARP = 2.0
#: Density activation of OpenLRM's synthesizer: ``softplus(raw + DENSITY_BIAS)``.
DENSITY_BIAS = -1.0
#: Camera feature widths: OpenLRM's ``[R | t]`` (12) + intrinsics; the paper's 4x4 (16) + intrinsics.
CAMERA_FEATURES = {"openlrm": 16, "paper": 20}
ENCODERS = ("dinov2", "dino")

#: DINOv2 hub models: name -> (width, depth, heads, register tokens); patch 14, 518 px grid.
DINOV2_ARCHS = {
    "dinov2_vits14": (384, 12, 6, 0),
    "dinov2_vitb14": (768, 12, 12, 0),
    "dinov2_vitl14": (1024, 24, 16, 0),
    "dinov2_vits14_reg": (384, 12, 6, 4),
    "dinov2_vitb14_reg": (768, 12, 12, 4),
    "dinov2_vitl14_reg": (1024, 24, 16, 4),
}
#: DINO v1 (HF ``ViTModel``) models: name -> (width, depth, heads, patch size); 224 px grid.
DINO_ARCHS = {
    "facebook/dino-vits16": (384, 12, 6, 16),
    "facebook/dino-vitb16": (768, 12, 12, 16),
    "facebook/dino-vits8": (384, 12, 6, 8),
    "facebook/dino-vitb8": (768, 12, 12, 8),
}
#: OpenLRM's inference sizes (configs/infer-{s,b,l}.yaml) by transformer width:
#: (source image size, render size).
OPENLRM_INFER_SIZES = {512: (224, 192), 768: (336, 288), 1024: (448, 384)}
#: The full configuration :func:`save_pretrained` writes beside OpenLRM's ``config.json``.
FULL_CONFIG = "fastfields_config.json"


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: every missing, unexpected and mis-shaped key."""


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass
class LRMConfig:
    """Sizes of an LRM. Field names follow OpenLRM's ``ModelLRM`` kwargs where they exist.

    Attributes:
        encoder_type: ``"dinov2"`` (DINOv2, OpenLRM v1.1) or ``"dino"`` (DINO v1 with HF
            ``ViTModel`` names: the paper, OpenLRM v1.0).
        encoder_model_name: the hub name the sizes come from (informational, and what
            :meth:`to_openlrm_kwargs` writes back).
        encoder_feat_dim, encoder_layers, encoder_heads, encoder_patch_size: the ViT.
        encoder_img_size: the resolution its position embeddings are stored for (518 for
            DINOv2, 224 for DINO); other input sizes interpolate them.
        encoder_registers: DINOv2 register tokens (4 for the ``_reg`` models). Register
            models resize position embeddings with antialiasing and offset 0.0, the plain
            ones without antialiasing and offset 0.1, as DINOv2's hub builders do.
        image_size: side of the square input image (OpenLRM's ``source_size``).
        camera_feature: ``"openlrm"`` (16 values: ``[R | t]`` flattened + fx, fy, cx, cy) or
            ``"paper"`` (20: the 4x4 camera-to-world flattened + fx, fy, cx, cy).
        camera_embed_dim: width of the camera embedding that modulates every norm.
        transformer_dim, transformer_layers, transformer_heads: the image-to-triplane decoder.
        triplane_low_res: side of the token grid of each plane (tokens: ``3 * low_res^2``).
        triplane_high_res: side of the planes after the deconvolution (``2 * low_res``).
        triplane_dim: plane channels C.
        rendering_samples_per_ray: samples per ray, half stratified, half importance.
        render_size: default rendered image side.
        source_distance: distance of the canonical source camera from the origin.
        focal: focal length of the canonical cameras as a fraction of the image size.
        mesh_resolution, mesh_threshold: marching-cubes grid and density iso-level
            (OpenLRM: 384 and 3.0 on ``softplus(sigma - 1)``).
    """

    encoder_type: str = "dinov2"
    encoder_model_name: str = "dinov2_vits14_reg"
    encoder_feat_dim: int = 384
    encoder_layers: int = 12
    encoder_heads: int = 6
    encoder_patch_size: int = 14
    encoder_img_size: int = 518
    encoder_registers: int = 4
    image_size: int = 224
    camera_feature: str = "openlrm"
    camera_embed_dim: int = 1024
    transformer_dim: int = 512
    transformer_layers: int = 12
    transformer_heads: int = 8
    triplane_low_res: int = 32
    triplane_high_res: int = 64
    triplane_dim: int = 32
    rendering_samples_per_ray: int = 96
    render_size: int = 192
    source_distance: float = 2.0
    focal: float = 0.75
    mesh_resolution: int = 384
    mesh_threshold: float = 3.0

    def __post_init__(self):
        if self.encoder_type not in ENCODERS:
            raise ValueError(f"LRMConfig: encoder_type must be one of {ENCODERS}, got {self.encoder_type!r}")
        if self.camera_feature not in CAMERA_FEATURES:
            raise ValueError(f"LRMConfig: camera_feature must be one of {tuple(CAMERA_FEATURES)}, got {self.camera_feature!r}")
        for name in ("encoder_feat_dim", "encoder_layers", "encoder_heads", "encoder_patch_size", "encoder_img_size",
                     "image_size", "camera_embed_dim", "transformer_dim", "transformer_layers", "transformer_heads",
                     "triplane_low_res", "triplane_high_res", "triplane_dim", "rendering_samples_per_ray",
                     "render_size", "mesh_resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LRMConfig: {name} must be a positive int, got {value!r}")
        if self.encoder_registers < 0 or (self.encoder_type == "dino" and self.encoder_registers):
            raise ValueError(f"LRMConfig: encoder_registers must be >= 0 (0 for DINO), got {self.encoder_registers!r}")
        if self.transformer_dim % self.transformer_heads or self.encoder_feat_dim % self.encoder_heads:
            raise ValueError("LRMConfig: transformer_dim / encoder_feat_dim must be divisible by their head counts")
        if self.triplane_high_res != 2 * self.triplane_low_res:
            raise ValueError(
                f"LRMConfig: the upsampler doubles the resolution: triplane_high_res must be 2 * triplane_low_res "
                f"= {2 * self.triplane_low_res}, got {self.triplane_high_res}"
            )
        for name in ("encoder_img_size", "image_size"):
            if getattr(self, name) % self.encoder_patch_size:
                raise ValueError(f"LRMConfig: {name} must be a multiple of encoder_patch_size {self.encoder_patch_size}")
        if self.rendering_samples_per_ray < 4:
            raise ValueError(f"LRMConfig: rendering_samples_per_ray must be >= 4, got {self.rendering_samples_per_ray}")

    @property
    def camera_dim(self) -> int:
        return CAMERA_FEATURES[self.camera_feature]

    @property
    def n_samples(self) -> int:
        """Stratified (coarse) samples per ray: OpenLRM's ``depth_resolution``."""
        return self.rendering_samples_per_ray // 2

    @property
    def n_importance(self) -> int:
        """Importance samples per ray: OpenLRM's ``depth_resolution_importance``."""
        return self.rendering_samples_per_ray // 2

    def to_openlrm_kwargs(self) -> Dict[str, object]:
        """The ``ModelLRM`` kwargs (OpenLRM's HF ``config.json``) of this configuration."""
        return {
            "camera_embed_dim": self.camera_embed_dim,
            "rendering_samples_per_ray": self.rendering_samples_per_ray,
            "transformer_dim": self.transformer_dim,
            "transformer_layers": self.transformer_layers,
            "transformer_heads": self.transformer_heads,
            "triplane_low_res": self.triplane_low_res,
            "triplane_high_res": self.triplane_high_res,
            "triplane_dim": self.triplane_dim,
            "encoder_type": self.encoder_type,
            "encoder_model_name": self.encoder_model_name,
            "encoder_feat_dim": self.encoder_feat_dim,
            "encoder_freeze": False,
        }

    @classmethod
    def from_openlrm_kwargs(cls, kwargs: Mapping[str, object], **overrides) -> "LRMConfig":
        """The configuration of an OpenLRM ``ModelLRM`` (v1.1 ``config.json``) or v1.0
        ``LRMGenerator`` (``checkpoint['kwargs']['model']``: no ``encoder_type``, always DINO).

        The input and render sizes are not part of those kwargs: they default to OpenLRM's
        inference configs for the transformer width (``overrides`` set them)."""
        known = {"camera_embed_dim", "rendering_samples_per_ray", "transformer_dim", "transformer_layers",
                 "transformer_heads", "triplane_low_res", "triplane_high_res", "triplane_dim", "encoder_type",
                 "encoder_model_name", "encoder_feat_dim", "encoder_freeze"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise CheckpointError(f"LRMConfig: unknown OpenLRM model kwargs {unknown}")
        encoder_type = str(kwargs.get("encoder_type", "dino")).lower()
        name = str(kwargs.get("encoder_model_name", "facebook/dino-vitb16"))
        if encoder_type == "dinov2":
            if name not in DINOV2_ARCHS:
                raise CheckpointError(f"LRMConfig: unknown DINOv2 encoder {name!r}; known: {sorted(DINOV2_ARCHS)}")
            width, depth, heads, registers = DINOV2_ARCHS[name]
            encoder = dict(encoder_patch_size=14, encoder_img_size=518, encoder_registers=registers)
        elif encoder_type == "dino":
            if name not in DINO_ARCHS:
                raise CheckpointError(f"LRMConfig: unknown DINO encoder {name!r}; known: {sorted(DINO_ARCHS)}")
            width, depth, heads, patch = DINO_ARCHS[name]
            encoder = dict(encoder_patch_size=patch, encoder_img_size=224, encoder_registers=0)
        else:
            raise CheckpointError(f"LRMConfig: encoder_type must be 'dinov2' or 'dino', got {encoder_type!r}")
        feat = int(kwargs.get("encoder_feat_dim", width))
        if feat != width:
            raise CheckpointError(f"LRMConfig: encoder_feat_dim {feat} does not match {name!r} (width {width})")
        D = int(kwargs["transformer_dim"])
        image_size, render_size = OPENLRM_INFER_SIZES.get(D, (448, 384))
        values = dict(
            encoder_type=encoder_type, encoder_model_name=name, encoder_feat_dim=width, encoder_layers=depth,
            encoder_heads=heads, image_size=image_size, render_size=render_size, camera_feature="openlrm",
            **encoder,
        )
        values.update({k: int(kwargs[k]) for k in ("camera_embed_dim", "rendering_samples_per_ray", "transformer_dim",
                                                   "transformer_layers", "transformer_heads", "triplane_low_res",
                                                   "triplane_high_res", "triplane_dim")})
        values.update(overrides)
        return cls(**values)


#: Named presets. The ``openlrm-*`` ones are OpenLRM v1.1's released models (HF
#: ``zxhezexin/openlrm-{obj,mix}-{small,base,large}-1.1``) and their inference sizes.
PRESETS: Dict[str, LRMConfig] = {
    "openlrm-small": LRMConfig(),
    "openlrm-base": LRMConfig(
        encoder_model_name="dinov2_vitb14_reg", encoder_feat_dim=768, encoder_heads=12, image_size=336,
        transformer_dim=768, transformer_heads=12, triplane_dim=48, render_size=288,
    ),
    "openlrm-large": LRMConfig(
        encoder_model_name="dinov2_vitb14_reg", encoder_feat_dim=768, encoder_heads=12, image_size=448,
        transformer_dim=1024, transformer_layers=16, transformer_heads=16, triplane_dim=80,
        rendering_samples_per_ray=128, render_size=384,
    ),
    # The paper: DINO ViT-B/16 on 512 px images (1025 tokens), its 20-value camera feature,
    # 16 layers of width 1024, 64 x 64 x 80 planes, 128 samples per ray.
    "paper": LRMConfig(
        encoder_type="dino", encoder_model_name="facebook/dino-vitb16", encoder_feat_dim=768, encoder_heads=12,
        encoder_patch_size=16, encoder_img_size=224, encoder_registers=0, image_size=512, camera_feature="paper",
        transformer_dim=1024, transformer_layers=16, transformer_heads=16, triplane_dim=80,
        rendering_samples_per_ray=128, render_size=384,
    ),
    # For tests: every part present, a few thousand parameters per part.
    "tiny": LRMConfig(
        encoder_model_name="tiny", encoder_feat_dim=32, encoder_layers=2, encoder_heads=2, encoder_img_size=56,
        encoder_registers=2, image_size=56, camera_embed_dim=32, transformer_dim=32, transformer_layers=2,
        transformer_heads=2, triplane_low_res=8, triplane_high_res=16, triplane_dim=8,
        rendering_samples_per_ray=16, render_size=32, mesh_resolution=32,
    ),
}


# ---------------------------------------------------------------------------------------
# Cameras


def _check_matrices(op: str, c2w: torch.Tensor, intrinsics: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(c2w, torch.Tensor) or c2w.dim() != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        shape = tuple(c2w.shape) if isinstance(c2w, torch.Tensor) else type(c2w).__name__
        raise ValueError(f"{op}: c2w must be a tensor [N, 4, 4] or [N, 3, 4], got {shape}")
    if not isinstance(intrinsics, torch.Tensor) or intrinsics.dim() != 2 or intrinsics.shape != (c2w.shape[0], 4):
        shape = tuple(intrinsics.shape) if isinstance(intrinsics, torch.Tensor) else type(intrinsics).__name__
        raise ValueError(f"{op}: intrinsics must be a tensor [N, 4] = (fx, fy, cx, cy) with N = {c2w.shape[0]}, got {shape}")
    return c2w.float(), intrinsics.float().to(c2w.device)


def camera_feature(c2w: torch.Tensor, intrinsics: torch.Tensor, kind: str = "openlrm") -> torch.Tensor:
    """The raw camera vector LRM's camera embedder takes.

    Args:
        c2w: camera-to-world ``[N, 4, 4]`` or ``[N, 3, 4]`` (OpenGL convention, as OpenLRM).
        intrinsics: ``[N, 4]`` rows ``(fx, fy, cx, cy)`` as fractions of the image width /
            height (OpenLRM's ``get_normalized_camera_intrinsics``).
        kind: ``"openlrm"``: ``cat(c2w[:3, :4].flatten(), fx, fy, cx, cy)`` -> ``[N, 16]``
            (``build_camera_principle``); ``"paper"``: the full 4x4 flattened -> ``[N, 20]``.
    """
    op = "camera_feature"
    if kind not in CAMERA_FEATURES:
        raise ValueError(f"{op}: kind must be one of {tuple(CAMERA_FEATURES)}, got {kind!r}")
    c2w, intrinsics = _check_matrices(op, c2w, intrinsics)
    N = c2w.shape[0]
    if kind == "openlrm":
        pose = c2w[:, :3, :4].reshape(N, 12)
    else:
        if c2w.shape[1] == 3:
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=c2w.device).expand(N, 1, 4)
            c2w = torch.cat([c2w, bottom], dim=1)
        pose = c2w.reshape(N, 16)
    return torch.cat([pose, intrinsics], dim=-1)


def canonical_camera(distance: float = 2.0, focal: float = 0.75) -> Tuple[torch.Tensor, torch.Tensor]:
    """OpenLRM's canonical source camera (``_default_source_camera``): at ``(0, -distance, 0)``
    looking at the origin, z up, OpenGL convention; ``c2w [1, 4, 4]`` and normalised
    intrinsics ``[1, 4] = (focal, focal, 0.5, 0.5)``."""
    c2w = orbit_cameras(1, distance, convention="opengl", up="z")
    return c2w, torch.tensor([[focal, focal, 0.5, 0.5]])


def turntable_cameras(n_views: int, distance: float = 2.0, height: float = 0.8,
                      focal: float = 0.75) -> Tuple[torch.Tensor, torch.Tensor]:
    """OpenLRM's render orbit (``surrounding_views_linspace``): ``n_views`` cameras at
    ``distance`` from the origin, ``height`` above the xy plane, starting in front of the
    object (azimuth of the source camera) and turning counter-clockwise seen from above;
    ``c2w [n, 4, 4]`` (OpenGL) and intrinsics ``[n, 4]``. Unlike OpenLRM's ``linspace`` the
    last view does not repeat the first, so the GIF loops without a stutter."""
    if not 0 <= height < distance:
        raise ValueError(f"turntable_cameras: height must be in [0, distance={distance}), got {height!r}")
    c2w = orbit_cameras(n_views, distance, elevation=math.degrees(math.asin(height / distance)), convention="opengl")
    return c2w, torch.tensor([[focal, focal, 0.5, 0.5]]).expand(n_views, 4).clone()


def normalize_cameras(c2w: torch.Tensor, source: int = 0, distance: Optional[float] = None) -> torch.Tensor:
    """Re-express posed views in the frame where view ``source`` is LRM's canonical camera
    (OpenLRM's ``camera_normalization_objaverse``): one rigid transform of the world maps
    the source camera onto ``canonical_camera(d)``, with ``d`` its distance from the origin;
    ``distance`` then rescales the world so that ``d = distance``. The triplane LRM predicts
    lives in this frame. ``c2w [M, 4, 4]`` (OpenGL) -> ``[M, 4, 4]``."""
    if not isinstance(c2w, torch.Tensor) or c2w.dim() != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"normalize_cameras: c2w must be [M, 4, 4], got {getattr(c2w, 'shape', type(c2w).__name__)}")
    c2w = c2w.double()
    d = float(c2w[source, :3, 3].norm())
    if d == 0:
        raise ValueError("normalize_cameras: the source camera sits at the origin; it has no canonical pose")
    canonical, _ = canonical_camera(d)
    out = canonical.double() @ torch.linalg.inv(c2w[source]) @ c2w
    if distance is not None:
        out[:, :3, 3] *= distance / d
    return out.float()


# ---------------------------------------------------------------------------------------
# Image preprocessing


def _load_rgba(image) -> torch.Tensor:
    """Any of path / PIL image / array / tensor ``[H, W, 3|4]`` -> float ``[H, W, C]`` in [0, 1]."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as pil:
            mode = "RGBA" if pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info else "RGB"
            image = np.asarray(pil.convert(mode))
    elif type(image).__module__.startswith("PIL."):
        mode = "RGBA" if image.mode in ("RGBA", "LA", "PA") else "RGB"
        image = np.asarray(image.convert(mode))
    if isinstance(image, np.ndarray):
        is_int = np.issubdtype(image.dtype, np.integer)
        image = torch.from_numpy(np.array(image))  # a copy: PIL arrays are read-only
        image = image.float() / 255.0 if is_int else image.float()
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"preprocess_image: image must be a path, PIL image, array or tensor, got {type(image).__name__}")
    if image.dim() != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"preprocess_image: image must be [H, W, 3] (RGB) or [H, W, 4] (RGBA), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    return image.float().clamp(0, 1)


def preprocess_image(image, size: int, border_ratio: float = 0.2, *, recenter: bool = True,
                     background: float = 1.0) -> torch.Tensor:
    """An input image as LRM takes it: ``[3, size, size]`` float32 in ``[0, 1]``.

    RGBA (OpenLRM's ``Preprocessor.step_recenter``, TripoSR's ``resize_foreground``): the
    bounding box of ``alpha > 0`` is cropped, scaled so its longer side is ``size * (1 -
    border_ratio)`` and centred on a transparent square, which is then composited on
    ``background`` (white). Resampling is done on premultiplied colour so the object's
    edges do not pick up the colour of its invisible pixels.

    RGB images (no alpha: OpenLRM's samples are already centred on white) are resized as
    they are, after a centre crop to a square.

    Args:
        image: a path, a PIL image, an ``[H, W, 3|4]`` uint8 / float array or tensor.
        size: output side (the model's ``config.image_size``).
        border_ratio: empty margin around the object, as a fraction of ``size``.
        recenter: crop and centre RGBA inputs by their alpha (else just resize).
        background: grey level the transparent parts become.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"preprocess_image: size must be a positive int, got {size!r}")
    if not 0 <= border_ratio < 1:
        raise ValueError(f"preprocess_image: border_ratio must be in [0, 1), got {border_ratio!r}")
    rgba = _load_rgba(image)
    H, W, channels = rgba.shape

    def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:  # [C, H, W]
        return F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]

    if channels == 3:
        side = min(H, W)
        top, left = (H - side) // 2, (W - side) // 2
        rgb = rgba[top : top + side, left : left + side].permute(2, 0, 1)
        return resize(rgb, size, size).clamp(0, 1).contiguous()

    premultiplied = torch.cat([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], dim=-1).permute(2, 0, 1)
    mask = rgba[..., 3] > 0
    if recenter and bool(mask.any()):
        rows, cols = torch.nonzero(mask.any(dim=1)).flatten(), torch.nonzero(mask.any(dim=0)).flatten()
        i0, i1, j0, j1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = premultiplied[:, i0:i1, j0:j1]
        target = size * (1 - border_ratio)
        scale = target / max(i1 - i0, j1 - j0)
        h, w = max(1, round((i1 - i0) * scale)), max(1, round((j1 - j0) * scale))
        canvas = torch.zeros(4, size, size)
        top, left = (size - h) // 2, (size - w) // 2
        canvas[:, top : top + h, left : left + w] = resize(crop, h, w)
        premultiplied = canvas
    else:
        premultiplied = resize(premultiplied, size, size)
    premultiplied = premultiplied.clamp(0, 1)
    rgb = premultiplied[:3] + (1 - premultiplied[3:]) * background
    return rgb.clamp(0, 1).contiguous()


# ---------------------------------------------------------------------------------------
# The model


class ImageEncoder(nn.Module):
    """Holds the ViT as ``model`` (OpenLRM's ``Dinov2Wrapper`` / ``DinoWrapper``: the
    checkpoints name it ``encoder.model.*``)."""

    def __init__(self, config: LRMConfig, backend: str):
        super().__init__()
        if config.encoder_type == "dinov2":
            registers = config.encoder_registers
            self.model = DINOv2(
                config.encoder_feat_dim, config.encoder_layers, config.encoder_heads,
                patch_size=config.encoder_patch_size, img_size=config.encoder_img_size, num_register_tokens=registers,
                interpolate_antialias=registers > 0, interpolate_offset=0.0 if registers > 0 else 0.1, backend=backend,
            )
        else:
            self.model = HFViT(
                config.encoder_feat_dim, config.encoder_layers, config.encoder_heads,
                patch_size=config.encoder_patch_size, img_size=config.encoder_img_size, backend=backend,
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


class CameraEmbedder(nn.Module):
    """``Linear(raw, D), SiLU, Linear(D, D)`` (OpenLRM's ``CameraEmbedder``, from DiT)."""

    def __init__(self, raw_dim: int, embed_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(raw_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Synthesizer(nn.Module):
    """Holds the triplane decoder as ``decoder`` (OpenLRM's ``TriplaneSynthesizer``: its only
    parameters are ``synthesizer.decoder.net.{0,2,4,6}``)."""

    def __init__(self, triplane_dim: int):
        super().__init__()
        self.decoder = TriplaneDecoder(3 * triplane_dim, 64, n_layers=4, out_features=4, activation="relu",
                                       color_activation="sigmoid_clamped")


class LRM(nn.Module):
    """Large Reconstruction Model: image -> triplane -> rendered views and a mesh.

    Submodules (and state-dict prefixes) are OpenLRM v1.1's: ``encoder.model``,
    ``camera_embedder.mlp``, ``pos_embed``, ``transformer.layers.{i}`` / ``transformer.norm``,
    ``upsampler``, ``synthesizer.decoder.net``.

    Args:
        config: an :class:`LRMConfig` (see :data:`PRESETS`).
        backend: ``"auto"`` (fused kernels where available: adaLN, attention, the renderer
            and triplane lookups) or ``"torch"`` (the unfused eager reference everywhere);
            any backend name the ops accept. :meth:`set_backend` switches it later.
        render_chunk: rays per chunk on the unfused render path (the fused path renders
            every ray at once in O(rays) memory).
    """

    def __init__(self, config: Optional[LRMConfig] = None, *, backend: str = "auto", render_chunk: int = 8192):
        super().__init__()
        self.config = config = config or LRMConfig()
        D, L = config.transformer_dim, 3 * config.triplane_low_res**2
        self.encoder = ImageEncoder(config, backend)
        self.camera_embedder = CameraEmbedder(config.camera_dim, config.camera_embed_dim)
        # OpenLRM's init: N(0, 1) / sqrt(D).
        self.pos_embed = nn.Parameter(torch.randn(1, L, D) / math.sqrt(D))
        self.transformer = TransformerDecoder(
            "cond_mod", config.transformer_layers, config.transformer_heads, D, config.encoder_feat_dim,
            config.camera_embed_dim, eps=1e-6, norm_backend=backend, attn_backend=backend,
        )
        self.upsampler = nn.ConvTranspose2d(D, config.triplane_dim, kernel_size=2, stride=2, padding=0)
        self.synthesizer = Synthesizer(config.triplane_dim)
        if isinstance(render_chunk, bool) or not isinstance(render_chunk, int) or render_chunk < 1:
            raise ValueError(f"LRM: render_chunk must be a positive int, got {render_chunk!r}")
        self.render_chunk = render_chunk
        self.backend = backend

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "LRM":
        """A random-initialised model of a preset: ``paper``, ``openlrm-small``,
        ``openlrm-base``, ``openlrm-large`` or ``tiny``. ``kwargs`` go to :class:`LRM`."""
        return cls(preset_config(name), **kwargs)

    @classmethod
    def from_pretrained(cls, path: PathLike, *, preset: Optional[str] = None, backend: str = "auto",
                        device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                        **config_overrides) -> "LRM":
        """Load an OpenLRM checkpoint, strictly.

        ``path`` is one of:

        - an OpenLRM v1.1 folder (HF ``PyTorchModelHubMixin``): ``model.safetensors`` (or
          ``pytorch_model.bin``) with the ``ModelLRM`` kwargs in ``config.json``; or the
          weights file itself, with its ``config.json`` beside it;
        - an OpenLRM v1.0 ``model.pth``: ``{"weights": state_dict, "kwargs": {"model": ...}}``
          (its ``transformer.pos_embed`` / ``transformer.deconv`` become ``pos_embed`` /
          ``upsampler``);
        - a bare state dict (``.safetensors``, ``.bin``, ``.pt``, ``.pth``) with ``preset``
          naming its configuration.

        Every missing, unexpected or mis-shaped key is reported in one
        :class:`CheckpointError`. ``config_overrides`` set :class:`LRMConfig` fields the
        checkpoint does not fix (``image_size``, ``render_size``, ...). Nothing is downloaded.
        """
        state, config = load_checkpoint(path, preset=preset, **config_overrides)
        with torch.device("meta"):
            model = cls(config, backend=backend)
        problems = state_dict_problems(model.state_dict(), state)
        if problems:
            raise CheckpointError(f"LRM.from_pretrained({str(path)!r}): the checkpoint does not fit "
                                  f"{_config_name(config)}:\n  " + "\n  ".join(problems))
        state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model

    def set_backend(self, backend: str) -> "LRM":
        """Run every op (encoder and transformer attention, adaLN, rendering) on ``backend``."""
        self.backend = backend
        set_attention_backend(self.encoder, backend)
        for module in self.transformer.modules():
            if hasattr(module, "backend"):
                module.backend = backend
        return self

    # -- image -> triplane --------------------------------------------------------------

    def source_camera(self, batch_size: int = 1, device=None) -> torch.Tensor:
        """The canonical source camera feature, ``[batch_size, camera_dim]``."""
        c2w, intrinsics = canonical_camera(self.config.source_distance, self.config.focal)
        feature = camera_feature(c2w, intrinsics, self.config.camera_feature)
        return feature.to(device or self.pos_embed.device).expand(batch_size, -1)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[N, 3, S, S]`` in ``[0, 1]`` -> image tokens ``[N, Lc, encoder_feat_dim]``."""
        return self.encoder(image.to(self.pos_embed.dtype))

    def embed_camera(self, camera: Optional[torch.Tensor], batch_size: int) -> torch.Tensor:
        """A raw camera feature ``[N, camera_dim]`` (None: the canonical one) -> ``[N, camera_embed_dim]``."""
        if camera is None:
            camera = self.source_camera(batch_size)
        if not isinstance(camera, torch.Tensor) or camera.shape != (batch_size, self.config.camera_dim):
            shape = tuple(camera.shape) if isinstance(camera, torch.Tensor) else type(camera).__name__
            raise ValueError(
                f"LRM: source_camera must be [N, {self.config.camera_dim}] ({self.config.camera_feature!r} camera "
                f"feature, see camera_feature()) with N = {batch_size}, got {shape}"
            )
        return self.camera_embedder(camera.to(self.pos_embed))

    def forward_transformer(self, tokens: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """Learned triplane tokens attend to the image tokens: ``[N, 3 h w, D]``."""
        x = self.pos_embed.expand(tokens.shape[0], -1, -1)
        return self.transformer(x, tokens, mod)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[N, 3 h w, D]`` -> planes ``[N, 3, C, 2h, 2w]`` (each plane deconvolved alone)."""
        N, _, D = x.shape
        h = self.config.triplane_low_res
        x = x.view(N, 3, h, h, D).permute(0, 1, 4, 2, 3).reshape(N * 3, D, h, h)
        x = self.upsampler(x)
        return x.view(N, 3, *x.shape[1:])

    def forward_planes(self, image: torch.Tensor, source_camera: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``image [N, 3, S, S]`` in ``[0, 1]`` (S: ``config.image_size``; see
        :func:`preprocess_image`), ``source_camera [N, camera_dim]`` (None: canonical) ->
        ``planes [N, 3, C, H, W]``."""
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"LRM.forward_planes: image must be [N, 3, H, W] in [0, 1], got {shape}")
        tokens = self.encode_image(image)
        mod = self.embed_camera(source_camera, image.shape[0])
        return self.upsample(self.forward_transformer(tokens, mod))

    forward = forward_planes

    # -- triplane -> images -------------------------------------------------------------

    def render_fused(self, backend: Optional[str] = None, device=None) -> bool:
        """Whether :meth:`render` runs the fused renderer with ``backend`` on ``device``."""
        device = torch.device(device) if device is not None else self.pos_embed.device
        return _backend.resolve("render_triplane", backend or self.backend, device, RENDER_BACKENDS) != "torch"

    def render_rays(self, planes: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, *,
                    background: Union[float, torch.Tensor] = 1.0, n_samples: Optional[int] = None,
                    n_importance: Optional[int] = None, perturb: bool = False,
                    generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Volume-render rays ``[N, R, 3]`` through ``planes [N, 3, C, H, W]`` as OpenLRM does:
        ``rgb [N, R, 3]``, ``depth [N, R]``, ``opacity [N, R]``."""
        backend = backend or self.backend
        kwargs = dict(
            n_samples=self.config.n_samples if n_samples is None else n_samples,
            n_importance=self.config.n_importance if n_importance is None else n_importance,
            box_warp=BOX_WARP, perturb=perturb, generator=generator, axes=LRM_AXES, reduce="concat",
            mode="eg3d", density_activation="softplus", density_bias=DENSITY_BIAS, mask_outside=True,
            background=background, backend=backend,
        )
        decoder = self.synthesizer.decoder
        R = rays_o.shape[1]
        if self.render_fused(backend, planes.device) or R <= self.render_chunk:
            rgb, depth, opacity, _ = render_triplane(planes, rays_o, rays_d, decoder, **kwargs)
            return rgb, depth, opacity
        if isinstance(background, torch.Tensor) and background.dim() >= 2 and background.shape[-2] == R:
            raise ValueError("LRM.render_rays: per-ray backgrounds are not supported on the chunked unfused path")
        outputs = [
            render_triplane(planes, rays_o[:, i : i + self.render_chunk], rays_d[:, i : i + self.render_chunk],
                            decoder, **kwargs)[:3]
            for i in range(0, R, self.render_chunk)
        ]
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outputs))

    def render(self, planes: torch.Tensor, c2w: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int,
               *, convention: str = "opengl", **kwargs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Render M views of each of N triplanes.

        Args:
            planes: ``[N, 3, C, H, W]``.
            c2w: ``[N, M, 4, 4]`` or ``[M, 4, 4]`` (the same views for every triplane),
                camera-to-world in ``convention`` (OpenLRM's poses: ``"opengl"``).
            intrinsics: ``[N, M, 4]`` or ``[M, 4]``: ``(fx, fy, cx, cy)`` as fractions of the
                image width / height.
            height, width: image size in pixels.
            kwargs: ``background`` (default 1.0, white), ``n_samples``, ``n_importance``,
                ``perturb``, ``generator``, ``backend`` as in :meth:`render_rays`.

        Returns:
            ``rgb [N, M, H, W, 3]``, ``depth [N, M, H, W]``, ``opacity [N, M, H, W]``.
        """
        N = planes.shape[0]
        if c2w.dim() == 3:
            c2w = c2w.expand(N, *c2w.shape)
        if intrinsics.dim() == 2:
            intrinsics = intrinsics.expand(N, *intrinsics.shape)
        if c2w.dim() != 4 or c2w.shape[0] != N or intrinsics.shape[:2] != c2w.shape[:2]:
            raise ValueError(
                f"LRM.render: c2w must be [N, M, 4, 4] or [M, 4, 4] and intrinsics [N, M, 4] or [M, 4] with "
                f"N = {N} (the planes'), got {tuple(c2w.shape)} and {tuple(intrinsics.shape)}"
            )
        M = c2w.shape[1]
        rays_o, rays_d = rays_from_cameras(
            c2w.reshape(N * M, *c2w.shape[2:]).to(planes.device).float(),
            intrinsics.reshape(N * M, -1).to(planes.device).float(), height, width, convention=convention,
            normalized_intrinsics=True,
        )
        # All views of one triplane are one batch entry: the planes are read once, not M times.
        rays_o, rays_d = rays_o.reshape(N, M * height * width, 3), rays_d.reshape(N, M * height * width, 3)
        kwargs.setdefault("background", 1.0)
        rgb, depth, opacity = self.render_rays(planes, rays_o, rays_d, **kwargs)
        return (rgb.view(N, M, height, width, -1), depth.view(N, M, height, width),
                opacity.view(N, M, height, width))

    def turntable(self, n_views: int, distance: Optional[float] = None,
                  height: float = 0.8) -> Tuple[torch.Tensor, torch.Tensor]:
        """OpenLRM's render orbit for this model: ``c2w [n, 4, 4]``, ``intrinsics [n, 4]``."""
        return turntable_cameras(n_views, self.config.source_distance if distance is None else distance, height,
                                 self.config.focal)

    # -- triplane -> points, mesh ---------------------------------------------------------

    def query_points(self, planes: torch.Tensor, xyz: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Density and colour at points ``xyz [N, P, 3]`` (world units, box ``[-1, 1]^3``):
        ``sigma [N, P]`` (``softplus(raw - 1)``, what OpenLRM's ``forward_points`` returns and
        its mesh threshold applies to) and ``rgb [N, P, 3]``."""
        backend = "torch" if self.backend == "torch" else "auto"
        features = triplane_sample(planes, xyz * (2.0 / BOX_WARP), reduce="concat", axes=LRM_AXES, backend=backend)
        out = self.synthesizer.decoder(features)
        return F.softplus(out[..., 0] + DENSITY_BIAS), out[..., 1:]

    @torch.no_grad()
    def extract_mesh(self, planes: torch.Tensor, resolution: Optional[int] = None, threshold: Optional[float] = None,
                     *, chunk: int = 1 << 18) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Marching cubes on the density over ``[-1, 1]^3`` with vertex colours (OpenLRM's
        ``infer_mesh``): ``vertices [V, 3]`` float32, ``faces [F, 3]`` int64 and ``colors
        [V, 3]`` float32 in ``[0, 1]``. ``planes`` is one triplane ``[1, 3, C, H, W]``.
        Defaults: ``config.mesh_resolution`` and ``config.mesh_threshold``."""
        from fastfields.export import density_grid, marching_cubes

        if planes.dim() != 5 or planes.shape[0] != 1:
            raise ValueError(f"LRM.extract_mesh: planes must be one triplane [1, 3, C, H, W], got {tuple(planes.shape)}")
        resolution = self.config.mesh_resolution if resolution is None else resolution
        threshold = self.config.mesh_threshold if threshold is None else threshold
        grid = density_grid(lambda p: self.query_points(planes, p[None])[0][0], resolution, 1.0, chunk=chunk,
                            device=planes.device)
        vertices, faces = marching_cubes(grid, threshold, 1.0)
        colors = np.zeros((len(vertices), 3), dtype=np.float32)
        for start in range(0, len(vertices), chunk):
            points = torch.from_numpy(vertices[start : start + chunk]).to(planes.device, planes.dtype)
            colors[start : start + chunk] = self.query_points(planes, points[None])[1][0].float().clamp(0, 1).cpu().numpy()
        return vertices, faces, colors

    # -- training -----------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, torch.Tensor], *, n_rays: Optional[int] = None,
                      generator: Optional[torch.Generator] = None, perturb: bool = True) -> Dict[str, torch.Tensor]:
        """One rendering-loss step (OpenLRM's pixel MSE; no perceptual term): reconstruct the
        triplane from the input image, render the posed target views, compare.

        ``batch``:

        - ``image [N, 3, S, S]`` in ``[0, 1]``; optional ``source_camera [N, camera_dim]``
          (default: the canonical camera, OpenLRM's convention for the input view);
        - ``c2w [N, M, 4, 4]`` (OpenGL), ``intrinsics [N, M, 4]`` (normalised) and
          ``target [N, M, H, W, 3]`` in ``[0, 1]`` of M target views;
        - optional ``background`` (default 1.0): what the targets were composited on.

        ``n_rays`` renders that many random pixels per triplane instead of every pixel.
        Returns ``loss`` (differentiable), ``mse`` and ``psnr`` (detached).
        """
        for key in ("image", "c2w", "intrinsics", "target"):
            if key not in batch:
                raise KeyError(f"LRM.training_step: batch lacks {key!r} (needs image, c2w, intrinsics, target)")
        target = batch["target"]
        if target.dim() != 5 or target.shape[-1] != 3:
            raise ValueError(f"LRM.training_step: target must be [N, M, H, W, 3], got {tuple(target.shape)}")
        N, M, H, W, _ = target.shape
        planes = self.forward_planes(batch["image"], batch.get("source_camera"))
        c2w, intrinsics = batch["c2w"].to(planes.device), batch["intrinsics"].to(planes.device)
        if c2w.shape[:2] != (N, M) or intrinsics.shape[:2] != (N, M):
            raise ValueError(f"LRM.training_step: c2w / intrinsics must be [N={N}, M={M}, ...] like target, got "
                             f"{tuple(c2w.shape)} / {tuple(intrinsics.shape)}")
        rays_o, rays_d = rays_from_cameras(c2w.reshape(N * M, 4, 4).float(), intrinsics.reshape(N * M, 4).float(), H, W,
                                           convention="opengl", normalized_intrinsics=True)
        rays_o, rays_d = rays_o.reshape(N, M * H * W, 3), rays_d.reshape(N, M * H * W, 3)
        target = target.reshape(N, M * H * W, 3).to(planes)
        if n_rays is not None:
            index = torch.randint(0, M * H * W, (N, n_rays), generator=generator, device="cpu").to(planes.device)
            pick = lambda t: torch.gather(t, 1, index[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
            rays_o, rays_d, target = pick(rays_o), pick(rays_d), pick(target)
        rgb, _, _ = self.render_rays(planes, rays_o, rays_d, background=float(batch.get("background", 1.0)),
                                     perturb=perturb, generator=generator)
        loss = F.mse_loss(rgb, target)
        mse = loss.detach()
        return {"loss": loss, "mse": mse, "psnr": -10 * torch.log10(mse.clamp_min(1e-10))}


# ---------------------------------------------------------------------------------------
# Presets and checkpoints


def preset_config(name: str) -> LRMConfig:
    """A copy of a preset's :class:`LRMConfig`."""
    if name not in PRESETS:
        raise ValueError(f"LRM: unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return replace(PRESETS[name])


def _config_name(config: LRMConfig) -> str:
    for name, preset in PRESETS.items():
        if preset == config:
            return f"preset {name!r}"
    return f"the configuration {asdict(config)}"


def state_dict_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> List[str]:
    """Every way ``state`` fails to match ``expected`` (names and shapes), one line each."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    for k in mismatched:
        problems.append(f"shape mismatch for {k}: checkpoint {list(state[k].shape)}, model {list(expected[k].shape)}")
    return problems


def _read_weights(path: Path) -> Dict[str, object]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: a checkpoint is data, never code to run.
    return torch.load(str(path), map_location="cpu", weights_only=True)


def convert_v10_state_dict(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """OpenLRM v1.0 (``LRMGenerator``) names -> these: the triplane tokens and the
    deconvolution moved out of ``transformer`` in v1.1."""
    out = {}
    for key, value in state.items():
        if key == "transformer.pos_embed":
            key = "pos_embed"
        elif key.startswith("transformer.deconv."):
            key = "upsampler." + key[len("transformer.deconv."):]
        out[key] = value
    return out


def load_checkpoint(path: PathLike, *, preset: Optional[str] = None,
                    **config_overrides) -> Tuple[Dict[str, torch.Tensor], LRMConfig]:
    """Read an OpenLRM checkpoint (see :meth:`LRM.from_pretrained`): ``(state_dict, config)``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LRM: no such checkpoint: {str(path)!r} (nothing is downloaded; pass a local path)")
    if path.is_dir():
        candidates = [path / n for n in ("model.safetensors", "pytorch_model.bin", "model.pth")]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"LRM: {str(path)!r} has none of {[c.name for c in candidates]}")
        weights_path = found[0]
    else:
        weights_path = path
    raw = _read_weights(weights_path)
    kwargs = None
    if isinstance(raw, dict) and "weights" in raw and "kwargs" in raw:  # OpenLRM v1.0 model.pth
        state = convert_v10_state_dict(raw["weights"])
        kwargs = dict(raw["kwargs"].get("model", {}))
        infer = raw["kwargs"].get("infer", {}) or {}
        for ours, theirs in (("image_size", "source_size"), ("render_size", "render_size")):
            if theirs in infer and ours not in config_overrides:
                config_overrides[ours] = int(infer[theirs])
    else:
        state = raw
        full_json, config_json = weights_path.parent / FULL_CONFIG, weights_path.parent / "config.json"
        if preset is None and full_json.is_file():
            values = {**json.loads(full_json.read_text()), **config_overrides}
            names = {f.name for f in fields(LRMConfig)}
            unknown = sorted(set(values) - names)
            if unknown:
                raise CheckpointError(f"LRM: {str(full_json)!r} has unknown fields {unknown}")
            return _tensor_dict(state, weights_path), LRMConfig(**values)
        if preset is None and config_json.is_file():
            kwargs = json.loads(config_json.read_text())
    state = _tensor_dict(state, weights_path)
    if preset is not None:
        config = replace(preset_config(preset), **config_overrides)
    elif kwargs is not None:
        config = LRMConfig.from_openlrm_kwargs(kwargs, **config_overrides)
    else:
        raise CheckpointError(
            f"LRM: {str(weights_path)!r} comes without its configuration: put OpenLRM's config.json beside it or "
            f"name a preset ({sorted(PRESETS)})"
        )
    return state, config


def _tensor_dict(state, path: Path) -> Dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"LRM: {str(path)!r} does not hold a state dict of tensors")
    return dict(state)


def save_pretrained(model: LRM, folder: PathLike) -> Path:
    """Write ``model`` as an OpenLRM v1.1 folder: ``model.safetensors`` + ``config.json``
    (OpenLRM's ``ModelLRM`` kwargs, so OpenLRM loads it too), plus ``fastfields_config.json``
    with the whole :class:`LRMConfig` (input / render sizes, sizes OpenLRM cannot name),
    which :meth:`LRM.from_pretrained` prefers."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_openlrm_kwargs(), indent=2))
    (folder / FULL_CONFIG).write_text(json.dumps(asdict(model.config), indent=2))
    return folder


__all__ = [
    "CAMERA_FEATURES",
    "CheckpointError",
    "LRM",
    "LRMConfig",
    "PRESETS",
    "camera_feature",
    "canonical_camera",
    "load_checkpoint",
    "preprocess_image",
    "preset_config",
    "save_pretrained",
    "state_dict_problems",
    "turntable_cameras",
]
