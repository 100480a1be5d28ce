"""EG3D's configuration and presets (the official ``train.py`` configs, ``docs/models.md``).

Field names follow the official ``G_kwargs`` / ``rendering_kwargs``; :meth:`EG3DConfig.rendering_kwargs`
rebuilds the official dict. ``plane_channels`` (32), the decoder widths and the SR block widths
are fixed in the official code and exposed here only so the ``tiny`` preset can shrink them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

from fastfields.models._pretrained import ModelConfig

from .superresolution import SR_MODULES


@dataclass
class EG3DConfig(ModelConfig):
    # mapping (z, camera label c -> ws)
    z_dim: int = 512
    c_dim: int = 25
    w_dim: int = 512
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    w_avg_beta: float = 0.998
    # StyleGAN2 triplane backbone
    plane_resolution: int = 256
    plane_channels: int = 32
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: Optional[float] = None
    fused_modconv_default: str = "inference_only"
    # decoder
    decoder_hidden: int = 64
    decoder_output_dim: int = 32
    decoder_lr_mul: float = 1.0
    # super-resolution
    img_resolution: int = 512
    img_channels: int = 3
    superresolution_module: str = "SuperresolutionHybrid8XDC"
    sr_num_fp16_res: int = 4
    sr_antialias: bool = True
    sr_input_resolution: int = 0  # 0: the module's own (128 or 64)
    sr_channels: Tuple[int, ...] = ()  # (): the module's own
    superresolution_noise_mode: str = "none"
    # rendering
    neural_rendering_resolution: int = 64
    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0
    white_back: bool = False
    disparity_space_sampling: bool = False
    clamp_mode: str = "softplus"
    # pose conditioning and regularisation (training)
    c_gen_conditioning_zero: bool = False
    c_scale: float = 1.0
    gpc_reg_prob: float = 0.5
    density_reg: float = 0.25
    density_reg_every: int = 4
    density_reg_p_dist: float = 0.004
    # cameras (visualisation)
    avg_camera_radius: float = 2.7
    avg_camera_pivot: Tuple[float, ...] = (0.0, 0.0, 0.2)
    fov_deg: float = 18.837  # the field of view gen_samples.py renders with

    def validate(self) -> None:
        super().validate()
        if self.superresolution_module not in SR_MODULES:
            raise ValueError(f"EG3DConfig: superresolution_module must be one of {sorted(SR_MODULES)}, "
                             f"got {self.superresolution_module!r}")
        if self.fused_modconv_default not in ("inference_only", True, False):
            raise ValueError(f"EG3DConfig: fused_modconv_default must be 'inference_only', True or False, "
                             f"got {self.fused_modconv_default!r}")
        if self.superresolution_noise_mode not in ("random", "const", "none"):
            raise ValueError(f"EG3DConfig: superresolution_noise_mode must be random/const/none, "
                             f"got {self.superresolution_noise_mode!r}")
        if self.clamp_mode != "softplus":
            raise ValueError(f"EG3DConfig: clamp_mode must be 'softplus' (MipRayMarcher2), got {self.clamp_mode!r}")
        if not (0 < self.ray_start < self.ray_end):
            raise ValueError(f"EG3DConfig: need 0 < ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if self.depth_resolution < 2 or self.depth_resolution_importance < 0:
            raise ValueError("EG3DConfig: depth_resolution must be >= 2 and depth_resolution_importance >= 0")
        if self.plane_resolution < 4 or self.plane_resolution & (self.plane_resolution - 1):
            raise ValueError(f"EG3DConfig: plane_resolution must be a power of two >= 4, got {self.plane_resolution}")
        if self.decoder_output_dim < 3:
            raise ValueError(f"EG3DConfig: decoder_output_dim must be >= 3 (rgb first), got {self.decoder_output_dim}")
        if len(self.sr_channels) not in (0, 2):
            raise ValueError(f"EG3DConfig: sr_channels must be () or two ints, got {self.sr_channels}")

    def rendering_kwargs(self) -> dict:
        """The official ``rendering_kwargs`` dict of this config."""
        return {
            "image_resolution": self.img_resolution,
            "disparity_space_sampling": self.disparity_space_sampling,
            "clamp_mode": self.clamp_mode,
            "superresolution_module": f"training.superresolution.{self.superresolution_module}",
            "c_gen_conditioning_zero": self.c_gen_conditioning_zero,
            "gpc_reg_prob": self.gpc_reg_prob if not self.c_gen_conditioning_zero else None,
            "c_scale": self.c_scale,
            "superresolution_noise_mode": self.superresolution_noise_mode,
            "density_reg": self.density_reg,
            "density_reg_p_dist": self.density_reg_p_dist,
            "reg_type": "l1",
            "decoder_lr_mul": self.decoder_lr_mul,
            "sr_antialias": self.sr_antialias,
            "depth_resolution": self.depth_resolution,
            "depth_resolution_importance": self.depth_resolution_importance,
            "ray_start": self.ray_start,
            "ray_end": self.ray_end,
            "box_warp": self.box_warp,
            "white_back": self.white_back,
            "avg_camera_radius": self.avg_camera_radius,
            "avg_camera_pivot": list(self.avg_camera_pivot),
        }


FFHQ512 = EG3DConfig()
AFHQ512 = dataclasses.replace(FFHQ512, avg_camera_pivot=(0.0, 0.0, -0.06), neural_rendering_resolution=128)
SHAPENET128 = dataclasses.replace(
    FFHQ512, img_resolution=128, superresolution_module="SuperresolutionHybrid2X", depth_resolution=64,
    depth_resolution_importance=64, ray_start=0.1, ray_end=2.6, box_warp=1.6, white_back=True,
    avg_camera_radius=1.7, avg_camera_pivot=(0.0, 0.0, 0.0),
)
#: A model small enough to train and test on a CPU: 32^2 planes of 8 channels, 16^2 neural
#: rendering, 16 + 16 samples, SR 16 -> 64 (the 8XDC layout).
TINY = dataclasses.replace(
    FFHQ512, z_dim=32, w_dim=32, plane_resolution=32, plane_channels=8, channel_base=512, channel_max=32,
    decoder_hidden=16, decoder_output_dim=8, img_resolution=64, sr_input_resolution=16, sr_channels=(16, 8),
    neural_rendering_resolution=16, depth_resolution=16, depth_resolution_importance=16,
)

PRESETS = {"ffhq512": FFHQ512, "afhq512": AFHQ512, "shapenet128": SHAPENET128, "tiny": TINY}
