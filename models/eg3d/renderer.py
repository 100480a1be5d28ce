"""What EG3D does around its renderer, on the fused :func:`fastfields.render_triplane`.

- :func:`ray_sampler`: EG3D's ``RaySampler`` (pixel centres, OpenCV cam2world, normalised
  intrinsics with skew) -> ``ray_origins, ray_directions [N, res^2, 3]``;
- :class:`OSGDecoder`: EG3D's decoder (``net.0`` / ``net.2`` equalised-lr FC layers around a
  Softplus; sigma raw, 32 features through ``sigmoid * 1.002 - 0.001``). It is a
  :class:`fastfields.nn.TriplaneDecoder` whose ``linears`` hand the renderer the run-time
  weights (``weight * lr_mul / sqrt(in)``, ``bias * lr_mul``), so the MLP runs inside the fused
  kernel and gradients reach the stored parameters;
- :func:`render`: ``ImportanceRenderer`` + ``MipRayMarcher2`` as EG3D calls them: planes read
  with ``EG3D_AXES`` and averaged, ``depth_resolution`` stratified samples in
  ``[ray_start, ray_end]`` jittered (also at inference, seedable with a ``torch.Generator``;
  with ``generator=None`` the draws come from torch's global generator in EG3D's order),
  ``depth_resolution_importance`` samples from the smoothed coarse weights, then the
  feature image's ``rgb * 2 - 1`` (after the white background, when ``white_back``) and the
  depth ``sum(w t) / sum(w)`` with NaN -> inf, clamped to the smallest / largest sample depth
  of the batch (EG3D's ``torch.min(depths)``, ``torch.max(depths)``): no inf on empty rays.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from fastfields.nn import TriplaneDecoder
from fastfields.ops.render_triplane import eg3d_render_options, render_triplane
from fastfields.ops.triplane_sample import EG3D_AXES, planes_channels_last, triplane_sample

from .layers import FullyConnectedLayer

SIGMOID_CLAMP = 0.001


def ray_sampler(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """EG3D's ``RaySampler``: ``cam2world [N, 4, 4]`` (OpenCV), ``intrinsics [N, 3, 3]``
    (normalised by the image size) -> ``origins, directions [N, resolution^2, 3]`` (row-major
    pixels, directions unit length)."""
    N, M = cam2world.shape[0], resolution ** 2
    dev = cam2world.device
    cam_locs = cam2world[:, :3, 3]
    fx, fy = intrinsics[:, 0, 0], intrinsics[:, 1, 1]
    cx, cy, sk = intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 0, 1]
    uv = torch.stack(torch.meshgrid(torch.arange(resolution, dtype=torch.float32, device=dev),
                                    torch.arange(resolution, dtype=torch.float32, device=dev), indexing="ij"))
    uv = uv * (1.0 / resolution) + (0.5 / resolution)
    uv = uv.flip(0).reshape(2, -1).transpose(1, 0).unsqueeze(0).repeat(N, 1, 1)
    x_cam, y_cam = uv[:, :, 0].view(N, -1), uv[:, :, 1].view(N, -1)
    z_cam = torch.ones((N, M), device=dev)
    x_lift = (x_cam - cx.unsqueeze(-1) + cy.unsqueeze(-1) * sk.unsqueeze(-1) / fy.unsqueeze(-1)
              - sk.unsqueeze(-1) * y_cam / fy.unsqueeze(-1)) / fx.unsqueeze(-1) * z_cam
    y_lift = (y_cam - cy.unsqueeze(-1)) / fy.unsqueeze(-1) * z_cam
    cam_rel = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    world = torch.bmm(cam2world, cam_rel.permute(0, 2, 1)).permute(0, 2, 1)[:, :, :3]
    dirs = torch.nn.functional.normalize(world - cam_locs[:, None, :], dim=2)
    return cam_locs.unsqueeze(1).repeat(1, dirs.shape[1], 1), dirs


class _RuntimeLinear:
    """A Linear layer as the fused renderer reads it: run-time ``weight [out, in]`` and ``bias``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias
        self.out_features, self.in_features = weight.shape


