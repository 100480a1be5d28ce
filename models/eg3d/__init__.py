"""EG3D (Chan et al. 2022, NVlabs/eg3d): the triplane 3D GAN in plain PyTorch on the fused
:func:`fastfields.render_triplane`, loading official weights.

Modules (named like the paper's figure): :mod:`.config` (presets ffhq512 / afhq512 /
shapenet128 / tiny), :mod:`.mapping`, :mod:`.synthesis` (StyleGAN2 backbone), :mod:`.renderer`
(ray sampler, OSG decoder, volume rendering), :mod:`.superresolution`, :mod:`.generator`
(:class:`EG3D`), :mod:`.discriminator` / :mod:`.loss` / :mod:`.train` (training) and
:mod:`.convert` (official ``.pkl`` -> our safetensors).
"""

from .config import PRESETS, EG3DConfig
from .generator import EG3D

__all__ = ["EG3D", "EG3DConfig", "PRESETS"]
