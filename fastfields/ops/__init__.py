"""Public ops: validation, backend dispatch, the ``fastfields::`` custom ops and their autograd."""

from .triplane_sample import EG3D_AXES, LRM_AXES, XYZ_AXES, planes_channels_last, triplane_sample

__all__ = ["EG3D_AXES", "LRM_AXES", "XYZ_AXES", "planes_channels_last", "triplane_sample"]
