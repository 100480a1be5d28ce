"""``composite`` and ``composite_packed``: fused volume rendering of samples along rays.

One pass per ray computes the transmittance, the weights and their sums (colour, depth,
opacity) without storing per-sample alpha, transmittance or weights (unless the weights are
asked for). The backward walks each ray again in the forward order, rebuilding the
transmittance, and gets the sum over the samples behind each one as ``total - prefix``
from the saved per-ray outputs (the instant-ngp / 3DGS trick): O(S) per ray, no division
by the transmittance, nothing per-sample saved.

The public functions validate, pick a backend and call the custom ops
``fastfields::composite`` / ``fastfields::composite_packed`` (autograd through
``fastfields::composite_backward``); the ``torch`` backend is
:mod:`fastfields.reference.composite`.
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch

from .._enums import DensityActivation, Geometry
from .._checks import FLOAT_DTYPES, check_bool, check_choice, check_coords_dtype, check_not_meta, check_same_device, check_tensor
from ..reference.composite import (
    ACTIVATIONS,
    EG3D_TRANSMITTANCE_EPS,
    MODES,
    Background,
    add_background,
    composite_packed_reference,
    composite_reference,
    compute_dtype,
)
from .._op import OpSpec, compiled_ops, define, grad_like

OP = "composite"
OP_PACKED = "composite_packed"
IMPLEMENTED = ("torch", "triton", "cuda", "cpu")

ACTIVATION_CODES = DensityActivation.codes(ACTIVATIONS)
# How the kernels read a ray's samples (csrc/include/fastfields/composite.h):
GEOM_DELTAS = int(Geometry.DELTAS)  # dense nerf: a = deltas, b = t (optional)
GEOM_INTERVALS = int(Geometry.INTERVALS)  # packed: a = t_starts, b = t_ends
GEOM_MIDPOINTS = int(Geometry.MIDPOINTS)  # dense eg3d: a = t, intervals between consecutive samples

Outputs = Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]


# ---------------------------------------------------------------------------------------
# Validation


def _check_number(op: str, name: str, value, low: float = -float("inf"), high: float = float("inf")) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    if not low <= float(value) < high:
        raise ValueError(f"{op}: {name} must be finite and in [{low}, {high}), got {value!r}")
    return float(value)


def _check_same_shape(op: str, name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}")


def _check_background(op: str, background, rgbs: torch.Tensor, n_rays: int) -> None:
    if background is None:
        return
    if not isinstance(background, torch.Tensor):
        _check_number(op, "background", background)
        return
    if background.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: background must be float32, float16, bfloat16 or float64, got {background.dtype}")
    target = (n_rays, rgbs.shape[-1])
    try:
        fits = background.dim() <= 2 and torch.broadcast_shapes(background.shape, target) == target
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{op}: background must be a number or a tensor that broadcasts to [R, C] = {target} "
                         f"(e.g. [C], [R, 1] or [R, C]), got shape {tuple(background.shape)}")
    check_same_device(op, [("rgbs", rgbs), ("background", background)])


def _check_options(op, density_activation, density_bias, distance_scale, return_weights, t_threshold) -> None:
    check_choice(op, "density_activation", density_activation, ACTIVATIONS)
    _check_number(op, "density_bias", density_bias)
    _check_number(op, "distance_scale", distance_scale)
    _check_number(op, "t_threshold", t_threshold, 0.0, 1.0)
    check_bool(op, "return_weights", return_weights)


def _check_inference_only(op: str, t_threshold: float, tensors) -> None:
    if t_threshold > 0 and torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors):
        raise RuntimeError(
            f"{op}: t_threshold > 0 (early ray termination) is for inference and has no gradient; "
            "call it under torch.no_grad() or pass t_threshold=0"
        )


def _check_dense(sigmas, rgbs, deltas, t, background, mode) -> None:
    check_tensor(OP, "sigmas", sigmas, 2, "[R, S]")
    check_tensor(OP, "rgbs", rgbs, 3, "[R, S, C]")
    if rgbs.shape[:2] != sigmas.shape:
        raise ValueError(f"{OP}: rgbs must have shape [R, S, C] with [R, S] = {tuple(sigmas.shape)} (the shape of sigmas), got {tuple(rgbs.shape)}")
    if rgbs.shape[2] < 1:
        raise ValueError(f"{OP}: rgbs must have C >= 1 channels, got shape {tuple(rgbs.shape)}")
    check_choice(OP, "mode", mode, MODES)
    named = [("sigmas", sigmas), ("rgbs", rgbs)]
    if mode == "eg3d":
        if deltas is not None:
            raise ValueError(f"{OP}: mode='eg3d' takes its intervals from t (deltas = t[:, 1:] - t[:, :-1]); pass deltas=None")
        if t is None:
            raise ValueError(f"{OP}: mode='eg3d' needs the sample depths t [R, S]")
    elif deltas is None:
        raise ValueError(f"{OP}: mode='nerf' needs deltas [R, S] (the length of each sample's interval)")
    for name, value in (("deltas", deltas), ("t", t)):
        if value is None:
            continue
        check_tensor(OP, name, value, 2, "[R, S]")
        _check_same_shape(OP, name, value, "sigmas", sigmas)
        check_coords_dtype(OP, name, value, "rgbs", rgbs)
        named.append((name, value))
    check_coords_dtype(OP, "sigmas", sigmas, "rgbs", rgbs)
    check_same_device(OP, named)
    _check_background(OP, background, rgbs, sigmas.shape[0])


def _check_packed(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, background) -> None:
    check_tensor(OP_PACKED, "sigmas", sigmas, 1, "[M]")
    check_tensor(OP_PACKED, "rgbs", rgbs, 2, "[M, C]")
    if rgbs.shape[0] != sigmas.shape[0]:
        raise ValueError(f"{OP_PACKED}: rgbs must have shape [M, C] with M = {sigmas.shape[0]} (the length of sigmas), got {tuple(rgbs.shape)}")
    if rgbs.shape[1] < 1:
        raise ValueError(f"{OP_PACKED}: rgbs must have C >= 1 channels, got shape {tuple(rgbs.shape)}")
    for name, value in (("t_starts", t_starts), ("t_ends", t_ends)):
        check_tensor(OP_PACKED, name, value, 1, "[M]")
        _check_same_shape(OP_PACKED, name, value, "sigmas", sigmas)
        check_coords_dtype(OP_PACKED, name, value, "rgbs", rgbs)
    check_coords_dtype(OP_PACKED, "sigmas", sigmas, "rgbs", rgbs)
    if not isinstance(ray_indices, torch.Tensor) or ray_indices.dtype != torch.int64 or ray_indices.dim() != 1:
        got = f"{ray_indices.dtype} shape {tuple(ray_indices.shape)}" if isinstance(ray_indices, torch.Tensor) else type(ray_indices).__name__
        raise TypeError(f"{OP_PACKED}: ray_indices must be an int64 tensor [M], got {got}")
    _check_same_shape(OP_PACKED, "ray_indices", ray_indices, "sigmas", sigmas)
    if isinstance(n_rays, bool) or not isinstance(n_rays, (int, torch.SymInt)) or n_rays < 0:
        raise ValueError(f"{OP_PACKED}: n_rays must be an int >= 0, got {n_rays!r}")
    check_same_device(OP_PACKED, [("sigmas", sigmas), ("rgbs", rgbs), ("t_starts", t_starts), ("t_ends", t_ends), ("ray_indices", ray_indices)])
    check_not_meta(OP_PACKED, [("sigmas", sigmas), ("ray_indices", ray_indices)], "ray_indices are checked (sorted, in range) on the host")
    _check_background(OP_PACKED, background, rgbs, n_rays)


def check_ray_indices(ray_indices: torch.Tensor, n_rays: int) -> None:
    """Sorted and in [0, n_rays): one vectorised O(M) test on the device and one sync."""
    if ray_indices.numel() == 0:
        return
    unsorted = ray_indices[1:] < ray_indices[:-1]
    if bool(unsorted.any() | (ray_indices[0] < 0) | (ray_indices[-1] >= n_rays)):
        if bool(unsorted.any()):
            at = int(unsorted.nonzero()[0, 0]) + 1
            raise ValueError(f"{OP_PACKED}: ray_indices must be sorted ascending (the layout nerfacc's samplers emit); "
                             f"ray_indices[{at}] = {int(ray_indices[at])} follows {int(ray_indices[at - 1])}")
        raise ValueError(f"{OP_PACKED}: ray_indices must lie in [0, n_rays = {n_rays}), got values in "
                         f"[{int(ray_indices[0])}, {int(ray_indices[-1])}]")


def ray_offsets(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """``[n_rays + 1]`` start of each ray's samples (and the end of the last) in sorted ray_indices."""
    return torch.searchsorted(ray_indices, torch.arange(n_rays + 1, device=ray_indices.device, dtype=torch.int64))


