"""Reference triplane rendering pass: what OpenLRM's and EG3D's renderers compute, unfused.

Every per-sample tensor is materialised: points ``[B, R, S, 3]``, triplane features
``[B, R * S, F]``, the MLP's activations and outputs, then the compositing. This is the
ground truth of the fused renderer and the "eager pipeline" it is benchmarked against.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .._enums import ColorActivation, HiddenActivation
from .composite import composite_reference
from .triplane_sample import triplane_sample_reference

HIDDEN_ACTIVATIONS = HiddenActivation.names()  # ("relu", "silu", "softplus")
#: Activations of the colour / feature outputs: ``sigmoid_clamped`` is EG3D's and OpenLRM's
#: ``sigmoid(x) * (1 + 2 * 0.001) - 0.001``; TripoSR uses a plain ``sigmoid``.
COLOR_ACTIVATIONS = ColorActivation.names()  # ("sigmoid_clamped", "sigmoid", "none")
SIGMOID_CLAMP = 0.001


def color_activation(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The colour / feature activation named by one of :data:`COLOR_ACTIVATIONS`."""
    if activation == "sigmoid_clamped":
        return torch.sigmoid(x) * (1 + 2 * SIGMOID_CLAMP) - SIGMOID_CLAMP
    if activation == "sigmoid":
        return torch.sigmoid(x)
    if activation == "none":
        return x
    raise ValueError(f"color_activation must be one of {COLOR_ACTIVATIONS}, got {activation!r}")


def hidden_activation(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "silu":
        return F.silu(x)
    if activation == "softplus":
        return F.softplus(x)
    raise ValueError(f"activation must be one of {HIDDEN_ACTIVATIONS}, got {activation!r}")


def decode_reference(
    features: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor],
    activation: str,
    color_act: str,
) -> torch.Tensor:
    """The decoder MLP as plain ``F.linear`` calls: ``features [..., F]`` -> ``[..., out]``,
    channel 0 raw, channels ``1:`` through ``color_act``."""
    h = features
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        h = F.linear(h, weight.to(h.dtype), bias.to(h.dtype))
        if i < len(weights) - 1:
            h = hidden_activation(h, activation)
    return torch.cat([h[..., :1], color_activation(h[..., 1:], color_act)], dim=-1)


def render_pass_reference(
    planes: torch.Tensor,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    t: torch.Tensor,
    deltas: Optional[torch.Tensor],
    decode: Callable[[torch.Tensor], torch.Tensor],
    *,
    axes: Sequence[Tuple[int, int]],
    reduce: str,
    align_corners: bool,
    padding: str,
    scale: float,
    mode: str,
    density_activation: str,
    density_bias: float,
    distance_scale: float,
    mask_outside: bool,
    return_weights: bool,
    t_threshold: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One rendering pass over given sample depths.

    Sample ``s`` of ray ``r`` is the point ``rays_o + t * rays_d``; the triplane is read at
    ``point * scale`` (``scale = 2 / box_warp``); ``decode`` (features ``[..., F]`` ->
    ``[..., out]``, e.g. :func:`decode_reference` or a ``TriplaneDecoder``) gives the raw
    density (channel 0) and the activated colour (channels ``1:``); with
    ``mask_outside`` a sample whose scaled point leaves ``[-1, 1]^3`` is empty (raw density
    ``-inf``: OpenLRM's out-of-box rule). The samples are composited with
    :func:`composite_reference` in ``mode`` (``"eg3d"``: the S samples bound S - 1
    intervals; ``"nerf"``: ``deltas [B, R, S]`` are the interval lengths).

    Args:
        planes: ``[B, 3, C, H, W]``; rays_o, rays_d: ``[B, R, 3]``; t: ``[B, R, S]``.

    Returns:
        ``rgb [B, R, out - 1]`` (no background), ``depth [B, R]``, ``opacity [B, R]`` and
        the weights ``[B, R, S']`` (or None), in float32 (float64 for float64 planes).
    """
    B, R, S = t.shape
    dtype = torch.float64 if planes.dtype == torch.float64 else torch.float32
    points = rays_o.to(dtype).unsqueeze(2) + t.to(dtype).unsqueeze(-1) * rays_d.to(dtype).unsqueeze(2)
    coords = (points * scale).reshape(B, R * S, 3)
    features = triplane_sample_reference(
        planes.to(dtype), coords, reduce=reduce, align_corners=align_corners, padding=padding, axes=axes
    )
    out = decode(features).to(dtype)
    sigma, rgb = out[..., 0], out[..., 1:]
    if mask_outside:
        sigma = sigma.masked_fill((coords.abs() > 1).any(dim=-1), float("-inf"))
    rgb_out, depth, opacity, w = composite_reference(
        sigma.reshape(B * R, S),
        rgb.reshape(B * R, S, rgb.shape[-1]),  # explicit sizes: R = 0 rays is fine
        None if deltas is None else deltas.reshape(B * R, S),
        t=t.reshape(B * R, S),
        mode=mode,
        density_activation=density_activation,
        density_bias=density_bias,
        distance_scale=distance_scale,
        return_weights=return_weights,
        t_threshold=t_threshold,
    )
    return (
        rgb_out.reshape(B, R, rgb_out.shape[-1]),
        depth.reshape(B, R),
        opacity.reshape(B, R),
        None if w is None else w.reshape(B, R, w.shape[-1]),
    )
