"""The EG3D generator (``training/triplane.py`` ``TriPlaneGenerator``) on fused rendering.

Code written against the official generator ports by changing the import::

    from fastfields.models.eg3d import EG3D
    G = EG3D.from_pretrained("ffhq512-128.safetensors")      # converted with fastfields.models.eg3d.convert
    ws = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=14)
    out = G.synthesis(ws, c, noise_mode="const")             # 'image' [N,3,512,512], 'image_raw', 'image_depth'
    sigma = G.sample(coordinates, directions, z, c)["sigma"]

State-dict names and shapes equal the official ``G_ema``'s (``backbone.*``, ``superresolution.*``,
``decoder.net.{0,2}.*`` and the ``dataset_label_std`` buffer the training loop adds).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from fastfields.models._pretrained import PretrainedModel, as_tensor

from . import cameras, renderer
from .config import PRESETS, EG3DConfig
from .renderer import OSGDecoder
from .superresolution import Superresolution
from .synthesis import StyleGAN2Backbone


class EG3D(PretrainedModel, nn.Module):
    """EG3D's ``TriPlaneGenerator``.

    Options: ``render_backend`` (``render_triplane``'s ``backend``: "auto", "torch" = the
    unfused eager pipeline, "cpu", "triton").
    """

    config_class = EG3DConfig
    presets = PRESETS

    def __init__(self, config: EG3DConfig, render_backend: str = "auto"):
        super().__init__()
        config.validate()
        self.config = config
        self.z_dim, self.c_dim, self.w_dim = config.z_dim, config.c_dim, config.w_dim
        self.img_resolution, self.img_channels = config.img_resolution, config.img_channels
        self.plane_channels = config.plane_channels
        self.render_backend = render_backend
        self.backbone = StyleGAN2Backbone(
            config.z_dim, config.c_dim, config.w_dim, img_resolution=config.plane_resolution,
            img_channels=3 * config.plane_channels,
            mapping_kwargs=dict(num_layers=config.mapping_layers, lr_multiplier=config.mapping_lr_multiplier,
                                w_avg_beta=config.w_avg_beta),
            channel_base=config.channel_base, channel_max=config.channel_max, num_fp16_res=config.num_fp16_res,
            conv_clamp=config.conv_clamp, fused_modconv_default=config.fused_modconv_default,
        )
        self.superresolution = Superresolution(
            config.superresolution_module, channels=config.decoder_output_dim, img_resolution=config.img_resolution,
            w_dim=config.w_dim, sr_num_fp16_res=config.sr_num_fp16_res, sr_antialias=config.sr_antialias,
            input_resolution=config.sr_input_resolution or None, block_channels=config.sr_channels or None,
            fused_modconv_default=config.fused_modconv_default,
        )
        self.decoder = OSGDecoder(config.plane_channels, output_dim=config.decoder_output_dim,
                                  hidden_dim=config.decoder_hidden, lr_multiplier=config.decoder_lr_mul)
        # the official training loop registers it on G before G_ema is copied; released pickles carry it
        self.register_buffer("dataset_label_std", torch.ones([config.c_dim]))
        self.neural_rendering_resolution = config.neural_rendering_resolution
        self.rendering_kwargs = config.rendering_kwargs()
        self._last_planes = None

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    # ------------------------------------------------------------------ official interface

    def mapping(self, z, c, truncation_psi: float = 1, truncation_cutoff: Optional[int] = None,
                update_emas: bool = False) -> torch.Tensor:
        """``z [N, z_dim]``, ``c [N, 25]`` (tensors or numpy) -> ``ws [N, num_ws, w_dim]``."""
        device = self.dataset_label_std.device
        z = as_tensor(z, "z", device=device, ndim=2)
        c = as_tensor(c, "c", device=device, ndim=2)
        if self.rendering_kwargs["c_gen_conditioning_zero"]:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering_kwargs.get("c_scale", 0), truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def synthesis(self, ws: torch.Tensor, c, neural_rendering_resolution: Optional[int] = None,
                  update_emas: bool = False, cache_backbone: bool = False, use_cached_backbone: bool = False,
                  generator: Optional[torch.Generator] = None, return_planes: bool = False,
                  return_features: bool = False, **synthesis_kwargs) -> dict:
        """``ws [N, num_ws, w_dim]`` + camera ``c [N, 25]`` -> ``{'image' [N, 3, R, R] (SR),
        'image_raw' [N, 3, r, r], 'image_depth' [N, 1, r, r]}`` (r: the neural rendering
        resolution), plus ``'feature_image' [N, 32, r, r]`` / ``'planes' [N, 3, 32, H, W]`` when
        asked. ``generator`` seeds the renderer's jitter and importance draws (None: torch's
        global generator, as EG3D); ``noise_mode`` etc. go to the synthesis blocks."""
        c = as_tensor(c, "c", device=ws.device, ndim=2)
        cam2world = c[:, :16].view(-1, 4, 4)
        intrinsics = c[:, 16:25].view(-1, 3, 3)
        if neural_rendering_resolution is None:
            neural_rendering_resolution = self.neural_rendering_resolution
        else:
            self.neural_rendering_resolution = neural_rendering_resolution
        ray_origins, ray_directions = renderer.ray_sampler(cam2world, intrinsics, neural_rendering_resolution)
        N, M, _ = ray_origins.shape
        if use_cached_backbone and self._last_planes is not None:
            planes = self._last_planes
        else:
            planes = self.backbone.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
        if cache_backbone:
            self._last_planes = planes
        planes = planes.view(len(planes), 3, self.plane_channels, planes.shape[-2], planes.shape[-1])
        feature_samples, depth_samples, _ = renderer.render(planes, self.decoder, ray_origins, ray_directions,
                                                            self.rendering_kwargs, generator=generator,
                                                            backend=self.render_backend)
        H = W = neural_rendering_resolution
        feature_image = feature_samples.permute(0, 2, 1).reshape(N, feature_samples.shape[-1], H, W).contiguous()
        depth_image = depth_samples.permute(0, 2, 1).reshape(N, 1, H, W)
        rgb_image = feature_image[:, :3]
        sr_kwargs = {k: v for k, v in synthesis_kwargs.items() if k != "noise_mode"}
        sr_image = self.superresolution(rgb_image, feature_image, ws,
                                        noise_mode=self.rendering_kwargs["superresolution_noise_mode"], **sr_kwargs)
        out = {"image": sr_image, "image_raw": rgb_image, "image_depth": depth_image}
        if return_features:
            out["feature_image"] = feature_image
        if return_planes:
            out["planes"] = planes
        return out

    def sample(self, coordinates, directions, z, c, truncation_psi: float = 1, truncation_cutoff: Optional[int] = None,
               update_emas: bool = False, **synthesis_kwargs) -> dict:
        """Density and features at ``coordinates [N, M, 3]``: ``{'rgb' [N, M, 32], 'sigma' [N, M, 1]}``
        (raw sigma; ``directions`` are unused, as in EG3D)."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.sample_mixed(coordinates, directions, ws, update_emas=update_emas, **synthesis_kwargs)

    def sample_mixed(self, coordinates, directions, ws: torch.Tensor, truncation_psi: float = 1,
                     truncation_cutoff: Optional[int] = None, update_emas: bool = False, **synthesis_kwargs) -> dict:
        """:meth:`sample` from ``ws`` instead of ``z``."""
        planes = self.backbone.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
        planes = planes.view(len(planes), 3, self.plane_channels, planes.shape[-2], planes.shape[-1])
        coordinates = as_tensor(coordinates, "coordinates", device=ws.device, ndim=3)
        return renderer.run_model(planes, self.decoder, coordinates, self.rendering_kwargs["box_warp"],
                                  backend="torch" if self.render_backend == "torch" else "auto")

    def forward(self, z, c, truncation_psi: float = 1, truncation_cutoff: Optional[int] = None,
                neural_rendering_resolution: Optional[int] = None, update_emas: bool = False,
                cache_backbone: bool = False, use_cached_backbone: bool = False, **synthesis_kwargs) -> dict:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c, update_emas=update_emas, neural_rendering_resolution=neural_rendering_resolution,
                              cache_backbone=cache_backbone, use_cached_backbone=use_cached_backbone,
                              **synthesis_kwargs)

    # ------------------------------------------------------------------ conveniences

    def camera(self, yaw: float = 0.0, pitch: float = 0.0, batch_size: int = 1, radius: Optional[float] = None):
        """Camera labels ``c [batch_size, 25]`` of the preset's orbit (yaw/pitch in radians
        from the frontal view), as gen_samples.py builds them."""
        import math

        device = self.dataset_label_std.device
        pose = cameras.lookat_pose(math.pi / 2 + yaw, math.pi / 2 + pitch, self.config.avg_camera_pivot,
                                   radius or self.config.avg_camera_radius, device=device)
        c = cameras.camera_labels(pose, cameras.fov_to_intrinsics(self.config.fov_deg, device=device))
        return c.expand(batch_size, -1).contiguous()
