"""``tensorf_vm_sample``: TensoRF's vector-matrix (VM) lookup, plane times line, fused with its reduction.

The public function validates its arguments, picks a backend and calls the custom op
``fastfields::tensorf_vm_sample`` (described by ``SPEC``, registered by
:func:`fastfields._op.define`), whose autograd calls ``fastfields::tensorf_vm_sample_backward``. Every backend implements the same contract,
the ``torch`` one being :func:`fastfields.reference.tensorf_vm_sample_reference`.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from .._enums import Padding, Reduce
from .._checks import (
    FLOAT_DTYPES,
    check_bool,
    check_choice,
    check_coords_dtype,
    check_dim,
    check_same_device,
    check_tensor,
)
from ..reference.tensorf_vm_sample import tensorf_vm_sample_reference
from .._op import OpSpec, backward_or_reference, define, gather_layout, gradients, gradients_fake, save_inputs

OP = "tensorf_vm_sample"
IMPLEMENTED = ("torch", "triton", "cuda", "cpu")

#: TensoRF's ``matMode``: planes XY, XZ, YZ (u along W, v along H).
TENSORF_MAT_MODE: Tuple[Tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))
#: TensoRF's ``vecMode``: lines Z, Y, X (line k is orthogonal to plane k).
TENSORF_VEC_MODE: Tuple[int, ...] = (2, 1, 0)
#: TensoRF (``TensorVMSplit``): ``F.grid_sample`` with zeros padding and align_corners=True.
TENSORF_VM = dict(mat_mode=TENSORF_MAT_MODE, vec_mode=TENSORF_VEC_MODE, padding="zeros", align_corners=True)
#: ZeroRF ``--rep=tensorf`` (``TensorialDecoder.get_point_code``, tensor_config
#: ``['xy', 'z', 'yz', 'x', 'zx', 'y']``, subreduce 2): planes XY, YZ, ZX, border padding,
#: align_corners=False. Its lines are named z, x, y, but ZeroRF samples a line ``[R, L]`` as a
#: ``[R, L, 1]`` texture at grid ``(axis, x)``: the named axis lands on the width-1 dimension,
#: where border padding makes it irrelevant, and every line is read along x. The preset
#: reproduces what ZeroRF computes (``vec_mode=(0, 0, 0)``); ``vec_mode=(2, 0, 1)`` is what its
#: names say.
ZERORF_VM = dict(mat_mode=((0, 1), (1, 2), (2, 0)), vec_mode=(0, 0, 0), padding="border", align_corners=False)

REDUCTIONS = ("concat", "sum")
REDUCE_CODES = Reduce.codes(REDUCTIONS)
PADDINGS = ("zeros", "border")
PADDING_CODES = Padding.codes(PADDINGS)

PLANES_LAYOUT = "[3, R, H, W] or three [R_k, H_k, W_k] (or TensoRF's [1, R_k, H_k, W_k])"
LINES_LAYOUT = "[3, R, L] or three [R_k, L_k] (or TensoRF's [1, R_k, L_k, 1])"


def output_shape(planes: Sequence[torch.Tensor], xyz: torch.Tensor, reduce: str) -> List[int]:
    N = xyz.shape[0]
    return [N, sum(p.shape[0] for p in planes)] if reduce == "concat" else [N]


# ---------------------------------------------------------------------------------------
# Argument handling: planes and lines become three views [R_k, H_k, W_k] and [R_k, L_k].


def _three(name: str, value, stacked_ndim: int, layout: str) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        if value.dim() != stacked_ndim or value.shape[0] != 3:
            raise ValueError(f"{OP}: {name} must be {layout}, got a tensor of shape {tuple(value.shape)}")
        if value.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{OP}: {name} must be float32, float16, bfloat16 or float64, got {value.dtype}")
        return list(value.unbind(0))
    try:
        items = list(value)
    except TypeError:
        items = None
    if items is None or len(items) != 3:
        got = type(value).__name__ if items is None else f"{len(items)} items"
        raise ValueError(f"{OP}: {name} must be {layout}, got {got}")
    return items


def _planes(planes) -> List[torch.Tensor]:
    found = []
    for k, plane in enumerate(_three("planes", planes, 4, PLANES_LAYOUT)):
        name = f"planes[{k}]"
        if isinstance(plane, torch.Tensor) and plane.dim() == 4:
            check_dim(OP, name, plane, 0, 1, "[1, R_k, H_k, W_k]")
            plane = plane.squeeze(0)  # a view whose backward is a view too (indexing would copy)
        check_tensor(OP, name, plane, 3, "[R_k, H_k, W_k]")
        if min(plane.shape) < 1:
            raise ValueError(f"{OP}: {name} must have R_k, H_k and W_k >= 1, got shape {tuple(plane.shape)}")
        found.append(plane)
    return found


def _lines(lines, planes: List[torch.Tensor]) -> List[torch.Tensor]:
    found = []
    for k, line in enumerate(_three("lines", lines, 3, LINES_LAYOUT)):
        name = f"lines[{k}]"
        if isinstance(line, torch.Tensor) and line.dim() == 4:
            check_dim(OP, name, line, 0, 1, "[1, R_k, L_k, 1]")
            check_dim(OP, name, line, 3, 1, "[1, R_k, L_k, 1]")
            line = line.squeeze(3).squeeze(0)
        check_tensor(OP, name, line, 2, "[R_k, L_k]")
        if line.shape[0] != planes[k].shape[0]:
            raise ValueError(
                f"{OP}: {name} must have R_{k} = {planes[k].shape[0]} components like planes[{k}], "
                f"got shape {tuple(line.shape)}"
            )
        if line.shape[1] < 1:
            raise ValueError(f"{OP}: {name} must have L_{k} >= 1, got shape {tuple(line.shape)}")
        found.append(line)
    return found


def _flat_mat_mode(mat_mode) -> List[int]:
    try:
        pairs = [tuple(int(a) for a in pair) for pair in mat_mode]
    except TypeError:
        pairs = []
    if len(pairs) != 3 or any(len(p) != 2 or not all(0 <= a <= 2 for a in p) for p in pairs):
        raise ValueError(
            f"{OP}: mat_mode must be three (u, v) pairs of xyz components in 0..2, e.g. TENSORF_MAT_MODE, "
            f"got {mat_mode!r}"
        )
    return [a for pair in pairs for a in pair]


def _flat_vec_mode(vec_mode) -> List[int]:
    try:
        axes = [int(a) for a in vec_mode]
    except (TypeError, ValueError):
        axes = []
    if len(axes) != 3 or not all(0 <= a <= 2 for a in axes):
        raise ValueError(
            f"{OP}: vec_mode must be three xyz components in 0..2, e.g. TENSORF_VEC_MODE, got {vec_mode!r}"
        )
    return axes


def _check(planes: List[torch.Tensor], lines: List[torch.Tensor], xyz, reduce, align_corners, padding) -> None:
    check_tensor(OP, "xyz", xyz, 2, "[N, 3]")
    check_dim(OP, "xyz", xyz, 1, 3, "[N, 3]")
    named = [(f"planes[{k}]", p) for k, p in enumerate(planes)]
    named += [(f"lines[{k}]", line) for k, line in enumerate(lines)] + [("xyz", xyz)]
    check_same_device(OP, named)
    for name, tensor in named[1:-1]:
        if tensor.dtype != planes[0].dtype:
            raise TypeError(f"{OP}: {name} must have the dtype of planes[0] ({planes[0].dtype}), got {tensor.dtype}")
    check_coords_dtype(OP, "xyz", xyz, "planes", planes[0])
    check_choice(OP, "reduce", reduce, REDUCTIONS)
    check_choice(OP, "padding", padding, PADDINGS)
    check_bool(OP, "align_corners", align_corners)


# ---------------------------------------------------------------------------------------
# The op spec. The torch backend is the reference itself, called directly so autograd and
# torch.compile see plain PyTorch. The custom ops take the planes and lines as six tensors;
# gradients come back in the layout of their input, unrequested ones as empty tensors.


def _pairs(mat_mode: List[int]):
    return tuple((mat_mode[2 * k], mat_mode[2 * k + 1]) for k in range(3))


def _reference(plane0, plane1, plane2, line0, line1, line2, xyz, mat_mode, vec_mode, reduce, align_corners, padding,
               backend="torch"):
    return tensorf_vm_sample_reference(
        [plane0, plane1, plane2], [line0, line1, line2], xyz, reduce=reduce, align_corners=align_corners,
        padding=padding, mat_mode=_pairs(mat_mode), vec_mode=vec_mode,
    )


def _gather_layout(planes: List[torch.Tensor], n_points: int) -> List[torch.Tensor]:
    """The planes channels-last where that pays (:func:`fastfields._op.gather_layout`): each
    point reads four texels of each plane."""
    return [gather_layout(p, 0, 4 * n_points) for p in planes]


def _forward(plane0, plane1, plane2, line0, line1, line2, xyz, mat_mode, vec_mode, reduce, align_corners, padding,
             backend):
    planes, lines = [plane0, plane1, plane2], [line0, line1, line2]
    if xyz.shape[0] == 0:
        return plane0.new_zeros(output_shape(planes, xyz, reduce))
    launch = SPEC.kernel(backend, "fwd")
    return launch(_gather_layout(planes, xyz.shape[0]), lines, xyz, mat_mode, vec_mode, REDUCE_CODES[reduce],
                  align_corners, PADDING_CODES[padding]).contiguous()


def _backward(grad_out, plane0, plane1, plane2, line0, line1, line2, xyz, mat_mode, vec_mode, reduce, align_corners,
              padding, backend, need_planes, need_lines, need_xyz):
    tensors = (plane0, plane1, plane2, line0, line1, line2, xyz)
    needs = [need_planes] * 3 + [need_lines] * 3 + [need_xyz]
    grads = [None] * 7
    if xyz.shape[0] > 0:
        planes = [plane0, plane1, plane2]
        if need_lines or need_xyz:  # plane values are read
            planes = _gather_layout(planes, xyz.shape[0])
        grads = SPEC.kernel(backend, "bwd")(
            grad_out, planes, [line0, line1, line2], xyz, mat_mode, vec_mode, REDUCE_CODES[reduce], align_corners,
            PADDING_CODES[padding], need_planes, need_lines, need_xyz,
        )
    return gradients(grads, tensors, needs)


def _backward_fake(grad_out, *args):
    need_planes, need_lines, need_xyz = args[-3:]
    return gradients_fake(args[:7], [need_planes] * 3 + [need_lines] * 3 + [need_xyz])


_TENSORS = "Tensor plane0, Tensor plane1, Tensor plane2, Tensor line0, Tensor line1, Tensor line2, Tensor xyz"
_OPTIONS = "SymInt[] mat_mode, SymInt[] vec_mode, str reduce, bool align_corners, str padding, str backend"

SPEC = OpSpec(
    name=OP,
    schema=f"({_TENSORS}, {_OPTIONS}) -> Tensor",
    impl=_forward,
    fake=lambda p0, p1, p2, l0, l1, l2, xyz, mat_mode, vec_mode, reduce, *_: p0.new_empty(
        output_shape([p0, p1, p2], xyz, reduce)),
    backends=IMPLEMENTED,
    kernels=OP,
    backward=OpSpec(
        name=f"{OP}_backward",
        schema=f"(Tensor grad_out, {_TENSORS}, {_OPTIONS}, bool need_planes, bool need_lines, bool need_xyz) -> "
               "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        impl=_backward,
        fake=_backward_fake,
    ),
    setup_context=save_inputs(7),
    # The kernels take one flag per group: all three planes, all three lines, xyz.
    grads=backward_or_reference(f"{OP}_backward", _reference, 7,
                                flags=lambda needs: (any(needs[0:3]), any(needs[3:6]), needs[6])),
)
_tensorf_vm_sample_op = define(SPEC)


def tensorf_vm_sample(
    planes,
    lines,
    xyz: torch.Tensor,
    *,
    reduce: str = "concat",
    align_corners: bool = True,
    padding: str = "zeros",
    mat_mode: Sequence[Tuple[int, int]] = TENSORF_MAT_MODE,
    vec_mode: Sequence[int] = TENSORF_VEC_MODE,
    backend: str = "auto",
) -> torch.Tensor:
    """TensoRF's vector-matrix (VM) lookup: sum or concatenation of plane-times-line components.

    Component ``(k, r)`` of a point is ``planes[k][r]`` sampled bilinearly at ``(u, v) =
    (xyz[:, mat_mode[k][0]], xyz[:, mat_mode[k][1]])`` (u along W, v along H, exactly
    ``F.grid_sample``) times ``lines[k][r]`` sampled linearly at ``xyz[:, vec_mode[k]]``
    (exactly ``F.grid_sample`` of the line as a ``[1, R_k, L_k, 1]`` texture at ``(0, coord)``,
    as TensoRF does).

    Args:
        planes: ``[3, R, H, W]``, or three tensors ``[R_k, H_k, W_k]`` (TensoRF's
            ``[1, R_k, H_k, W_k]`` parameters work as they are); component counts and
            resolutions may differ per plane. float32/float16/bfloat16/float64, any strides;
            channels-last storage (:func:`fastfields.planes_channels_last`) is the fast layout
            (compiled backends copy a component-major plane channels-last for the call when
            the points outnumber a quarter of its texels).
        lines: ``[3, R, L]``, or three tensors ``[R_k, L_k]`` (or ``[1, R_k, L_k, 1]``); line k
            has the R_k components of plane k. Same dtype as the planes.
        xyz: ``[N, 3]`` points in ``[-1, 1]`` (TensoRF's ``normalize_coord``). Same dtype as the
            planes or float32.
        reduce: ``"concat"`` -> ``[N, sum_k R_k]``, plane-major (component ``(k, r)`` at
            ``R_0 + ... + R_{k-1} + r``: TensoRF's appearance features before ``basis_mat``,
            ZeroRF's point code); ``"sum"`` -> ``[N]`` (TensoRF's density feature).
        align_corners, padding: as in ``F.grid_sample`` (padding ``"zeros"`` or ``"border"``),
            for planes and lines alike.
        mat_mode, vec_mode: for each pair k, the xyz components read by the plane (u, v) and
            by the line. Presets: ``**TENSORF_VM`` (the defaults) and ``**ZERORF_VM``.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        Features in the planes' dtype (accumulated in float32). Points with a non-finite
        coordinate read zeros and get zero gradient. Differentiable w.r.t. planes, lines and
        xyz (through both the plane and the line interpolation). Double backward is not part
        of this op's contract: a ``create_graph=True`` backward runs through the reference
        (slower), differentiable as far as ``F.grid_sample`` is.

    Example:
        >>> import torch, fastfields as ff
        >>> planes = [torch.randn(1, r, 128, 128) for r in (16, 4, 4)]  # TensoRF density_plane
        >>> lines = [torch.randn(1, r, 128, 1) for r in (16, 4, 4)]     # TensoRF density_line
        >>> xyz = torch.rand(1000, 3) * 2 - 1
        >>> ff.tensorf_vm_sample(planes, lines, xyz, reduce="sum").shape
        torch.Size([1000])
        >>> ff.tensorf_vm_sample(planes, lines, xyz, **ff.ZERORF_VM).shape
        torch.Size([1000, 24])
    """
    plane_list = _planes(planes)
    line_list = _lines(lines, plane_list)
    _check(plane_list, line_list, xyz, reduce, align_corners, padding)
    flat_mat_mode = _flat_mat_mode(mat_mode)
    flat_vec_mode = _flat_vec_mode(vec_mode)
    name = SPEC.resolve(backend, xyz.device)
    args = (*plane_list, *line_list, xyz, flat_mat_mode, flat_vec_mode, reduce, align_corners, padding)
    if name == "torch":
        return _reference(*args)
    return _tensorf_vm_sample_op(*args, name)
