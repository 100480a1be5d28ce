"""Public ops: validation, backend dispatch, the ``fastfields::`` custom ops and their autograd."""

from .adaln_modulate import adaln_modulate
from .attention import attention
from .triplane_sample import EG3D_AXES, LRM_AXES, XYZ_AXES, planes_channels_last, triplane_sample

__all__ = ["adaln_modulate", "attention", "EG3D_AXES", "LRM_AXES", "XYZ_AXES", "planes_channels_last", "triplane_sample"]
