"""Pure-PyTorch references: readable, exact, the ground truth every backend is tested against."""

from .adaln_modulate import adaln_modulate_reference
from .attention import attention_reference
from .triplane_sample import triplane_sample_reference

__all__ = ["adaln_modulate_reference", "attention_reference", "triplane_sample_reference"]
