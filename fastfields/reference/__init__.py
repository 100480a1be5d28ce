"""Pure-PyTorch references: readable, exact, the ground truth every backend is tested against."""

from .triplane_sample import triplane_sample_reference

__all__ = ["triplane_sample_reference"]
