"""Reference volume compositing: the cumprod quadrature as NeRF, TensoRF and EG3D write it."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .._enums import DensityActivation, RenderMode

ACTIVATIONS = DensityActivation.names()  # ("none", "relu", "softplus", "exp", "trunc_exp")
MODES = RenderMode.names()  # ("nerf", "eg3d")
#: EG3D's MipRayMarcher2 adds this inside the transmittance product: cumprod(1 - alpha + 1e-10).
EG3D_TRANSMITTANCE_EPS = 1e-10

Background = Union[None, float, torch.Tensor]
Outputs = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]


class _TruncExp(torch.autograd.Function):
    """torch-ngp's TruncExp: exp forward, gradient exp(min(x, 15)) so saturation cannot explode it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15))


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The density activation: ``none``, ``relu``, ``softplus``, ``exp`` or ``trunc_exp``."""
    if activation == "none":
        return x
    if activation == "relu":
        return F.relu(x)
    if activation == "softplus":
        return F.softplus(x)
    if activation == "exp":
        return torch.exp(x)
    if activation == "trunc_exp":
        return _TruncExp.apply(x)
    raise ValueError(f"density_activation must be one of {ACTIVATIONS}, got {activation!r}")


def compute_dtype(rgbs: torch.Tensor) -> torch.dtype:
    return torch.float64 if rgbs.dtype == torch.float64 else torch.float32


def add_background(rgb: torch.Tensor, opacity: torch.Tensor, background: Background, *, op: str = "composite") -> torch.Tensor:
    """``rgb + (1 - opacity) * background`` for a number or a background broadcasting to rgb's
    ``[..., R, C]``; any other shape raises a ValueError naming ``op``."""
    if background is None:
        return rgb
    if isinstance(background, torch.Tensor):
        try:
            fits = torch.broadcast_shapes(background.shape, rgb.shape) == rgb.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"{op}: background must be a number or a tensor that broadcasts to the colours "
                             f"{list(rgb.shape)}, got shape {tuple(background.shape)}")
        background = background.to(rgb.dtype)
    return rgb + (1 - opacity).unsqueeze(-1) * background


def _density(raw: torch.Tensor, empty: torch.Tensor, activation: str, bias: float) -> torch.Tensor:
    # Double where: -inf (empty) samples get exactly zero density and zero gradient, never NaN.
    safe = torch.where(empty, torch.zeros_like(raw), raw)
    return torch.where(empty, torch.zeros_like(raw), activate(safe + bias, activation))


def composite_reference(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    deltas: Optional[torch.Tensor] = None,
    *,
    t: Optional[torch.Tensor] = None,
    background: Background = None,
    mode: str = "nerf",
    density_activation: str = "none",
    density_bias: float = 0.0,
    distance_scale: float = 1.0,
    return_weights: bool = False,
    t_threshold: float = 0.0,
) -> Outputs:
    """Composite dense samples along rays: ``sigmas [R, S]``, ``rgbs [R, S, C]``.

    ``mode="nerf"``: ``tau = act(sigma + bias) * deltas * distance_scale``,
    ``alpha = 1 - exp(-tau)``, ``T = cumprod(1 - alpha)`` (exclusive), ``w = T * alpha``.
    ``mode="eg3d"`` (MipRayMarcher2): the S samples bound S - 1 intervals; raw sigma, colour
    and ``t`` are averaged at interval midpoints, ``deltas = t[1:] - t[:-1]``, the
    activation comes after the averaging and ``T = cumprod(1 - alpha + 1e-10)``.

    A raw sigma of ``-inf`` marks an empty sample (zero density, zero gradient); in eg3d mode
    an interval with an empty end is empty. Once ``T < t_threshold`` (when > 0) a ray stops:
    later weights are zero.

    Returns ``rgb [R, C] = sum w c + (1 - opacity) * background``, ``depth [R] = sum w t``
    (None without ``t``), ``opacity [R] = sum w`` and, with ``return_weights``, ``weights``
    (``[R, S]``; eg3d ``[R, S - 1]``), all in the colours' dtype (math in float32 or float64).
    """
    dtype = compute_dtype(rgbs)
    raw = sigmas.to(dtype)
    empty = torch.isneginf(raw)
    colours = rgbs.to(dtype)
    depths = None if t is None else t.to(dtype)
    eps = 0.0
    if mode == "eg3d":
        raw = torch.where(empty, torch.zeros_like(raw), raw)
        raw = (raw[:, :-1] + raw[:, 1:]) / 2
        empty = empty[:, :-1] | empty[:, 1:]
        colours = (colours[:, :-1] + colours[:, 1:]) / 2
        deltas = depths[:, 1:] - depths[:, :-1]
        depths = (depths[:, :-1] + depths[:, 1:]) / 2
        eps = EG3D_TRANSMITTANCE_EPS
    elif mode != "nerf":
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    density = _density(raw, empty, density_activation, density_bias)
    alpha = 1 - torch.exp(-density * (deltas.to(dtype) * distance_scale))
    ones = torch.ones_like(alpha[:, :1])
    trans = torch.cumprod(torch.cat([ones, 1 - alpha + eps], dim=-1), dim=-1)[:, :-1]
    weights = alpha * trans
    if t_threshold > 0:
        alive = (trans >= t_threshold).to(dtype).cumprod(dim=-1)
        weights = weights * alive

    rgb = (weights.unsqueeze(-1) * colours).sum(dim=-2)
    opacity = weights.sum(dim=-1)
    depth = None if depths is None else (weights * depths).sum(dim=-1)
    rgb = add_background(rgb, opacity, background)
    out_dtype = rgbs.dtype
    return (
        rgb.to(out_dtype),
        None if depth is None else depth.to(out_dtype),
        opacity.to(out_dtype),
        weights.to(out_dtype) if return_weights else None,
    )


def composite_packed_reference(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    n_rays: int,
    *,
    background: Background = None,
    density_activation: str = "none",
    density_bias: float = 0.0,
    distance_scale: float = 1.0,
    return_weights: bool = False,
    t_threshold: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Composite packed samples (``sigmas [M]``, ``rgbs [M, C]``, ``ray_indices [M]`` sorted).

    The samples are scattered into a dense ``[n_rays, max samples]`` batch padded with empty
    (``-inf``) samples and composited in ``nerf`` mode with ``deltas = t_ends - t_starts``
    and depths at the interval midpoints, as nerfacc's ``rendering`` does. Rays without
    samples give the background, zero depth and zero opacity. Returns ``rgb [n_rays, C]``,
    ``depth [n_rays]``, ``opacity [n_rays]`` and ``weights [M]`` (or None).
    """
    M, C = rgbs.shape
    dtype = compute_dtype(rgbs)
    counts = torch.bincount(ray_indices, minlength=n_rays)
    width = int(counts.max()) if M > 0 else 0
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(M, device=rgbs.device) - starts[ray_indices]
    index = (ray_indices, position)

    def scatter(values, fill):
        dense = torch.full((n_rays, width) + values.shape[1:], fill, dtype=dtype, device=values.device)
        return dense.index_put(index, values.to(dtype))

    rgb, depth, opacity, weights = composite_reference(
        scatter(sigmas, float("-inf")),
        scatter(rgbs, 0.0),
        scatter(t_ends.to(dtype) - t_starts.to(dtype), 0.0),
        t=scatter((t_starts.to(dtype) + t_ends.to(dtype)) / 2, 0.0),
        background=background,
        density_activation=density_activation,
        density_bias=density_bias,
        distance_scale=distance_scale,
        return_weights=return_weights,
        t_threshold=t_threshold,
    )
    out_dtype = rgbs.dtype
    return (
        rgb.to(out_dtype),
        depth.to(out_dtype),
        opacity.to(out_dtype),
        weights[index].to(out_dtype) if return_weights else None,
    )
