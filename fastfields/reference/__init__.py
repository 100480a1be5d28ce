"""Pure-PyTorch references: readable, exact, the ground truth every backend is tested against."""

from .adaln_modulate import adaln_modulate_reference
from .attention import attention_reference
from .composite import composite_packed_reference, composite_reference
from .render_triplane import render_pass_reference
from .tensorf_vm_sample import tensorf_vm_sample_reference
from .triplane_sample import triplane_sample_reference
from .voxel_sample import voxel_sample_reference

__all__ = ["render_pass_reference", "composite_packed_reference", "composite_reference", "voxel_sample_reference", "tensorf_vm_sample_reference", "adaln_modulate_reference", "attention_reference", "triplane_sample_reference"]
