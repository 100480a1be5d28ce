"""LRM's triplane synthesizer: the deconvolution that turns transformer tokens into planes
(``upsampler``), OpenLRM's triplane decoder (``synthesizer.decoder``: concat of the
``LRM_AXES`` plane features -> 64 ReLU x3 -> density + RGB) and the rendering calls.

Rendering is :func:`fastfields.render_triplane` with OpenLRM's defaults: ray-box sampling in
``[-1, 1]^3``, EG3D's MipRayMarcher2, ``softplus(sigma - 1)``, ``n/2`` coarse + ``n/2``
importance samples, samples outside the box empty. A backend with the fused renderer
renders every ray at once in O(rays) memory; the unfused eager path renders in ray chunks.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastfields import _backend
from fastfields.nn import TriplaneDecoder
from fastfields.ops.render_triplane import IMPLEMENTED as RENDER_BACKENDS
from fastfields.ops.render_triplane import render_triplane
from fastfields.ops.triplane_sample import LRM_AXES, triplane_sample

from .config import BOX_WARP, DENSITY_BIAS


class Upsampler(nn.ConvTranspose2d):
    """``ConvTranspose2d(D, C, 2, stride 2)`` applied to each plane alone (OpenLRM's
    ``upsampler``): tokens ``[N, 3 h w, D]`` -> planes ``[N, 3, C, 2h, 2w]``."""

    def __init__(self, transformer_dim: int, triplane_dim: int, low_res: int):
        super().__init__(transformer_dim, triplane_dim, kernel_size=2, stride=2, padding=0)
        self.low_res = low_res

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        N, L, D = x.shape
        h = self.low_res
        if L != 3 * h * h:
            raise ValueError(f"LRM.upsample: expected {3 * h * h} tokens (3 planes of {h}^2), got {L}")
        x = x.view(N, 3, h, h, D).permute(0, 1, 4, 2, 3).reshape(N * 3, D, h, h)
        x = super().forward(x)
        return x.view(N, 3, *x.shape[1:])


def render_fused(backend: str, device) -> bool:
    """Whether ``backend`` runs the fused renderer on ``device``."""
    return _backend.resolve("render_triplane", backend, torch.device(device), RENDER_BACKENDS) != "torch"


class Synthesizer(nn.Module):
    """Holds the triplane decoder as ``decoder`` (OpenLRM's ``TriplaneSynthesizer``: its only
    parameters are ``synthesizer.decoder.net.{0,2,4,6}``) and renders / queries planes."""

    def __init__(self, triplane_dim: int):
        super().__init__()
        self.decoder = TriplaneDecoder(3 * triplane_dim, 64, n_layers=4, out_features=4, activation="relu",
                                       color_activation="sigmoid_clamped")

    def render_rays(self, planes: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, *, n_samples: int,
                    n_importance: int, background: Union[float, torch.Tensor] = 1.0, perturb: bool = False,
                    generator: Optional[torch.Generator] = None, backend: str = "auto", chunk: int = 8192,
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Volume-render rays ``[N, R, 3]`` through ``planes [N, 3, C, H, W]``: ``rgb [N, R, 3]``,
        ``depth [N, R]``, ``opacity [N, R]``; the unfused path renders ``chunk`` rays at a time."""
        kwargs = dict(
            n_samples=n_samples, n_importance=n_importance, box_warp=BOX_WARP, perturb=perturb, generator=generator,
            axes=LRM_AXES, reduce="concat", mode="eg3d", density_activation="softplus", density_bias=DENSITY_BIAS,
            mask_outside=True, background=background, backend=backend,
        )
        R = rays_o.shape[1]
        if render_fused(backend, planes.device) or R <= chunk:
            rgb, depth, opacity, _ = render_triplane(planes, rays_o, rays_d, self.decoder, **kwargs)
            return rgb, depth, opacity
        if isinstance(background, torch.Tensor) and background.dim() >= 2 and background.shape[-2] == R:
            raise ValueError("LRM.render_rays: per-ray backgrounds are not supported on the chunked unfused path")
        outputs = [
            render_triplane(planes, rays_o[:, i : i + chunk], rays_d[:, i : i + chunk], self.decoder, **kwargs)[:3]
            for i in range(0, R, chunk)
        ]
        return tuple(torch.cat(parts, dim=1) for parts in zip(*outputs))  # type: ignore[return-value]

    def query_points(self, planes: torch.Tensor, xyz: torch.Tensor, backend: str = "auto",
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``sigma [N, P]`` (``softplus(raw - 1)``: OpenLRM's ``forward_points``) and ``rgb
        [N, P, 3]`` at points ``xyz [N, P, 3]`` in world units (box ``[-1, 1]^3``)."""
        backend = "torch" if backend == "torch" else "auto"
        features = triplane_sample(planes, xyz * (2.0 / BOX_WARP), reduce="concat", axes=LRM_AXES, backend=backend)
        out = self.decoder(features)
        return F.softplus(out[..., 0] + DENSITY_BIAS), out[..., 1:]


__all__ = ["Synthesizer", "Upsampler", "render_fused"]
