"""``voxel_sample``: trilinear lookup of a feature volume at 3D points.

The public function validates its arguments, picks a backend and calls the custom op
``fastfields::voxel_sample``; autograd is registered on that op and calls
``fastfields::voxel_sample_backward``. Every backend implements the same contract, the
``torch`` one being :func:`fastfields.reference.voxel_sample.voxel_sample_reference`.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from .. import _backend
from .._enums import Padding
from .._checks import check_bool, check_choice, check_coords_dtype, check_dim, check_same_device, check_tensor
from ..reference.voxel_sample import voxel_sample_reference
from ._common import compiled_ops, grad_like

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
# Compiled backends (forward and backward), selected by name. The torch backend is the
# reference itself, called directly so autograd, double backward and torch.compile see
# plain PyTorch; the compiled backends route create_graph=True through it.


def _differentiable_backward(grad_out, volume, xyz, align_corners, padding, need_volume, need_xyz):
    """Gradients through the reference with ``create_graph=True``, so they can be differentiated again."""
    with torch.enable_grad():
        wanted = [t for t, need in zip((volume, xyz), (need_volume, need_xyz)) if need]
        out = voxel_sample_reference(volume, xyz, align_corners=align_corners, padding=padding)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = [next(grads) if need else None for need in (need_volume, need_xyz)]
    return [g if g is not None or not need else torch.zeros_like(t) for g, t, need in zip(result, (volume, xyz), (need_volume, need_xyz))]


def _forward(backend: str, volume, xyz, align_corners, padding) -> torch.Tensor:
    if backend == "triton":
        from ..kernels.voxel_sample import voxel_sample_fwd

        return voxel_sample_fwd(volume, xyz, align_corners, PADDING_CODES[padding])
    return compiled_ops(backend).voxel_sample_fwd(volume, xyz, align_corners, PADDING_CODES[padding])


def _backward(backend: str, grad_out, volume, xyz, align_corners, padding, need_volume, need_xyz):
    if backend == "triton":
        from ..kernels.voxel_sample import voxel_sample_bwd

        return voxel_sample_bwd(grad_out, volume, xyz, align_corners, PADDING_CODES[padding], need_volume, need_xyz)
    grads = compiled_ops(backend).voxel_sample_bwd(
        grad_out, volume, xyz, align_corners, PADDING_CODES[padding], need_volume, need_xyz
    )
    return [g if need else None for g, need in zip(grads, (need_volume, need_xyz))]


# ---------------------------------------------------------------------------------------
# The custom ops. Gradients come back in the layout of their input (empty_like), so the
# fake implementations can promise strides; unrequested gradients are empty tensors.


@torch.library.custom_op("fastfields::voxel_sample", mutates_args=())
def _voxel_sample_op(volume: torch.Tensor, xyz: torch.Tensor, align_corners: bool, padding: str, backend: str) -> torch.Tensor:
    if xyz.numel() == 0:
        return volume.new_zeros(output_shape(volume, xyz))
    return _forward(backend, volume, xyz, align_corners, padding).contiguous()


@_voxel_sample_op.register_fake
def _(volume, xyz, align_corners, padding, backend):
    return volume.new_empty(output_shape(volume, xyz))


@torch.library.custom_op("fastfields::voxel_sample_backward", mutates_args=())
def _voxel_sample_backward_op(
    grad_out: torch.Tensor,
    volume: torch.Tensor,
    xyz: torch.Tensor,
    align_corners: bool,
    padding: str,
    backend: str,
    need_volume: bool,
    need_xyz: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    if xyz.numel() == 0:
        grad_volume, grad_xyz = None, None
    else:
        grad_volume, grad_xyz = _backward(backend, grad_out, volume, xyz, align_corners, padding, need_volume, need_xyz)
    return (
        grad_like(grad_volume, volume) if need_volume else volume.new_empty(0),
        grad_like(grad_xyz, xyz) if need_xyz else xyz.new_empty(0),
    )


@_voxel_sample_backward_op.register_fake
def _(grad_out, volume, xyz, align_corners, padding, backend, need_volume, need_xyz):
    return (
        torch.empty_like(volume) if need_volume else volume.new_empty(0),
        torch.empty_like(xyz) if need_xyz else xyz.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    volume, xyz, align_corners, padding, backend = inputs
    ctx.save_for_backward(volume, xyz)
    ctx.config = (align_corners, padding, backend)


def _autograd_backward(ctx, grad_out):
    volume, xyz = ctx.saved_tensors
    align_corners, padding, backend = ctx.config
    need_volume, need_xyz = ctx.needs_input_grad[:2]
    if torch.is_grad_enabled():
        # create_graph=True (eikonal, R1): a differentiable backward through the reference.
        grad_volume, grad_xyz = _differentiable_backward(grad_out, volume, xyz, align_corners, padding, need_volume, need_xyz)
    else:
        grad_volume, grad_xyz = torch.ops.fastfields.voxel_sample_backward(
            grad_out, volume, xyz, align_corners, padding, backend, need_volume, need_xyz
        )
    return (grad_volume if need_volume else None, grad_xyz if need_xyz else None, None, None, None)


_voxel_sample_op.register_autograd(_autograd_backward, setup_context=_setup_context)


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
            channels-last storage (:func:`volume_channels_last`) is the fast layout.
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
    name = _backend.resolve(OP, backend, volume.device, IMPLEMENTED)
    if name == "torch":
        return voxel_sample_reference(volume, xyz, align_corners=align_corners, padding=padding)
    return torch.ops.fastfields.voxel_sample(volume, xyz, align_corners, padding, name)
