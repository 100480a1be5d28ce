"""Triplane NeRF rendering: where the samples go, and EG3D's two-pass orchestration.

:func:`render_triplane` validates its arguments, places the samples along each ray
(stratified depths in the ray-box interval or ``[near, far]``, then, with
``n_importance > 0``, a coarse pass that returns only its weights, EG3D's smoothed PDF and
the merged, sorted depths for the fine pass) and runs each pass: fused
(:func:`fastfields.ops.render_triplane.render_pass`, the ``triton`` / ``cpu`` kernels) or
unfused (:func:`fastfields.reference.render_triplane.render_pass_reference`, the
``torch`` backend, which is also the fallback for what the kernels do not cover: other
decoders, gradients to the rays or depths, double backward). Sampling costs
O(rays x samples) scalars and stays in PyTorch; only the fine (final) pass is
differentiated, as in EG3D and OpenLRM.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .. import _backend
from .._checks import check_bool, check_choice, check_not_meta, check_same_device, check_tensor
from ..ops.render_triplane import IMPLEMENTED, MODES, PADDINGS, REDUCES, FusedDecoder, RenderPassOptions, render_pass
from ..ops.triplane_sample import EG3D_AXES, LRM_AXES, _flat_axes
from ..reference.composite import ACTIVATIONS, add_background
from ..reference.render_triplane import render_pass_reference
from .cameras import ray_aabb_intersect
from .samplers import merge_samples, sample_pdf, smooth_weights, stratified_samples

OP = "render_triplane"

Outputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


def fused_decoder(decoder) -> Optional[FusedDecoder]:
    """The decoder as the fused kernels read it (``decoder.fused()``, e.g. a
    :class:`fastfields.nn.TriplaneDecoder`); None for any other module or callable."""
    fused = getattr(decoder, "fused", None) if isinstance(decoder, nn.Module) else None
    packed = fused() if callable(fused) else None
    return packed if isinstance(packed, FusedDecoder) else None


# ---------------------------------------------------------------------------------------
# Validation


def _check_number(name, value, low=-math.inf, high=math.inf, low_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{OP}: {name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{OP}: {name} must be in {bounds}, got {value!r}")
    return float(value)


def _check_count(name, value, low) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{OP}: {name} must be an int >= {low}, got {value!r}")
    return value


def _check_inputs(planes, rays_o, rays_d, spec, decoder, reduce, mode, n_samples, n_importance):
    check_tensor(OP, "planes", planes, 5, "[B, 3, C, H, W]")
    check_tensor(OP, "rays_o", rays_o, 3, "[B, R, 3]")
    check_tensor(OP, "rays_d", rays_d, 3, "[B, R, 3]")
    if planes.shape[1] != 3:
        raise ValueError(f"{OP}: planes must have shape [B, 3, C, H, W], got shape {tuple(planes.shape)}")
    B = planes.shape[0]
    for name, rays in (("rays_o", rays_o), ("rays_d", rays_d)):
        if rays.shape[0] != B or rays.shape[2] != 3:
            raise ValueError(f"{OP}: {name} must have shape [B, R, 3] with B = {B} (the planes'), got {tuple(rays.shape)}")
    if rays_d.shape != rays_o.shape:
        raise ValueError(f"{OP}: rays_d must have the shape of rays_o {tuple(rays_o.shape)}, got {tuple(rays_d.shape)}")
    params = list(decoder.parameters()) if isinstance(decoder, nn.Module) else []
    check_same_device(OP, [("planes", planes), ("rays_o", rays_o), ("rays_d", rays_d)] +
                      [(f"decoder parameter {i}", p) for i, p in enumerate(params)])
    check_not_meta(OP, [("planes", planes)], "the ray-box interval and the sample depths are computed from values")
    check_choice(OP, "mode", mode, MODES)
    _check_count("n_samples", n_samples, 2 if mode == "eg3d" else 1)
    _check_count("n_importance", n_importance, 0)
    if n_importance > 0 and mode != "eg3d":
        raise ValueError(f"{OP}: n_importance > 0 needs mode='eg3d' (EG3D / OpenLRM's two-pass sampling), got mode={mode!r}")
    if spec is None:
        return
    C = planes.shape[2]
    features = 3 * C if reduce == "concat" else C
    if spec.in_features != features:
        raise ValueError(
            f"{OP}: the decoder takes {spec.in_features} features but planes with C = {C} and reduce={reduce!r} give "
            f"{features}"
        )
    if spec.out_features < 2:
        raise ValueError(f"{OP}: the decoder must output density + at least one colour channel, got {spec.out_features}")


def _as_bound(name, value, like):
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape != like.shape:
            try:
                value = value.expand_as(like)
            except RuntimeError:
                raise ValueError(f"{OP}: {name} must broadcast to the rays' shape {tuple(like.shape)}, got {tuple(value.shape)}") from None
        return value.to(torch.float32)
    return torch.full_like(like, _check_number(name, value), dtype=torch.float32)


# ---------------------------------------------------------------------------------------
# Public API


def render_triplane(
    planes: torch.Tensor,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    decoder: nn.Module,
    *,
    near: Union[None, float, torch.Tensor] = None,
    far: Union[None, float, torch.Tensor] = None,
    n_samples: int = 48,
    n_importance: int = 0,
    box_warp: float = 2.0,
    perturb: bool = False,
    generator: Optional[torch.Generator] = None,
    spacing: str = "linear",
    axes: Sequence[Tuple[int, int]] = LRM_AXES,
    reduce: str = "concat",
    align_corners: bool = False,
    padding: str = "zeros",
    mode: str = "eg3d",
    density_activation: str = "softplus",
    density_bias: float = -1.0,
    distance_scale: float = 1.0,
    mask_outside: bool = True,
    background: Union[None, float, torch.Tensor] = None,
    return_weights: bool = False,
    t_threshold: float = 0.0,
    backend: str = "auto",
) -> Outputs:
    """Volume-render a triplane NeRF: samples along rays -> triplane lookup -> decoder MLP ->
    density / colour activations -> compositing, fused into one pass per ray tile.

    The defaults are OpenLRM's renderer (``TriplaneSynthesizer`` with its ``OSGDecoder``):
    samples in the ray's intersection with the box ``[-box_warp / 2, box_warp / 2]^3``,
    planes read at ``point * 2 / box_warp`` with ``LRM_AXES`` and concatenated, EG3D's
    MipRayMarcher2 (``mode="eg3d"``, ``softplus(sigma - 1)``), samples outside the box
    empty. EG3D: ``axes=EG3D_AXES, reduce="mean", near=2.25, far=3.3, mask_outside=False,
    n_importance=48, perturb=True``; TripoSR-like: ``axes=XYZ_AXES, mode="nerf",
    density_activation="exp"``.

    Sampling: ``n_samples`` stratified depths (:func:`fastfields.rendering.stratified_samples`,
    jittered when ``perturb``) in ``[near, far]``, or in the ray-box interval when
    ``near``/``far`` are None (rays that miss the box render the background with zero
    depth and opacity). In ``"nerf"`` mode the samples are the midpoints of ``n_samples``
    equal intervals and ``deltas`` their lengths. ``n_importance > 0`` (eg3d mode) runs a
    coarse pass for its weights only, draws ``n_importance`` depths from EG3D's smoothed
    PDF (deterministic unless ``perturb``) and renders all ``n_samples + n_importance``
    depths, sorted, in the final pass; only that pass carries gradients, as in EG3D.

    Args:
        planes: ``[B, 3, C, H, W]`` float32 / float16 / bfloat16 (math in float32).
        rays_o, rays_d: ``[B, R, 3]`` ray origins and directions (world units; ``t`` is in
            units of ``|rays_d|``).
        decoder: a :class:`fastfields.nn.TriplaneDecoder` (fused; any module whose ``fused()``
            returns a :class:`fastfields.ops.render_triplane.FusedDecoder`). Any other module or
            callable ``decoder(features [..., F]) -> [..., out]`` runs the unfused path (with
            a warning). Output channel 0 is the raw density, channels ``1:`` the activated
            colour / features (EG3D: 32 features).
        near, far: floats or ``[B, R]`` tensors; both None (default): the ray-box interval.
        n_samples, n_importance: samples of the coarse pass and extra importance samples.
        box_warp: side of the box the planes span (OpenLRM, EG3D: 2.0 and 1.0 ... see their configs).
        perturb, generator: jitter the stratified samples / draw random importance samples.
        spacing: ``"linear"`` in depth or ``"disparity"`` (EG3D's ``disparity_space_sampling``).
        axes, reduce, align_corners, padding: as in :func:`fastfields.triplane_sample`
            (reduce ``"concat"``, ``"sum"`` or ``"mean"``).
        mode: ``"eg3d"`` (MipRayMarcher2) or ``"nerf"``; density_activation, density_bias,
            distance_scale: as in :func:`fastfields.composite`.
        mask_outside: samples outside the box are empty (OpenLRM); False reads the planes'
            padding there (EG3D).
        background: None, a number or a tensor broadcasting to ``[B, R, out - 1]``.
        return_weights: also return the final pass's weights ``[B, R, S']``
            (``S' = S - 1`` in eg3d mode, where S counts all samples).
        t_threshold: inference only: a ray stops once its transmittance drops below it
            (the fused kernels then skip the rest of its samples).
        backend: ``"auto"``, ``"torch"`` (the unfused eager pipeline), ``"triton"``, ``"cpu"``.

    Returns:
        ``rgb [B, R, out - 1]``, ``depth [B, R]`` (``sum w t``; 0 where nothing is hit),
        ``opacity [B, R]`` and the weights (or None), in the planes' dtype. Differentiable
        w.r.t. the planes, the decoder parameters and ``background``; gradients to the rays,
        ``near``/``far`` or a double backward run the unfused path.

    Example:
        >>> import torch, fastfields as ff
        >>> planes = torch.randn(1, 3, 16, 32, 32)
        >>> decoder = ff.nn.TriplaneDecoder(3 * 16)                     # OpenLRM's OSGDecoder
        >>> rays_o = torch.tensor([[[0.0, -2.0, 0.0]]]).expand(1, 64, 3)
        >>> rays_d = torch.nn.functional.normalize(torch.randn(1, 64, 3) * 0.2 + torch.tensor([0.0, 1.0, 0.0]), dim=-1)
        >>> rgb, depth, opacity, _ = ff.render_triplane(planes, rays_o, rays_d, decoder, n_samples=24,
        ...                                             n_importance=24, background=1.0)
        >>> rgb.shape, depth.shape, opacity.shape
        (torch.Size([1, 64, 3]), torch.Size([1, 64]), torch.Size([1, 64]))
    """
    check_choice(OP, "reduce", reduce, REDUCES)
    check_choice(OP, "padding", padding, PADDINGS)
    check_choice(OP, "density_activation", density_activation, ACTIVATIONS)
    for name, value in (("perturb", perturb), ("align_corners", align_corners), ("mask_outside", mask_outside),
                        ("return_weights", return_weights)):
        check_bool(OP, name, value)
    box_warp = _check_number("box_warp", box_warp, 0.0, low_open=True)
    density_bias = _check_number("density_bias", density_bias)
    distance_scale = _check_number("distance_scale", distance_scale, 0.0)
    t_threshold = _check_number("t_threshold", t_threshold, 0.0, 1.0)
    flat_axes = _flat_axes(axes, op=OP)
    if not callable(decoder):
        raise TypeError(f"{OP}: decoder must be a TriplaneDecoder or a callable module, got {type(decoder).__name__}")
    spec = fused_decoder(decoder)
    _check_inputs(planes, rays_o, rays_d, spec, decoder, reduce, mode, n_samples, n_importance)

    name = _backend.resolve(OP, backend, planes.device, IMPLEMENTED)
    grad_on = torch.is_grad_enabled()
    params = list(decoder.parameters()) if isinstance(decoder, nn.Module) else []
    if name != "torch" or (backend == "auto" and spec is None):
        reason = "the decoder is not a TriplaneDecoder" if spec is None else spec.why_not_fusable()
        if reason is None and planes.dtype == torch.float64:
            reason = "float64 planes (the kernels compute in float32)"
        if reason is None and grad_on and any(
            isinstance(x, torch.Tensor) and x.requires_grad for x in (rays_o, rays_d, near, far)
        ):
            reason = "gradients to the rays or near/far need the unfused path"
        if reason is not None:
            warnings.warn(f"{OP}: running the unfused path: {reason}", RuntimeWarning, stacklevel=2)
            name = "torch"
    if name == "torch" and params and params[0].is_floating_point():
        # The unfused path runs the decoder on float32 features (float64 for float64 planes).
        compute = torch.float64 if planes.dtype == torch.float64 else torch.float32
        if params[0].dtype != compute:
            raise TypeError(f"{OP}: the unfused path feeds the decoder {compute} features ({planes.dtype} planes) but "
                            f"its parameters are {params[0].dtype}; use decoder.to({compute}) or planes of another dtype")
    if t_threshold > 0 and grad_on and (planes.requires_grad or any(p.requires_grad for p in params)):
        raise ValueError(f"{OP}: t_threshold > 0 is for inference; run it under torch.no_grad() or with t_threshold=0")

    B, R = rays_o.shape[:2]
    scale = 2.0 / box_warp
    if near is None and far is None:
        half = box_warp / 2
        t_near, t_far, _ = ray_aabb_intersect(rays_o.detach().float(), rays_d.detach().float(), (-half,) * 3 + (half,) * 3)
    elif near is None or far is None:
        raise ValueError(f"{OP}: give both near and far, or neither (the ray-box interval)")
    else:
        t_near, t_far = _as_bound("near", near, rays_o[..., 0]), _as_bound("far", far, rays_o[..., 0])
        if bool((t_far < t_near).any()):
            raise ValueError(f"{OP}: far must be >= near on every ray")

    options = RenderPassOptions(
        axes=tuple(flat_axes), reduce=reduce, align_corners=align_corners, padding=padding, scale=scale, mode=mode,
        density_activation=density_activation, density_bias=density_bias, distance_scale=distance_scale,
        mask_outside=mask_outside,
    )

    def run(t, deltas, want_weights, threshold=0.0):
        pass_options = options.replace(return_weights=want_weights, t_threshold=threshold)
        if name == "torch":
            return render_pass_reference(planes, rays_o, rays_d, t, deltas, decoder, **pass_options.reference_kwargs())
        return render_pass(planes, rays_o, rays_d, t, deltas, spec, pass_options, name)

    if mode == "nerf":
        edges = stratified_samples(t_near, t_far, n_samples + 1, perturb=perturb, generator=generator, spacing=spacing)
        edges = torch.minimum(edges, t_far.unsqueeze(-1)) if perturb else edges
        t = (edges[..., 1:] + edges[..., :-1]) / 2
        deltas = edges[..., 1:] - edges[..., :-1]
    else:
        t = stratified_samples(t_near, t_far, n_samples, perturb=perturb, generator=generator, spacing=spacing)
        deltas = None
    if n_importance > 0:
        with torch.no_grad():
            _, _, _, coarse = run(t, None, True)
        t_mid = 0.5 * (t[..., 1:] + t[..., :-1])
        if n_samples >= 3:
            fine = sample_pdf(t_mid[..., :-1], smooth_weights(coarse.float())[..., 1:-1], n_importance,
                              deterministic=not perturb, generator=generator)
        else:  # too few coarse intervals for EG3D's trimmed PDF: sample the whole interval
            fine = sample_pdf(t[..., :], smooth_weights(coarse.float()), n_importance, deterministic=not perturb,
                              generator=generator)
        t, _ = merge_samples(t, fine.to(t.dtype))
    rgb, depth, opacity, weights = run(t, deltas, return_weights, t_threshold)
    dtype = planes.dtype
    rgb = add_background(rgb, opacity, background, op=OP)
    return rgb.to(dtype), depth.to(dtype), opacity.to(dtype), None if weights is None else weights.to(dtype)


#: What :func:`eg3d_render_options` sets per convention, beyond the rendering kwargs.
CONVENTIONS = {
    "openlrm": dict(axes=LRM_AXES, reduce="concat", mask_outside=True),
    "eg3d": dict(axes=EG3D_AXES, reduce="mean", mask_outside=False),
}


def eg3d_render_options(rendering_kwargs: dict, *, convention: str = "openlrm") -> dict:
    """:func:`render_triplane` keyword arguments for an EG3D / OpenLRM ``rendering_kwargs`` dict,
    so a renderer written in their style can swap its ``ImportanceRenderer`` call for ours::

        options = ff.ops.render_triplane.eg3d_render_options(self.rendering_kwargs)
        rgb, depth, opacity, _ = ff.render_triplane(planes, ray_origins, ray_directions, decoder,
                                                    background=bg_color, **options)
        depth = (depth / opacity).nan_to_num(float("inf"))  # EG3D reports the normalised depth

    Reads ``depth_resolution``, ``depth_resolution_importance``, ``ray_start`` / ``ray_end``
    (numbers or ``"auto"``: the ray-box interval), ``box_warp``, ``disparity_space_sampling``,
    ``clamp_mode`` (``"softplus"``: ``softplus(sigma - 1)``) and ``white_back``. ``convention``
    adds the plane layout: ``"openlrm"`` (LRM_AXES, concat, samples outside the box empty) or
    ``"eg3d"`` (EG3D_AXES, mean, the planes' zero padding outside).
    """
    op = "eg3d_render_options"
    check_choice(op, "convention", convention, tuple(CONVENTIONS))
    if not isinstance(rendering_kwargs, dict):
        raise TypeError(f"{op}: rendering_kwargs must be a dict, got {type(rendering_kwargs).__name__}")
    missing = [k for k in ("depth_resolution", "ray_start", "ray_end", "box_warp") if k not in rendering_kwargs]
    if missing:
        raise ValueError(f"{op}: rendering_kwargs lacks {missing}")
    if rendering_kwargs.get("clamp_mode", "softplus") != "softplus":
        raise ValueError(f"{op}: clamp_mode {rendering_kwargs['clamp_mode']!r} is not supported (EG3D uses 'softplus')")
    start, end = rendering_kwargs["ray_start"], rendering_kwargs["ray_end"]
    auto = start == "auto" or end == "auto"
    if auto and not (start == "auto" and end == "auto"):
        raise ValueError(f"{op}: ray_start and ray_end must both be 'auto' or both numbers, got {start!r}, {end!r}")
    options = dict(
        n_samples=int(rendering_kwargs["depth_resolution"]),
        n_importance=int(rendering_kwargs.get("depth_resolution_importance", 0) or 0),
        near=None if auto else float(start),
        far=None if auto else float(end),
        box_warp=float(rendering_kwargs["box_warp"]),
        spacing="disparity" if rendering_kwargs.get("disparity_space_sampling", False) else "linear",
        mode="eg3d",
        density_activation="softplus",
        density_bias=-1.0,
        **CONVENTIONS[convention],
    )
    if rendering_kwargs.get("white_back", False):
        options["background"] = 1.0
    return options