class OSGDecoder(TriplaneDecoder):
    """EG3D's ``OSGDecoder(n_features, {'decoder_lr_mul', 'decoder_output_dim'})``.

    ``forward(features [..., n_features]) -> [..., 1 + output_dim]`` (raw sigma, activated
    features): the plane-averaged features, as :func:`fastfields.render_triplane` hands them.
    :meth:`eg3d_forward` is the official signature (``[N, 3, M, C]`` per-plane features).
    """

    def __init__(self, n_features: int, output_dim: int = 32, hidden_dim: int = 64, lr_multiplier: float = 1.0):
        nn.Module.__init__(self)  # the layers are EG3D's, not TriplaneDecoder's nn.Linear
        self.activation = "softplus"
        self.color_activation = "sigmoid_clamped"
        self.hidden_dim = hidden_dim
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, hidden_dim, lr_multiplier=lr_multiplier),
            nn.Softplus(),
            FullyConnectedLayer(hidden_dim, 1 + output_dim, lr_multiplier=lr_multiplier),
        )

    @property
    def linears(self):
        return [_RuntimeLinear(fc.effective_weight(), fc.effective_bias()) for fc in (self.net[0], self.net[2])]

    def extra_repr(self) -> str:
        return ""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        shape = features.shape
        x = self.net(features.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * SIGMOID_CLAMP) - SIGMOID_CLAMP
        return torch.cat([x[..., :1], rgb], dim=-1)

    def eg3d_forward(self, sampled_features: torch.Tensor, ray_directions=None) -> Dict[str, torch.Tensor]:
        out = self.forward(sampled_features.mean(1))
        return {"rgb": out[..., 1:], "sigma": out[..., :1]}


def _uniform_peek(shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """The next ``torch.rand(shape)`` draws of ``generator`` (or the global one), leaving it untouched."""
    if generator is not None:
        copy = torch.Generator(device=generator.device)
        copy.set_state(generator.get_state())
        return torch.rand(shape, generator=copy, device=device)
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return torch.rand(shape, device=device)


def render_options(rendering_kwargs: dict) -> dict:
    """:func:`fastfields.render_triplane` keyword arguments for EG3D's ``rendering_kwargs``."""
    return eg3d_render_options(rendering_kwargs, convention="eg3d")


def render(planes: torch.Tensor, decoder: OSGDecoder, ray_origins: torch.Tensor, ray_directions: torch.Tensor,
           rendering_kwargs: dict, *, generator: Optional[torch.Generator] = None,
           backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EG3D's ``renderer(planes, decoder, ray_origins, ray_directions, rendering_kwargs)``.

    Args:
        planes: ``[N, 3, C, H, W]``; ray_origins, ray_directions: ``[N, M, 3]``.

    Returns:
        ``feature_samples [N, M, out]`` (``* 2 - 1``), ``depth_samples [N, M, 1]`` (clamped as
        EG3D) and ``weights_samples [N, M, 1]`` (the opacity).
    """
    options = render_options(rendering_kwargs)
    if options["near"] is None:
        raise ValueError("render: ray_start/ray_end 'auto' is not supported by the EG3D model (its configs use numbers)")
    n, near, far = options["n_samples"], options["near"], options["far"]
    N, M = ray_origins.shape[:2]
    # EG3D clamps the depth to the batch's smallest / largest sample depth: the first and last
    # jittered coarse samples. Read the jitter render_triplane is about to draw.
    u = _uniform_peek((N, M, n), generator, ray_origins.device)
    step = (far - near) / max(n - 1, 1)
    if options["spacing"] == "linear":
        t_min, t_max = near + u[..., 0].min() * step, near + (n - 1 + u[..., -1].max()) * step
    else:
        s_min, s_max = u[..., 0].min() / (n - 1), (n - 1 + u[..., -1].max()) / (n - 1)
        t_min, t_max = 1 / ((1 - s_min) / near + s_min / far), 1 / ((1 - s_max) / near + s_max / far)
    planes = planes_channels_last(planes)  # once here instead of in each of the two passes
    rgb, depth, opacity, _ = render_triplane(planes, ray_origins, ray_directions, decoder, perturb=True,
                                             generator=generator, backend=backend, **options)
    depth = torch.nan_to_num(depth / opacity, math.inf)
    depth = torch.clamp(depth, t_min.to(depth.dtype), t_max.to(depth.dtype))
    return rgb * 2 - 1, depth.unsqueeze(-1), opacity.unsqueeze(-1)


def run_model(planes: torch.Tensor, decoder: OSGDecoder, coordinates: torch.Tensor, box_warp: float,
              backend: str = "auto") -> Dict[str, torch.Tensor]:
    """EG3D's ``renderer.run_model``: density and features at ``coordinates [N, M, 3]`` ->
    ``{'rgb': [N, M, out], 'sigma': [N, M, 1]}`` (sigma raw, before the softplus)."""
    features = triplane_sample(planes, (2.0 / box_warp) * coordinates, reduce="mean", axes=EG3D_AXES,
                               backend=backend)
    out = decoder(features)
    return {"rgb": out[..., 1:], "sigma": out[..., :1]}
