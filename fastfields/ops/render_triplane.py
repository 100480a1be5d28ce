"""``render_triplane``'s fused pass: triplane lookup, the decoder MLP and compositing in one kernel.

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

This module holds only the pass: :func:`render_pass` over given samples, its options
(:class:`RenderPassOptions`), the decoder as the kernels read it (:class:`FusedDecoder`,
from :meth:`fastfields.nn.TriplaneDecoder.fused`) and the custom ops
``fastfields::render_triplane_pass`` / ``_backward`` on the ``triton`` and ``cpu``
backends. Where the samples go and EG3D's two-pass orchestration live in
:mod:`fastfields.rendering.triplane` (the public :func:`fastfields.render_triplane`); the
``torch`` backend is :mod:`fastfields.reference.render_triplane`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .._enums import ColorActivation, DensityActivation, HiddenActivation, Padding, Reduce, RenderMode
from .._op import OpSpec, define
from ..reference.composite import ACTIVATIONS
from ..reference.render_triplane import COLOR_ACTIVATIONS, HIDDEN_ACTIVATIONS

OP = "render_triplane"
IMPLEMENTED = ("torch", "triton", "cpu")
REDUCES = ("concat", "sum", "mean")
MODES = RenderMode.names()  # ("nerf", "eg3d")
PADDINGS = Padding.names()  # ("zeros", "border")
#: The widest hidden layer the fused kernels keep in registers.
MAX_FUSED_HIDDEN = 128

# Integer codes the kernels read (kernels/render_triplane.py, csrc/cpu/render_triplane.cpp).
REDUCE_CODES = Reduce.codes(REDUCES)
MODE_CODES = RenderMode.codes(MODES)
PADDING_CODES = Padding.codes(PADDINGS)
HIDDEN_CODES = HiddenActivation.codes(HIDDEN_ACTIVATIONS)
COLOR_CODES = ColorActivation.codes(COLOR_ACTIVATIONS)
DENSITY_CODES = DensityActivation.codes(ACTIVATIONS)

PassOutputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


# ---------------------------------------------------------------------------------------
# The decoder as the kernels see it, and the pass options.


@dataclass(frozen=True)
class FusedDecoder:
    """A decoder MLP as the fused kernels run it: Linear weights ``[out, in]`` and biases,
    first to last, the hidden activation and the colour activation (see
    :meth:`fastfields.nn.TriplaneDecoder.fused`)."""

    weights: List[torch.Tensor]
    biases: List[torch.Tensor]
    activation: str
    color_act: str

    @property
    def in_features(self) -> int:
        return self.weights[0].shape[1]

    @property
    def out_features(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def hidden(self) -> int:
        return self.weights[0].shape[0]

    def why_not_fusable(self) -> Optional[str]:
        """None if the kernels can run this decoder, else why not."""
        if self.hidden > MAX_FUSED_HIDDEN:
            return f"the hidden width {self.hidden} exceeds {MAX_FUSED_HIDDEN}"
        if any(p.dtype != torch.float32 for p in self.weights + self.biases):
            return "the decoder parameters are not float32"
        return None

    @staticmethod
    def pack(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]):
        """The layers as every backend's kernels take them: first ``[Hd, F]`` / ``[Hd]``, the
        hidden ones stacked ``[L, Hd, Hd]`` / ``[L, Hd]`` (L may be 0), last ``[O, Hd]`` / ``[O]``."""
        first_w, first_b = weights[0].contiguous(), biases[0].contiguous()
        last_w, last_b = weights[-1].contiguous(), biases[-1].contiguous()
        hidden = first_w.shape[0]
        if len(weights) > 2:
            hidden_w = torch.stack(list(weights[1:-1])).contiguous()
            hidden_b = torch.stack(list(biases[1:-1])).contiguous()
        else:
            hidden_w = first_w.new_empty(0, hidden, hidden)
            hidden_b = first_w.new_empty(0, hidden)
        return first_w, first_b, hidden_w, hidden_b, last_w, last_b


#: Kept for code written against the earlier name.
DecoderSpec = FusedDecoder


@dataclass(frozen=True)
class RenderPassOptions:
    """Everything a pass needs besides tensors (validated by :func:`fastfields.render_triplane`).

    ``axes`` is flat (six xyz components: u and v of each plane); ``scale`` maps world
    points to plane coordinates (``2 / box_warp``); the rest are :func:`fastfields.render_triplane`'s
    options of the same names.
    """

    axes: Tuple[int, ...]
    reduce: str = "concat"
    align_corners: bool = False
    padding: str = "zeros"
    scale: float = 1.0
    mode: str = "eg3d"
    density_activation: str = "softplus"
    density_bias: float = -1.0
    distance_scale: float = 1.0
    mask_outside: bool = True
    t_threshold: float = 0.0
    return_weights: bool = False

    def replace(self, **changes) -> "RenderPassOptions":
        return dataclasses.replace(self, **changes)

    def op_args(self, decoder: FusedDecoder) -> tuple:
        """The options as ``fastfields::render_triplane_pass`` takes them (after the tensors)."""
        return (list(self.axes), self.reduce, self.align_corners, self.padding, self.scale, decoder.activation,
                decoder.color_act, self.mode, self.density_activation, self.density_bias, self.distance_scale,
                self.mask_outside, self.t_threshold, self.return_weights)

    def reference_kwargs(self) -> dict:
        """The options as :func:`fastfields.reference.render_triplane.render_pass_reference` takes them."""
        axes = tuple((self.axes[2 * k], self.axes[2 * k + 1]) for k in range(3))
        return dict(axes=axes, reduce=self.reduce, align_corners=self.align_corners, padding=self.padding,
                    scale=self.scale, mode=self.mode, density_activation=self.density_activation,
                    density_bias=self.density_bias, distance_scale=self.distance_scale,
                    mask_outside=self.mask_outside, return_weights=self.return_weights, t_threshold=self.t_threshold)


def _kernel_options(axes, reduce, align_corners, padding, scale, activation, color_act, mode, density_activation,
                    density_bias, distance_scale, mask_outside, t_threshold, return_weights):
    """The op's options as every backend's kernels take them, codes for strings (see
    kernels/render_triplane.py ``render_triplane_fwd``)."""
    return (
        list(axes), REDUCE_CODES[reduce], align_corners, PADDING_CODES[padding], scale, HIDDEN_CODES[activation],
        COLOR_CODES[color_act], MODE_CODES[mode], DENSITY_CODES[density_activation], density_bias, distance_scale,
        mask_outside, t_threshold, return_weights,
    )


# ---------------------------------------------------------------------------------------
# The op spec.


def _forward(planes, rays_o, rays_d, t, deltas, weights, biases, *options):
    """rgb [B, R, out - 1], depth [B, R], opacity [B, R] (float32, no background) and the
    weights [B, R, S'] (empty unless asked)."""
    *options, backend = options
    planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()
    launch = SPEC.kernel(backend, "fwd")
    return tuple(launch(planes_cl, rays_o, rays_d, t, deltas, *FusedDecoder.pack(weights, biases),
                        *_kernel_options(*options)))


def _forward_fake(planes, rays_o, rays_d, t, deltas, weights, biases, axes, reduce, align_corners, padding, scale,
                  activation, color_act, mode, *rest):
    return_weights = rest[-2]
    B, R, S = t.shape
    width = max(S - 1, 0) if mode == "eg3d" else S
    shapes = [B, R, weights[-1].shape[0] - 1], [B, R], [B, R], [B, R, width] if return_weights else [0]
    return tuple(t.new_empty(shape, dtype=torch.float32) for shape in shapes)


def _backward(grad_rgb, grad_depth, grad_opacity, total, planes, rays_o, rays_d, t, deltas, weights, biases, *options):
    """Gradients to the planes (their layout and dtype) and to each decoder weight and bias."""
    *options, backend = options
    planes_cl = planes.permute(0, 1, 3, 4, 2).contiguous()
    grads = (grad_rgb.contiguous(), grad_depth.contiguous(), grad_opacity.contiguous(), total.contiguous())
    g_planes_cl, g_first_w, g_first_b, g_hidden_w, g_hidden_b, g_last_w, g_last_b = SPEC.kernel(backend, "bwd")(
        *grads, planes_cl, rays_o, rays_d, t, deltas, *FusedDecoder.pack(weights, biases),
        *_kernel_options(*options, 0.0, False),
    )
    g_planes = torch.empty_like(planes)
    g_planes.copy_(g_planes_cl.permute(0, 1, 4, 2, 3))
    # unbind gives views of one tensor, and a custom op's outputs may not alias each other
    g_weights = [g_first_w] + [g.clone() for g in g_hidden_w.unbind(0)] + [g_last_w]
    g_biases = [g_first_b] + [g.clone() for g in g_hidden_b.unbind(0)] + [g_last_b]
    return g_planes, [g.contiguous() for g in g_weights], [g.contiguous() for g in g_biases]


def _backward_fake(grad_rgb, grad_depth, grad_opacity, total, planes, rays_o, rays_d, t, deltas, weights, biases,
                   *options):
    return torch.empty_like(planes), [torch.empty_like(w) for w in weights], [torch.empty_like(b) for b in biases]


def _setup_context(ctx, inputs, output):
    (planes, rays_o, rays_d, t, deltas, weights, biases, *options) = inputs
    rgb, depth, opacity, _ = output
    ctx.save_for_backward(planes, rays_o, rays_d, t, deltas, rgb, depth, opacity, *weights, *biases)
    ctx.n_layers = len(weights)
    ctx.options = options


def _grads(ctx, grad_rgb, grad_depth, grad_opacity, _grad_weights):
    """Gradients to (planes, rays_o, rays_d, t, deltas, weights, biases): the rays, depths and
    deltas get none (render_triplane takes the unfused path when they need one)."""
    planes, rays_o, rays_d, t, deltas, rgb, depth, opacity, *params = ctx.saved_tensors
    weights, biases = params[: ctx.n_layers], params[ctx.n_layers :]
    *options, t_threshold, _return_weights, backend = ctx.options
    if t_threshold > 0:
        raise RuntimeError(f"{OP}: t_threshold > 0 (early ray termination) is for inference and has no gradient")
    grad_rgb = torch.zeros_like(rgb) if grad_rgb is None else grad_rgb.float()
    grad_depth = torch.zeros_like(depth) if grad_depth is None else grad_depth.float()
    grad_opacity = torch.zeros_like(opacity) if grad_opacity is None else grad_opacity.float()
    total = (grad_rgb * rgb).sum(-1) + grad_depth * depth + grad_opacity * opacity
    g_planes, g_weights, g_biases = torch.ops.fastfields.render_triplane_pass_backward(
        grad_rgb, grad_depth, grad_opacity, total, planes, rays_o, rays_d, t, deltas, list(weights), list(biases),
        *options, backend,
    )
    return g_planes, None, None, None, None, g_weights, g_biases


_PASS = ("Tensor planes, Tensor rays_o, Tensor rays_d, Tensor t, Tensor? deltas, Tensor[] weights, Tensor[] biases, "
         "SymInt[] axes, str reduce, bool align_corners, str padding, float scale, str activation, str color_act, "
         "str mode, str density_activation, float density_bias, float distance_scale, bool mask_outside")

SPEC = OpSpec(
    name="render_triplane_pass",
    schema=f"({_PASS}, float t_threshold, bool return_weights, str backend) -> (Tensor, Tensor, Tensor, Tensor)",
    impl=_forward,
    fake=_forward_fake,
    backends=IMPLEMENTED,
    kernels=OP,
    backward=OpSpec(
        name="render_triplane_pass_backward",
        schema=f"(Tensor grad_rgb, Tensor grad_depth, Tensor grad_opacity, Tensor total, {_PASS}, str backend) -> "
               "(Tensor, Tensor[], Tensor[])",
        impl=_backward,
        fake=_backward_fake,
    ),
    setup_context=_setup_context,
    grads=_grads,
)
_render_pass_op = define(SPEC)


def render_pass(planes: torch.Tensor, rays_o: torch.Tensor, rays_d: torch.Tensor, t: torch.Tensor,
                deltas: Optional[torch.Tensor], decoder: FusedDecoder, options: RenderPassOptions,
                backend: str) -> PassOutputs:
    """One fused pass over given samples, on the ``triton`` or ``cpu`` backend.

    Args:
        planes: ``[B, 3, C, H, W]`` float32 / float16 / bfloat16.
        rays_o, rays_d: ``[B, R, 3]``; t: ``[B, R, S]`` sorted sample depths; deltas:
            ``[B, R, S]`` interval lengths in nerf mode, None in eg3d mode.
        decoder: the MLP as :meth:`fastfields.nn.TriplaneDecoder.fused` gives it.
        options: :class:`RenderPassOptions`; backend: ``"triton"`` or ``"cpu"``.

    Returns:
        ``rgb [B, R, out - 1]``, ``depth [B, R]``, ``opacity [B, R]`` (float32, no
        background) and the weights ``[B, R, S']`` or None unless ``options.return_weights``.
        Differentiable w.r.t. the planes and the decoder parameters.
    """
    rgb, depth, opacity, weights = _render_pass_op(
        planes, rays_o.float().contiguous(), rays_d.float().contiguous(), t.contiguous(),
        None if deltas is None else deltas.contiguous(), decoder.weights, decoder.biases, *options.op_args(decoder),
        backend,
    )
    return rgb, depth, opacity, weights if options.return_weights else None


def __getattr__(name: str):
    # The public renderer moved to fastfields.rendering.triplane (it imports this module, so
    # it is re-exported lazily here, where code written before the move imports it from).
    if name in ("render_triplane", "eg3d_render_options", "CONVENTIONS"):
        from ..rendering import triplane

        return getattr(triplane, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
