"""Benchmark cases of ``composite`` / ``composite_packed`` against the eager compositing people write.

Baselines: TensoRF's ``raw2alpha`` quadrature (cumprod of ``1 - alpha + 1e-10``, then weighted
sums) for dense NeRF samples, OpenLRM's ``MipRayMarcher2`` for EG3D-style midpoint
compositing, and nerfacc's packed rendering (transmittance from an exclusive sum of
``sigma * dt``, sums by ``index_add_``) for packed samples.
"""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F

from ..ops.composite import composite, composite_packed
from ..reference.composite import activate
from .harness import Case

TENSORF = dict(density_activation="softplus", density_bias=-10.0, distance_scale=25.0)
EG3D = dict(density_activation="softplus", density_bias=-1.0)
NGP = dict(density_activation="trunc_exp", density_bias=0.0, distance_scale=1.0)


def _outputs(rgb, depth, opacity):
    """One tensor of everything the op returns, so forward+backward differentiates all of it."""
    return torch.cat([rgb, depth.unsqueeze(-1), opacity.unsqueeze(-1)], dim=-1)


def tensorf_raw2alpha(sigmas, rgbs, deltas, t, background=1.0):
    """The dense baseline: TensoRF's ``raw2alpha`` and its weighted sums (white background)."""
    density = F.softplus(sigmas + TENSORF["density_bias"])
    alpha = 1.0 - torch.exp(-density * deltas * TENSORF["distance_scale"])
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)
    weights = alpha * trans[:, :-1]
    opacity = weights.sum(-1)
    rgb = (weights[..., None] * rgbs).sum(-2) + (1.0 - opacity[..., None]) * background
    return _outputs(rgb, (weights * t).sum(-1), opacity)


def mip_ray_marcher2(sigmas, rgbs, t, background=1.0):
    """The EG3D baseline: OpenLRM's ``MipRayMarcher2`` (midpoints, softplus(x - 1), 1e-10)."""
    deltas = t[:, 1:] - t[:, :-1]
    colours = (rgbs[:, :-1] + rgbs[:, 1:]) / 2
    density = F.softplus((sigmas[:, :-1] + sigmas[:, 1:]) / 2 - 1)
    depths = (t[:, :-1] + t[:, 1:]) / 2
    alpha = 1 - torch.exp(-density * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], -1), -1)
    weights = alpha * trans[:, :-1]
    opacity = weights.sum(-1)
    rgb = (weights[..., None] * colours).sum(-2) + background * (1 - opacity[..., None])
    return _outputs(rgb, (weights * depths).sum(-1), opacity)


def nerfacc_rendering(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, background=1.0):
    """The packed baseline, as nerfacc renders: T = exp(-exclusive_sum(sigma * dt)) per ray
    (a global cumsum minus each ray's start), alpha = 1 - exp(-sigma * dt), sums by index_add_."""
    sigmas_dt = activate(sigmas, NGP["density_activation"]) * (t_ends - t_starts)
    counts = torch.zeros(n_rays, dtype=torch.int64, device=sigmas.device).index_add_(0, ray_indices, torch.ones_like(ray_indices))
    chunk_starts = torch.cumsum(counts, 0) - counts
    inclusive = torch.cumsum(sigmas_dt, 0)
    exclusive = inclusive - sigmas_dt
    exclusive = exclusive - exclusive[chunk_starts[ray_indices]]
    weights = torch.exp(-exclusive) * (1 - torch.exp(-sigmas_dt))
    C = rgbs.shape[1]
    rgb = torch.zeros(n_rays, C, dtype=rgbs.dtype, device=rgbs.device).index_add(0, ray_indices, weights[:, None] * rgbs)
    opacity = torch.zeros(n_rays, dtype=weights.dtype, device=rgbs.device).index_add(0, ray_indices, weights)
    depth = torch.zeros_like(opacity).index_add(0, ray_indices, weights * (t_starts + t_ends) / 2)
    return _outputs(rgb + background * (1 - opacity[:, None]), depth, opacity)


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def dense_case(log2_rays: int, samples: int, channels: int, dtype: torch.dtype, mode: str = "nerf") -> Case:
    R = 2**log2_rays
    label = "TensoRF raw2alpha" if mode == "nerf" else "EG3D MipRayMarcher2"
    name = f"dense {mode} R=2^{log2_rays} S={samples} C={channels} {str(dtype).replace('torch.', '')} vs {label}"

    def make_inputs(device) -> Dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        shift = 10.0 if mode == "nerf" else 1.0  # densities around the activation's knee
        sigmas = torch.randn(R, samples, generator=gen) * 3 + shift
        rgbs = torch.rand(R, samples, channels, generator=gen)
        deltas = torch.rand(R, samples, generator=gen) * 0.02 + 0.005
        t = 2.0 + torch.cumsum(deltas, 1)
        inputs = dict(sigmas=sigmas, rgbs=rgbs, deltas=deltas, t=t)
        return {k: v.to(device, dtype) for k, v in inputs.items()}

    def fused(x, backend):
        if mode == "nerf":
            rgb, depth, opacity, _ = composite(x["sigmas"], x["rgbs"], x["deltas"], t=x["t"], background=1.0,
                                               backend=backend, **TENSORF)
        else:
            rgb, depth, opacity, _ = composite(x["sigmas"], x["rgbs"], None, t=x["t"], background=1.0, mode="eg3d",
                                               backend=backend, **EG3D)
        return _outputs(rgb, depth, opacity)

    def baseline(x):
        if mode == "nerf":
            return tensorf_raw2alpha(x["sigmas"], x["rgbs"], x["deltas"], x["t"])
        return mip_ray_marcher2(x["sigmas"], x["rgbs"], x["t"])

    inputs_used = ("sigmas", "rgbs", "deltas", "t") if mode == "nerf" else ("sigmas", "rgbs", "t")
    out_elems = R * (channels + 2)

    # Compulsory traffic: each input read once, each output written once; the backward reads
    # the inputs and the output gradient and writes the input gradients.
    def bytes_forward(x):
        return _nbytes(*(x[k] for k in inputs_used)) + out_elems * x["rgbs"].element_size()

    def bytes_backward(x):
        grads = ("sigmas", "rgbs")
        return _nbytes(*(x[k] for k in inputs_used)) + _nbytes(*(x[k] for k in grads)) + out_elems * x["rgbs"].element_size()

    return Case(op="composite", name=name, make_inputs=make_inputs, fused=fused, baseline=baseline,
                bytes_forward=bytes_forward, bytes_backward=bytes_backward, grad_inputs=("sigmas", "rgbs"))


