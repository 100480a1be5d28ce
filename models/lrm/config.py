"""LRM's configuration: :class:`LRMConfig` (a :class:`~fastfields.models._pretrained.ModelConfig`),
the released sizes as :data:`PRESETS`, and the translation to and from OpenLRM's ``ModelLRM``
kwargs (its HF ``config.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping

from .._pretrained import CheckpointError, ModelConfig

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
#: The ``ModelLRM`` kwargs OpenLRM's ``config.json`` may hold.
OPENLRM_KWARGS = ("camera_embed_dim", "rendering_samples_per_ray", "transformer_dim", "transformer_layers",
                  "transformer_heads", "triplane_low_res", "triplane_high_res", "triplane_dim", "encoder_type",
                  "encoder_model_name", "encoder_feat_dim", "encoder_freeze")

_POSITIVE_INTS = ("encoder_feat_dim", "encoder_layers", "encoder_heads", "encoder_patch_size", "encoder_img_size",
                  "image_size", "camera_embed_dim", "transformer_dim", "transformer_layers", "transformer_heads",
                  "triplane_low_res", "triplane_high_res", "triplane_dim", "rendering_samples_per_ray",
                  "render_size", "mesh_resolution")


@dataclass
class LRMConfig(ModelConfig):
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

    Invalid values raise ``ValueError`` naming the field, at construction and in
    :meth:`replace` / :meth:`from_dict`.
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
        self.validate()

    def validate(self) -> None:
        if self.encoder_type not in ENCODERS:
            raise ValueError(f"LRMConfig: encoder_type must be one of {ENCODERS}, got {self.encoder_type!r}")
        if self.camera_feature not in CAMERA_FEATURES:
            raise ValueError(f"LRMConfig: camera_feature must be one of {tuple(CAMERA_FEATURES)}, got {self.camera_feature!r}")
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LRMConfig: {name} must be a positive int, got {value!r}")
        super().validate()
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
        for name in ("source_distance", "focal"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"LRMConfig: {name} must be a positive number, got {value!r}")

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
        unknown = sorted(set(kwargs) - set(OPENLRM_KWARGS))
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
        missing = [k for k in OPENLRM_KWARGS[:8] if k not in kwargs]
        if missing:
            raise CheckpointError(f"LRMConfig: the OpenLRM model kwargs lack {missing}")
        D = int(kwargs["transformer_dim"])
        image_size, render_size = OPENLRM_INFER_SIZES.get(D, (448, 384))
        values = dict(
            encoder_type=encoder_type, encoder_model_name=name, encoder_feat_dim=width, encoder_layers=depth,
            encoder_heads=heads, image_size=image_size, render_size=render_size, camera_feature="openlrm",
            **encoder,
        )
        values.update({k: int(kwargs[k]) for k in OPENLRM_KWARGS[:8]})  # type: ignore[call-overload]
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


def preset_config(name: str, **overrides) -> LRMConfig:
    """A copy of preset ``name``'s :class:`LRMConfig` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"LRM: unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def config_name(config: LRMConfig) -> str:
    """``preset 'name'`` when ``config`` is a preset, else the whole configuration (for messages)."""
    for name, preset in PRESETS.items():
        if preset == config:
            return f"preset {name!r}"
    return f"the configuration {config.to_dict()}"


__all__ = ["BOX_WARP", "CAMERA_FEATURES", "DENSITY_BIAS", "DINOV2_ARCHS", "DINO_ARCHS", "ENCODERS", "LRMConfig",
           "OPENLRM_INFER_SIZES", "PRESETS", "config_name", "preset_config"]
