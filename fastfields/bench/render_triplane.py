"""Benchmark cases of ``render_triplane`` against the unfused eager pipeline.

The baseline is what OpenLRM's renderer does in PyTorch, one view without chunking:
stratified samples in the ray-box interval, ``grid_sample`` of the three planes for every
sample, the OSG decoder MLP on ``[rays * samples, 3C]`` features, MipRayMarcher2
compositing, then the same again over the merged coarse + importance samples. That is
``render_triplane(backend="torch")`` (:mod:`fastfields.reference.render_triplane`).
The fused backends run the same two passes, each in one kernel.
"""

from __future__ import annotations

from typing import List

import torch

from ..nn import TriplaneDecoder
from ..ops.render_triplane import render_triplane
from ..rendering import orbit_cameras, rays_from_cameras
from .harness import Case

# OpenLRM's canonical camera: distance 2 from the origin, focal 0.75 of the image size.
CAMERA_DISTANCE, FOCAL = 2.0, 0.75


def camera_rays(side: int, device):
    """rays_o, rays_d ``[1, side * side, 3]`` of OpenLRM's source camera looking at the box."""
    c2w = orbit_cameras(1, CAMERA_DISTANCE, elevation=15.0, convention="opengl", device=device)
    intrinsics = torch.tensor([[FOCAL, FOCAL, 0.5, 0.5]], device=device)
    return rays_from_cameras(c2w, intrinsics, side, side, convention="opengl", normalized_intrinsics=True)


def render_case(side: int, channels: int, plane_res: int, n_samples: int, n_importance: int, label: str = "") -> Case:
    name = f"{label}{side}x{side} rays {n_samples}+{n_importance} samples 3x{channels}x{plane_res}x{plane_res}"

    def make_inputs(device):
        gen = torch.Generator(device="cpu").manual_seed(0)
        planes = (torch.randn(1, 3, channels, plane_res, plane_res, generator=gen) * 2).to(device)
        rays_o, rays_d = camera_rays(side, device)
        return {"planes": planes, "rays_o": rays_o, "rays_d": rays_d}

    torch.manual_seed(0)
    decoder = TriplaneDecoder(3 * channels)  # OpenLRM's OSGDecoder
    with torch.no_grad():
        for layer in decoder.linears:
            layer.bias.normal_(0.0, 0.3)
    on_device = {}

    def decoder_on(device):
        if device not in on_device:
            on_device[device] = decoder.to(device)
        return on_device[device]

    def call(x, backend):
        rgb, depth, opacity, _ = render_triplane(
            x["planes"], x["rays_o"], x["rays_d"], decoder_on(x["planes"].device), n_samples=n_samples,
            n_importance=n_importance, background=1.0, backend=backend,
        )
        return torch.cat([rgb, depth.unsqueeze(-1), opacity.unsqueeze(-1)], dim=-1)

    def nbytes(t):
        return t.numel() * t.element_size()

    # Compulsory traffic: planes and rays read, rgb/depth/opacity written (per pass).
    def bytes_forward(x):
        return 2 * (nbytes(x["planes"]) + nbytes(x["rays_o"]) * 2) + side * side * 5 * 4

    def bytes_backward(x):
        return 2 * nbytes(x["planes"]) + side * side * 5 * 4

    return Case(
        op="render_triplane",
        name=name,
        make_inputs=make_inputs,
        fused=call,
        baseline=lambda x: call(x, "torch"),
        bytes_forward=bytes_forward,
        bytes_backward=bytes_backward,
        grad_inputs=("planes",),
        backends=("triton", "cpu"),
    )


def cases(device: torch.device, full: bool = False) -> List[Case]:
    if device.type == "cuda":
        # The target: one 512x512 view, 48+48 samples, OpenLRM-large's 80-channel planes.
        found = [render_case(512, 80, 64, 48, 48, "OpenLRM "), render_case(128, 80, 64, 48, 48, "training crop ")]
        return found if full else found[:1]
    # CPU target: 128x128 rays; the quick run uses 64x64.
    return [render_case(128, 80, 64, 48, 48, "OpenLRM ")] if full else [render_case(64, 80, 64, 48, 48, "OpenLRM ")]
