"""``voxel_sample``: trilinear lookup of a feature volume at 3D points.

The public function validates its arguments, picks a backend and calls the custom op
``fastfields::voxel_sample`` (described by ``SPEC``, registered by :func:`fastfields._op.define`),
whose autograd calls ``fastfields::voxel_sample_backward``. Every backend implements the same contract, the
``torch`` one being :func:`fastfields.reference.voxel_sample.voxel_sample_reference`.
"""

from __future__ import annotations

from typing import List

import torch

from .._enums import Padding
from .._checks import check_bool, check_choice, check_coords_dtype, check_dim, check_same_device, check_tensor
from ..reference.voxel_sample import voxel_sample_reference
from .._op import OpSpec, backward_or_reference, define, gather_layout, gradients, gradients_fake, save_inputs

OP = "voxel_sample"
IMPLEMENTED = ("torch", "triton", "cuda", "cpu")

PADDINGS = ("zeros", "border")
PADDING_CODES = Padding.codes(PADDINGS)


def volume_channels_last(volume: torch.Tensor) -> torch.Tensor:
    """The same volume ``[..., C, D, H, W]`` stored with channels innermost (stride 1).

    Shape and values are unchanged; a gather-bound lookup then reads each trilinear corner
    as one contiguous vector of C values, the fast layout for every backend. For a 5-D
    volume this is ``volume.contiguous(memory_format=torch.channels_last_3d)``.
    """
    if volume.dim() < 4:
        raise ValueError(f"volume_channels_last: volume must be [..., C, D, H, W], got shape {tuple(volume.shape)}")
    lead = volume.dim() - 4
    order = list(range(lead)) + [lead + 1, lead + 2, lead + 3, lead]
    inverse = list(range(lead)) + [volume.dim() - 1, lead, lead + 1, lead + 2]
    return volume.permute(order).contiguous().permute(inverse)


def output_shape(volume: torch.Tensor, xyz: torch.Tensor) -> List[int]:
    return [volume.shape[0], xyz.shape[1], volume.shape[1]]


def _check(volume, xyz, align_corners, padding) -> None:
    check_tensor(OP, "volume", volume, 5, "[B, C, D, H, W]")
    check_tensor(OP, "xyz", xyz, 3, "[B, N, 3]")
    check_dim(OP, "xyz", xyz, 2, 3, "[B, N, 3]")
    if xyz.shape[0] != volume.shape[0]:
        raise ValueError(f"{OP}: xyz batch size {xyz.shape[0]} does not match volume batch size {volume.shape[0]}")
    if min(volume.shape[1:]) < 1:
        raise ValueError(f"{OP}: volume must have C, D, H and W >= 1, got shape {tuple(volume.shape)}")
    check_same_device(OP, [("volume", volume), ("xyz", xyz)])
    check_coords_dtype(OP, "xyz", xyz, "volume", volume)
    check_choice(OP, "padding", padding, PADDINGS)
    check_bool(OP, "align_corners", align_corners)


# ---------------------------------------------------------------------------------------
# The op spec. The torch backend is the reference itself, called directly so autograd,
# double backward and torch.compile see plain PyTorch; the compiled backends run the
# custom ops below and route create_graph=True through the reference. Gradients come back
# in the layout of their input; unrequested gradients are empty tensors.


def _reference(volume, xyz, align_corners, padding, backend="torch"):
    return voxel_sample_reference(volume, xyz, align_corners=align_corners, padding=padding)


def _gather_layout(volume: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """The volume channels-last where that pays (:func:`fastfields._op.gather_layout`): each
    point reads eight voxels."""
    return gather_layout(volume, 1, 8 * xyz.shape[0] * xyz.shape[1])


def _forward(volume, xyz, align_corners, padding, backend):
    if xyz.numel() == 0:
        return volume.new_zeros(output_shape(volume, xyz))
    launch = SPEC.kernel(backend, "fwd")
    return launch(_gather_layout(volume, xyz), xyz, align_corners, PADDING_CODES[padding]).contiguous()


def _backward(grad_out, volume, xyz, align_corners, padding, backend, need_volume, need_xyz):
    needs = (need_volume, need_xyz)
    grads = (None, None)
    if xyz.numel() > 0:
        read = _gather_layout(volume, xyz) if need_xyz else volume  # volume values are read for xyz only
        grads = SPEC.kernel(backend, "bwd")(grad_out, read, xyz, align_corners, PADDING_CODES[padding], *needs)
    return gradients(grads, (volume, xyz), needs)


SPEC = OpSpec(
    name=OP,
    schema="(Tensor volume, Tensor xyz, bool align_corners, str padding, str backend) -> Tensor",
    impl=_forward,
    fake=lambda volume, xyz, *_: volume.new_empty(output_shape(volume, xyz)),
    backends=IMPLEMENTED,
    kernels=OP,
    backward=OpSpec(
        name=f"{OP}_backward",
        schema="(Tensor grad_out, Tensor volume, Tensor xyz, bool align_corners, str padding, str backend, "
               "bool need_volume, bool need_xyz) -> (Tensor, Tensor)",
        impl=_backward,
        fake=lambda grad_out, volume, xyz, *options: gradients_fake((volume, xyz), options[-2:]),
    ),
    setup_context=save_inputs(2),
    grads=backward_or_reference(f"{OP}_backward", _reference, 2),
)
_voxel_sample_op = define(SPEC)


def voxel_sample(
    volume: torch.Tensor,
    xyz: torch.Tensor,
    *,
    align_corners: bool = False,
    padding: str = "zeros",
    backend: str = "auto",
) -> torch.Tensor:
    """Trilinearly sample a feature volume at 3D points.

    Args:
        volume: ``[B, C, D, H, W]`` float32/float16/bfloat16/float64, any strides;
            channels-last storage (:func:`volume_channels_last`) is the fast layout
            (compiled backends copy another volume channels-last for the call when the points
            outnumber an eighth of its voxels; converting once saves that copy per call).
        xyz: ``[B, N, 3]`` points in normalised coordinates, ``[-1, 1]`` spanning the
            volume: ``xyz[..., 0]`` along W, ``xyz[..., 1]`` along H, ``xyz[..., 2]`` along D.
            Same dtype as ``volume`` or float32.
        align_corners, padding: as in ``F.grid_sample`` (padding ``"zeros"`` or ``"border"``).
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        ``[B, N, C]`` in the volume's dtype (accumulated in float32), equal to
        ``F.grid_sample(volume, xyz.view(B, N, 1, 1, 3), mode="bilinear")`` reshaped to
        ``[B, N, C]``. Points with a non-finite coordinate read zeros and get zero gradient.
        Differentiable w.r.t. ``volume`` and ``xyz``, twice w.r.t. ``xyz``
        (``create_graph=True`` takes a slower reference path).

    Example:
        >>> import torch, fastfields as ff
        >>> volume = ff.volume_channels_last(torch.randn(1, 4, 32, 32, 32))
        >>> xyz = torch.rand(1, 1000, 3) * 2 - 1
        >>> ff.voxel_sample(volume, xyz).shape
        torch.Size([1, 1000, 4])
    """
    _check(volume, xyz, align_corners, padding)
    name = SPEC.resolve(backend, volume.device)
    if name == "torch":
        return _reference(volume, xyz, align_corners, padding)
    return _voxel_sample_op(volume, xyz, align_corners, padding, name)
