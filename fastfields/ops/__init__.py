"""Public ops: validation, backend dispatch, the ``fastfields::`` custom ops and their autograd."""

from .adaln_modulate import adaln_modulate
from .attention import attention
from .composite import composite, composite_packed
from .tensorf_vm_sample import TENSORF_MAT_MODE, TENSORF_VEC_MODE, TENSORF_VM, ZERORF_VM, tensorf_vm_sample
from ..rendering.triplane import eg3d_render_options, render_triplane  # the fused pass: .render_triplane
from .voxel_sample import volume_channels_last, voxel_sample
from .triplane_sample import EG3D_AXES, LRM_AXES, XYZ_AXES, planes_channels_last, triplane_sample

__all__ = ["eg3d_render_options", "render_triplane", "composite", "composite_packed", "volume_channels_last", "voxel_sample", "TENSORF_MAT_MODE", "TENSORF_VEC_MODE", "TENSORF_VM", "ZERORF_VM", "tensorf_vm_sample", "adaln_modulate", "attention", "EG3D_AXES", "LRM_AXES", "XYZ_AXES", "planes_channels_last", "triplane_sample"]
