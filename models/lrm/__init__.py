"""LRM (Hong et al., ICLR 2024): one image -> a triplane NeRF in a single forward pass, with
OpenLRM's (3DTopia/OpenLRM v1.1) parameter names so its checkpoints load as they are.

Pipeline (``ModelLRM`` in ``openlrm/models/modeling_lrm.py``), one module per part::

    image [N, 3, S, S] in [0, 1] --encoder (DINOv2 / DINO ViT)--> tokens [N, Lc, Dc]     encoder.py
    camera feature [N, 16 | 20] --camera_embedder (MLP)--------> mod [N, Dm]            cameras.py, transformer.py
    pos_embed [1, 3 h w, D] --transformer (cross-attn to tokens, self-attn, MLP;
                              each norm adaLN-modulated by mod)--> [N, 3 h w, D]         transformer.py
    --upsampler (ConvTranspose2d k2 s2)--> planes [N, 3, C, 2h, 2w]                      synthesizer.py
    --synthesizer.decoder (concat of LRM_AXES planes -> 64 ReLU x3 -> 4) + rendering    synthesizer.py

``config.py`` holds :class:`LRMConfig` and :data:`PRESETS`, ``preprocess.py`` OpenLRM's input
preprocessing (:func:`preprocess_image`), ``checkpoint.py`` every checkpoint layout
(:func:`load_checkpoint`, :func:`save_pretrained`), ``model.py`` the :class:`LRM` module.

LRM follows the convention of :mod:`fastfields.models._pretrained`: ``LRM.from_preset(name)``,
``LRM.from_pretrained(path)`` (our safetensors file or folder, OpenLRM v1.1 folders, v1.0
``model.pth``, bare state dicts with ``preset=``; strict, every problem listed in one
:class:`CheckpointError`), ``model.save_pretrained(path)``. Inputs may be tensors or numpy
arrays.

Rendering is :func:`fastfields.render_triplane` (OpenLRM's defaults: ray-box sampling in
``[-1, 1]^3``, EG3D's MipRayMarcher2, ``softplus(sigma - 1)``, ``n/2`` coarse + ``n/2``
importance samples). ``backend="auto"`` runs the fused kernels (triplane lookup, decoder
MLP and compositing in one pass; fused adaLN and attention in the transformer);
``backend="torch"`` is the unfused eager reference, rendered in ray chunks.

Cameras follow OpenLRM: camera-to-world matrices in the OpenGL / Blender convention
(``orbit_cameras(..., convention="opengl")``; OpenLRM's ray sampler converts them with
``diag(1, -1, -1, 1)``) and intrinsics ``(fx, fy, cx, cy)`` as fractions of the image size.
The canonical source camera sits at ``(0, -2, 0)`` looking at the origin with z up.

    >>> import numpy as np, torch
    >>> from fastfields.models.lrm import LRM, preprocess_image
    >>> model = LRM.from_preset("tiny").eval()           # or LRM.from_pretrained("openlrm-mix-base-1.1/")
    >>> image = preprocess_image(np.random.rand(64, 64, 4), model.config.image_size)   # or a path
    >>> with torch.no_grad():
    ...     planes = model.forward_planes(image[None])
    ...     rgb, depth, opacity = model.render(planes, *model.turntable(2), 16, 16)
    >>> planes.shape, rgb.shape
    (torch.Size([1, 3, 8, 16, 16]), torch.Size([1, 2, 16, 16, 3]))
"""

from .._pretrained import CheckpointError, state_dict_problems
from .cameras import camera_feature, canonical_camera, normalize_cameras, turntable_cameras
from .checkpoint import FULL_CONFIG, convert_v10_state_dict, load_checkpoint, read_checkpoint, save_pretrained
from .config import (
    BOX_WARP,
    CAMERA_FEATURES,
    DENSITY_BIAS,
    DINO_ARCHS,
    DINOV2_ARCHS,
    ENCODERS,
    OPENLRM_INFER_SIZES,
    PRESETS,
    LRMConfig,
    preset_config,
)
from .encoder import DINOv2, HFViT, ImageEncoder, set_attention_backend
from .model import LRM
from .preprocess import load_image, preprocess_image, resize_source_image
from .synthesizer import Synthesizer, Upsampler
from .transformer import CameraEmbedder

__all__ = [
    "BOX_WARP",
    "CAMERA_FEATURES",
    "CameraEmbedder",
    "CheckpointError",
    "DENSITY_BIAS",
    "DINOV2_ARCHS",
    "DINO_ARCHS",
    "DINOv2",
    "ENCODERS",
    "FULL_CONFIG",
    "HFViT",
    "ImageEncoder",
    "LRM",
    "LRMConfig",
    "OPENLRM_INFER_SIZES",
    "PRESETS",
    "Synthesizer",
    "Upsampler",
    "camera_feature",
    "canonical_camera",
    "convert_v10_state_dict",
    "load_checkpoint",
    "load_image",
    "normalize_cameras",
    "preprocess_image",
    "preset_config",
    "read_checkpoint",
    "resize_source_image",
    "save_pretrained",
    "set_attention_backend",
    "state_dict_problems",
    "turntable_cameras",
]
