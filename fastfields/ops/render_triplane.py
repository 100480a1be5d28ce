"""``render_triplane``: triplane lookup, the decoder MLP and compositing fused into one pass.

Per tile of rays the fused kernels walk the samples in order; for each sample they read
the three planes, run the decoder MLP in registers, apply the density and colour
activations and composite, carrying only the per-ray transmittance and sums. Per-sample
features, activations and weights never reach memory: the pass costs O(rays) memory
where the unfused pipeline holds ``rays x samples x features`` floats several times over.

The backward re-walks each ray (flash-attention style recomputation): it rebuilds the
transmittance, takes the suffix sums behind each sample from the saved per-ray outputs
(``total - prefix``, as :func:`fastfields.composite`), recomputes the MLP and
back-propagates through it, accumulating the decoder weight gradients per tile and
scattering the feature gradients into the planes.

Sampling (where the samples go) stays in PyTorch and costs O(rays x samples) scalars:
stratified depths in the ray-box interval or ``[near, far]``, then (``n_importance > 0``)
a coarse pass that returns only its weights, EG3D's smoothed PDF and the merged,
sorted depths for the fine pass. Only the fine (final) pass is differentiated, as in
EG3D and OpenLRM.

Layering: :func:`render_triplane` validates and samples; the custom ops
``fastfields::render_triplane_pass`` / ``_backward`` run one pass on the ``triton`` or
``cpu`` backend; the ``torch`` backend is :mod:`fastfields.reference.render_triplane`
(the unfused eager pipeline), which is also the fallback for what the kernels do not
cover (other decoders, gradients to the rays or depths, double backward).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .. import _backend
from .._enums import ColorActivation, DensityActivation, HiddenActivation, Padding, Reduce, RenderMode
from .._checks import check_bool, check_choice, check_same_device, check_tensor
from ..reference.composite import ACTIVATIONS, add_background
from ..reference.render_triplane import (
    COLOR_ACTIVATIONS,
    HIDDEN_ACTIVATIONS,
    render_pass_reference,
)
from ..rendering.cameras import ray_aabb_intersect
from ..rendering.samplers import merge_samples, sample_pdf, smooth_weights, stratified_samples
from ._common import compiled_ops
from .triplane_sample import EG3D_AXES, LRM_AXES, _flat_axes

OP = "render_triplane"
IMPLEMENTED = ("torch", "triton", "cpu")
REDUCES = ("concat", "sum", "mean")
MODES = ("eg3d", "nerf")
PADDINGS = ("zeros", "border")
#: The widest hidden layer the fused kernels keep in registers.
MAX_FUSED_HIDDEN = 128

# Integer codes the kernels read (kernels/render_triplane.py, csrc/cpu/render_triplane.cpp).
REDUCE_CODES = Reduce.codes(REDUCES)
MODE_CODES = RenderMode.codes(MODES)
PADDING_CODES = Padding.codes(PADDINGS)
HIDDEN_CODES = HiddenActivation.codes(HIDDEN_ACTIVATIONS)
COLOR_CODES = ColorActivation.codes(COLOR_ACTIVATIONS)
DENSITY_CODES = DensityActivation.codes(ACTIVATIONS)

Outputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


# ---------------------------------------------------------------------------------------
# The decoder as the kernels see it.


class DecoderSpec:
    """A :class:`fastfields.nn.TriplaneDecoder` unpacked for the kernels: its Linear layers'
    weights ``[out, in]`` and biases, the hidden activation and the colour activation."""

    def __init__(self, decoder):
        linears = decoder.linears
        self.weights: List[torch.Tensor] = [layer.weight for layer in linears]
        self.biases: List[torch.Tensor] = [layer.bias for layer in linears]
        self.activation = decoder.activation
        self.color_act = decoder.color_activation
        self.in_features = linears[0].in_features
        self.out_features = linears[-1].out_features
        self.hidden = linears[0].out_features

    def why_not_fusable(self) -> Optional[str]:
        if self.hidden > MAX_FUSED_HIDDEN:
            return f"the hidden width {self.hidden} exceeds {MAX_FUSED_HIDDEN}"
        if any(p.dtype != torch.float32 for p in self.weights + self.biases):
            return "the decoder parameters are not float32"
        return None


def decoder_spec(decoder) -> Optional[DecoderSpec]:
    """The :class:`DecoderSpec` of a ``TriplaneDecoder``; None for any other module."""
    from ..nn import TriplaneDecoder

    return DecoderSpec(decoder) if isinstance(decoder, TriplaneDecoder) else None


# ---------------------------------------------------------------------------------------
# One pass on a compiled backend.


def _kernel_inputs(planes, spec_weights, spec_biases):
    """Channels-last planes [B, 3, H, W, C] and the decoder packed as first / hidden / last."""
    planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()
    first_w, first_b = spec_weights[0].contiguous(), spec_biases[0].contiguous()
    last_w, last_b = spec_weights[-1].contiguous(), spec_biases[-1].contiguous()
    hidden = first_w.shape[0]
    if len(spec_weights) > 2:
        hidden_w = torch.stack([w for w in spec_weights[1:-1]]).contiguous()
        hidden_b = torch.stack([b for b in spec_biases[1:-1]]).contiguous()
    else:
        hidden_w = first_w.new_empty(0, hidden, hidden)
        hidden_b = first_w.new_empty(0, hidden)
    return planes_cl, first_w, first_b, hidden_w, hidden_b, last_w, last_b


def _pass_forward(backend, planes_cl, rays_o, rays_d, t, deltas, mlp, options):
    if backend == "triton":
        from ..kernels.render_triplane import render_triplane_fwd

        return render_triplane_fwd(planes_cl, rays_o, rays_d, t, deltas, *mlp, *options)
    return compiled_ops(backend).render_triplane_fwd(planes_cl, rays_o, rays_d, t, deltas, *mlp, *options)


def _pass_backward(backend, grads, planes_cl, rays_o, rays_d, t, deltas, mlp, options):
    if backend == "triton":
        from ..kernels.render_triplane import render_triplane_bwd

        return render_triplane_bwd(*grads, planes_cl, rays_o, rays_d, t, deltas, *mlp, *options)
    return compiled_ops(backend).render_triplane_bwd(*grads, planes_cl, rays_o, rays_d, t, deltas, *mlp, *options)


def _options(axes, reduce, align_corners, padding, scale, activation, color_act, mode, density_activation,
             density_bias, distance_scale, mask_outside, t_threshold, return_weights):
    """The scalar arguments every kernel takes, in order (see kernels/render_triplane.py)."""
    return (
        list(axes), REDUCE_CODES[reduce], align_corners, PADDING_CODES[padding], scale, HIDDEN_CODES[activation],
        COLOR_CODES[color_act], MODE_CODES[mode], DENSITY_CODES[density_activation], density_bias, distance_scale,
        mask_outside, t_threshold, return_weights,
    )


@torch.library.custom_op("fastfields::render_triplane_pass", mutates_args=())
def _render_pass_op(
    planes: torch.Tensor,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    t: torch.Tensor,
    deltas: Optional[torch.Tensor],
    weights: List[torch.Tensor],
    biases: List[torch.Tensor],
    axes: List[int],
    reduce: str,
    align_corners: bool,
    padding: str,
    scale: float,
    activation: str,
    color_act: str,
    mode: str,
    density_activation: str,
    density_bias: float,
    distance_scale: float,
    mask_outside: bool,
    t_threshold: float,
    return_weights: bool,
    backend: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """rgb [B, R, out - 1], depth [B, R], opacity [B, R] (float32, no background) and the
    weights [B, R, S'] (empty unless asked)."""
    planes_cl, *mlp = _kernel_inputs(planes, weights, biases)
    options = _options(axes, reduce, align_corners, padding, scale, activation, color_act, mode, density_activation,
                       density_bias, distance_scale, mask_outside, t_threshold, return_weights)
    return tuple(_pass_forward(backend, planes_cl, rays_o, rays_d, t, deltas, mlp, options))


def _pass_output_shapes(planes, t, weights, mode, return_weights):
    B, R, S = t.shape
    width = max(S - 1, 0) if mode == "eg3d" else S
    return [B, R, weights[-1].shape[0] - 1], [B, R], [B, R], [B, R, width] if return_weights else [0]


@_render_pass_op.register_fake
def _(planes, rays_o, rays_d, t, deltas, weights, biases, axes, reduce, align_corners, padding, scale, activation,
      color_act, mode, density_activation, density_bias, distance_scale, mask_outside, t_threshold, return_weights,
      backend):
    shapes = _pass_output_shapes(planes, t, weights, mode, return_weights)
    return tuple(t.new_empty(shape, dtype=torch.float32) for shape in shapes)


@torch.library.custom_op("fastfields::render_triplane_pass_backward", mutates_args=())
def _render_pass_backward_op(
    grad_rgb: torch.Tensor,
    grad_depth: torch.Tensor,
    grad_opacity: torch.Tensor,
    total: torch.Tensor,
    planes: torch.Tensor,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    t: torch.Tensor,
    deltas: Optional[torch.Tensor],
    weights: List[torch.Tensor],
    biases: List[torch.Tensor],
    axes: List[int],
    reduce: str,
    align_corners: bool,
    padding: str,
    scale: float,
    activation: str,
    color_act: str,
    mode: str,
    density_activation: str,
    density_bias: float,
    distance_scale: float,
    mask_outside: bool,
    backend: str,
) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    """Gradients to the planes (their layout and dtype) and to each decoder weight and bias."""
    planes_cl, *mlp = _kernel_inputs(planes, weights, biases)
    options = _options(axes, reduce, align_corners, padding, scale, activation, color_act, mode, density_activation,
                       density_bias, distance_scale, mask_outside, 0.0, False)
    grads = (grad_rgb.contiguous(), grad_depth.contiguous(), grad_opacity.contiguous(), total.contiguous())
    g_planes_cl, g_first_w, g_first_b, g_hidden_w, g_hidden_b, g_last_w, g_last_b = _pass_backward(
        backend, grads, planes_cl, rays_o, rays_d, t, deltas, mlp, options
    )
    g_planes = torch.empty_like(planes)
    g_planes.copy_(g_planes_cl.permute(0, 1, 4, 2, 3))
    # unbind gives views of one tensor, and a custom op's outputs may not alias each other
    g_weights = [g_first_w] + [g.clone() for g in g_hidden_w.unbind(0)] + [g_last_w]
    g_biases = [g_first_b] + [g.clone() for g in g_hidden_b.unbind(0)] + [g_last_b]
    return g_planes, [g.contiguous() for g in g_weights], [g.contiguous() for g in g_biases]


@_render_pass_backward_op.register_fake
def _(grad_rgb, grad_depth, grad_opacity, total, planes, rays_o, rays_d, t, deltas, weights, biases, axes, reduce,
      align_corners, padding, scale, activation, color_act, mode, density_activation, density_bias, distance_scale,
      mask_outside, backend):
    return torch.empty_like(planes), [torch.empty_like(w) for w in weights], [torch.empty_like(b) for b in biases]


def _setup_pass(ctx, inputs, output):
    (planes, rays_o, rays_d, t, deltas, weights, biases, *options) = inputs
    rgb, depth, opacity, _ = output
    ctx.save_for_backward(planes, rays_o, rays_d, t, deltas, rgb, depth, opacity, *weights, *biases)
    ctx.n_layers = len(weights)
    ctx.options = options


def _backward_pass(ctx, grad_rgb, grad_depth, grad_opacity, _grad_weights):
    planes, rays_o, rays_d, t, deltas, rgb, depth, opacity, *params = ctx.saved_tensors
    weights, biases = params[: ctx.n_layers], params[ctx.n_layers :]
    (axes, reduce, align_corners, padding, scale, activation, color_act, mode, density_activation, density_bias,
     distance_scale, mask_outside, t_threshold, _return_weights, backend) = ctx.options
    if t_threshold > 0:
        raise RuntimeError(f"{OP}: t_threshold > 0 (early ray termination) is for inference and has no gradient")
    grad_rgb = torch.zeros_like(rgb) if grad_rgb is None else grad_rgb.float()
    grad_depth = torch.zeros_like(depth) if grad_depth is None else grad_depth.float()
    grad_opacity = torch.zeros_like(opacity) if grad_opacity is None else grad_opacity.float()
    total = (grad_rgb * rgb).sum(-1) + grad_depth * depth + grad_opacity * opacity
    g_planes, g_weights, g_biases = torch.ops.fastfields.render_triplane_pass_backward(
        grad_rgb, grad_depth, grad_opacity, total, planes, rays_o, rays_d, t, deltas, list(weights), list(biases),
        axes, reduce, align_corners, padding, scale, activation, color_act, mode, density_activation, density_bias,
        distance_scale, mask_outside, backend,
    )
    needs = ctx.needs_input_grad
    return (
        g_planes if needs[0] else None, None, None, None, None,
        g_weights if needs[5] else None,
        g_biases if needs[6] else None,
    ) + (None,) * 15


_render_pass_op.register_autograd(_backward_pass, setup_context=_setup_pass)


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
        decoder: a :class:`fastfields.nn.TriplaneDecoder` (fused). Any other module or
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
    flat_axes = _flat_axes(axes)
    if not callable(decoder):
        raise TypeError(f"{OP}: decoder must be a TriplaneDecoder or a callable module, got {type(decoder).__name__}")
    spec = decoder_spec(decoder)
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

    def run(t, deltas, want_weights, threshold=0.0):
        if name == "torch":
            return render_pass_reference(
                planes, rays_o, rays_d, t, deltas, decoder, axes=axes, reduce=reduce, align_corners=align_corners,
                padding=padding, scale=scale, mode=mode, density_activation=density_activation,
                density_bias=density_bias, distance_scale=distance_scale, mask_outside=mask_outside,
                return_weights=want_weights, t_threshold=threshold,
            )
        rgb, depth, opacity, w = torch.ops.fastfields.render_triplane_pass(
            planes, rays_o.float().contiguous(), rays_d.float().contiguous(), t.contiguous(),
            None if deltas is None else deltas.contiguous(), spec.weights, spec.biases, flat_axes, reduce,
            align_corners, padding, scale, spec.activation, spec.color_act, mode, density_activation, density_bias,
            distance_scale, mask_outside, threshold, want_weights, name,
        )
        return rgb, depth, opacity, w if want_weights else None

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
    rgb = add_background(rgb, opacity, background)
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
