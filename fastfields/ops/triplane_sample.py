"""``triplane_sample``: bilinear lookup of three feature planes, fused with their reduction.

The public function validates its arguments, picks a backend and calls the custom op
``fastfields::triplane_sample`` (described by ``SPEC``, registered by
:func:`fastfields._op.define`), whose autograd calls ``fastfields::triplane_sample_backward``.
Every backend implements the same contract, the ``torch`` one being
:func:`fastfields.reference.triplane_sample_reference`.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .._enums import Padding, Reduce
from .._checks import check_bool, check_choice, check_coords_dtype, check_dim, check_same_device, check_tensor
from ..reference.triplane_sample import triplane_sample_reference
from .._op import OpSpec, backward_or_reference, define, gather_layout, gradients, gradients_fake, save_inputs

OP = "triplane_sample"
IMPLEMENTED = ("torch", "triton", "cuda", "cpu")

Axes = Sequence[Tuple[int, int]]
#: What EG3D's ``generate_planes``/``project_onto_planes`` compute: XY, XZ and ZX (its third
#: plane repeats XZ transposed, a known bug its checkpoints depend on).
EG3D_AXES: Axes = ((0, 1), (0, 2), (2, 0))
#: OpenLRM and InstantMesh: XY, XZ, ZY.
LRM_AXES: Axes = ((0, 1), (0, 2), (2, 1))
#: TripoSR and SSDNeRF: XY, XZ, YZ.
XYZ_AXES: Axes = ((0, 1), (0, 2), (1, 2))

REDUCTIONS = ("none", "sum", "mean", "prod", "concat")
REDUCE_CODES = Reduce.codes(REDUCTIONS)
PADDINGS = ("zeros", "border")
PADDING_CODES = Padding.codes(PADDINGS)


def planes_channels_last(planes: torch.Tensor) -> torch.Tensor:
    """The same planes ``[..., C, H, W]`` stored with channels innermost (stride 1).

    Shape and values are unchanged; a gather-bound lookup then reads each bilinear
    corner as one contiguous vector of C values, the fast layout for every backend.
    """
    if planes.dim() < 3:
        raise ValueError(f"planes_channels_last: planes must be [..., C, H, W], got shape {tuple(planes.shape)}")
    lead = planes.dim() - 3
    order = list(range(lead)) + [lead + 1, lead + 2, lead]
    inverse = list(range(lead)) + [planes.dim() - 1, lead, lead + 1]
    return planes.permute(order).contiguous().permute(inverse)


def output_shape(planes: torch.Tensor, xyz: torch.Tensor, reduce: str) -> List[int]:
    B, n_planes, C = planes.shape[:3]
    N = xyz.shape[1]
    return {"none": [B, N, n_planes, C], "concat": [B, N, n_planes * C]}.get(reduce, [B, N, C])


def _flat_axes(axes, op: str = OP) -> List[int]:
    try:
        if isinstance(axes, str) or any(isinstance(pair, str) for pair in axes):
            raise TypeError(axes)  # "xy": three pairs of ints, not letters
        pairs = [tuple(int(a) for a in pair) for pair in axes]
    except (TypeError, ValueError):
        pairs = []
    if len(pairs) != 3 or any(len(p) != 2 or not all(0 <= a <= 2 for a in p) for p in pairs):
        raise ValueError(f"{op}: axes must be three (u, v) pairs of xyz components in 0..2, e.g. EG3D_AXES, got {axes!r}")
    return [a for pair in pairs for a in pair]


def _check(planes, xyz, reduce, align_corners, padding) -> None:
    check_tensor(OP, "planes", planes, 5, "[B, 3, C, H, W]")
    check_tensor(OP, "xyz", xyz, 3, "[B, N, 3]")
    check_dim(OP, "planes", planes, 1, 3, "[B, 3, C, H, W]")
    check_dim(OP, "xyz", xyz, 2, 3, "[B, N, 3]")
    if xyz.shape[0] != planes.shape[0]:
        raise ValueError(f"{OP}: xyz batch size {xyz.shape[0]} does not match planes batch size {planes.shape[0]}")
    if min(planes.shape[2:]) < 1:
        raise ValueError(f"{OP}: planes must have C, H and W >= 1, got shape {tuple(planes.shape)}")
    check_same_device(OP, [("planes", planes), ("xyz", xyz)])
    check_coords_dtype(OP, "xyz", xyz, "planes", planes)
    check_choice(OP, "reduce", reduce, REDUCTIONS)
    check_choice(OP, "padding", padding, PADDINGS)
    check_bool(OP, "align_corners", align_corners)


# ---------------------------------------------------------------------------------------
# The op spec. The torch backend is the reference itself, called directly so autograd,
# double backward and torch.compile see plain PyTorch; the compiled backends run the
# custom ops below. Gradients come back in the layout of their input, so the fake
# implementations can promise strides; unrequested gradients are empty tensors.


def _pairs(axes: List[int]):
    return tuple((axes[2 * k], axes[2 * k + 1]) for k in range(3))


def _reference(planes, xyz, axes, reduce, align_corners, padding, backend="torch"):
    return triplane_sample_reference(planes, xyz, reduce=reduce, align_corners=align_corners, padding=padding,
                                     axes=_pairs(axes))


def _gather_layout(planes: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """The planes channels-last where that pays (:func:`fastfields._op.gather_layout`): each
    point reads four texels of each of its three planes."""
    return gather_layout(planes, 2, 12 * xyz.shape[0] * xyz.shape[1])


def _forward(planes, xyz, axes, reduce, align_corners, padding, backend):
    if xyz.shape[1] == 0:
        return planes.new_zeros(output_shape(planes, xyz, reduce))
    launch = SPEC.kernel(backend, "fwd")
    return launch(_gather_layout(planes, xyz), xyz, axes, REDUCE_CODES[reduce], align_corners,
                  PADDING_CODES[padding]).contiguous()


def _backward(grad_out, planes, xyz, axes, reduce, align_corners, padding, backend, need_planes, need_xyz):
    needs = (need_planes, need_xyz)
    grads = (None, None)
    if xyz.shape[1] > 0:
        launch = SPEC.kernel(backend, "bwd")
        read = planes
        if need_xyz or reduce == "prod":  # plane values are read
            read = _gather_layout(planes, xyz)
        grads = launch(grad_out, read, xyz, axes, REDUCE_CODES[reduce], align_corners, PADDING_CODES[padding], *needs)
    return gradients(grads, (planes, xyz), needs)


SPEC = OpSpec(
    name=OP,
    schema="(Tensor planes, Tensor xyz, SymInt[] axes, str reduce, bool align_corners, str padding, str backend) -> Tensor",
    impl=_forward,
    fake=lambda planes, xyz, axes, reduce, *_: planes.new_empty(output_shape(planes, xyz, reduce)),
    backends=IMPLEMENTED,
    kernels=OP,
    backward=OpSpec(
        name=f"{OP}_backward",
        schema="(Tensor grad_out, Tensor planes, Tensor xyz, SymInt[] axes, str reduce, bool align_corners, str padding, "
               "str backend, bool need_planes, bool need_xyz) -> (Tensor, Tensor)",
        impl=_backward,
        fake=lambda grad_out, planes, xyz, *options: gradients_fake((planes, xyz), options[-2:]),
    ),
    setup_context=save_inputs(2),
    grads=backward_or_reference(f"{OP}_backward", _reference, 2),
)
_triplane_sample_op = define(SPEC)


def triplane_sample(
    planes: torch.Tensor,
    xyz: torch.Tensor,
    *,
    reduce: str = "mean",
    align_corners: bool = False,
    padding: str = "zeros",
    axes: Axes = EG3D_AXES,
    backend: str = "auto",
) -> torch.Tensor:
    """Bilinearly sample three feature planes at 3D points and reduce over the planes.

    Args:
        planes: ``[B, 3, C, H, W]`` float32/float16/bfloat16/float64, any strides;
            channels-last storage (:func:`planes_channels_last`) is the fast layout
            (compiled backends copy other planes channels-last for the call when the points
            outnumber a quarter of a plane's texels; converting once saves that copy per call).
        xyz: ``[B, N, 3]`` points in normalised plane coordinates (``[-1, 1]`` spans each
            plane; callers scale world points by ``2 / box_warp``). Same dtype as
            ``planes`` or float32.
        reduce: ``"none"`` -> ``[B, N, 3, C]``; ``"sum"``, ``"mean"``, ``"prod"`` ->
            ``[B, N, C]``; ``"concat"`` -> ``[B, N, 3C]`` (plane-major, ``[f_0, f_1, f_2]``).
        align_corners, padding: as in ``F.grid_sample`` (padding ``"zeros"`` or ``"border"``).
        axes: for each plane, the xyz components read as (u along W, v along H).
            ``EG3D_AXES`` (default), ``LRM_AXES``, ``XYZ_AXES`` or any three pairs.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        Features in the planes' dtype (accumulated in float32). Points with a non-finite
        coordinate read zeros and get zero gradient. Differentiable w.r.t. ``planes`` and
        ``xyz``, twice w.r.t. ``xyz`` (``create_graph=True`` takes a slower reference path).

    Example:
        >>> import torch, fastfields as ff
        >>> planes = torch.randn(1, 3, 32, 64, 64)
        >>> xyz = torch.rand(1, 1000, 3) * 2 - 1
        >>> ff.triplane_sample(planes, xyz, reduce="concat", axes=ff.LRM_AXES).shape
        torch.Size([1, 1000, 96])
    """
    _check(planes, xyz, reduce, align_corners, padding)
    flat_axes = _flat_axes(axes)
    name = SPEC.resolve(backend, planes.device)
    if name == "torch":
        return _reference(planes, xyz, flat_axes, reduce, align_corners, padding)
    return _triplane_sample_op(planes, xyz, flat_axes, reduce, align_corners, padding, name)