def packed_case(log2_rays: int, mean_samples: int, channels: int, dtype: torch.dtype) -> Case:
    n_rays = 2**log2_rays
    name = f"packed R=2^{log2_rays} ~{mean_samples} samples/ray C={channels} {str(dtype).replace('torch.', '')} vs nerfacc"

    def make_inputs(device) -> Dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        counts = torch.randint(mean_samples // 2, mean_samples * 3 // 2 + 1, (n_rays,), generator=gen)
        counts[::97] = 0  # rays that miss the occupied space
        ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
        M = ray_indices.numel()
        lengths = torch.rand(M, generator=gen) * 0.02 + 0.005
        first = torch.cumsum(counts, 0) - counts
        ends = torch.cumsum(lengths, 0)
        ends = ends - (ends - lengths)[first[ray_indices]] + 2.0  # each ray starts at t = 2
        inputs = dict(sigmas=torch.randn(M, generator=gen) + 2.0, rgbs=torch.rand(M, channels, generator=gen),
                      t_starts=ends - lengths, t_ends=ends)
        inputs = {k: v.to(device, dtype) for k, v in inputs.items()}
        inputs["ray_indices"] = ray_indices.to(device)
        return inputs

    def fused(x, backend):
        rgb, depth, opacity, _ = composite_packed(x["sigmas"], x["rgbs"], x["t_starts"], x["t_ends"], x["ray_indices"],
                                                  n_rays, background=1.0, backend=backend, **NGP)
        return _outputs(rgb, depth, opacity)

    def baseline(x):
        return nerfacc_rendering(x["sigmas"], x["rgbs"], x["t_starts"], x["t_ends"], x["ray_indices"], n_rays)

    def bytes_forward(x):
        return _nbytes(x["sigmas"], x["rgbs"], x["t_starts"], x["t_ends"], x["ray_indices"]) + n_rays * (channels + 2) * 4

    def bytes_backward(x):
        return bytes_forward(x) + _nbytes(x["sigmas"], x["rgbs"])

    return Case(op="composite", name=name, make_inputs=make_inputs, fused=fused, baseline=baseline,
                bytes_forward=bytes_forward, bytes_backward=bytes_backward, grad_inputs=("sigmas", "rgbs"))


def cases(device: torch.device, full: bool = False) -> List[Case]:
    if device.type == "cuda":
        found = [
            dense_case(18, 128, 3, torch.float32),
            packed_case(18, 128, 3, torch.float32),
            dense_case(16, 96, 32, torch.float32, mode="eg3d"),
            dense_case(18, 128, 3, torch.bfloat16),
        ]
        return found if full else found[:2]
    found = [dense_case(14, 128, 3, torch.float32), packed_case(14, 128, 3, torch.float32)]
    if full:
        found.append(dense_case(12, 96, 32, torch.float32, mode="eg3d"))
    return found