def _checked_offsets(backend: str, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    if backend == "cpu":
        # On a CPU the torch check and searchsorted cost as much as the compositing itself:
        # one C++ pass does both; the torch check only runs to word the error.
        offsets, first_bad = compiled_ops("cpu").composite_offsets(ray_indices, n_rays)
        if first_bad >= 0:
            check_ray_indices(ray_indices, n_rays)
        return offsets
    check_ray_indices(ray_indices, n_rays)
    return ray_offsets(ray_indices, n_rays)


# ---------------------------------------------------------------------------------------
# Kernels by backend. Inputs are laid out by geometry (see GEOM_*); outputs and gradients of
# sigmas / geometry are in the accumulation dtype, gradients of rgbs in the rgbs dtype.


def _forward(backend, sigmas, rgbs, a, b, offsets, geometry, activation, bias, scale, t_threshold, return_weights):
    eps = EG3D_TRANSMITTANCE_EPS if geometry == GEOM_MIDPOINTS else 0.0
    return DENSE.kernel(backend, "fwd")(sigmas, rgbs, a, b, offsets, geometry, ACTIVATION_CODES[activation], bias,
                                        scale, eps, t_threshold, return_weights)


def _dense_geometry(deltas, t, mode):
    return (GEOM_MIDPOINTS, t, None) if mode == "eg3d" else (GEOM_DELTAS, deltas, t)


def _dense_output_shapes(sigmas, rgbs, has_t, mode, return_weights):
    R, S, C = rgbs.shape
    width = max(S - 1, 0) if mode == "eg3d" else S
    return [R, C], [R] if has_t else [0], [R], [R, width] if return_weights else [0]


# ---------------------------------------------------------------------------------------
# The op specs. The forward ops return the foreground colour, depth, opacity and weights in
# the accumulation dtype (float32, float64 for float64 colours); the public functions add the
# background and cast. Absent outputs (depth without t, weights not asked for) are empty.


def _dense_impl(sigmas, rgbs, deltas, t, mode, density_activation, density_bias, distance_scale, t_threshold,
                return_weights, backend):
    geometry, a, b = _dense_geometry(deltas, t, mode)
    rgb, depth, opacity, weights = _forward(backend, sigmas, rgbs, a, b, None, geometry, density_activation,
                                            density_bias, distance_scale, t_threshold, return_weights)
    return rgb, depth if t is not None else depth.new_empty(0), opacity, weights


def _dense_fake(sigmas, rgbs, deltas, t, mode, density_activation, density_bias, distance_scale, t_threshold,
                return_weights, backend):
    dtype = compute_dtype(rgbs)
    shapes = _dense_output_shapes(sigmas, rgbs, t is not None, mode, return_weights)
    return tuple(sigmas.new_empty(shape, dtype=dtype) for shape in shapes)


def _packed_impl(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, density_activation, density_bias,
                 distance_scale, t_threshold, return_weights, backend):
    """Also returns the ``[n_rays + 1]`` ray offsets, for the backward."""
    offsets = _checked_offsets(backend, ray_indices, n_rays)
    outputs = _forward(backend, sigmas, rgbs, t_starts, t_ends, offsets, GEOM_INTERVALS, density_activation,
                       density_bias, distance_scale, t_threshold, return_weights)
    return (*outputs, offsets)


def _packed_fake(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, density_activation, density_bias,
                 distance_scale, t_threshold, return_weights, backend):
    dtype = compute_dtype(rgbs)
    C = rgbs.shape[1]
    shapes = [n_rays, C], [n_rays], [n_rays], [sigmas.shape[0]] if return_weights else [0]
    outputs = tuple(sigmas.new_empty(shape, dtype=dtype) for shape in shapes)
    return (*outputs, ray_indices.new_empty(n_rays + 1))


def _backward_impl(grad_rgb, grad_depth, grad_opacity, grad_weights, total, sigmas, rgbs, a, b, offsets, geometry,
                   density_activation, density_bias, distance_scale, backend, need_sigmas, need_rgbs, need_a, need_b):
    """Gradients to sigmas, rgbs, a and b (see GEOM_*), each empty when not needed."""
    eps = EG3D_TRANSMITTANCE_EPS if geometry == GEOM_MIDPOINTS else 0.0
    needs = (need_sigmas, need_rgbs, need_a, need_b)
    results = DENSE.kernel(backend, "bwd")(grad_rgb, grad_depth, grad_opacity, grad_weights, total, sigmas, rgbs, a,
                                           b, offsets, geometry, ACTIVATION_CODES[density_activation], density_bias,
                                           distance_scale, eps, *needs)
    return tuple(grad_like(g, x) if need else sigmas.new_empty(0) for g, x, need in zip(results, (sigmas, rgbs, a, b), needs))


def _backward_fake(grad_rgb, grad_depth, grad_opacity, grad_weights, total, sigmas, rgbs, a, b, *options):
    needs = options[-4:]
    return tuple(torch.empty_like(x) if need else sigmas.new_empty(0) for x, need in zip((sigmas, rgbs, a, b), needs))


def _per_ray_total(grad_rgb, grad_depth, grad_opacity, grad_weights, rgb, depth, opacity, weights, ray_indices):
    """sum_j w_j dL/dw_j of each ray, from its saved outputs: where the backward's suffix sums start."""
    total = (grad_rgb * rgb).sum(-1) + grad_opacity * opacity
    if grad_depth is not None:
        total = total + grad_depth * depth
    if grad_weights is not None:
        per_sample = grad_weights * weights
        total = total + per_sample.sum(-1) if ray_indices is None else total.index_add(0, ray_indices, per_sample)
    return total


def _setup_context(ctx, inputs, output, geometry, a, b, ray_indices, options):
    sigmas, rgbs = inputs[:2]
    rgb, depth, opacity, weights = output[:4]
    offsets = output[4] if len(output) > 4 else None
    ctx.save_for_backward(sigmas, rgbs, a, b, ray_indices, offsets, rgb, depth, opacity, weights)
    ctx.geometry = geometry
    ctx.has_depth = geometry != GEOM_DELTAS or b is not None
    ctx.density_activation, ctx.density_bias, ctx.distance_scale, ctx.t_threshold, ctx.return_weights, ctx.backend = options


def _geometry_gradients(ctx, grad_rgb, grad_depth, grad_opacity, grad_weights, needs):
    """Gradients to (sigmas, rgbs, a, b) through fastfields::composite_backward."""
    sigmas, rgbs, a, b, ray_indices, offsets, rgb, depth, opacity, weights = ctx.saved_tensors
    if ctx.t_threshold > 0:
        raise RuntimeError("composite: t_threshold > 0 (early ray termination) is for inference and has no gradient")
    dtype = rgb.dtype
    grad_rgb = torch.zeros_like(rgb) if grad_rgb is None else grad_rgb.to(dtype)
    grad_opacity = torch.zeros_like(opacity) if grad_opacity is None else grad_opacity.to(dtype)
    grad_depth = grad_depth.to(dtype) if grad_depth is not None and ctx.has_depth else None
    grad_weights = grad_weights.to(dtype) if grad_weights is not None and ctx.return_weights else None
    total = _per_ray_total(grad_rgb, grad_depth, grad_opacity, grad_weights, rgb, depth, opacity, weights, ray_indices)
    return _composite_backward_op(
        grad_rgb, grad_depth, grad_opacity, grad_weights, total, sigmas, rgbs, a, b, offsets, ctx.geometry,
        ctx.density_activation, ctx.density_bias, ctx.distance_scale, ctx.backend, *needs
    )


def _setup_dense(ctx, inputs, output):
    sigmas, rgbs, deltas, t, mode, activation, bias, scale, t_threshold, return_weights, backend = inputs
    geometry, a, b = _dense_geometry(deltas, t, mode)
    _setup_context(ctx, inputs, output, geometry, a, b, None, (activation, bias, scale, t_threshold, return_weights, backend))


def _grads_dense(ctx, grad_rgb, grad_depth, grad_opacity, grad_weights):
    """Gradients to (sigmas, rgbs, deltas, t): eg3d mode reads its intervals from t."""
    need_sigmas, need_rgbs, need_deltas, need_t = ctx.needs_input_grad[:4]
    eg3d = ctx.geometry == GEOM_MIDPOINTS
    needs = (need_sigmas, need_rgbs) + ((need_t, False) if eg3d else (need_deltas, need_t))
    g_sigmas, g_rgbs, g_a, g_b = _geometry_gradients(ctx, grad_rgb, grad_depth, grad_opacity, grad_weights, needs)
    return (g_sigmas, g_rgbs) + ((None, g_a) if eg3d else (g_a, g_b))


def _setup_packed(ctx, inputs, output):
    sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, activation, bias, scale, t_threshold, return_weights, backend = inputs
    options = (activation, bias, scale, t_threshold, return_weights, backend)
    _setup_context(ctx, inputs, output, GEOM_INTERVALS, t_starts, t_ends, ray_indices, options)


def _grads_packed(ctx, grad_rgb, grad_depth, grad_opacity, grad_weights, _grad_offsets):
    """Gradients to (sigmas, rgbs, t_starts, t_ends)."""
    return _geometry_gradients(ctx, grad_rgb, grad_depth, grad_opacity, grad_weights, tuple(ctx.needs_input_grad[:4]))


_OPTIONS = "str density_activation, float density_bias, float distance_scale, float t_threshold, bool return_weights, str backend"

BACKWARD = OpSpec(
    name="composite_backward",
    schema="(Tensor grad_rgb, Tensor? grad_depth, Tensor grad_opacity, Tensor? grad_weights, Tensor total, "
           "Tensor sigmas, Tensor rgbs, Tensor a, Tensor? b, Tensor? offsets, SymInt geometry, str density_activation, "
           "float density_bias, float distance_scale, str backend, bool need_sigmas, bool need_rgbs, bool need_a, "
           "bool need_b) -> (Tensor, Tensor, Tensor, Tensor)",
    impl=_backward_impl,
    fake=_backward_fake,
)
DENSE = OpSpec(
    name=OP,
    schema=f"(Tensor sigmas, Tensor rgbs, Tensor? deltas, Tensor? t, str mode, {_OPTIONS}) -> "
           "(Tensor, Tensor, Tensor, Tensor)",
    impl=_dense_impl,
    fake=_dense_fake,
    backends=IMPLEMENTED,
    kernels="composite",
    backward=BACKWARD,
    setup_context=_setup_dense,
    grads=_grads_dense,
)
PACKED = OpSpec(
    name=OP_PACKED,
    schema=f"(Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor ray_indices, SymInt n_rays, "
           f"{_OPTIONS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    impl=_packed_impl,
    fake=_packed_fake,
    backends=IMPLEMENTED,
    kernels="composite",
    setup_context=_setup_packed,
    grads=_grads_packed,
)
_composite_op = define(DENSE)
_composite_packed_op = define(PACKED)
_composite_backward_op = torch.ops.fastfields.composite_backward


def _finish(rgb, depth, opacity, weights, background, dtype) -> Outputs:
    rgb = add_background(rgb, opacity, background)
    return rgb.to(dtype), None if depth is None else depth.to(dtype), opacity.to(dtype), None if weights is None else weights.to(dtype)


def composite(
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
    backend: str = "auto",
) -> Outputs:
    """Volume-render dense samples along rays (NeRF quadrature, or EG3D's MipRayMarcher2).

    ``mode="nerf"``: per sample i, ``sigma_i = act(sigmas_i + density_bias)``,
    ``alpha_i = 1 - exp(-sigma_i * deltas_i * distance_scale)``,
    ``T_i = prod_{j<i} (1 - alpha_j)``, ``w_i = T_i * alpha_i``.

    ``mode="eg3d"`` (EG3D / OpenLRM's MipRayMarcher2): the S samples bound S - 1 intervals;
    interval i averages the raw sigmas, colours and depths of samples i and i + 1 (the
    activation comes after the averaging), its length is ``t[:, i + 1] - t[:, i]`` and the
    transmittance is ``T_i = prod_{j<i} (1 - alpha_j + 1e-10)``. OpenLRM's background is
    ``background`` here; EG3D's ``rgb * 2 - 1`` and its normalised, clamped depth are left to
    the caller: ``(depth / opacity).nan_to_num(float("inf")).clamp(t.min(), t.max())``.

    Empty samples: a raw sigma of ``-inf`` contributes zero density and gets zero gradient,
    whatever the activation (e.g. ``sigmas.masked_fill(~inside_box, float("-inf"))``); in
    eg3d mode an interval with an empty end is empty, which is what OpenLRM's out-of-box
    sentinel (a huge negative sigma) achieves. NaN sigmas propagate into their ray.

    Args:
        sigmas: ``[R, S]`` raw densities (before the activation).
        rgbs: ``[R, S, C]`` colours or features, float32/float16/bfloat16/float64.
        deltas: ``[R, S]`` interval lengths (nerf mode; None in eg3d mode).
        t: ``[R, S]`` sample depths; needed for ``depth`` and by eg3d mode.
        background: None, a number or a tensor broadcasting to ``[R, C]`` (``[C]``, ``[R, 1]``,
            ``[R, C]``): ``rgb += (1 - opacity) * background``.
        density_activation: ``"none"``, ``"relu"``, ``"softplus"``, ``"exp"`` or
            ``"trunc_exp"`` (exp with the gradient of exp(min(x, 15)), torch-ngp's). EG3D and
            OpenLRM: softplus with bias -1; TensoRF: softplus, bias -10, distance_scale 25.
        return_weights: also return the per-sample weights (otherwise never stored).
        t_threshold: inference only: a ray stops once ``T < t_threshold`` (later weights are 0).
            With gradients enabled and an input that requires grad it raises.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        ``rgb [R, C] = sum w c + (1 - opacity) background``, ``depth [R] = sum w t`` (None
        without ``t``), ``opacity [R] = sum w``, ``weights`` (``[R, S]``, eg3d ``[R, S - 1]``;
        None unless asked). All in the colours' dtype, accumulated in float32 (float64 for
        float64). Gradients (first order; no double backward) flow to sigmas, rgbs, deltas,
        t and background. sigmas, deltas and t may be float32 with half-precision colours;
        non-contiguous inputs are copied.

    Example:
        >>> import torch, fastfields as ff
        >>> t = torch.linspace(2.0, 6.0, 64).expand(1024, 64)          # [R, S] sample depths
        >>> deltas = torch.full_like(t, 4.0 / 64)
        >>> sigmas, rgbs = torch.randn(1024, 64), torch.rand(1024, 64, 3)
        >>> rgb, depth, opacity, _ = ff.composite(sigmas, rgbs, deltas, t=t, background=1.0,
        ...                                       density_activation="softplus", density_bias=-1.0)
        >>> rgb.shape, depth.shape, opacity.shape
        (torch.Size([1024, 3]), torch.Size([1024]), torch.Size([1024]))
    """
    _check_dense(sigmas, rgbs, deltas, t, background, mode)
    _check_options(OP, density_activation, density_bias, distance_scale, return_weights, t_threshold)
    _check_inference_only(OP, t_threshold, (sigmas, rgbs, deltas, t, background))
    name = DENSE.resolve(backend, rgbs.device)
    options = dict(density_activation=density_activation, density_bias=float(density_bias),
                   distance_scale=float(distance_scale), return_weights=return_weights, t_threshold=float(t_threshold))
    if name == "torch":
        return composite_reference(sigmas, rgbs, deltas, t=t, background=background, mode=mode, **options)
    rgb, depth, opacity, weights = _composite_op(
        sigmas, rgbs, deltas, t, mode, density_activation, float(density_bias), float(distance_scale),
        float(t_threshold), return_weights, name
    )
    return _finish(rgb, depth if t is not None else None, opacity, weights if return_weights else None, background, rgbs.dtype)


def composite_packed(
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
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Volume-render packed samples: nerfacc's flat layout, ``ray_indices`` sorted ascending.

    Sample i of ray ``ray_indices[i]`` covers ``[t_starts[i], t_ends[i]]``:
    ``alpha_i = 1 - exp(-act(sigmas_i + density_bias) * (t_ends_i - t_starts_i) * distance_scale)``,
    the transmittance runs over the samples of each ray in order, and depth uses the interval
    midpoints ``(t_starts + t_ends) / 2``, as nerfacc's ``rendering``. Rays without samples
    give the background, zero depth and zero opacity. A raw sigma of ``-inf`` is an empty
    sample. Options are those of :func:`composite`.

    Args:
        sigmas: ``[M]`` raw densities; rgbs: ``[M, C]``; t_starts, t_ends: ``[M]``.
        ray_indices: ``[M]`` int64, sorted ascending, each in ``[0, n_rays)``. Checked on
            every call: one O(M) vectorised comparison on the device and one device
            synchronisation (on the ``cpu`` backend one C++ pass that also finds the ray
            offsets; skipped while torch.compile traces the ``torch`` backend).
        n_rays: the number of rays R.

    Returns:
        ``rgb [R, C]``, ``depth [R]``, ``opacity [R]`` and ``weights [M]`` (None unless
        ``return_weights``), in the colours' dtype. Gradients flow to sigmas, rgbs,
        t_starts, t_ends and background.
    """
    _check_packed(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, background)
    _check_options(OP_PACKED, density_activation, density_bias, distance_scale, return_weights, t_threshold)
    _check_inference_only(OP_PACKED, t_threshold, (sigmas, rgbs, t_starts, t_ends, background))
    name = PACKED.resolve(backend, rgbs.device)
    if name == "torch":
        if not torch.compiler.is_compiling():
            check_ray_indices(ray_indices, n_rays)
        return composite_packed_reference(
            sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, background=background,
            density_activation=density_activation, density_bias=float(density_bias),
            distance_scale=float(distance_scale), return_weights=return_weights, t_threshold=float(t_threshold),
        )
    rgb, depth, opacity, weights, _ = _composite_packed_op(
        sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, density_activation, float(density_bias),
        float(distance_scale), float(t_threshold), return_weights, name
    )
    return _finish(rgb, depth, opacity, weights if return_weights else None, background, rgbs.dtype)
