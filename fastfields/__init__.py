"""fastfields: fused kernels for 3D neural fields.

    >>> import fastfields as ff
    >>> ff.backends()            # which backends work here, and why not
    >>> ff.triplane_sample(planes, xyz, reduce="concat", axes=ff.LRM_AXES)
"""

__version__ = "0.1.0"

from ._backend import BACKENDS, BackendUnavailable, backends
from ._build import BuildError
from .ops import (
    EG3D_AXES,
    LRM_AXES,
    TENSORF_MAT_MODE,
    TENSORF_VEC_MODE,
    TENSORF_VM,
    XYZ_AXES,
    ZERORF_VM,
    adaln_modulate,
    attention,
    composite,
    composite_packed,
    eg3d_render_options,
    planes_channels_last,
    render_triplane,
    tensorf_vm_sample,
    triplane_sample,
    volume_channels_last,
    voxel_sample,
)
from . import nn, rendering

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "BuildError",
    "EG3D_AXES",
    "LRM_AXES",
    "TENSORF_MAT_MODE",
    "TENSORF_VEC_MODE",
    "TENSORF_VM",
    "XYZ_AXES",
    "ZERORF_VM",
    "adaln_modulate",
    "attention",
    "backends",
    "composite",
    "composite_packed",
    "eg3d_render_options",
    "nn",
    "planes_channels_last",
    "render_triplane",
    "rendering",
    "tensorf_vm_sample",
    "triplane_sample",
    "volume_channels_last",
    "voxel_sample",
]
